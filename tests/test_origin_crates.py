"""The fake crates.io origin is right: unit tests of the index rules, HTTP tests of FakeCratesIo, and the real
cargo (no proxy) resolving, fetching and building against it."""

from __future__ import annotations

import email.message
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.origins.clients import CargoSandbox, locked_versions, read_lockfile, source_replacement_toml, write_consumer
from tests.origins.crates_io import DIRECT_DL, FakeCratesIo, corrupted
from tests.origins.registry import (
    CrateSpec,
    DepSpec,
    Registry,
    RegistrySpec,
    build_registry,
    caret_req,
    edge_case_spec,
    index_entry,
    index_path,
    plan_rounds,
    registry_cache_dir,
    req_matches,
    spec_from_lockfile,
)
from tests.origins.tls import OriginTLS

WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads"
RIPGREP_LOCK = WORKLOADS / "ripgrep.Cargo.lock"

# ------------------------------------------------------------------------------------------- unit: index rules


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("a", "1/a"),
        ("ab", "2/ab"),
        ("abc", "3/a/abc"),
        ("serde", "se/rd/serde"),
        ("cfg-if", "cf/g-/cfg-if"),
        ("Inflector", "in/fl/inflector"),
        ("MacTypes-sys", "ma/ct/mactypes-sys"),
        ("AB", "2/ab"),
    ],
)
def test_index_path(name: str, path: str) -> None:
    assert index_path(name) == path


@pytest.mark.parametrize(
    ("req", "version", "ok"),
    [
        ("^1.2", "1.9.0", True),
        ("^1.2", "2.0.0", False),
        ("^0.4.8", "0.4.9", True),
        ("^0.4.8", "0.5.0", False),
        ("^0.0.3", "0.0.4", False),
        ("=1.0.3", "1.0.3", True),
        ("=1.0.3", "1.0.4", False),
        ("~1.2.3", "1.2.9", True),
        ("~1.2.3", "1.3.0", False),
        (">=1, <2", "1.5.0", True),
        ("^1", "1.0.0-beta.1", False),
        ("^1.0.0-beta.1", "1.0.0-beta.2", True),
        ("^0.11.1", "0.11.1+wasi-snapshot-preview1", True),
    ],
)
def test_req_matches(req: str, version: str, ok: bool) -> None:
    assert req_matches(req, version) is ok


def test_caret_req_drops_build_metadata() -> None:
    assert caret_req("0.11.1+wasi-snapshot-preview1") == "^0.11.1"


def test_index_entry_v1() -> None:
    crate = CrateSpec(
        "globset",
        "0.4.15",
        deps=(
            DepSpec("log", "^0.4.20", optional=True),
            DepSpec("winapi-util", "^0.1", target="cfg(windows)"),
            DepSpec("re", "^1.10", package="regex", default_features=False, features=("std",)),
        ),
        features={"default": ("log",), "serde1": ("serde",)},
    )
    entry = index_entry(crate, "ab" * 32)
    assert list(entry) == ["name", "vers", "deps", "cksum", "features", "yanked", "links"]
    assert entry["features"] == {"default": ["log"], "serde1": ["serde"]}
    assert "features2" not in entry and "v" not in entry and "rust_version" not in entry
    deps = {d["name"]: d for d in entry["deps"]}
    assert deps["re"] == {
        "name": "re",
        "req": "^1.10",
        "features": ["std"],
        "optional": False,
        "default_features": False,
        "target": None,
        "kind": "normal",
        "package": "regex",
    }
    assert deps["winapi-util"]["target"] == "cfg(windows)"
    assert "package" not in deps["log"] and deps["log"]["optional"] is True


def test_index_entry_v2_features2_and_rust_version() -> None:
    crate = CrateSpec(
        "aho-corasick",
        "1.1.3",
        deps=(DepSpec("memchr", "^2.4.0", optional=True),),
        features={"default": ("std",), "std": ("memchr?/std",), "perf-literal": ("dep:memchr",)},
        yanked=True,
        rust_version="1.60.0",
    )
    entry = index_entry(crate, "00" * 32)
    assert entry["features"] == {"default": ["std"]}
    assert entry["features2"] == {"std": ["memchr?/std"], "perf-literal": ["dep:memchr"]}
    assert entry["v"] == 2
    assert entry["yanked"] is True
    assert entry["rust_version"] == "1.60.0"
    assert entry["links"] is None


def test_edge_case_spec_plans_rounds() -> None:
    spec = edge_case_spec()
    rounds = plan_rounds(spec.crates)
    placed = {c.key: i for i, r in enumerate(rounds) for c in r}
    for r in rounds:
        names = [c.name for c in r]
        assert len(names) == len(set(names)), "two versions of one name in one round"
    assert placed[("log", "0.3.9")] > placed[("log", "0.4.22")]
    assert 15 <= len(spec.crates) <= 25
    assert any(c.name != c.name.lower() for c in spec.crates)


def test_spec_from_ripgrep_lockfile() -> None:
    spec = spec_from_lockfile(RIPGREP_LOCK)
    assert len(spec.crates) == 52
    names = {c.name for c in spec.crates}
    assert {"memchr", "regex-automata", "aho-corasick"} <= names
    keys = {c.key for c in spec.crates}
    for crate in spec.crates:
        for dep in crate.deps:
            assert dep.req.startswith("^")
            assert any(n == dep.crate and req_matches(dep.req, v) for n, v in keys), dep
    assert spec.consumer
    assert plan_rounds(spec.crates)


def test_spec_from_cargo_lockfile_plans() -> None:
    spec = spec_from_lockfile(WORKLOADS / "cargo.Cargo.lock")
    assert len(spec.crates) == 523
    renamed = [d for c in spec.crates for d in c.deps if d.package]
    assert all(d.name != d.package for d in renamed)
    assert len(plan_rounds(spec.crates)) > 1


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def origin(edge_registry: Registry, origin_tls: OriginTLS) -> Iterator[FakeCratesIo]:
    """A FakeCratesIo whose config.json sends downloads to its own static listener (no proxy)."""
    fake = _direct_origin(edge_registry, origin_tls)
    yield fake
    fake.close()


def _direct_origin(registry: Registry, tls: OriginTLS) -> FakeCratesIo:
    return FakeCratesIo(registry, tls, dl=DIRECT_DL)


# ------------------------------------------------------------------------------------------- HTTP: FakeCratesIo


@dataclass
class Reply:
    status: int
    headers: email.message.Message
    body: bytes


def _get(url: str, tls: OriginTLS, headers: dict[str, str] | None = None, timeout: float = 10) -> Reply:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=tls.client_context(), timeout=timeout) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, error.read())


def test_registry_contents(edge_registry: Registry) -> None:
    assert len(edge_registry.crates) == len(edge_case_spec().crates)
    lines = [json.loads(line) for line in edge_registry.index_file("regex").splitlines()]
    assert [(e["vers"], e["yanked"]) for e in lines] == [("1.11.1", False), ("1.12.0", True)]
    memchr = json.loads(edge_registry.index_file("memchr").splitlines()[1])
    assert memchr["v"] == 2 and memchr["features2"] == {"logging": ["dep:log"]}
    assert edge_registry.index_file("inflector") == edge_registry.index_file("Inflector")
    for crate in edge_registry.crates:
        assert crate.entry["cksum"] == crate.cksum
        assert 8_000 < crate.size < 3_100_000
    assert ("grep-cli", "^0.1") in edge_registry.consumer_dependencies()


def test_config_json(edge_registry: Registry, origin_tls: OriginTLS) -> None:
    fake = FakeCratesIo(edge_registry, origin_tls)
    try:
        reply = _get(fake.index_url + "/config.json", origin_tls)
        assert reply.status == 200
        assert json.loads(reply.body) == {"dl": "https://static.crates.io/crates", "api": "https://crates.io"}
    finally:
        fake.close()


def test_index_file_caching_headers(origin: FakeCratesIo, origin_tls: OriginTLS, edge_registry: Registry) -> None:
    url = f"{origin.index_url}/{index_path('Inflector')}"
    reply = _get(url, origin_tls)
    assert reply.status == 200
    assert reply.body == edge_registry.index_file("Inflector")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.headers["Cache-Control"] == "public,max-age=600"
    etag, modified = reply.headers["ETag"], reply.headers["Last-Modified"]
    assert etag.startswith('"') and modified
    again = _get(url, origin_tls, {"If-None-Match": etag})
    assert again.status == 304 and again.headers["ETag"] == etag and again.body == b""
    assert _get(url, origin_tls, {"If-Modified-Since": modified}).status == 304
    assert _get(url, origin_tls, {"If-None-Match": '"other"', "If-Modified-Since": modified}).status == 200
    assert origin.statuses("/in/fl/inflector") == [200, 304, 304, 200]
    assert origin.records()[1].if_none_match == etag


def test_index_and_static_not_found(origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    assert _get(f"{origin.index_url}/no/su/nosuchcrate", origin_tls).status == 404
    assert _get(f"{origin.index_url}/in/fl/Inflector", origin_tls).status == 404
    assert _get(f"{origin.static_url}/crates/inflector/0.11.4/download", origin_tls).status == 404
    assert _get(f"{origin.static_url}/crates/regex/9.9.9/download", origin_tls).status == 404
    assert _get(f"{origin.static_url}/other", origin_tls).status == 404
    assert origin.count_status("/", 404) == 5


def test_static_downloads(origin: FakeCratesIo, origin_tls: OriginTLS, edge_registry: Registry) -> None:
    crate = edge_registry.get("Inflector", "0.11.4")
    for path in (crate.download_path, f"/crates/Inflector/{crate.filename}"):
        reply = _get(origin.static_url + path, origin_tls)
        assert reply.status == 200 and reply.body == crate.data
        assert reply.headers["Content-Type"] == "application/gzip"
        assert reply.headers["Cache-Control"] == "public,max-age=31536000,immutable"
        assert reply.headers["ETag"]
    assert origin.count(crate.download_path) == 1
    origin.corrupt_crate("Inflector", "0.11.4")
    bad = _get(origin.static_url + crate.download_path, origin_tls).body
    assert len(bad) == len(crate.data) and bad != crate.data and bad == corrupted(crate.data)
    origin.restore()
    assert _get(origin.static_url + crate.download_path, origin_tls).body == crate.data
    origin.reset_counts()
    assert origin.records() == []


def test_stop_refuses_then_start_same_ports(origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    index_url, static_url = origin.index_url, origin.static_url
    origin.stop()
    for url in (index_url, static_url):
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    origin.start()
    assert (origin.index_url, origin.static_url) == (index_url, static_url)
    assert _get(index_url + "/config.json", origin_tls).status == 200


def test_publish_and_yank(edge_registry: Registry, origin_tls: OriginTLS) -> None:
    newest = edge_registry.get("anyhow", "1.0.93")
    fake = _direct_origin(edge_registry.without(("anyhow", "1.0.93")), origin_tls)
    try:
        url = f"{fake.index_url}/{index_path('anyhow')}"
        before = _get(url, origin_tls)
        assert [json.loads(x)["vers"] for x in before.body.splitlines()] == ["1.0.89"]
        assert _get(fake.static_url + newest.download_path, origin_tls).status == 404
        fake.publish(newest)
        after = _get(url, origin_tls, {"If-None-Match": before.headers["ETag"]})
        assert after.status == 200
        assert [json.loads(x)["vers"] for x in after.body.splitlines()] == ["1.0.89", "1.0.93"]
        assert after.headers["Last-Modified"] != before.headers["Last-Modified"]
        assert _get(fake.static_url + newest.download_path, origin_tls).body == newest.data
        fake.yank("anyhow", "1.0.93")
        assert json.loads(_get(url, origin_tls).body.splitlines()[1])["yanked"] is True
    finally:
        fake.close()


def test_fault_status_and_times(origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    origin.set_fault("/config.json", "status_503", times=2)
    url = origin.index_url + "/config.json"
    assert [_get(url, origin_tls).status for _ in range(3)] == [503, 503, 200]
    origin.set_fault("/crates/", "status_500", site="static")
    assert _get(origin.static_url + "/crates/lexopt/0.3.0/download", origin_tls).status == 500
    assert _get(url, origin_tls).status == 200
    origin.clear_faults()
    assert _get(origin.static_url + "/crates/lexopt/0.3.0/download", origin_tls).status == 200


def test_fault_truncate_reset_refuse(origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    path = "/crates/windows-sys/0.59.0/download"
    origin.set_fault(path, "truncate")
    with pytest.raises(http.client.IncompleteRead):
        _get(origin.static_url + path, origin_tls)
    for mode in ("reset", "refuse"):
        origin.set_fault(path, mode)
        with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException, ssl.SSLError)):
            _get(origin.static_url + path, origin_tls)
    assert origin.count_status(path, None) == 3
    origin.set_fault(path, "corrupt", times=1)
    reply = _get(origin.static_url + path, origin_tls)
    assert reply.status == 200 and reply.body == corrupted(_get(origin.static_url + path, origin_tls).body)


def test_fault_hang_slow_trickle(origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    url = origin.index_url + "/config.json"
    origin.set_fault("/config.json", "hang", times=1)
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _get(url, origin_tls, timeout=0.5)
    origin.set_fault("/config.json", "slow_headers", delay=0.4, times=1)
    started = time.monotonic()
    assert _get(url, origin_tls).status == 200
    assert time.monotonic() - started >= 0.4
    origin.set_fault("/se/rd/", "trickle", delay=0.05, chunk=64, times=1)
    started = time.monotonic()
    reply = _get(f"{origin.index_url}/se/rd/serde", origin_tls)
    assert reply.status == 200 and json.loads(reply.body)["name"] == "serde"
    assert time.monotonic() - started >= 0.05 * (len(reply.body) // 64)
    origin.clear_faults()


# ------------------------------------------------------------------------------------------- real cargo


def _sandbox(root: Path, origin: FakeCratesIo, tls: OriginTLS) -> CargoSandbox:
    return CargoSandbox(
        root,
        config_toml=source_replacement_toml(origin.index_url),
        env_extra={"CARGO_HTTP_CAINFO": str(tls.ca_pem), "CARGO_NET_RETRY": "0"},
    )


@pytest.mark.e2e
def test_registry_build_is_reproducible(tmp_path: Path) -> None:
    spec = RegistrySpec(
        crates=(
            CrateSpec("leaf", "1.0.0", size=20_000),
            CrateSpec("leaf", "2.0.0", size=20_000),
            CrateSpec("top", "0.1.0", deps=(DepSpec("leaf", "^1"), DepSpec("leaf2", "^2", package="leaf"))),
        ),
        consumer=(DepSpec("top", "^0.1"),),
    )
    first = build_registry(spec, tmp_path / "a")
    second = build_registry(spec, tmp_path / "b")
    assert [c.cksum for c in first.crates] == [c.cksum for c in second.crates]
    started = time.monotonic()
    cached = build_registry(spec, tmp_path / "a")
    assert time.monotonic() - started < 1
    assert cached == first


@pytest.mark.e2e
def test_cargo_resolves_fetches_and_builds(tmp_path: Path, origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    registry = origin.registry
    cargo = _sandbox(tmp_path / "sandbox", origin, origin_tls)
    project = write_consumer(tmp_path / "consumer", registry.consumer_deps())

    cargo.run(["generate-lockfile"], project)
    locked = locked_versions(project / "Cargo.lock")
    assert locked["regex"] == ["1.11.1"], "the yanked regex 1.12.0 must not be picked"
    assert locked["anyhow"] == ["1.0.93"]
    assert sorted(locked["log"]) == ["0.3.9", "0.4.22"]
    assert locked["memchr"] == ["2.7.4"]
    assert locked["Inflector"] == ["0.11.4"]
    assert "winapi-util" in locked and "windows-sys" in locked, "cfg(windows) deps are resolved for all targets"
    grep_cli = next(p for p in read_lockfile(project / "Cargo.lock") if p.name == "grep-cli")
    assert "regex" in grep_cli.dependencies, "the renamed dependency locks the real crate name"
    for package in read_lockfile(project / "Cargo.lock"):
        if package.source is not None:
            assert package.checksum == registry.get(package.name, package.version).cksum

    fetch = cargo.run(["fetch"], project)
    n_locked = sum(len(v) for v in locked.values())
    assert origin.count_status("/crates/", 200, site="static") == n_locked
    assert "warning" not in fetch.stderr.lower()

    build = cargo.run(["build", "--offline"], project)
    assert "warning" not in build.stderr.lower(), build.stderr
    compiled = {p.name.split("-")[0] for p in (project / "target" / "debug" / "deps").glob("lib*.rlib")}
    assert {"libgrep_cli", "libInflector", "libregex", "liblog"} <= compiled
    assert "libwinapi_util" not in compiled and "libwindows_sys" not in compiled

    origin.reset_counts()
    cargo.run(["update"], project)
    index = origin.records(site="index")
    assert index and all(r.status in (200, 304) for r in index)
    assert any(r.status == 304 and r.if_none_match for r in index), "cargo revalidates with If-None-Match"
    assert origin.records(site="static") == []


@pytest.mark.e2e
def test_cargo_fetch_rejects_corrupted_crate(tmp_path: Path, origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    cargo = _sandbox(tmp_path / "sandbox", origin, origin_tls)
    project = write_consumer(tmp_path / "consumer", [("regex", "^1")])
    cargo.run(["generate-lockfile"], project)
    origin.corrupt_crate("regex", "1.11.1")
    failed = cargo.run(["fetch"], project, check=False)
    assert failed.returncode != 0
    assert "checksum" in failed.stderr and "regex" in failed.stderr, failed.stderr
    origin.restore()
    cargo.run(["fetch"], project)


@pytest.mark.e2e
def test_cargo_sees_runtime_publish(tmp_path: Path, edge_registry: Registry, origin_tls: OriginTLS) -> None:
    fake = _direct_origin(edge_registry.without(("anyhow", "1.0.93")), origin_tls)
    try:
        cargo = _sandbox(tmp_path / "sandbox", fake, origin_tls)
        project = write_consumer(tmp_path / "consumer", [("anyhow", "^1")])
        cargo.run(["generate-lockfile"], project)
        assert locked_versions(project / "Cargo.lock")["anyhow"] == ["1.0.89"]
        fake.publish(edge_registry.get("anyhow", "1.0.93"))
        cargo.run(["update"], project)
        assert locked_versions(project / "Cargo.lock")["anyhow"] == ["1.0.93"]
        cargo.run(["fetch"], project)
    finally:
        fake.close()


@pytest.mark.e2e
def test_cargo_fails_while_origin_stopped(tmp_path: Path, origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    cargo = _sandbox(tmp_path / "sandbox", origin, origin_tls)
    project = write_consumer(tmp_path / "consumer", [("lexopt", "^0.3")])
    origin.stop()
    failed = cargo.run(["generate-lockfile"], project, check=False)
    assert failed.returncode != 0
    origin.start()
    cargo.run(["generate-lockfile"], project)
    assert locked_versions(project / "Cargo.lock") == {"lexopt": ["0.3.0"]}


@pytest.mark.e2e
def test_cargo_builds_ripgrep_lockfile_registry(
    tmp_path: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, origin_tls: OriginTLS
) -> None:
    registry = build_registry(spec_from_lockfile(RIPGREP_LOCK), registry_cache_dir(request.config, tmp_path_factory))
    fake = _direct_origin(registry, origin_tls)
    try:
        cargo = _sandbox(tmp_path / "sandbox", fake, origin_tls)
        project = write_consumer(tmp_path / "consumer", registry.consumer_deps())
        cargo.run(["generate-lockfile"], project)
        locked = {(n, v) for n, vs in locked_versions(project / "Cargo.lock").items() for v in vs}
        assert locked == {(c.name, c.vers) for c in registry.crates}, "every lock package is resolved"
        cargo.run(["fetch"], project)
        build = cargo.run(["build", "--offline"], project)
        assert "warning" not in build.stderr.lower(), build.stderr
    finally:
        fake.close()
