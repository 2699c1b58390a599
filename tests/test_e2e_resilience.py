"""Slow, failing and dead upstreams with the real cargo and rustup (issue 4).

Warm: a cache filled earlier is copied for each test; with upstream faulty in every way the test origins
can be, cargo and rustup in fresh homes still succeed, and what had to be revalidated is served STALE
(the outcome is asserted, never a time). Cold: the client fails with the proxy's message, nothing is
stored, and once the fault is lifted the next run succeeds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ruststash.response_times import FLOOR
from ruststash.slow_hosts import PROBES
from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess
from tests.origins.clients import CargoSandbox, write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.faults import FAULT_MODES
from tests.origins.registry import Registry
from tests.origins.rustlang import FakeRustDist, PublishedRelease
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args
from tests.test_e2e_rustup import MANIFEST, client, proxied_get

pytestmark = pytest.mark.e2e

# Every fault the origins can play, and a stopped origin (throttle is the benchmarks': it fails nothing).
MODES = ["stopped", *(mode for mode in FAULT_MODES if mode != "throttle")]
# Short deadlines keep the suite quick; a breaker that never opens lets every fault reach upstream.
FAST = ["--stale-after", "1", "--miss-timeout", "3", "--read-timeout", "3", "--breaker-threshold", "1000"]


def apply_fault(origin: FakeCratesIo | FakeRustDist, mode: str) -> None:
    if mode == "stopped":
        origin.stop()
    else:
        origin.set_fault("/", mode, delay=5.0, chunk=64)  # type: ignore[arg-type]


def lift_fault(origin: FakeCratesIo | FakeRustDist) -> None:
    origin.start()
    origin.restore()


def stored_blobs(proxy: ProxyProcess) -> list[Path]:
    return [p for p in (proxy.cache_dir / "blobs").rglob("*") if p.is_file()]


def no_partial_files(proxy: ProxyProcess) -> bool:
    return not list((proxy.cache_dir / "tmp").iterdir())


# ---------------------------------------------------------------------------------------------- cargo


@pytest.fixture(scope="module")
def crates(edge_registry: Registry, origin_tls: OriginTLS) -> Iterator[FakeCratesIo]:
    """An origin that lets nothing stay fresh and ignores validators: every revalidation meets the fault."""
    origin = FakeCratesIo(edge_registry, origin_tls, index_cache_control="public,max-age=0", conditional=False)
    yield origin
    origin.close()


@pytest.fixture
def faulty_crates(crates: FakeCratesIo) -> Iterator[FakeCratesIo]:
    crates.reset_counts()
    yield crates
    lift_fault(crates)


@pytest.fixture(scope="module")
def warm_crates_cache(tmp_path_factory: pytest.TempPathFactory, crates: FakeCratesIo, origin_tls: OriginTLS) -> Path:
    root = tmp_path_factory.mktemp("warm-crates")
    proxy = ProxyProcess(root / "proxy", upstream_args(crates, origin_tls)).start()
    try:
        project = write_consumer(root / "project", crates.registry.consumer_deps())
        box = sandbox(root / "client", proxy)
        box.run(["generate-lockfile"], project)
        box.run(["fetch"], project)
    finally:
        assert proxy.stop() == 0
    return proxy.cache_dir


def copy_cache(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(template, target)
    return target


def cargo_user(tmp_path: Path, proxy: ProxyProcess, registry: Registry) -> tuple[CargoSandbox, Path]:
    return sandbox(tmp_path / "client", proxy), write_consumer(tmp_path / "project", registry.consumer_deps())


def warm_cargo_user(
    tmp_path: Path, start_proxy: ProxyFactory, crates: FakeCratesIo, template: Path, args: list[str]
) -> tuple[ProxyProcess, CargoSandbox, Path]:
    """A proxy started with `args` on a copy of the warm cache, and a cargo user of it."""
    proxy = start_proxy(args, cache_dir=copy_cache(template, tmp_path))
    return (proxy, *cargo_user(tmp_path, proxy, crates.registry))


@pytest.mark.parametrize("mode", MODES)
def test_warm_cargo_succeeds_from_cache_whatever_upstream_does(
    mode: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    faulty_crates: FakeCratesIo,
    warm_crates_cache: Path,
    origin_tls: OriginTLS,
) -> None:
    args = [*upstream_args(faulty_crates, origin_tls), *FAST]
    proxy, box, project = warm_cargo_user(tmp_path, start_proxy, faulty_crates, warm_crates_cache, args)
    apply_fault(faulty_crates, mode)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)
    records = proxy.access()
    revalidated = [r for r in records if not r["path"].startswith("/crates/")]
    downloads = [r for r in records if r["path"].startswith("/crates/")]
    assert revalidated and {r["outcome"] for r in revalidated} == {"STALE"}, revalidated
    assert downloads and {r["outcome"] for r in downloads} == {"HIT"}


def assert_revalidation_resumes(proxy: ProxyProcess, box: CargoSandbox, project: Path) -> None:
    """With the fault lifted: a run is served at once again while its first requests probe the host, which
    then counts as answering; the run after that revalidates (the test origin ignores validators: MISS)."""
    (project / "Cargo.lock").unlink()
    box.run(["generate-lockfile"], project)
    wait_until_not_slow(proxy)
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    box.run(["generate-lockfile"], project)
    outcomes = {r["outcome"] for r in proxy.access()[seen:]}
    assert "STALE" not in outcomes and "MISS" in outcomes, outcomes


def test_a_hung_upstream_is_waited_for_once_then_the_cache_answers_at_once(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    faulty_crates: FakeCratesIo,
    warm_crates_cache: Path,
    origin_tls: OriginTLS,
) -> None:
    """Once a revalidation has run past --stale-after, its host is known slow: the rest of cargo's index
    walk is served from the cache without waiting, and only a few refreshes at a time go to the hung host
    (hung refreshes would otherwise take every pooled connection). Once the host answers in time again,
    revalidation resumes."""
    args = [*upstream_args(faulty_crates, origin_tls), "--stale-after", "1", "--breaker-threshold", "1000"]
    proxy, box, project = warm_cargo_user(tmp_path, start_proxy, faulty_crates, warm_crates_cache, args)
    faulty_crates.set_fault("/", "hang")
    box.run(["generate-lockfile"], project)
    revalidated = [r for r in proxy.access() if not r["path"].startswith("/crates/")]
    assert revalidated and {r["outcome"] for r in revalidated} == {"STALE"}, revalidated
    waited = [r for r in revalidated if "no answer from upstream within" in r["note"]]
    at_once = [r for r in revalidated if "upstream is slow" in r["note"]]
    assert waited and at_once and len(waited) + len(at_once) == len(revalidated), revalidated
    assert len(waited) < len(revalidated) / 2, f"most requests waited for the hung host: {revalidated}"
    assert stats(proxy)["slow_hosts"] == ["index.crates.io"]

    lift_fault(faulty_crates)  # the hung requests end (unanswered), and are recorded as they end
    deadline = time.monotonic() + 10
    while len(hung := [r for r in faulty_crates.records() if r.fault == "hang"]) < len(waited):
        assert time.monotonic() < deadline, f"the origin never saw the requests that waited: {hung}"
        time.sleep(0.1)
    time.sleep(0.5)  # any other request that reached the hung origin ends by now too
    hung = [r for r in faulty_crates.records() if r.fault == "hang"]
    assert len(hung) <= max(len(waited), PROBES), f"more refreshes went to the hung origin than allowed: {hung}"
    assert_revalidation_resumes(proxy, box, project)


def test_after_a_refused_connection_the_cache_answers_at_once_until_upstream_is_back(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    faulty_crates: FakeCratesIo,
    warm_crates_cache: Path,
    origin_tls: OriginTLS,
) -> None:
    """A revalidation that gets no answer at all (the origin is stopped: connections are refused) marks its
    host as not answering, as a hung one is marked slow: the rest of cargo's index walk is served from the
    cache at once, each request not trying a connection of its own (the breaker, which would do that after
    repeated failures, is kept closed here). Once the origin answers again, revalidation resumes."""
    args = [*upstream_args(faulty_crates, origin_tls), "--stale-after", "1", "--breaker-threshold", "1000"]
    proxy, box, project = warm_cargo_user(tmp_path, start_proxy, faulty_crates, warm_crates_cache, args)
    faulty_crates.stop()
    box.run(["generate-lockfile"], project)
    revalidated = [r for r in proxy.access() if not r["path"].startswith("/crates/")]
    assert revalidated and {r["outcome"] for r in revalidated} == {"STALE"}, revalidated
    tried = [r for r in revalidated if "cannot connect" in r["note"] and "not answering" not in r["note"]]
    at_once = [r for r in revalidated if "upstream is not answering (" in r["note"]]
    assert tried and at_once and len(tried) + len(at_once) == len(revalidated), revalidated
    assert len(tried) < len(revalidated) / 2, f"most requests tried a connection of their own: {revalidated}"
    assert stats(proxy)["slow_hosts"] == ["index.crates.io"]

    lift_fault(faulty_crates)
    assert_revalidation_resumes(proxy, box, project)


def test_the_wait_for_a_hung_upstream_is_learned_and_kept_across_a_restart(
    tmp_path: Path, start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    """With a copy in hand, the wait for an origin that answers in milliseconds is FLOOR seconds, not the
    whole --stale-after (here 30 s, which cargo would sit through); a restarted proxy still knows it."""
    args = [*upstream_args(faulty_crates, origin_tls), "--stale-after", "30", "--breaker-threshold", "1000"]
    proxy = start_proxy(args)
    box, project = cargo_user(tmp_path, proxy, faulty_crates.registry)
    box.run(["generate-lockfile"], project)  # cold: the origin's answer times are learned
    assert proxy.stop() == 0
    faulty_crates.set_fault("/", "hang")
    proxy.start()
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    box.run(["generate-lockfile"], project, timeout=120)
    revalidated = [r for r in proxy.access()[seen:] if not r["path"].startswith("/crates/")]
    assert revalidated and {r["outcome"] for r in revalidated} == {"STALE"}, revalidated
    waited = [r["note"] for r in revalidated if "no answer from upstream within" in r["note"]]
    assert waited and all(f"within {FLOOR:g}s;" in note for note in waited), waited


@pytest.mark.parametrize("mode", MODES)
def test_cold_cargo_fails_clearly_stores_nothing_and_recovers(
    mode: str, tmp_path: Path, start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(faulty_crates, origin_tls), *FAST])
    box, project = cargo_user(tmp_path, proxy, faulty_crates.registry)
    apply_fault(faulty_crates, mode)
    result = box.run(["generate-lockfile"], project, check=False, extra_env={"CARGO_NET_RETRY": "0"})
    assert result.returncode != 0
    assert "ruststash: " in result.stderr, result.stderr  # cargo prints the proxy's one-line reason
    assert stored_blobs(proxy) == [] and no_partial_files(proxy)
    lift_fault(faulty_crates)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)


def test_corrupt_crate_cold_is_refused_and_not_stored(
    tmp_path: Path, start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(faulty_crates, origin_tls), *FAST])
    box, project = cargo_user(tmp_path, proxy, faulty_crates.registry)
    box.run(["generate-lockfile"], project)
    faulty_crates.set_fault("/crates/", "corrupt", site="static")
    result = box.run(["fetch"], project, check=False, extra_env={"CARGO_NET_RETRY": "0"})
    assert result.returncode != 0 and "is not the registry's cksum" in result.stderr
    assert len(stored_blobs(proxy)) == len({r["path"] for r in proxy.access() if r["outcome"] == "MISS"})
    lift_fault(faulty_crates)
    box.run(["fetch"], project)


def test_fifty_concurrent_requests_for_one_missing_crate_cause_one_fetch(
    start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(faulty_crates, origin_tls), *FAST])
    crate = faulty_crates.registry.crates[0]
    path = crate.download_path
    faulty_crates.set_fault(path, "slow_headers", delay=1.0, site="static")  # all 50 arrive while it is fetched
    with ThreadPoolExecutor(50) as pool:
        bodies = list(pool.map(lambda _: proxied_get_host(proxy, "static.crates.io", path)[2], range(50)))
    assert all(hashlib.sha256(b).hexdigest() == crate.cksum for b in bodies)
    assert faulty_crates.count(path, site="static") == 1
    assert stats(proxy)["metrics"]["ruststash_coalesced_requests_total"]["crate"] >= 1


def test_breaker_stops_asking_a_dead_upstream_until_the_backoff_ends(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    faulty_crates: FakeCratesIo,
    warm_crates_cache: Path,
    origin_tls: OriginTLS,
) -> None:
    args = [*upstream_args(faulty_crates, origin_tls), "--stale-after", "1", "--breaker-threshold", "2"]
    # Failed probes double the backoff; capping it keeps the wait for recovery short however many probes
    # a slow (loaded) machine lets through while the fault is on.
    backoff = ["--breaker-backoff", "3", "--breaker-max-backoff", "4"]
    proxy = start_proxy([*args, *backoff], cache_dir=copy_cache(warm_crates_cache, tmp_path))
    box, project = cargo_user(tmp_path, proxy, faulty_crates.registry)
    faulty_crates.set_fault("/", "status_503")
    box.run(["generate-lockfile"], project)
    reached = len(faulty_crates.records())
    assert reached >= 2
    assert set(breaker_states(proxy, faulty_crates).values()) == {"open"}
    (project / "Cargo.lock").unlink()
    box.run(["generate-lockfile"], project)  # within the backoff: straight to cache
    assert len(faulty_crates.records()) == reached, "a request reached upstream while it was marked down"
    assert {r["outcome"] for r in proxy.access()} == {"STALE"}

    lift_fault(faulty_crates)
    wait_until_half_open(proxy, faulty_crates)
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    box.run(["generate-lockfile"], project)
    outcomes = {r["outcome"] for r in proxy.access()[seen:]}
    assert "MISS" in outcomes, f"fresh content did not flow after recovery: {outcomes}"
    assert set(breaker_states(proxy, faulty_crates).values()) == {"closed"}


def test_mirror_failover_skips_a_dead_mirror_and_a_corrupt_one(
    tmp_path: Path, start_proxy: ProxyFactory, edge_registry: Registry, origin_tls: OriginTLS
) -> None:
    first, second = FakeCratesIo(edge_registry, origin_tls), FakeCratesIo(edge_registry, origin_tls)
    try:
        args = [
            "--upstream", f"index.crates.io={first.index_url},{second.index_url}",
            "--upstream", f"static.crates.io={first.static_url},{second.static_url}",
            "--upstream-ca", str(origin_tls.ca_pem),
        ]  # fmt: skip
        first.stop()
        dead_first = start_proxy(args, name="dead-first")
        box, project = cargo_user(tmp_path / "a", dead_first, edge_registry)
        box.run(["generate-lockfile"], project)
        box.run(["fetch"], project)
        assert second.records("static")

        first.start()
        victim = edge_registry.crates[0]
        first.corrupt_crate(victim.name, victim.vers)
        second.reset_counts()
        corrupt_first = start_proxy(args, name="corrupt-first")
        status, _, body = proxied_get_host(corrupt_first, "static.crates.io", victim.download_path)
        assert (status, hashlib.sha256(body).hexdigest()) == (200, victim.cksum)
        assert first.count(victim.download_path, site="static") == 1
        assert second.count(victim.download_path, site="static") == 1
        assert "trying the next origin" in corrupt_first.log()
    finally:
        first.close()
        second.close()


def test_missing_index_files_are_remembered_briefly(
    start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(faulty_crates, origin_tls), "--negative-ttl", "600"])
    for _ in range(3):
        with pytest.raises(urllib.error.HTTPError) as raised:
            proxied_get_host(proxy, "index.crates.io", "/no/ne/nonexistent-crate")
        assert raised.value.code == 404
        raised.value.close()
    assert faulty_crates.count("/no/ne/nonexistent-crate", site="index") == 1
    assert [r["outcome"] for r in proxy.access()] == ["MISS", "HIT", "HIT"]


# ---------------------------------------------------------------------------------------------- rustup


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory, origin_tls: OriginTLS) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path_factory.mktemp("dist"))
    yield origin
    origin.close()


@pytest.fixture(scope="module")
def release(dist: FakeRustDist) -> PublishedRelease:
    return dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": 9 * 1024 * 1024})


@pytest.fixture
def faulty_dist(dist: FakeRustDist, release: PublishedRelease) -> Iterator[FakeRustDist]:
    dist.reset_counts()
    yield dist
    lift_fault(dist)


def dist_args(dist: FakeRustDist, tls: OriginTLS) -> list[str]:
    return ["--upstream", f"static.rust-lang.org={dist.url}", "--upstream-ca", str(tls.ca_pem)]


@pytest.fixture(scope="module")
def warm_dist_cache(
    tmp_path_factory: pytest.TempPathFactory, dist: FakeRustDist, release: PublishedRelease, origin_tls: OriginTLS
) -> Path:
    root = tmp_path_factory.mktemp("warm-dist")
    proxy = ProxyProcess(root / "proxy", dist_args(dist, origin_tls)).start()
    try:
        client(root / "client", proxy).install("stable")
    finally:
        assert proxy.stop() == 0
    return proxy.cache_dir


@pytest.mark.parametrize("mode", MODES)
def test_warm_rustup_succeeds_from_cache_whatever_upstream_does(
    mode: str,
    tmp_path: Path,
    start_proxy: ProxyFactory,
    faulty_dist: FakeRustDist,
    warm_dist_cache: Path,
    origin_tls: OriginTLS,
) -> None:
    proxy = start_proxy([*dist_args(faulty_dist, origin_tls), *FAST], cache_dir=copy_cache(warm_dist_cache, tmp_path))
    apply_fault(faulty_dist, mode)
    client(tmp_path / "user", proxy).install("stable")
    records = proxy.access()
    checksums = [r for r in records if r["path"] == MANIFEST + ".sha256"]
    manifests = [r for r in records if r["path"] == MANIFEST]
    archives = [r for r in records if r["path"].endswith(".tar.xz")]
    # The .sha256 is always asked of upstream; the .toml right after comes from the pair just checked.
    assert checksums and {r["outcome"] for r in checksums} == {"STALE"}, checksums
    assert manifests and {r["outcome"] for r in manifests} <= {"HIT", "STALE"}, manifests
    assert archives and {r["outcome"] for r in archives} == {"HIT"}


@pytest.mark.parametrize("mode", MODES)
def test_cold_rustup_fails_clearly_stores_nothing_and_recovers(
    mode: str, tmp_path: Path, start_proxy: ProxyFactory, faulty_dist: FakeRustDist, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*dist_args(faulty_dist, origin_tls), *FAST])
    user = client(tmp_path / "user", proxy)
    apply_fault(faulty_dist, mode)
    result = user.rustup(
        "toolchain", "install", "stable", "--profile", "minimal", "--no-self-update",
        check=False, env={"RUSTUP_MAX_RETRIES": "0"},
    )  # fmt: skip
    assert result.returncode != 0
    errors = [r for r in proxy.access() if r["outcome"] == "ERROR"]
    assert errors and all(r.get("note") for r in errors), "the proxy's answer did not say what happened"
    assert stored_blobs(proxy) == [] and no_partial_files(proxy)
    lift_fault(faulty_dist)
    user.install("stable")


def test_fifty_concurrent_requests_for_one_large_archive_cause_one_fetch(
    start_proxy: ProxyFactory, faulty_dist: FakeRustDist, release: PublishedRelease, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*dist_args(faulty_dist, origin_tls), *FAST])
    proxied_get(proxy, MANIFEST + ".sha256")
    path = release.archive_path("rust-std")
    digest = hashlib.sha256(faulty_dist.file(path).read_bytes()).hexdigest()
    faulty_dist.set_fault(path, "slow_headers", delay=1.0)
    with ThreadPoolExecutor(50) as pool:
        digests = list(pool.map(lambda _: sha256_through(proxy, path), range(50)))
    assert digests == [digest] * 50
    assert faulty_dist.count(path) == 1


# ---------------------------------------------------------------------------------------------- helpers


def proxied_get_host(proxy: ProxyProcess, host: str, path: str) -> tuple[int, dict[str, str], bytes]:
    import ssl

    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(f"https://{host}{path}", timeout=60) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def sha256_through(proxy: ProxyProcess, path: str) -> str:
    """Stream a body through the proxy into a hash (50 clients of a large body must not hold it whole)."""
    import ssl

    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=context)
    )
    digest = hashlib.sha256()
    with opener.open(f"https://static.rust-lang.org{path}", timeout=120) as response:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stats(proxy: ProxyProcess) -> dict[str, dict[str, object]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/api/stats", timeout=10) as response:
        result: dict[str, dict[str, object]] = json.loads(response.read())
        return result


def breaker_states(proxy: ProxyProcess, origin: FakeCratesIo) -> dict[str, object]:
    """The breaker state of `origin`'s index listener (the one a warm cargo run talks to), as the proxy
    reports it."""
    states = stats(proxy)["upstreams"]
    return {url: state for url, state in states.items() if url == origin.index_url}


def wait_until_half_open(proxy: ProxyProcess, origin: FakeCratesIo, limit: float = 30.0) -> None:
    """Poll /api/stats (bounded) until every origin's backoff has run out."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if set(breaker_states(proxy, origin).values()) <= {"half_open", "closed"}:
            return
        time.sleep(0.2)
    raise AssertionError("the breaker never reached half-open")


def wait_until_not_slow(proxy: ProxyProcess, limit: float = 30.0) -> None:
    """Poll /api/stats (bounded) until no host is marked slow."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not stats(proxy)["slow_hosts"]:
            return
        time.sleep(0.2)
    raise AssertionError("a host stayed marked slow after its upstream answered again")


def test_a_slow_but_flowing_body_is_not_cut_off_by_the_miss_timeout(
    start_proxy: ProxyFactory, faulty_crates: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(faulty_crates, origin_tls), "--miss-timeout", "1", "--read-timeout", "5"])
    crate = max(faulty_crates.registry.crates, key=lambda c: c.size)
    # Headers at once, then the body in 8 pieces half a second apart: about 4 s, well past --miss-timeout.
    faulty_crates.set_fault(crate.download_path, "trickle", delay=0.5, chunk=crate.size // 8 + 1, site="static")
    status, headers, body = proxied_get_host(proxy, "static.crates.io", crate.download_path)
    assert (status, headers["x-cache"], hashlib.sha256(body).hexdigest()) == (200, "MISS", crate.cksum)
