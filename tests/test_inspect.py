"""`ruststash stats`, `ls` and `purge`, on a store built directly, and through the command line."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruststash.cli import main
from ruststash.errors import ConfigError
from ruststash.inspect import (
    Filter,
    parse_age,
    parse_proxy_stats,
    purge,
    purge_plan,
    render_proxy_stats,
    selected,
    store_stats,
)
from ruststash.store import Store
from tests.harness import free_port

DAY = 86400.0
NOW = time.time()


def put(store: Store, key: str, body: bytes, stored_at: float) -> None:
    store.put(key, body, status=200, headers=(), stored_at=stored_at, lifetime=math.inf)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "cache", clock=lambda: NOW)
    put(s, "config:index.crates.io/config.json", b'{"dl": "x"}', NOW)
    put(s, "index:index.crates.io/se/rd/serde", b"serde index", NOW - 40 * DAY)
    put(s, "crate:index.crates.io/se/rd/serde/1.0.0", b"serde crate", NOW - 40 * DAY)
    put(s, "crate:index.crates.io/3/s/syn/2.0.0", b"syn crate", NOW - 2 * DAY)
    put(s, "archive:static.rust-lang.org/dist/2026-04-14/rustc.tar.xz", b"shared body", NOW - 40 * DAY)
    put(s, "archive:static.rust-lang.org/dist/2026-05-01/rustc.tar.xz", b"shared body", NOW)
    put(s, "index:registry.example.com/api/3/s/syn", b"private index", NOW)
    yield s
    s.close()


def keys(entries: object) -> set[str]:
    return {entry.key for entry, _ in entries}  # type: ignore[attr-defined]


def test_parse_age() -> None:
    assert parse_age("30d", "--older-than") == 30 * DAY
    assert parse_age("12h", "x") == 12 * 3600
    assert parse_age("1.5w", "x") == 1.5 * 7 * DAY
    assert parse_age("90m", "x") == 5400
    for bad in ("30", "d", "-1d", "30 days", ""):
        with pytest.raises(ConfigError):
            parse_age(bad, "--older-than")


def test_filters(store: Store) -> None:
    assert len(keys(selected(store, Filter(), NOW))) == 7
    assert keys(selected(store, Filter(kinds=("crate",)), NOW)) == {
        "crate:index.crates.io/se/rd/serde/1.0.0",
        "crate:index.crates.io/3/s/syn/2.0.0",
    }
    assert keys(selected(store, Filter(hosts=("registry.example.com",)), NOW)) == {
        "index:registry.example.com/api/3/s/syn"
    }
    assert keys(selected(store, Filter(patterns=("*/syn*",)), NOW)) == {
        "crate:index.crates.io/3/s/syn/2.0.0",
        "index:registry.example.com/api/3/s/syn",
    }
    old = keys(selected(store, Filter(older_than=30 * DAY), NOW))
    assert old == {
        "index:index.crates.io/se/rd/serde",
        "crate:index.crates.io/se/rd/serde/1.0.0",
        "archive:static.rust-lang.org/dist/2026-04-14/rustc.tar.xz",
    }
    both = Filter(kinds=("crate",), older_than=30 * DAY)
    assert keys(selected(store, both, NOW)) == {"crate:index.crates.io/se/rd/serde/1.0.0"}
    assert keys(selected(store, Filter(unused_for=1), NOW + 10)) == keys(selected(store, Filter(), NOW))
    with pytest.raises(ConfigError):
        Filter(kinds=("pass",))


def test_stats_by_kind(store: Store) -> None:
    stats = store_stats(store)
    assert stats.entries == 7
    assert stats.bodies == 6  # the two archives share one body
    assert stats.by_kind["crate"].entries == 2
    assert stats.by_kind["archive"].bytes == 2 * len(b"shared body")
    assert stats.body_bytes == sum(
        len(b) for b in (b'{"dl": "x"}', b"serde index", b"serde crate", b"syn crate")
    ) + len(b"shared body") + len(b"private index")


def test_purge_removes_entries_then_only_unshared_bodies(store: Store, tmp_path: Path) -> None:
    old = Filter(older_than=30 * DAY)
    doomed, plan = purge_plan(store, old, NOW)
    assert plan.entries == 3
    assert plan.bodies == 2  # the old archive's body is shared with the new archive: it stays
    report = purge(store, [entry.key for entry in doomed])
    assert (report.entries, report.bodies, report.freed) == (3, 2, plan.freed)
    remaining = keys(selected(store, Filter(), NOW))
    assert "archive:static.rust-lang.org/dist/2026-05-01/rustc.tar.xz" in remaining
    shared = store.peek("archive:static.rust-lang.org/dist/2026-05-01/rustc.tar.xz")
    assert shared is not None and store.read(shared) == b"shared body"
    blobs = {p.name for p in (tmp_path / "cache" / "blobs").rglob("*") if p.is_file()}
    assert blobs == {entry.digest for entry, _ in store.entries()}
    assert purge(store, [entry.key for entry in doomed]).entries == 0  # again: nothing left to do


def test_proxy_stats_from_a_snapshot() -> None:
    snapshot = {
        "version": "0.1.0",
        "metrics": {
            "ruststash_requests_total": {
                "crate/hit": 8.0,
                "index/revalidated": 1.0,
                "crate/miss": 1.0,
                "pass/pass": 5.0,
            }
        },
    }
    stats = parse_proxy_stats(snapshot)
    assert stats is not None and stats.total == 10 and stats.hits == 9
    assert "hit ratio 90.0%" in render_proxy_stats(stats, "http://127.0.0.1:9128")
    assert parse_proxy_stats({"unexpected": True}) is None
    assert "no proxy running" in render_proxy_stats(None, "http://127.0.0.1:9128")
    idle = parse_proxy_stats({"metrics": {}})
    assert "no requests since start" in render_proxy_stats(idle, "http://x")


def cli(*args: str) -> Ran:
    """The command line, in process (a tool's behaviour, without an interpreter start per call)."""
    clean = {name: None for name in os.environ if name.startswith("RUSTSTASH_")}
    result = CliRunner(env=clean).invoke(main, list(args), catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def admin() -> Iterator[str]:
    body = json.dumps({"metrics": {"ruststash_requests_total": {"crate/hit": 3, "crate/miss": 1}}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = 200 if self.path == "/api/stats" else 404
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_command_line(store: Store, tmp_path: Path, admin: str) -> None:
    cache = ["--cache-dir", str(tmp_path / "cache")]
    store.close()

    stats = cli("stats", *cache, "--admin", f"http://127.0.0.1:{free_port()}")
    assert stats.returncode == 0, stats.stderr
    assert "7 entries, 6 bodies" in stats.stdout and "no proxy running" in stats.stdout
    running = cli("stats", *cache, "--admin", admin, "--json")
    data = json.loads(running.stdout)
    assert data["entries"] == 7 and data["by_kind"]["crate"]["entries"] == 2
    assert data["proxy"]["hit_ratio"] == 0.75

    listing = cli("ls", *cache, "--kind", "crate", "--host", "index.crates.io")
    assert listing.returncode == 0
    assert [line.split()[-1] for line in listing.stdout.splitlines()] == [
        "crate:index.crates.io/3/s/syn/2.0.0",
        "crate:index.crates.io/se/rd/serde/1.0.0",
    ]
    assert "2 entries" in listing.stderr

    refused = cli("purge", *cache)
    assert refused.returncode == 2 and "--all" in refused.stderr
    dry = cli("purge", *cache, "--kind", "crate", "--older-than", "30d")
    assert dry.returncode == 0
    assert "would remove crate:index.crates.io/se/rd/serde/1.0.0" in dry.stdout and "dry run: 1 entries" in dry.stdout
    assert cli("ls", *cache).stdout.count("\n") == 7  # nothing removed yet
    done = cli("purge", *cache, "--kind", "crate", "--older-than", "30d", "--yes")
    assert done.returncode == 0 and "removed 1 entries and 1 bodies" in done.stdout
    assert cli("ls", *cache).stdout.count("\n") == 6
    everything = cli("purge", *cache, "--all", "--yes")
    assert "removed 6 entries" in everything.stdout
    assert cli("ls", *cache).stdout == ""

    missing = cli("ls", "--cache-dir", str(tmp_path / "nothing-here"))
    assert missing.returncode == 2 and "is not a ruststash store" in missing.stderr
    assert not (tmp_path / "nothing-here").exists()
    bad_age = cli("purge", *cache, "--older-than", "soon")
    assert bad_age.returncode == 2 and bad_age.stderr.startswith("ruststash: error: --older-than")


def test_stats_while_the_store_is_in_use(store: Store, tmp_path: Path) -> None:
    # A second reader beside an open store (as beside a serving proxy): same figures, nothing changed.
    before = {entry.key: accessed for entry, accessed in store.entries()}
    other = Store(tmp_path / "cache", clean_tmp=False)
    try:
        assert store_stats(other).entries == 7
    finally:
        other.close()
    assert {entry.key: accessed for entry, accessed in store.entries()} == before
