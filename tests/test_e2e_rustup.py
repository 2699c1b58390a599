"""The real rustup through a running ruststash against a local fake static.rust-lang.org.

rustup keeps its default dist server (https://static.rust-lang.org); only HTTPS_PROXY and SSL_CERT_FILE
(ruststash's bundle) are set, in an environment built from scratch, with fresh RUSTUP_HOME and CARGO_HOME.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess
from tests.origins.installer import HOST_TRIPLE
from tests.origins.rustlang import FakeRustDist, PublishedRelease
from tests.origins.rustup_client import REAL_DIST_SERVER, RustupClient, find_rustup, make_rustup_client, rustup_env
from tests.origins.tls import OriginTLS

pytestmark = pytest.mark.e2e

MANIFEST = "/dist/channel-rust-stable.toml"


@pytest.fixture
def dist(tmp_path: Path, origin_tls: OriginTLS) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path / "origin")
    yield origin
    origin.close()


@pytest.fixture
def release(dist: FakeRustDist) -> PublishedRelease:
    return dist.publish("9.98.0", "2026-04-14")


@pytest.fixture
def proxy(start_proxy: ProxyFactory, dist: FakeRustDist, origin_tls: OriginTLS) -> ProxyProcess:
    return start_proxy(["--upstream", f"static.rust-lang.org={dist.url}", "--upstream-ca", str(origin_tls.ca_pem)])


def client(root: Path, proxy: ProxyProcess) -> RustupClient:
    """A new rustup user: fresh homes, only the proxy and ruststash's bundle configured."""
    return make_rustup_client(root, proxy=proxy.url, ca_pem=proxy.bundle)


def archive_requests(dist: FakeRustDist) -> list[str]:
    return [r.path for r in dist.records() if r.path.endswith((".tar.xz", ".tar.gz"))]


def rustc_version(user: RustupClient, toolchain: str) -> str:
    return user.run("rustc", f"+{toolchain}", "--version").stdout.strip()


def proxied_get(
    proxy: ProxyProcess, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTPS client through the proxy, trusting only ruststash's CA."""
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=context)
    )
    request = urllib.request.Request(f"https://static.rust-lang.org{path}", headers=headers or {})
    with opener.open(request, timeout=60) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def test_cold_warm_and_offline_installs(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    # Cold: minimal, then default profile, through the proxy.
    first = client(tmp_path / "cold", proxy)
    first.install("stable", profile="minimal")
    assert rustc_version(first, "stable") == f"rustc {release.release.full_version}"
    second = client(tmp_path / "cold-default", proxy)
    second.install("stable", profile="default")
    assert rustc_version(second, "stable") == f"rustc {release.release.full_version}"
    fetched = archive_requests(dist)
    assert fetched and len(fetched) == len(set(fetched)), f"an archive was fetched twice: {fetched}"
    assert {f"/dist/2026-04-14/rustfmt-9.98.0-{HOST_TRIPLE}.tar.xz", release.archive_path("rustc")} <= set(fetched)

    # Warm, new RUSTUP_HOME: no archive fetched from upstream again.
    dist.reset_counts()
    warm = client(tmp_path / "warm", proxy)
    warm.install("stable", profile="default")
    assert archive_requests(dist) == []
    assert rustc_version(warm, "stable") == f"rustc {release.release.full_version}"
    archive_lines = [r for r in proxy.access() if r["path"].endswith(".tar.xz")]
    assert {r["outcome"] for r in archive_lines[-6:]} == {"HIT"}

    # Upstream stopped: installs from cache.
    dist.stop()
    offline = client(tmp_path / "offline", proxy)
    offline.install("stable", profile="minimal")
    assert rustc_version(offline, "stable") == f"rustc {release.release.full_version}"
    stale = [r for r in proxy.access() if r["path"] == MANIFEST + ".sha256"][-1]
    assert stale["outcome"] == "STALE"


def test_a_new_machine_bootstraps_rustup_with_rustup_init_through_the_proxy(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess, origin_tls: OriginTLS
) -> None:
    """What rustup.rs has a new user run: rustup-init.sh fetches `rustup/dist/<triple>/rustup-init` with curl,
    which installs rustup, which installs a toolchain. The real rustup binary (about 20 MB) is published as
    rustup-init; two new machines do this in turn, the second getting rustup-init from the cache."""
    binary = find_rustup().read_bytes()
    dist.publish_rustup(init=binary)
    path = f"/rustup/dist/{HOST_TRIPLE}/rustup-init"
    for name in ("first", "second"):
        home = tmp_path / name
        home.mkdir()
        env = rustup_env(
            home, dist_server=REAL_DIST_SERVER, update_root=f"{REAL_DIST_SERVER}/rustup", ca_pem=proxy.bundle,
            proxy=proxy.url,
        )  # fmt: skip
        init = home / "rustup-init"
        # rustup-init.sh's own download command (its `downloader` function with curl)
        curl = ["curl", "--proto", "=https", "--tlsv1.2", "--silent", "--show-error", "--fail", "--location"]
        subprocess.run([*curl, f"https://static.rust-lang.org{path}", "--output", str(init)], env=env, check=True)
        assert hashlib.sha256(init.read_bytes()).hexdigest() == hashlib.sha256(binary).hexdigest()
        init.chmod(0o755)
        install = [str(init), "-y", "--no-modify-path", "--default-toolchain", "none"]
        subprocess.run(install, env=env, check=True, capture_output=True, timeout=120)
        user = RustupClient(home, env, home / "cargo" / "bin" / "rustup")
        user.install("stable", profile="minimal")
        assert rustc_version(user, "stable") == f"rustc {release.release.full_version}"
    fetches = [r["outcome"] for r in proxy.access() if r["path"] == path]
    assert fetches[0] == "MISS" and fetches[1] in {"HIT", "REVALIDATED"}, fetches
    assert [r.path for r in dist.records() if r.path == path and r.status == 200] == [path]
    # The stored copy is sent from its file (never held whole in memory), which also answers a Range.
    status, headers, part = proxied_get(proxy, path, {"range": "bytes=100-199"})
    assert (status, part, headers["x-cache"]) == (206, binary[100:200], fetches[1])
    # ... with upstream's validators (not ones made from the blob file), and a Range whose If-Range names
    # another body (a download resumed after rustup-init changed) gets the whole current body.
    context = ssl.create_default_context(cafile=str(origin_tls.ca_pem))
    with urllib.request.urlopen(dist.url + path, context=context, timeout=60) as direct:
        validators = (direct.headers["etag"], direct.headers["last-modified"])
    assert (headers["etag"], headers["last-modified"]) == validators
    for if_range, expected in ((validators[0], (206, binary[100:200])), ('"another-body"', (200, binary))):
        status, _, body = proxied_get(proxy, path, {"range": "bytes=100-199", "if-range": if_range})
        assert (status, body) == expected, if_range


def test_rustup_self_update_through_the_proxy(tmp_path: Path, dist: FakeRustDist, proxy: ProxyProcess) -> None:
    """`rustup self update` when a newer rustup is published: release-stable.toml says which, and the new
    rustup-init comes from `rustup/archive/<version>/<triple>/`, which never changes. Two machines in turn;
    the second gets the new rustup-init from the cache."""
    binary = find_rustup().read_bytes()
    dist.publish_rustup("1.99.0", init=binary)  # the real binary, published as a newer version
    archive = f"/rustup/archive/1.99.0/{HOST_TRIPLE}/rustup-init"
    for name in ("first", "second"):
        user = client(tmp_path / name, proxy)
        result = user.rustup("self", "update")
        assert "1.99.0" in result.stdout + result.stderr, result.stderr
    fetches = [r["outcome"] for r in proxy.access() if r["path"] == archive]
    assert fetches == ["MISS", "HIT"], proxy.access()


def install_from_a_mirror_refused_then_cold_then_warm(
    tmp_path: Path, proxy: ProxyProcess, origin: FakeRustDist, release: PublishedRelease, dist_server: str, victim: str
) -> list[tuple[str, str, str]]:
    """Three new machines install stable from `dist_server` through `proxy`: while `victim` is corrupt at the
    origin (the install fails), then twice after it is mended. Checks that the corrupt archive was refused
    against the mirror's manifest and the third install came from the cache; returns the access lines."""
    origin.corrupt(victim)
    for name in ("corrupt", "cold", "warm"):
        user = make_rustup_client(tmp_path / name, dist_server=dist_server, proxy=proxy.url, ca_pem=proxy.bundle)
        if name == "corrupt":
            failed = user.rustup("toolchain", "install", "stable", "--profile", "minimal", "--no-self-update",
                                 check=False, env={"RUSTUP_MAX_RETRIES": "0"})  # fmt: skip
            assert failed.returncode != 0
            origin.restore()
            continue
        user.install("stable", profile="minimal")
        assert rustc_version(user, "stable") == f"rustc {release.release.full_version}"
    lines = [(r["host"], r["path"], r["outcome"]) for r in proxy.access()]
    refused = [line for line in lines if line[1] == victim]
    assert refused[0][2] == "ERROR", "the corrupt archive did not match the mirror's manifest"
    warm = [outcome for _, path, outcome in lines[-3:] if path.endswith(".tar.xz")]
    assert warm == ["HIT"] * 3, lines
    return lines


@pytest.mark.parametrize("prefix", ["", "/rust-static"], ids=["at-the-root", "below-a-path"])
def test_a_rustup_mirror_named_with_cache_host_is_cached_and_checked(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    dist: FakeRustDist,
    release: PublishedRelease,
    origin_tls: OriginTLS,
    prefix: str,
) -> None:
    """A site's own rustup mirror (RUSTUP_DIST_SERVER), named with --cache-host: rustup asks the mirror for
    the same paths (below the mirror's path, if it has one, as some public mirrors do), and the proxy checks
    each archive against the hash the mirror's manifest gives. The mirror below a path is also named with
    --http1-host: rustup is then answered over HTTP/1.1 (tests/test_e2e_tunnel.py), as from static.rust-lang.org."""
    mirror = "rust-mirror.example"
    dist.serve_below(prefix or "/unused")
    proxy = start_proxy(
        ["--cache-host", mirror, "--upstream", f"{mirror}={dist.url}", "--upstream-ca", str(origin_tls.ca_pem)]
        + (["--http1-host", mirror] if prefix else [])
    )
    victim = prefix + release.archive_path("rustc")
    lines = install_from_a_mirror_refused_then_cold_then_warm(
        tmp_path, proxy, dist, release, f"https://{mirror}{prefix}", victim
    )
    assert {host for host, _, _ in lines} == {mirror}
    assert all(path.startswith(prefix + "/dist/") for _, path, _ in lines), lines


def test_a_plain_http_mirror_named_with_cache_host_is_cached_and_checked(
    tmp_path: Path, start_proxy: ProxyFactory, origin_tls: OriginTLS
) -> None:
    """An intranet mirror served over plain HTTP (RUSTUP_DIST_SERVER=http://...): rustup sends its requests to
    the proxy as plain-HTTP proxy requests (HTTP_PROXY), and they are cached and checked as over HTTPS."""
    mirror = "rust-mirror.intranet"
    with FakeRustDist(origin_tls, tmp_path / "origin", plain_http=True) as plain:
        release = plain.publish()
        proxy = start_proxy(["--cache-host", mirror, "--upstream", f"{mirror}={plain.url}"])
        victim = release.archive_path("rustc")
        lines = install_from_a_mirror_refused_then_cold_then_warm(
            tmp_path, proxy, plain, release, f"http://{mirror}", victim
        )
    assert {host for host, _, _ in lines} == {mirror}


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param({"RUSTUP_USE_RUSTLS": "0"}, id="native-tls"),  # the TLS default of rustup before 1.28
        pytest.param({"RUSTUP_USE_CURL": "1"}, id="curl"),
    ],
)
def test_rustups_other_download_backends_install_through_the_proxy(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess, backend: dict[str, str]
) -> None:
    """rustup's deprecated backends (OpenSSL through native-tls, or libcurl) trust ruststash's bundle through
    SSL_CERT_FILE too; cold then warm, each archive fetched from upstream once."""
    for name in ("cold", "warm"):
        user = make_rustup_client(tmp_path / name, proxy=proxy.url, ca_pem=proxy.bundle, extra_env=backend)
        assert "deprecated" in user.install("stable", profile="minimal").stderr, "the backend was not switched"
        assert rustc_version(user, "stable") == f"rustc {release.release.full_version}"
    fetched = archive_requests(dist)
    assert fetched and len(fetched) == len(set(fetched)), f"an archive was fetched twice: {fetched}"
    archive_lines = [r for r in proxy.access() if r["path"].endswith(".tar.xz")]
    assert {r["outcome"] for r in archive_lines[len(fetched) :]} == {"HIT"}


def test_components_and_targets_added_later_come_through_the_proxy_and_then_from_the_cache(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    """What CI scripts do after installing a toolchain: `rustup component add clippy rustfmt` (names that the
    manifest renames) and `rustup target add wasm32-unknown-unknown`. The first machine fetches them once
    through the proxy, a second gets them from the cache, and a third installs all at once with upstream
    gone."""
    wanted = [release.archive_path(p) for p in ("clippy-preview", "rustfmt-preview")]
    wanted.append(release.archive_path("rust-std", target="wasm32-unknown-unknown"))

    def add_all(user: RustupClient) -> None:
        user.rustup("component", "add", "clippy", "rustfmt")
        user.rustup("target", "add", "wasm32-unknown-unknown")
        listed = user.rustup("component", "list", "--installed").stdout.split()
        assert {f"clippy-{HOST_TRIPLE}", f"rustfmt-{HOST_TRIPLE}", "rust-std-wasm32-unknown-unknown"} <= set(listed), (
            listed
        )

    for name in ("first", "second"):
        user = client(tmp_path / name, proxy)
        user.install("stable")
        add_all(user)
    assert sorted(p for p in archive_requests(dist) if p in wanted) == sorted(wanted), "fetched more than once"
    outcomes = [r["outcome"] for r in proxy.access() if r["path"] in wanted]
    assert outcomes == ["MISS"] * 3 + ["HIT"] * 3, outcomes

    dist.stop()
    offline = client(tmp_path / "offline", proxy)
    offline.install("stable", "--component", "clippy,rustfmt", "--target", "wasm32-unknown-unknown")
    assert {f"clippy-{HOST_TRIPLE}", "rust-std-wasm32-unknown-unknown"} <= set(
        offline.rustup("component", "list", "--installed").stdout.split()
    )


def test_update_to_a_newer_stable_keeps_the_old_one_installable(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    user = client(tmp_path / "user", proxy)
    user.install("stable")
    newer = dist.publish("9.99.0", "2026-05-28")
    user.rustup("update", "stable", "--no-self-update")
    assert rustc_version(user, "stable") == f"rustc {newer.release.full_version}"
    # The old release by its version, for a new user: its own manifest is new to the proxy, its archives not.
    dist.reset_counts()
    other = client(tmp_path / "other", proxy)
    other.install("9.98.0")
    assert rustc_version(other, "9.98.0") == f"rustc {release.release.full_version}"
    assert archive_requests(dist) == [], "9.98.0's archives were cached by the first install"


def test_corrupted_archive_fails_cleanly_and_is_not_stored(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    path = release.archive_path("rust-std")
    dist.corrupt(path)
    user = client(tmp_path / "user", proxy)
    result = user.rustup(
        "toolchain",
        "install",
        "stable",
        "--profile",
        "minimal",
        "--no-self-update",
        check=False,
        env={"RUSTUP_MAX_RETRIES": "0"},
    )
    assert result.returncode != 0
    assert "stable" not in " ".join(user.toolchains())
    good = hashlib.sha256(dist.file(path).read_bytes()).hexdigest()
    bad = [p.name for p in (proxy.cache_dir / "blobs").rglob("*") if p.is_file()]
    corrupted_digests = set(bad) - {good}
    for name in corrupted_digests:
        data = next((proxy.cache_dir / "blobs").rglob(name)).read_bytes()
        assert hashlib.sha256(data).hexdigest() == name, "a blob does not hash to its name"
    assert not list((proxy.cache_dir / "tmp").iterdir()), "a partial download was left behind"
    refusals = [r for r in proxy.access() if r["path"] == path and r["outcome"] == "ERROR"]
    assert refusals and refusals[0]["status"] == "502", refusals
    assert "is not the published" in refusals[0]["note"]
    assert "502" in result.stderr

    dist.restore()
    user.install("stable")
    assert rustc_version(user, "stable") == f"rustc {release.release.full_version}"
    assert list((proxy.cache_dir / "blobs").rglob(good)), "the good archive is stored under its sha256"


def test_pinned_version_and_dated_nightly(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    nightly = dist.publish("9.100.0", "2026-05-01", "nightly")
    user = client(tmp_path / "user", proxy)
    project = tmp_path / "project"
    user.write_toolchain_file(project, "9.98.0", profile="minimal")
    out = user.run("rustc", "--version", cwd=project, env={"RUSTUP_AUTO_INSTALL": "1"})
    assert out.stdout.strip() == f"rustc {release.release.full_version}"
    user.install(nightly.toolchain)
    assert rustc_version(user, nightly.toolchain) == f"rustc {nightly.release.full_version}"
    paths = {r["path"] for r in proxy.access()}
    assert "/dist/channel-rust-9.98.0.toml.sha256" in paths
    assert "/dist/2026-05-01/channel-rust-nightly.toml" in paths


def test_manifest_and_sha256_always_match_even_when_upstream_publishes_between(
    dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    _, _, sha256 = proxied_get(proxy, MANIFEST + ".sha256")
    dist.publish("9.99.0", "2026-05-28")  # upstream moves on between rustup's two requests
    _, _, toml = proxied_get(proxy, MANIFEST)
    assert sha256.split()[0].decode() == hashlib.sha256(toml).hexdigest()
    assert b'version = "9.98.0' in toml

    # The next .sha256 request sees the new release, and its .toml matches it.
    _, _, sha256 = proxied_get(proxy, MANIFEST + ".sha256")
    _, _, toml = proxied_get(proxy, MANIFEST)
    assert sha256.split()[0].decode() == hashlib.sha256(toml).hexdigest()
    assert b'version = "9.99.0' in toml

    # Upstream gone: the last matching pair, marked stale.
    dist.stop()
    _, headers, sha256 = proxied_get(proxy, MANIFEST + ".sha256")
    _, _, toml = proxied_get(proxy, MANIFEST)
    assert headers["x-cache"] == "STALE"
    assert sha256.split()[0].decode() == hashlib.sha256(toml).hexdigest()


def test_range_requests_on_cached_archives_get_206(
    dist: FakeRustDist, release: PublishedRelease, proxy: ProxyProcess
) -> None:
    proxied_get(proxy, MANIFEST + ".sha256")
    proxied_get(proxy, MANIFEST)
    path = release.archive_path("rustc")
    whole = dist.file(path).read_bytes()
    status, headers, body = proxied_get(proxy, path)
    assert (status, headers["x-cache"], body) == (200, "MISS", whole)
    status, headers, body = proxied_get(proxy, path, {"Range": "bytes=100-"})
    assert (status, headers["x-cache"], body) == (206, "HIT", whole[100:])
    assert headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"


BIG = 24 * 1024 * 1024  # over the size that is downloaded whole before sending: this one is streamed


def test_large_archive_is_streamed_once_to_concurrent_clients_and_then_from_disk(
    tmp_path: Path, dist: FakeRustDist, proxy: ProxyProcess
) -> None:
    big = dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": BIG})
    path = big.archive_path("rust-std")
    whole = dist.file(path).read_bytes()
    assert len(whole) > BIG
    proxied_get(proxy, MANIFEST + ".sha256")  # the proxy learns the archive's hash from the manifest
    dist.reset_counts()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: proxied_get(proxy, path), range(4)))
    assert all(body == whole for _, _, body in results)
    assert {headers["x-cache"] for _, headers, _ in results} == {"MISS"}
    assert dist.count(path) == 1, "concurrent clients of one missing archive caused more than one fetch"
    status, headers, body = proxied_get(proxy, path)
    assert (status, headers["x-cache"], body == whole) == (200, "HIT", True)
    # And rustup installs with it, from the cache.
    user = client(tmp_path / "user", proxy)
    user.install("stable")
    assert rustc_version(user, "stable") == f"rustc {big.release.full_version}"
    assert dist.count(path) == 1


def test_large_corrupted_archive_is_cut_short_and_not_stored(dist: FakeRustDist, proxy: ProxyProcess) -> None:
    big = dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": BIG})
    path = big.archive_path("rust-std")
    proxied_get(proxy, MANIFEST + ".sha256")
    dist.corrupt(path)
    with pytest.raises((http.client.IncompleteRead, ConnectionError, urllib.error.URLError)):
        proxied_get(proxy, path)
    assert not list((proxy.cache_dir / "tmp").iterdir()), "a partial download was left behind"
    good = hashlib.sha256(dist.file(path).read_bytes()).hexdigest()
    for blob in (proxy.cache_dir / "blobs").rglob("*"):
        if blob.is_file():
            assert blob.stat().st_size < BIG, "a large (corrupt) body was stored"
    dist.restore()
    status, headers, body = proxied_get(proxy, path)
    assert (status, headers["x-cache"], hashlib.sha256(body).hexdigest()) == (200, "MISS", good)


def test_interrupted_downloads_leave_nothing_partial(dist: FakeRustDist, proxy: ProxyProcess) -> None:
    big = dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": BIG})
    path = big.archive_path("rust-std")
    whole = dist.file(path).read_bytes()
    proxied_get(proxy, MANIFEST + ".sha256")

    # Upstream cuts the body short: the client's transfer fails, nothing is stored.
    dist.set_fault(path, "truncate", times=1)
    with pytest.raises((http.client.IncompleteRead, ConnectionError, urllib.error.URLError)):
        proxied_get(proxy, path)
    assert not list((proxy.cache_dir / "tmp").iterdir())
    assert not [b for b in (proxy.cache_dir / "blobs").rglob("*") if b.is_file() and b.stat().st_size >= BIG]

    # The client goes away mid-body: the download still completes and is stored whole, verified.
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=60)
    connection.set_tunnel("static.rust-lang.org", 443)
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.read(1024 * 1024)
    connection.close()
    status, _, body = proxied_get(proxy, path)
    assert (status, body == whole) == (200, True)
    assert dist.count(path) == 2, "the abandoned download was not finished and reused"
    assert not list((proxy.cache_dir / "tmp").iterdir())
    assert list((proxy.cache_dir / "blobs").rglob(hashlib.sha256(whole).hexdigest()))
