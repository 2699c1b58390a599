"""The fake static.rust-lang.org, proven without ruststash: unit tests of its archives, manifests and HTTP
behaviour, then the real rustup installing from it directly (RUSTUP_DIST_SERVER = the origin)."""

from __future__ import annotations

import hashlib
import http.client
import io
import lzma
import ssl
import subprocess
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.origins.installer import COMPONENTS, HOST_TRIPLE, ArchiveBuilder, Release
from tests.origins.rustlang import LONG_CACHE, SHORT_CACHE, FakeRustDist, PublishedRelease
from tests.origins.rustup_client import RustupClient, find_rustup, make_rustup_client
from tests.origins.tls import OriginTLS

STABLE = "/dist/channel-rust-stable.toml"


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> ArchiveBuilder:
    return ArchiveBuilder(tmp_path_factory.mktemp("archives"))


@pytest.fixture
def dist(origin_tls: OriginTLS, builder: ArchiveBuilder, tmp_path: Path) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path / "origin", builder=builder)
    yield origin
    origin.close()


@pytest.fixture
def old(dist: FakeRustDist) -> PublishedRelease:
    return dist.publish("9.98.0", "2026-04-14")


@pytest.fixture
def client(dist: FakeRustDist, origin_tls: OriginTLS, tmp_path: Path) -> RustupClient:
    try:
        find_rustup()
    except FileNotFoundError:
        pytest.skip("rustup is not installed")
    return make_rustup_client(tmp_path / "client", dist_server=dist.url, ca_pem=origin_tls.ca_pem)


def fetch(origin_tls: OriginTLS, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` trusting the origin CA -> (status, lower-cased headers, body); HTTP errors are returned."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=origin_tls.client_context(), timeout=10) as response:
            return response.status, _lower(response.headers.items()), response.read()
    except urllib.error.HTTPError as error:
        return error.code, _lower(error.headers.items()), error.read()


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


def tar_members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tar:
        return {member.name: member for member in tar.getmembers()}


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r:") as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


# ------------------------------------------------------------------------------------------------ archives


def test_archive_is_a_rust_installer_tarball(builder: ArchiveBuilder, tmp_path: Path) -> None:
    release = Release("9.99.0", "2026-05-01")
    archive = builder.component(release, "rust-std")
    data = archive.paths["xz"].read_bytes()
    top = f"rust-std-9.99.0-{HOST_TRIPLE}"
    component = f"rust-std-{HOST_TRIPLE}"
    members = tar_members(data)
    assert archive.file_names["xz"] == f"{top}.tar.xz"
    assert all(name == top or name.startswith(f"{top}/") for name in members)
    assert read_member(data, f"{top}/rust-installer-version") == b"3\n"
    assert read_member(data, f"{top}/components") == f"{component}\n".encode()
    listed = read_member(data, f"{top}/{component}/manifest.in").decode().splitlines()
    assert listed and all(line.startswith("file:") for line in listed)
    for line in listed:
        assert members[f"{top}/{component}/{line[5:]}"].isfile()
    assert {m.mtime for m in members.values()} == {release.mtime}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members.values()} == {(0, 0, "", "")}
    assert hashlib.sha256(data).hexdigest() == archive.sha256["xz"]
    with tarfile.open(archive.paths["gz"]) as gz:
        assert sorted(gz.getnames()) == sorted(members)


def test_docs_use_dir_entries_and_renamed_components_keep_manifest_names(builder: ArchiveBuilder) -> None:
    release = Release("9.99.0", "2026-05-01")
    docs = builder.component(release, "rust-docs").paths["xz"].read_bytes()
    top = f"rust-docs-9.99.0-{HOST_TRIPLE}"
    assert read_member(docs, f"{top}/rust-docs/manifest.in") == b"dir:share/doc/rust/html\n"
    rustfmt = builder.component(release, "rustfmt-preview")
    assert rustfmt.file_names["xz"] == f"rustfmt-9.99.0-{HOST_TRIPLE}.tar.xz"
    data = rustfmt.paths["xz"].read_bytes()
    assert read_member(data, f"rustfmt-9.99.0-{HOST_TRIPLE}/components") == b"rustfmt-preview\n"
    assert builder.component(release, "rust-src").file_names["xz"] == "rust-src-9.99.0.tar.xz"
    nightly = builder.component(Release("9.100.0", "2026-05-01", "nightly"), "rustc")
    assert nightly.file_names["xz"] == f"rustc-nightly-{HOST_TRIPLE}.tar.xz"


def test_fake_rustc_answers_version_queries(builder: ArchiveBuilder, tmp_path: Path) -> None:
    release = Release("9.99.0", "2026-05-01")
    with tarfile.open(builder.component(release, "rustc").paths["gz"]) as tar:
        tar.extractall(tmp_path, filter="data")
    rustc = tmp_path / f"rustc-9.99.0-{HOST_TRIPLE}" / "rustc" / "bin" / "rustc"
    env = {"PATH": "/usr/bin:/bin"}
    short = subprocess.run([rustc, "--version"], capture_output=True, text=True, env=env, check=True).stdout
    assert short == f"rustc {release.full_version}\n"
    verbose = subprocess.run([rustc, "-vV"], capture_output=True, text=True, env=env, check=True).stdout
    assert f"host: {HOST_TRIPLE}\n" in verbose and "release: 9.99.0\n" in verbose
    assert f"commit-hash: {release.commit_hash}\n" in verbose
    assert subprocess.run([rustc, "main.rs"], capture_output=True, env=env, check=False).returncode == 1


def test_archives_are_deterministic_and_cached(tmp_path: Path) -> None:
    release = Release("9.97.0", "2026-03-01")
    first = ArchiveBuilder(tmp_path / "a").component(release, "cargo")
    second = ArchiveBuilder(tmp_path / "b").component(release, "cargo")
    assert first.sha256 == second.sha256
    assert first.paths["xz"].read_bytes() == second.paths["xz"].read_bytes()
    mtime = first.paths["xz"].stat().st_mtime_ns
    again = ArchiveBuilder(tmp_path / "a").component(release, "cargo")
    assert again.paths["xz"].stat().st_mtime_ns == mtime  # served from the cache, not rebuilt


def test_padded_archive_is_large_incompressible_and_valid(tmp_path: Path) -> None:
    release = Release("9.97.0", "2026-03-01")
    pad = 3_000_000
    started = time.monotonic()
    archive = ArchiveBuilder(tmp_path).component(release, "rust-std", pad_bytes=pad)
    assert time.monotonic() - started < 10
    assert archive.size("xz") > pad and archive.size("gz") > pad
    data = archive.paths["xz"].read_bytes()
    component = f"rust-std-{HOST_TRIPLE}"
    name = f"rust-std-9.97.0-{HOST_TRIPLE}/{component}/share/ruststash-pad/{component}.bin"
    assert tar_members(data)[name].size == pad
    with tarfile.open(archive.paths["gz"]) as gz:
        member = gz.extractfile(name)
        assert member is not None
        assert hashlib.sha256(member.read()).digest() == hashlib.sha256(read_member(data, name)).digest()
    manifest = read_member(data, f"rust-std-9.97.0-{HOST_TRIPLE}/{component}/manifest.in").decode()
    assert f"file:share/ruststash-pad/{component}.bin" in manifest.splitlines()


# ------------------------------------------------------------------------------------------------ manifests


def test_manifest_has_the_real_shape(dist: FakeRustDist, old: PublishedRelease) -> None:
    text = dist.file(STABLE).read_text()
    manifest = tomllib.loads(text)
    assert manifest["manifest-version"] == "2"
    assert manifest["date"] == "2026-04-14"
    assert set(manifest["pkg"]) == {*COMPONENTS, "rust"}
    assert manifest["renames"] == {"rustfmt": {"to": "rustfmt-preview"}, "clippy": {"to": "clippy-preview"}}
    assert manifest["profiles"]["minimal"] == ["rustc", "cargo", "rust-std", "rust-mingw"]
    assert {"rust-docs", "rustfmt-preview", "clippy-preview"} <= set(manifest["profiles"]["default"])
    rust = manifest["pkg"]["rust"]["target"][HOST_TRIPLE]
    assert [c["pkg"] for c in rust["components"]] == ["rustc", "rust-std", "cargo", "rust-docs"]
    extensions = {(e["pkg"], e["target"]) for e in rust["extensions"]}
    assert {("rustfmt-preview", HOST_TRIPLE), ("rust-src", "*"), ("rust-std", "wasm32-unknown-unknown")} <= extensions
    rustc = manifest["pkg"]["rustc"]
    assert rustc["version"] == old.release.full_version
    target = rustc["target"][HOST_TRIPLE]
    assert target["available"] is True and target["components"] == [] and target["extensions"] == []
    base = "https://static.rust-lang.org/dist/2026-04-14/"
    assert target["xz_url"] == f"{base}rustc-9.98.0-{HOST_TRIPLE}.tar.xz"
    for pkg, targets in manifest["pkg"].items():
        for triple, entry in targets["target"].items():
            for url_key, hash_key in (("url", "hash"), ("xz_url", "xz_hash")):
                assert entry[url_key].startswith(base), (pkg, triple)
                served = dist.file(entry[url_key].removeprefix("https://static.rust-lang.org"))
                assert hashlib.sha256(served.read_bytes()).hexdigest() == entry[hash_key], (pkg, triple)
    assert "rust-src" in manifest["pkg"] and "*" in manifest["pkg"]["rust-src"]["target"]


def test_publish_writes_every_channel_file(dist: FakeRustDist, old: PublishedRelease) -> None:
    names = ("stable", "9.98.0", "9.98")
    expected = [f"/dist/channel-rust-{n}.toml" for n in names]
    expected += [f"/dist/2026-04-14/channel-rust-{n}.toml" for n in names]
    assert sorted(old.manifest_paths) == sorted(expected)
    for path in expected:
        data = dist.file(path).read_bytes()
        name = path.rsplit("/", 1)[-1]
        assert dist.file(f"{path}.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()}  {name}\n"
        assert dist.file(f"{path}.asc").read_text().startswith("-----BEGIN PGP SIGNATURE-----")
    for path in old.archive_paths("xz") + old.archive_paths("gz"):
        assert dist.file(path).is_file() and dist.file(f"{path}.sha256").is_file()
    assert dist.file("/dist/channel-rust-stable-date.txt").read_text() == "2026-04-14\n"
    release = tomllib.loads(dist.file("/rustup/release-stable.toml").read_text())
    assert release == {"schema-version": "1", "version": "1.29.0"}
    assert dist.file(f"/rustup/dist/{HOST_TRIPLE}/rustup-init").is_file()
    assert dist.file(f"/rustup/archive/1.29.0/{HOST_TRIPLE}/rustup-init").is_file()


def test_newer_release_moves_pointers_and_keeps_the_old_one(dist: FakeRustDist, old: PublishedRelease) -> None:
    new = dist.publish("9.99.0", "2026-05-28")
    assert tomllib.loads(dist.file(STABLE).read_text())["date"] == "2026-05-28"
    assert tomllib.loads(dist.file("/dist/channel-rust-9.98.0.toml").read_text())["date"] == "2026-04-14"
    assert dist.file(old.archive_path("rustc")).is_file() and dist.file(new.archive_path("rustc")).is_file()
    nightly = dist.publish("9.100.0", "2026-05-01", "nightly", update_channel=False)
    assert nightly.toolchain == "nightly-2026-05-01"
    assert nightly.manifest_paths == ("/dist/2026-05-01/channel-rust-nightly.toml",)
    assert not dist.file("/dist/channel-rust-nightly.toml").exists()


# ------------------------------------------------------------------------------------------------ HTTP


def test_http_caching_headers_ranges_and_counters(
    dist: FakeRustDist, old: PublishedRelease, origin_tls: OriginTLS
) -> None:
    status, headers, body = fetch(origin_tls, dist.url + STABLE)
    assert status == 200 and headers["cache-control"] == SHORT_CACHE
    assert body == dist.file(STABLE).read_bytes()
    status, _, _ = fetch(origin_tls, dist.url + STABLE, {"If-None-Match": headers["etag"]})
    assert status == 304
    status, _, _ = fetch(origin_tls, dist.url + STABLE, {"If-Modified-Since": headers["last-modified"]})
    assert status == 304

    archive = old.archive_path("rust-std")
    whole = dist.file(archive).read_bytes()
    status, headers, body = fetch(origin_tls, dist.url + archive, {"Range": "bytes=100-"})
    assert status == 206 and body == whole[100:]
    assert headers["content-range"] == f"bytes 100-{len(whole) - 1}/{len(whole)}"
    assert headers["cache-control"] == LONG_CACHE
    assert fetch(origin_tls, dist.url + "/dist/nope.toml")[0] == 404
    assert fetch(origin_tls, dist.url + "/dist/../../etc/passwd")[0] == 404

    assert dist.statuses(STABLE) == [200, 304, 304]
    assert dist.count(archive, status=206) == 1
    assert dist.requests(archive)[0].range == "bytes=100-"
    assert dist.counts()["/dist/nope.toml"] == 1
    dist.reset_counts()
    assert dist.requests() == []


def test_corrupt_serves_same_length_other_bytes_until_restore(
    dist: FakeRustDist, old: PublishedRelease, origin_tls: OriginTLS
) -> None:
    path = old.archive_path("rustc")
    good = dist.file(path).read_bytes()
    dist.corrupt(path)
    _, _, bad = fetch(origin_tls, dist.url + path)
    assert len(bad) == len(good) and bad != good
    dist.restore()
    assert fetch(origin_tls, dist.url + path)[2] == good


def test_faults(dist: FakeRustDist, old: PublishedRelease, origin_tls: OriginTLS) -> None:
    path = old.archive_path("rustc")
    good = dist.file(path).read_bytes()
    dist.set_fault(path, "status_503", times=1)
    assert fetch(origin_tls, dist.url + path)[0] == 503
    assert fetch(origin_tls, dist.url + path)[2] == good  # `times` used up

    dist.set_fault(path, "corrupt", times=1)
    corrupted = fetch(origin_tls, dist.url + path)[2]
    assert len(corrupted) == len(good) and corrupted != good

    dist.set_fault(path, "truncate", times=1)
    with pytest.raises(http.client.IncompleteRead):
        fetch(origin_tls, dist.url + path)

    dist.set_fault(path, "reset", times=1)
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.RemoteDisconnected, ssl.SSLError)):
        fetch(origin_tls, dist.url + path)

    dist.set_fault("/dist/", "slow_headers", delay=0.3, times=1)
    started = time.monotonic()
    assert fetch(origin_tls, dist.url + path)[2] == good
    assert time.monotonic() - started >= 0.3

    dist.set_fault(path, "trickle", chunk=len(good) // 4 + 1, delay=0.05, times=1)
    assert fetch(origin_tls, dist.url + path)[2] == good

    dist.set_fault(path, "hang", hang_max=0.3, times=1)
    with pytest.raises((ConnectionError, urllib.error.URLError, http.client.RemoteDisconnected, ssl.SSLError)):
        fetch(origin_tls, dist.url + path)
    assert [r.fault for r in dist.requests(path)][-1] == "hang"
    assert dist.statuses(path)[-1] is None


def test_stop_refuses_connections_and_start_comes_back(
    dist: FakeRustDist, old: PublishedRelease, origin_tls: OriginTLS
) -> None:
    url = dist.url
    dist.stop()
    with pytest.raises(urllib.error.URLError):
        fetch(origin_tls, url + STABLE)
    dist.start()
    assert dist.url == url
    assert fetch(origin_tls, url + STABLE)[0] == 200


# ------------------------------------------------------------------------------------------------ real rustup


def installed_version(client: RustupClient, toolchain: str) -> str:
    return client.rustup("run", toolchain, "rustc", "--version").stdout.strip()


@pytest.mark.e2e
def test_rustup_minimal_install(dist: FakeRustDist, old: PublishedRelease, client: RustupClient) -> None:
    client.install("stable")
    date = "2026-04-14"
    # The manifest names https://static.rust-lang.org; rustup rewrote it to RUSTUP_DIST_SERVER.
    assert sorted(dist.counts()) == sorted(
        [
            f"{STABLE}.sha256",
            STABLE,
            f"/dist/{date}/cargo-9.98.0-{HOST_TRIPLE}.tar.xz",
            f"/dist/{date}/rust-std-9.98.0-{HOST_TRIPLE}.tar.xz",
            f"/dist/{date}/rustc-9.98.0-{HOST_TRIPLE}.tar.xz",
        ]
    )
    assert [r.path for r in dist.requests()][:2] == [f"{STABLE}.sha256", STABLE]
    assert {r.status for r in dist.requests()} == {200}
    assert installed_version(client, "stable") == f"rustc {old.release.full_version}"
    assert client.run("cargo", "--version").stdout == f"cargo {old.release.full_version}\n"
    assert client.toolchains() == [f"stable-{HOST_TRIPLE}"]


@pytest.mark.e2e
def test_rustup_default_profile_install(dist: FakeRustDist, old: PublishedRelease, client: RustupClient) -> None:
    client.install("stable", profile="default")
    downloaded = {r.path.rsplit("/", 1)[-1].split("-9.98.0")[0] for r in dist.requests("/dist/2026-04-14/")}
    assert downloaded == {"rustc", "cargo", "rust-std", "rust-docs", "rustfmt", "clippy"}
    installed = client.rustup("component", "list", "--installed").stdout.split()
    assert {f"rustfmt-{HOST_TRIPLE}", f"clippy-{HOST_TRIPLE}", f"rust-docs-{HOST_TRIPLE}"} <= set(installed)
    assert client.run("rustfmt", "--version").stdout.startswith("rustfmt 9.98.0")
    assert (client.toolchain_dir("stable") / "share/doc/rust/html/std/index.html").is_file()


@pytest.mark.e2e
def test_rustup_update_finds_newer_stable_and_old_version_stays_installable(
    dist: FakeRustDist, old: PublishedRelease, client: RustupClient
) -> None:
    client.install("stable")
    dist.reset_counts()
    client.rustup("update", "stable", "--no-self-update")
    assert dist.counts() == {f"{STABLE}.sha256": 1}  # unchanged: only the hash is fetched

    new = dist.publish("9.99.0", "2026-05-28")
    dist.reset_counts()
    client.rustup("update", "stable", "--no-self-update")
    assert installed_version(client, "stable") == f"rustc {new.release.full_version}"
    assert dist.count(new.archive_path("rustc")) == 1 and dist.count(old.archive_path("rustc")) == 0

    dist.reset_counts()
    client.install("9.98.0")
    assert dist.count("/dist/channel-rust-9.98.0.toml.sha256") == 1
    assert dist.count("/dist/channel-rust-9.98.0.toml") == 1
    assert dist.count(old.archive_path("rustc")) == 1
    assert installed_version(client, "9.98.0") == f"rustc {old.release.full_version}"


@pytest.mark.e2e
def test_rust_toolchain_file_pin_auto_installs(dist: FakeRustDist, old: PublishedRelease, client: RustupClient) -> None:
    dist.publish("9.99.0", "2026-05-28")
    project = client.home / "project"
    client.write_toolchain_file(project, "9.98", profile="minimal")
    out = client.run("rustc", "--version", cwd=project, env={"RUSTUP_AUTO_INSTALL": "1"})
    assert out.stdout == f"rustc {old.release.full_version}\n"
    assert dist.count("/dist/channel-rust-9.98.toml") == 1
    assert dist.count(STABLE) == 0


@pytest.mark.e2e
def test_dated_nightly_install(dist: FakeRustDist, old: PublishedRelease, client: RustupClient) -> None:
    nightly = dist.publish("9.100.0", "2026-05-01", "nightly")
    dist.publish("9.100.0", "2026-05-02", "nightly")  # the pointer moves on; the dated one stays
    dist.reset_counts()
    client.install(nightly.toolchain)
    assert dist.count("/dist/2026-05-01/channel-rust-nightly.toml.sha256") == 1
    assert dist.count("/dist/2026-05-01/channel-rust-nightly.toml") == 1
    assert dist.count(f"/dist/2026-05-01/rustc-nightly-{HOST_TRIPLE}.tar.xz") == 1
    assert installed_version(client, "nightly-2026-05-01") == f"rustc {nightly.release.full_version}"
    assert "9.100.0-nightly" in nightly.release.full_version


@pytest.mark.e2e
def test_corrupted_archive_fails_the_install(dist: FakeRustDist, old: PublishedRelease, client: RustupClient) -> None:
    dist.corrupt(old.archive_path("rustc"))
    result = client.rustup("toolchain", "install", "stable", "--profile", "minimal", "--no-self-update", check=False)
    assert result.returncode != 0
    assert "checksum failed" in result.stderr
    assert not client.toolchain_dir("stable").joinpath("bin/rustc").exists()
    dist.restore()
    client.install("stable")
    assert installed_version(client, "stable") == f"rustc {old.release.full_version}"


@pytest.mark.e2e
def test_rustup_resumes_a_killed_download_with_range(dist: FakeRustDist, client: RustupClient) -> None:
    release = dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": 4_000_000})
    path = release.archive_path("rust-std")
    dist.set_fault(path, "trickle", chunk=256 * 1024, delay=0.2, times=1)
    command = [str(client.bin_dir / "rustup"), "toolchain", "install", "stable", "--profile", "minimal"]
    process = subprocess.Popen(
        [*command, "--no-self-update"], env=client.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # rustup names a download by its hash; other, smaller archives finish (and their .partial goes) meanwhile
    partial = client.rustup_home / "downloads" / f"{release.archives['rust-std', HOST_TRIPLE].sha256['xz']}.partial"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _size(partial) == 0:
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert _size(partial) > 0, "rustup never began the trickled download"
    dist.reset_counts()
    client.install("stable")
    (resumed,) = dist.requests(path)
    assert resumed.range is not None and resumed.range.startswith("bytes=") and resumed.status == 206
    assert installed_version(client, "stable") == f"rustc {release.release.full_version}"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@pytest.mark.e2e
def test_rustup_self_update_check_reads_release_stable(dist: FakeRustDist, client: RustupClient) -> None:
    version = client.rustup("--version").stdout.split()[1]
    dist.publish_rustup(version)  # the same version: rustup reports "unchanged" and never replaces itself
    result = client.rustup("self", "update")
    assert f"rustup unchanged - {version}" in result.stdout
    assert dist.counts() == {"/rustup/release-stable.toml": 1}
