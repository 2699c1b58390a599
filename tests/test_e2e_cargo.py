"""The real cargo through a running ruststash against a local fake crates.io: cold, warm, offline, corrupt.

Each cargo run has a fresh HOME and CARGO_HOME and an environment built from scratch; cargo reaches the
origin only through the proxy (HTTPS_PROXY), with no registry configuration at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from ruststash.hot_bodies import MAX_BODY
from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess, proxy_client_env, proxy_process_env, ruststash_command
from tests.origins.clients import CargoSandbox, clean_env, locked_versions, write_consumer
from tests.origins.crates_io import FakeCratesIo, corrupted
from tests.origins.crates_io import proxy_upstream_args as upstream_args
from tests.origins.registry import PublishedCrate, Registry
from tests.origins.server import BackgroundServer
from tests.origins.tls import OriginTLS

pytestmark = pytest.mark.e2e


def sandbox(root: Path, proxy: ProxyProcess) -> CargoSandbox:
    return CargoSandbox(root, env_extra=proxy_client_env(proxy))


def consumer(root: Path, registry: Registry) -> Path:
    return write_consumer(root / "project", registry.consumer_deps())


def generate_fetch_build(box: CargoSandbox, project: Path) -> None:
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)
    box.run(["build", "--offline"], project)


def crate_downloads(origin: FakeCratesIo) -> list[str]:
    return [r.path for r in origin.records("static") if r.status == 200]


def fetched_cold(tmp_path: Path, proxy: ProxyProcess, origin: FakeCratesIo) -> tuple[Path, list[str]]:
    """A consumer project fetched once through `proxy` with a cold cache: (the project, the crates downloaded
    from `origin`, none missing); the origin's counts are reset after."""
    project = consumer(tmp_path, origin.registry)
    sandbox(tmp_path / "cold", proxy).run(["fetch"], project)
    fetched = crate_downloads(origin)
    assert fetched
    origin.reset_counts()
    return project, fetched


def index_bodies_sent(origin: FakeCratesIo) -> list[str]:
    return [r.path for r in origin.records("index") if r.status == 200]


def outcomes(proxy: ProxyProcess, since: int = 0) -> dict[str, set[str]]:
    """outcome -> paths, from the proxy's per-request log lines after the first `since` lines."""
    result: dict[str, set[str]] = {}
    for record in proxy.access()[since:]:
        result.setdefault(record["outcome"], set()).add(record["path"])
    return result


def test_cold_warm_and_offline(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    registry = crates_origin.registry
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = consumer(tmp_path, registry)

    # Cold: everything comes from upstream, each body exactly once.
    generate_fetch_build(sandbox(tmp_path / "cold", proxy), project)
    lock = locked_versions(project / "Cargo.lock")
    assert "1.12.0" not in lock["regex"], "the yanked regex 1.12.0 must not be picked"
    downloads = crate_downloads(crates_origin)
    assert downloads, "cold run fetched no crate from upstream"
    assert len(downloads) == len(set(downloads)), f"a crate was downloaded twice: {sorted(downloads)}"
    bodies = index_bodies_sent(crates_origin)
    assert len(bodies) == len(set(bodies)), f"an index file was sent twice: {sorted(bodies)}"
    fetched_crates = {(name, vers) for name, versions in lock.items() for vers in versions}
    assert len(downloads) == len(fetched_crates)
    cold = outcomes(proxy)
    assert "/config.json" in cold["MISS"]
    assert not cold.get("ERROR"), cold.get("ERROR")

    # Warm, new CARGO_HOME: no crate downloaded again, no index body sent again (only HIT or revalidation).
    crates_origin.reset_counts()
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    generate_fetch_build(sandbox(tmp_path / "warm", proxy), project)
    assert crate_downloads(crates_origin) == []
    assert index_bodies_sent(crates_origin) == []
    warm = outcomes(proxy, seen)
    assert set(warm) <= {"HIT", "REVALIDATED"}, warm
    assert len(warm["HIT"]) >= len(fetched_crates)
    assert locked_versions(project / "Cargo.lock") == lock

    # Upstream gone: the same from cache alone, in another new CARGO_HOME.
    crates_origin.stop()
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    generate_fetch_build(sandbox(tmp_path / "offline", proxy), project)
    offline = outcomes(proxy, seen)
    assert set(offline) <= {"HIT", "STALE"}, offline
    assert crates_origin.records() == [], "the stopped origin was reached"
    assert locked_versions(project / "Cargo.lock") == lock


def resolve_twice[T](
    tmp_path: Path, proxy: ProxyProcess, origin: FakeCratesIo, registry: Registry, after_first: Callable[[], T]
) -> tuple[Path, T, list[dict[str, str]]]:
    """`cargo generate-lockfile` twice in one CARGO_HOME (the second time cargo sends its own validators): the
    project, what `after_first` returned after the first run, and the proxy's access records of the second."""
    project = consumer(tmp_path, registry)
    box = sandbox(tmp_path / "a", proxy)
    box.run(["generate-lockfile"], project)
    noted = after_first()
    origin.reset_counts()
    seen = len(proxy.access())
    box.run(["generate-lockfile"], project)
    return project, noted, proxy.access()[seen:]


def test_fresh_index_files_held_in_memory_answer_cargos_own_validators_with_304(
    tmp_path: Path, start_proxy: ProxyFactory, edge_registry: Registry, origin_tls: OriginTLS
) -> None:
    """Index files as crates.io serves them (`max-age=600`): a second resolve in the same CARGO_HOME sends
    cargo's If-None-Match, and the proxy answers each from memory, as soon as the request's head is in, with a
    304 and without asking upstream."""
    origin = FakeCratesIo(edge_registry, origin_tls)
    try:
        proxy = start_proxy(upstream_args(origin, origin_tls))
        _, before, answered = resolve_twice(tmp_path, proxy, origin, edge_registry, lambda: memory_hits(proxy))
        again = [r for r in answered if r["path"] != "/config.json"]
        assert again and all((r["outcome"], r["status"]) == ("HIT", "304") for r in again), again
        assert origin.records("index") == []
        assert memory_hits(proxy) - before == len(answered)  # config.json too, through `request`
    finally:
        origin.close()


def test_stale_index_files_are_revalidated_and_client_validators_get_304(
    tmp_path: Path, start_proxy: ProxyFactory, edge_registry: Registry, origin_tls: OriginTLS
) -> None:
    # An origin that lets nothing stay fresh, so every index request is revalidated upstream.
    origin = FakeCratesIo(edge_registry, origin_tls, index_cache_control="public,max-age=0")
    try:
        proxy = start_proxy(upstream_args(origin, origin_tls))
        project, first_bodies, again = resolve_twice(
            tmp_path, proxy, origin, edge_registry, lambda: index_bodies_sent(origin)
        )
        index_records = [r for r in again if r["path"] != "/config.json"]
        assert index_records and all(r["outcome"] == "REVALIDATED" for r in index_records), index_records
        assert all(r["status"] == "304" for r in index_records), "cargo's own copy is current: 304"
        assert index_bodies_sent(origin) == []
        assert {r.status for r in origin.records("index")} == {304}
        assert first_bodies

        # Upstream gone while every copy is stale: served from cache, marked STALE, in a new CARGO_HOME.
        origin.stop()
        seen = len(proxy.access())
        (project / "Cargo.lock").unlink()
        sandbox(tmp_path / "b", proxy).run(["generate-lockfile"], project)
        assert {r["outcome"] for r in proxy.access()[seen:]} == {"STALE"}
    finally:
        origin.close()


def test_corrupted_crate_is_refused_and_not_stored(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    registry = crates_origin.registry
    victim = registry.get("memchr", max(c.vers for c in registry.versions("memchr")))
    crates_origin.corrupt_crate(victim.name, victim.vers)
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = consumer(tmp_path, registry)
    box = sandbox(tmp_path / "a", proxy)
    box.run(["generate-lockfile"], project)
    assert victim.vers in locked_versions(project / "Cargo.lock")["memchr"]

    result = box.run(["fetch"], project, check=False, extra_env={"CARGO_NET_RETRY": "0"})
    assert result.returncode != 0
    assert "got 502" in result.stderr
    assert f"memchr {victim.vers}: the download's sha256" in result.stderr
    assert "is not the registry's cksum" in result.stderr
    bad_digest = hashlib.sha256(corrupted(victim.data)).hexdigest()
    assert not list(proxy.cache_dir.rglob(bad_digest)), "the corrupt body was stored"

    # Upstream fixed: the next run fetches the crate again (nothing was stored) and succeeds.
    crates_origin.restore()
    box.run(["fetch"], project)
    box.run(["build", "--offline"], project)
    assert list(proxy.cache_dir.rglob(victim.cksum)), "the good body is stored under its sha256"
    assert crates_origin.count_status(victim.download_path, 200) >= 2


def test_ruststash_env_is_all_cargo_needs(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = consumer(tmp_path, crates_origin.registry)
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, tmp_path / "cargo-home")  # PATH, HOME, CARGO_HOME: nothing about TLS or proxies
    script = (
        f'eval "$({sys.executable} -m ruststash env --listen 127.0.0.1:{proxy.port} --data-dir {proxy.data_dir})" '
        "&& cargo generate-lockfile && cargo fetch && cargo build --offline"
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert crate_downloads(crates_origin), "cargo did not go through the proxy to the origin"


def test_crates_answered_from_memory_are_refetched_once_purged(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    """Hits on small bodies come from memory; `ruststash purge` in another process still takes effect
    at once: the next cargo downloads every purged crate again instead of getting the copy held in memory."""
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project, fetched = fetched_cold(tmp_path, proxy, crates_origin)
    seen = len(proxy.access())
    sandbox(tmp_path / "warm", proxy).run(["fetch"], project)
    assert crate_downloads(crates_origin) == []
    assert outcomes(proxy, seen).get("HIT", set()) >= set(fetched)
    assert memory_hits(proxy) >= len(fetched)

    purged = subprocess.run(
        ruststash_command("purge", "--cache-dir", str(proxy.cache_dir), "--kind", "crate", "--yes"),
        capture_output=True, text=True, timeout=120, check=False, env=proxy_process_env(),
    )  # fmt: skip
    assert purged.returncode == 0, purged.stderr
    assert f"removed {len(fetched)} entries" in purged.stdout

    crates_origin.reset_counts()
    seen = len(proxy.access())
    sandbox(tmp_path / "after-purge", proxy).run(["fetch"], project)
    assert sorted(crate_downloads(crates_origin)) == sorted(fetched)
    assert outcomes(proxy, seen).get("MISS", set()) >= set(fetched)


# Loaded by the proxy's Python at start (PYTHONPATH): writes a line to the proxy's log for each request that
# h2_answers answers on the client's HTTP/2 connection, without a flow: at once, or later (a miss).
IN_PLACE_PROBE = """
import sys
from ruststash import h2_answers
_answer = h2_answers.answer
def _probe(server, event, answerer):
    done = _answer(server, event, answerer)
    if isinstance(done, h2_answers.AnswerLater):
        print("probe: answered later", file=sys.stderr, flush=True)
    elif done:
        print("probe: answered in place", file=sys.stderr, flush=True)
    return done
h2_answers.answer = _probe
"""


def requests_counted(proxy: ProxyProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^ruststash_requests_total\{[^}]*\} (\S+)$", text, re.M))


def test_warm_hits_are_answered_on_cargos_http2_connection_and_counted_once(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    crates_origin: FakeCratesIo,
    origin_tls: OriginTLS,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cold cargo's misses are answered on its HTTP/2 connection when their fetches are done, and a warm
    cargo's crates come from memory straight on it (h2_answers), each logged and counted once, as a flow's
    answer is."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(IN_PLACE_PROBE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH")])))
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project, fetched = fetched_cold(tmp_path, proxy, crates_origin)
    cold = proxy.access()
    seen, counted = len(cold), requests_counted(proxy)
    in_place = proxy.log().count("probe: answered in place")
    # cold: every crate and index file was a miss, answered on cargo's connection when its fetch was done
    misses = [r for r in cold if r["outcome"] == "MISS" and r["path"] != "/config.json"]
    assert {r["path"] for r in misses} >= set(fetched)
    assert len(misses) <= proxy.log().count("probe: answered later") <= len(cold)
    assert counted == len(cold)
    generate_fetch_build(sandbox(tmp_path / "warm", proxy), project)

    assert crate_downloads(crates_origin) == []
    warm = proxy.access()[seen:]
    hits = {r["path"] for r in warm if r["outcome"] == "HIT"}
    assert hits >= set(fetched)
    answered_in_place = proxy.log().count("probe: answered in place") - in_place
    assert len(fetched) <= answered_in_place <= len(hits)
    assert requests_counted(proxy) - counted == len(warm)  # each request counted once, whichever path it took
    assert len({(r["method"], r["path"]) for r in warm}) == len(warm)  # and logged once


@pytest.fixture
def revalidating_origin(edge_registry: Registry, origin_tls: OriginTLS) -> Iterator[FakeCratesIo]:
    """A fake crates.io whose index files are never fresh (`max-age=0`, as crates.io's): every request for
    one is a revalidation."""
    origin = FakeCratesIo(edge_registry, origin_tls, index_cache_control="public,max-age=0")
    yield origin
    origin.close()


def test_a_restarted_proxy_answers_the_last_runs_crates_from_memory(
    tmp_path: Path, start_proxy: ProxyFactory, revalidating_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    """A proxy started on a filled cache reads the small bodies used last into memory: a CI runner's
    sidecar, started anew for each job on a kept cache, answers the crates from memory the first time."""
    crates_origin = revalidating_origin
    first = start_proxy(upstream_args(crates_origin, origin_tls), name="first")
    project = consumer(tmp_path, crates_origin.registry)
    sandbox(tmp_path / "cold", first).run(["fetch"], project)
    fetched = crate_downloads(crates_origin)
    assert fetched
    stopped = first.stop()
    assert stopped in (0, -15)

    again = start_proxy(upstream_args(crates_origin, origin_tls), name="again", cache_dir=first.cache_dir)
    deadline = time.monotonic() + 30
    while "memory cache:" not in again.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"memory cache: \d+ stored bodies", again.log()), again.log()[-2000:]
    if stopped == 0:  # stopped cleanly: it kept what it held, and the new one reads that
        assert "start-up fill: reading the" in again.log()
    crates_origin.reset_counts()
    sandbox(tmp_path / "warm", again).run(["fetch"], project)
    assert crate_downloads(crates_origin) == []
    assert outcomes(again, 0).get("HIT", set()) >= set(fetched)
    assert memory_hits(again) >= len(fetched)  # without the fill, each was read from disk first

    # Revalidated answers stay in memory, also those whose new metadata is written to the index (this
    # origin's config.json: its Last-Modified moves on with every answer), so the next runner is answered
    # from memory, all but what is too large to be held.
    seen, before = len(again.access()), memory_hits(again)
    sandbox(tmp_path / "next-job", again).run(["fetch"], project)
    answered = again.access()[seen:]
    assert {r["outcome"] for r in answered} == {"HIT", "REVALIDATED"}, answered
    small = [r for r in answered if int(r["bytes"]) <= MAX_BODY]  # the registry has one larger index file
    assert small and memory_hits(again) - before == len(small)


def memory_hits(proxy: ProxyProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/api/stats", timeout=10) as response:
        return int(json.loads(response.read())["store"]["memory_hits"])


def test_cargo_without_multiplexing_speaks_http1_to_the_proxy(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    """`http.multiplexing = false` (often set behind proxies): cargo speaks HTTP/1.1 over a few connections per
    host instead of HTTP/2. Cold, then warm in a new CARGO_HOME: each crate fetched from upstream once."""
    registry = crates_origin.registry
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = consumer(tmp_path, registry)
    http1 = {"CARGO_HTTP_MULTIPLEXING": "false", "CARGO_HTTP_DEBUG": "true", "CARGO_LOG": "network=debug"}

    def generate_and_fetch(name: str) -> str:
        box = CargoSandbox(tmp_path / name, env_extra={**proxy_client_env(proxy), **http1})
        return "".join(box.run([command], project).stderr for command in ("generate-lockfile", "fetch"))

    cold_debug = generate_and_fetch("cold")
    lock = locked_versions(project / "Cargo.lock")
    fetched_crates = {(name, vers) for name, versions in lock.items() for vers in versions}
    downloads = crate_downloads(crates_origin)
    assert len(downloads) == len(set(downloads)) == len(fetched_crates)

    crates_origin.reset_counts()
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink()
    warm_debug = generate_and_fetch("warm")
    assert crate_downloads(crates_origin) == []
    warm = outcomes(proxy, seen)
    assert set(warm) <= {"HIT", "REVALIDATED"}, warm
    assert len(warm["HIT"]) >= len(fetched_crates)
    assert locked_versions(project / "Cargo.lock") == lock
    for debug in (cold_debug, warm_debug):
        answers = re.findall(r"http-debug: < (HTTP/[\d.]+) \d+", debug)
        assert answers and set(answers) == {"HTTP/1.1"}, f"not all HTTP/1.1: {sorted(set(answers))}"


@dataclass
class FakeCratesApi:
    """crates.io's web API (what `cargo search`, `yank`, `owner`, `publish` call), recording each request."""

    server: BackgroundServer
    seen: list[tuple[str, str, str]]  # (method, path with query, authorization)


@pytest.fixture
def crates_api(tmp_path: Path, origin_tls: OriginTLS, crates_origin: FakeCratesIo) -> Iterator[FakeCratesApi]:
    """Search and yank answer canned JSON; a publish adds the uploaded `.crate` to `crates_origin`."""
    seen: list[tuple[str, str, str]] = []

    async def record(request: web.Request) -> None:
        seen.append((request.method, request.path_qs, request.headers.get("authorization", "")))

    async def search(request: web.Request) -> web.Response:
        await record(request)
        found = [{"name": "regex", "max_version": "1.11.1", "description": "Regular expressions"}]
        return web.json_response({"crates": found, "meta": {"total": 1}})

    async def yank(request: web.Request) -> web.Response:
        await record(request)
        if request.headers.get("authorization") != "the-token":
            return web.json_response({"errors": [{"detail": "must be logged in"}]}, status=403)
        return web.json_response({"ok": True})

    async def publish(request: web.Request) -> web.Response:
        await record(request)
        crate = published_crate(await request.read(), tmp_path / "published")
        crates_origin.publish(crate)
        return web.json_response({"warnings": {"invalid_categories": [], "invalid_badges": [], "other": []}})

    app = web.Application(client_max_size=16 << 20)
    app.router.add_get("/api/v1/crates", search)
    app.router.add_delete("/api/v1/crates/{name}/{version}/yank", yank)
    app.router.add_put("/api/v1/crates/new", publish)
    server = BackgroundServer(app, origin_tls.server_context())
    server.start()
    yield FakeCratesApi(server, seen)
    server.close()


def test_crates_io_web_api_passes_through_uncached(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    crates_origin: FakeCratesIo,
    origin_tls: OriginTLS,
    crates_api: FakeCratesApi,
) -> None:
    """crates.io is intercepted (downloads may be redirected through it), but its web API is never cached:
    `cargo search` twice reaches the API twice, and `cargo yank` carries the user's token to it untouched.
    A yank that succeeded makes the proxy ask upstream for index files it holds fresh (REGISTRY_WRITE_WINDOW)."""
    api_args = ["--upstream", f"crates.io={crates_api.server.url}"]
    proxy = start_proxy([*upstream_args(crates_origin, origin_tls), *api_args])
    project = consumer(tmp_path, crates_origin.registry)
    box = sandbox(tmp_path / "client", proxy)
    for _ in range(2):
        found = box.run(["search", "regex", "--limit", "1"], project)
        assert 'regex = "1.11.1"' in found.stdout, found.stdout + found.stderr

    def index_outcomes() -> set[str]:
        """Outcomes of the index files of one `cargo generate-lockfile` in a new CARGO_HOME."""
        seen = len(proxy.access())
        sandbox(tmp_path / f"lock-{seen}", proxy).run(["generate-lockfile"], project)
        return {
            r["outcome"] for r in proxy.access()[seen:] if r["host"] == "index.crates.io" and "/config" not in r["path"]
        }

    assert index_outcomes() == {"MISS"}
    refused = box.run(["yank", "regex", "--version", "1.11.1", "--token", "wrong"], project, check=False)
    assert refused.returncode != 0 and "must be logged in" in refused.stderr, refused.stderr
    assert index_outcomes() == {"HIT"}, "a refused yank changes nothing: fresh copies are answered"
    box.run(["yank", "regex", "--version", "1.11.1", "--token", "the-token"], project)
    assert index_outcomes() == {"REVALIDATED"}, "after a yank, index files are asked upstream however fresh"

    searches = [s for s in crates_api.seen if s[0] == "GET"]
    assert len(searches) == 2 and all(s[1].startswith("/api/v1/crates?q=regex") for s in searches), searches
    yanks = [(s[1], s[2]) for s in crates_api.seen if s[0] == "DELETE"]
    assert yanks == [("/api/v1/crates/regex/1.11.1/yank", "wrong"), ("/api/v1/crates/regex/1.11.1/yank", "the-token")]
    passed = [r for r in proxy.access() if r["host"] == "crates.io"]
    assert [r["outcome"] for r in passed] == ["PASS"] * 4, passed


def published_crate(upload: bytes, directory: Path) -> PublishedCrate:
    """What crates.io makes of `cargo publish`'s upload (u32 LE length + JSON metadata, u32 LE length + the
    `.crate`): the index entry of a crate without dependencies, and the file."""
    size = int.from_bytes(upload[:4], "little")
    meta = json.loads(upload[4 : 4 + size])
    rest = upload[4 + size :]
    data = rest[4 : 4 + int.from_bytes(rest[:4], "little")]
    assert not meta["deps"], "only crates without dependencies here"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{meta['name']}-{meta['vers']}.crate"
    path.write_bytes(data)
    cksum = hashlib.sha256(data).hexdigest()
    entry = {"name": meta["name"], "vers": meta["vers"], "deps": [], "cksum": cksum, "features": meta["features"],
             "yanked": False, "links": None}  # fmt: skip
    return PublishedCrate(meta["name"], meta["vers"], cksum, path, entry)


@pytest.mark.parametrize("padding", [0, 3 << 20], ids=["small", "streamed-upload"])
def test_cargo_publish_through_the_proxy_then_another_project_uses_the_crate(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    crates_origin: FakeCratesIo,
    origin_tls: OriginTLS,
    crates_api: FakeCratesApi,
    padding: int,
) -> None:
    """`cargo publish` uploads through the proxy (a PUT on crates.io, passed through with the token) and waits
    until the index shows the new version, through the proxy too: the proxy must not keep answering from its
    stored copy (see REGISTRY_WRITE_WINDOW). Another project then fetches and builds the crate, checked
    against the cksum the index gives for it. Once with an upload larger than mitmproxy holds in memory."""
    proxy = start_proxy([*upstream_args(crates_origin, origin_tls), "--upstream", f"crates.io={crates_api.server.url}"])
    author = tmp_path / "fresh-crate"
    (author / "src").mkdir(parents=True)
    (author / "Cargo.toml").write_text(
        '[package]\nname = "fresh-crate"\nversion = "0.1.0"\nedition = "2021"\n'
        'description = "published through ruststash"\nlicense = "MIT"\n\n[workspace]\n'
    )
    (author / "src" / "lib.rs").write_text("pub fn fresh() -> u32 { 7 }\n")
    # Incompressible padding makes the upload larger than what mitmproxy holds (it streams bodies over 1 MiB).
    (author / "data.bin").write_bytes(random.Random(7).randbytes(padding))
    box = sandbox(tmp_path / "author-home", proxy)
    published = box.run(["publish", "--no-verify", "--allow-dirty", "--token", "the-token"], author)
    assert "Published fresh-crate v0.1.0" in published.stderr, published.stderr
    uploads = [s for s in crates_api.seen if s[0] == "PUT"]
    assert uploads == [("PUT", "/api/v1/crates/new", "the-token")]
    lines = [(r["path"], r["outcome"]) for r in proxy.access()]
    upload = lines.index(("/api/v1/crates/new", "PASS"))
    # Before the upload cargo looked the crate up (a 404, remembered for --negative-ttl). After it, the index
    # file is asked upstream again at once, not answered from that 404: the first poll sees the version.
    assert ("/fr/es/fresh-crate", "MISS") in lines[:upload]
    polls = [outcome for path, outcome in lines[upload:] if path == "/fr/es/fresh-crate"]
    assert polls == ["MISS"], lines

    user = write_consumer(tmp_path / "user", [("fresh-crate", "0.1")], call_weight=False)
    user_box = sandbox(tmp_path / "user-home", proxy)
    user_box.run(["generate-lockfile"], user)
    user_box.run(["fetch"], user)
    user_box.run(["build", "--offline"], user)
    assert locked_versions(user / "Cargo.lock")["fresh-crate"] == ["0.1.0"]
    assert (tmp_path / "published" / "fresh-crate-0.1.0.crate").stat().st_size > padding
    assert [r["outcome"] for r in proxy.access() if r["path"] == "/crates/fresh-crate/0.1.0/download"] == ["MISS"]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_private_registry_named_with_cache_host_is_cached_and_checked(
    tmp_path: Path, start_proxy: ProxyFactory, edge_registry: Registry, origin_tls: OriginTLS, scheme: str
) -> None:
    """A company registry that mirrors crates.io (cargo's source replacement), its index and downloads on two
    hosts of its own, named with --cache-host. The proxy learns the download host from the registry's
    config.json and checks every crate against that registry's index, as it does for crates.io. An intranet
    registry may be plain HTTP (`sparse+http://`): cargo then sends plain proxy requests, cached the same."""
    plain = scheme == "http"
    origin = FakeCratesIo(edge_registry, origin_tls, dl=f"{scheme}://dl.company.example/crates", plain_http=plain)
    try:
        victim = edge_registry.get("memchr", max(c.vers for c in edge_registry.versions("memchr")))
        origin.corrupt_crate(victim.name, victim.vers)
        proxy = start_proxy(
            [
                "--cache-host", "registry.company.example", "--cache-host", "dl.company.example",
                "--upstream", f"registry.company.example={origin.index_url}",
                "--upstream", f"dl.company.example={origin.static_url}",
                "--upstream-ca", str(origin_tls.ca_pem),
            ]
        )  # fmt: skip
        config = (
            '[source.crates-io]\nreplace-with = "company"\n\n'
            f'[source.company]\nregistry = "sparse+{scheme}://registry.company.example/"\n'
        )
        project = consumer(tmp_path, edge_registry)

        def run(name: str, *commands: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            env = proxy_client_env(proxy) | ({"http_proxy": proxy.url} if plain else {})  # libcurl: lowercase
            box = CargoSandbox(tmp_path / name, config_toml=config, env_extra=env)
            result = box.run(["generate-lockfile"], project)
            for command in commands:
                result = box.run([command], project, check=check, extra_env={"CARGO_NET_RETRY": "0"})
            return result

        refused = run("corrupt", "fetch", check=False)
        assert refused.returncode != 0 and f"memchr {victim.vers}: the download's sha256" in refused.stderr
        origin.restore()
        run("cold", "fetch")
        lock = locked_versions(project / "Cargo.lock")
        fetched = {(name, vers) for name, versions in lock.items() for vers in versions}
        downloads = crate_downloads(origin)
        assert len(set(downloads)) == len(fetched), "each crate came from the company's download host"

        origin.reset_counts()
        seen = len(proxy.access())
        run("warm", "fetch")
        assert crate_downloads(origin) == []
        warm = [r for r in proxy.access()[seen:] if r["host"] == "dl.company.example"]
        assert len(warm) == len(fetched) and {r["outcome"] for r in warm} == {"HIT"}, warm
    finally:
        origin.close()
