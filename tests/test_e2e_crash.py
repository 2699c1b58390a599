"""Crash torture: SIGKILL the proxy at random moments while 50 clients download, restart it, over and over.

One proxy serves a fake crates.io (small bodies: .crate downloads, index files, config.json) and a fake
static.rust-lang.org (channel manifest and its .sha256, a small archive, one just under the size that is
downloaded whole before sending, and two large ones that are streamed to clients while they download), with
a size cap under the total so that eviction keeps large archives coming and going. Every round starts 50
client threads (HTTPS through CONNECT, trusting only the proxy's CA, each body streamed into a sha256) and
kills the proxy with SIGKILL: at a random moment, or (half the rounds) the moment one of its threads is seen
inside fsync(2), i.e. in the middle of a commit. Then, with the proxy dead, the store is opened as the proxy
opens it at start-up (which empties tmp/) and checked: tmp/ is empty, every entry's blob exists, has the
entry's size and hashes to its digest, which is the origin's digest of that key's body; `Store.verify()` is
clean. A client whose transfer the kill cut short only records a failure; a body a client received whole
(status 200, the full Content-Length, a clean end) must be the origin's bytes. After 20 rounds the proxy is
restarted without the cap, every client of one more round must get every body right, and SIGTERM must stop
it with exit code 0.

The kill moments and the clients' request mixes come from one seeded generator: the seed is printed and
given in every failure message; set RUSTSTASH_CRASH_SEED to replay a run's choices (process timing is not
replayable, so a replay is close, not exact).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import secrets
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
import pytest

from ruststash import policy
from ruststash.store import Store
from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import index_path
from tests.origins.rustlang import FakeRustDist, PublishedRelease
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import upstream_args
from tests.test_e2e_rustup import MANIFEST

pytestmark = pytest.mark.e2e

SEED_ENV = "RUSTSTASH_CRASH_SEED"
CLIENTS = 50
KILL_ROUNDS = 20
REQUESTS_PER_CLIENT = 4
# Seconds after the clients start. A cold round commits its first large archive 1-3 s in (2 CPUs), so
# the window reaches past that: kills land before any download, mid-download, around commits and evictions.
KILL_AFTER = (0.05, 2.5)
# Random moments almost never land inside a commit (fsync the body, rename it into blobs/, fsync the
# directory, write the index entry: ~10 ms for a large body), where an ordering mistake would show. So this
# share of rounds kills the proxy the moment one of its threads is seen inside fsync(2), polling
# /proc/<pid>/task/*/syscall (Linux; where that cannot be read the round kills at a random moment instead).
IN_FSYNC_SHARE = 0.5
IN_FSYNC_WAIT = 5.0  # seconds after the clients start; a round that sees no fsync by then is killed anyway
# fsync and fdatasync (the index's SQLite uses the latter) by architecture.
FSYNC_SYSCALLS = {"x86_64": (b"74", b"75"), "aarch64": (b"82", b"83")}.get(os.uname().machine)
MiB = 1024 * 1024
# Under the size of all bodies together, so least-recently-used eviction keeps large archives going and
# coming: every round has downloads in progress, commits and evictions for the kill to land in.
MAX_SIZE = 20 * MiB
# Host archives padded to these sizes: rust-std and cargo are streamed (over 8 MiB), rustfmt is just under
# the size the proxy downloads whole before answering; rustc stays small.
PADS = {"rust-std": 16 * MiB, "cargo": 10 * MiB, "rustfmt-preview": 7 * MiB}
# What one request is, by weight: many small bodies, a fair share of large ones.
MIX = {"crate": 45, "index": 15, "manifest": 10, "archive": 30}
SOCKET_TIMEOUT = 20.0  # any one connect/read
CLIENT_DEADLINE = 90.0  # a client's whole round
JOIN_TIMEOUT = CLIENT_DEADLINE + 2 * SOCKET_TIMEOUT
TEST_DEADLINE = 420.0  # the whole test, checked between rounds


@dataclass(frozen=True)
class Target:
    """One URL clients ask the proxy for, and what the origin serves for it."""

    kind: str
    host: str
    path: str
    digest: str  # sha256 of the origin's body
    size: int
    key: str  # the proxy's cache key for it
    stored_digest: str  # the digest its entry must have


@dataclass
class Result:
    target: Target
    status: int | None = None
    length: int | None = None  # Content-Length, if any
    received: int = 0
    digest: str = ""
    complete: bool = False  # status 200 and the whole body read to a clean end
    error: str = ""
    note: str = ""  # the start of a body that is not a 200's

    def describe(self) -> str:
        what = self.error or f"status {self.status}, {self.received} of {self.length} bytes"
        return f"{self.target.host}{self.target.path}: {what} {self.note.strip()!r}"


@dataclass
class RoundStats:
    leftover_tmp: int = 0
    leftover_sizes: list[int] = field(default_factory=list)
    entries: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def dist(tmp_path: Path, origin_tls: OriginTLS) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path / "origin")
    yield origin
    origin.close()


def origin_body(url: str, tls: OriginTLS) -> bytes:
    """The origin's own bytes, fetched directly (no proxy)."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls.client_context())
    )
    with opener.open(url, timeout=60) as response:
        assert response.status == 200, url
        return bytes(response.read())


def make_targets(crates: FakeCratesIo, dist: FakeRustDist, release: PublishedRelease, tls: OriginTLS) -> list[Target]:
    registry = crates.registry
    wanted: list[tuple[str, str, str, str]] = []  # (kind, host, path, origin base URL)
    for crate in registry.crates:
        wanted.append(("crate", "static.crates.io", crate.download_path, crates.static_url))
    wanted.append(("index", "index.crates.io", "/config.json", crates.index_url))
    for name in registry.names():
        wanted.append(("index", "index.crates.io", "/" + index_path(name), crates.index_url))
    for path in (MANIFEST, MANIFEST + ".sha256"):
        wanted.append(("manifest", "static.rust-lang.org", path, dist.url))
    for pkg in ("rust-std", "cargo", "rustfmt-preview", "rustc"):
        wanted.append(("archive", "static.rust-lang.org", release.archive_path(pkg), dist.url))
    toml_digest = hashlib.sha256(origin_body(dist.url + MANIFEST, tls)).hexdigest()
    targets = []
    for kind, host, path, base in wanted:
        body = origin_body(base + path, tls)
        digest = hashlib.sha256(body).hexdigest()
        decision = policy.classify("GET", host, path, (policy.CRATES_IO,))
        assert decision.kind is not policy.Kind.PASS, f"{host}{path} would not be cached"
        # A manifest's .sha256 is served from the stored .toml: its entry holds the .toml.
        stored = toml_digest if decision.kind is policy.Kind.MANIFEST_SHA256 else digest
        targets.append(Target(kind, host, path, digest, len(body), decision.key, stored))
    for crate in registry.crates:
        assert crate.cksum in {t.digest for t in targets}, "the origin does not serve the published .crate"
    return targets


def client_plan(rng: random.Random, targets: list[Target], mix: dict[str, int]) -> list[Target]:
    by_kind: dict[str, list[Target]] = {}
    for target in targets:
        by_kind.setdefault(target.kind, []).append(target)
    kinds = rng.choices(list(mix), weights=list(mix.values()), k=REQUESTS_PER_CLIENT)
    return [rng.choice(by_kind[kind]) for kind in kinds]


def fetch(connection: http.client.HTTPSConnection, target: Target, deadline: float) -> Result:
    result = Result(target)
    connection.request("GET", target.path, headers={"accept-encoding": "identity"})
    response = connection.getresponse()
    result.status = response.status
    length = response.getheader("content-length")
    result.length = int(length) if length is not None and length.isdigit() else None
    digest = hashlib.sha256()
    while chunk := response.read(256 * 1024):
        digest.update(chunk)
        result.received += len(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError("client deadline passed mid-body")
        if response.status != 200 and len(result.note) < 200:
            result.note += chunk[:200].decode("utf-8", "replace")
    result.digest = digest.hexdigest()
    result.complete = response.status == 200 and result.length in (None, result.received)
    return result


def run_client(
    proxy_port: int, context: ssl.SSLContext, plan: list[Target], results: list[Result], deadline: float
) -> None:
    """Ask for each planned URL in turn (one kept-alive tunnel per host); record every outcome, never raise."""
    connections: dict[str, http.client.HTTPSConnection] = {}
    try:
        for target in plan:
            if time.monotonic() > deadline:
                results.append(Result(target, error="client deadline passed"))
                continue
            connection = connections.get(target.host)
            if connection is None:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", proxy_port, context=context, timeout=SOCKET_TIMEOUT
                )
                connection.set_tunnel(target.host, 443)
                connections[target.host] = connection
            try:
                results.append(fetch(connection, target, deadline))
            except (OSError, http.client.HTTPException) as exc:
                results.append(Result(target, error=f"{type(exc).__name__}: {exc}"))
                connection.close()
                del connections[target.host]
    finally:
        for connection in connections.values():
            connection.close()


class ClientRound:
    """CLIENTS threads, each with its own plan drawn from the round's generator."""

    def __init__(
        self, proxy: ProxyProcess, targets: list[Target], rng: random.Random, mix: dict[str, int] = MIX
    ) -> None:
        context = ssl.create_default_context(cafile=str(proxy.ca_cert))
        deadline = time.monotonic() + CLIENT_DEADLINE
        self.results: list[list[Result]] = [[] for _ in range(CLIENTS)]
        plans = [client_plan(random.Random(rng.getrandbits(64)), targets, mix) for _ in range(CLIENTS)]
        self.threads = [
            threading.Thread(
                target=run_client,
                args=(proxy.port, context, plan, self.results[i], deadline),
                name=f"crash-client-{i}",
                daemon=True,
            )
            for i, plan in enumerate(plans)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> list[Result]:
        end = time.monotonic() + JOIN_TIMEOUT
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        assert not stuck, f"clients still running after {JOIN_TIMEOUT:g}s: {stuck}"
        return [r for results in self.results for r in results]


def wrong_bodies(results: list[Result]) -> list[str]:
    return [
        f"{r.target.host}{r.target.path}: {r.received} bytes with sha256 {r.digest}, origin sent {r.target.size} "
        f"bytes with sha256 {r.target.digest} (Content-Length {r.length})"
        for r in results
        if r.complete and (r.digest != r.target.digest or r.received != r.target.size)
    ]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as body:
        while chunk := body.read(MiB):
            digest.update(chunk)
    return digest.hexdigest()


def index_entries(cache_dir: Path) -> dict[str, dict[str, object]]:
    """Every entry of the store's index. Store has no public iterator, so its diskcache directory is opened
    directly (only while no proxy runs; opening rewrites its settings rows with the values they hold)."""
    index = diskcache.Cache(str(cache_dir / "index"))
    try:
        entries = {}
        for key in list(index.iterkeys()):
            raw = index.get(key)
            if raw is not None:
                entries[key] = raw
        return entries
    finally:
        index.close()


def check_store(cache_dir: Path, targets: list[Target], where: str) -> RoundStats:
    """Open the store as the proxy does at start-up (which empties tmp/) and check every entry's blob."""
    stats = RoundStats()
    tmp = cache_dir / "tmp"
    leftovers = sorted(p.stat().st_size for p in tmp.iterdir()) if tmp.is_dir() else []
    stats.leftover_tmp = len(leftovers)
    stats.leftover_sizes = leftovers
    store = Store(cache_dir)
    try:
        assert not list(tmp.iterdir()), f"{where}: temporary files survived the start-up cleanup"
        expected = {t.key: t.stored_digest for t in targets}
        problems = []
        entries = index_entries(cache_dir)
        for key, raw in entries.items():
            digest, size = str(raw["digest"]), raw["size"]
            stats.kinds[key.split(":", 1)[0]] += 1
            blob = store.blob_path(digest)
            if not blob.is_file():
                problems.append(f"{key}: its blob {digest} is missing")
                continue
            actual = sha256_of(blob)
            if actual != digest:
                problems.append(f"{key}: blob {digest} hashes to {actual}")
            if blob.stat().st_size != size:
                problems.append(f"{key}: blob is {blob.stat().st_size} bytes, the entry says {size}")
            if key in expected and digest != expected[key]:
                problems.append(f"{key}: stored digest {digest}, the origin's body has {expected[key]}")
        for target in (t for t in targets if t.kind == "archive"):
            learned = store.get_meta(f"archive-sha256:{target.host}{target.path}")  # rust_dist's meta key
            if learned is not None and learned != target.digest:
                problems.append(f"{target.path}: the manifest hash the store learned is {learned}")
        assert not problems, f"{where}: " + "\n".join(problems)
        report = store.verify()
        assert report.clean, f"{where}: verify found corrupt {report.corrupt}, missing {report.missing}"
        stats.entries = len(entries)
    finally:
        store.close()
    return stats


def wait_for_fsync(pid: int, deadline: float) -> bool:
    """Poll the threads of process `pid` until one is inside fsync(2) or fdatasync(2) (True) or the deadline passes, or
    their system calls cannot be read (False: the caller kills at a random moment instead)."""
    if FSYNC_SYSCALLS is None:
        return False
    try:
        Path(f"/proc/{pid}/syscall").read_bytes()
    except OSError:
        return False  # no /proc, no syscall file in this kernel, or not allowed to look
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            with os.scandir(tasks) as threads:
                for task in threads:
                    with open(os.path.join(task.path, "syscall"), "rb") as syscall:
                        if syscall.read().split(b" ", 1)[0] in FSYNC_SYSCALLS:
                            return True
        except FileNotFoundError:
            pass  # a thread ended between listing and reading
        except OSError:
            return False
        time.sleep(0.0005)
    return False


def kill(proxy: ProxyProcess) -> None:
    process = proxy.process
    assert process is not None
    assert process.poll() is None, f"the proxy died before it was killed ({process.returncode}):\n{proxy.log()[-4000:]}"
    process.kill()
    process.wait(10)
    proxy.process = None


def proxy_args(crates: FakeCratesIo, dist: FakeRustDist, tls: OriginTLS, max_size: int | None) -> list[str]:
    args = [*upstream_args(crates, tls), "--upstream", f"static.rust-lang.org={dist.url}"]
    return [*args, "--max-size", str(max_size)] if max_size else args


def publish(dist: FakeRustDist) -> PublishedRelease:
    release = dist.publish("9.98.0", "2026-04-14", pad_bytes=PADS)
    for pkg, pad in PADS.items():
        assert dist.file(release.archive_path(pkg)).stat().st_size > pad
    return release


def test_sigkill_at_random_moments_never_corrupts_the_store_or_a_client(
    tmp_path: Path, crates_origin: FakeCratesIo, dist: FakeRustDist, origin_tls: OriginTLS
) -> None:
    seed = int(os.environ.get(SEED_ENV) or secrets.randbits(32))
    print(f"crash torture seed: {seed} (replay with {SEED_ENV}={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    targets = make_targets(crates_origin, dist, publish(dist), origin_tls)
    assert sum(t.size for t in targets) > MAX_SIZE * 1.5, "the size cap would not make anything go"
    proxy = ProxyProcess(tmp_path / "proxy", proxy_args(crates_origin, dist, origin_tls, MAX_SIZE))
    totals = Counter[str]()
    try:
        for round_number in range(1, KILL_ROUNDS + 1):
            assert time.monotonic() - started < TEST_DEADLINE, f"seed {seed}: over {TEST_DEADLINE:g}s"
            where = f"seed {seed}, round {round_number}"
            proxy.start()
            clients = ClientRound(proxy, targets, rng)
            in_fsync = rng.random() < IN_FSYNC_SHARE
            delay = rng.uniform(*KILL_AFTER)
            clients_started = time.monotonic()
            clients.start()
            assert proxy.process is not None
            if in_fsync and wait_for_fsync(proxy.process.pid, clients_started + IN_FSYNC_WAIT):
                moment = "inside fsync"
                totals["in_fsync"] += 1
            else:
                time.sleep(max(0.0, clients_started + delay - time.monotonic()))
                moment = "no fsync seen" if in_fsync else "at random"
            moment += f", {(time.monotonic() - clients_started) * 1000:.0f} ms after the clients started"
            kill(proxy)
            results = clients.join()
            wrong = wrong_bodies(results)
            assert not wrong, f"{where}: a client received a complete but wrong body:\n" + "\n".join(wrong)
            stats = check_store(proxy.cache_dir, targets, where)
            complete = sum(r.complete for r in results)
            totals.update(complete=complete, failed=len(results) - complete, leftover_tmp=stats.leftover_tmp)
            print(
                f"round {round_number}: killed {moment}, {complete}/{len(results)} complete, "
                f"temp files {stats.leftover_sizes} cleaned, {stats.entries} entries {dict(stats.kinds)}"
            )
        # The kills must have landed mid-download, and clients must have got bodies, or nothing was tested.
        assert totals["leftover_tmp"] > 0 and totals["complete"] > 0, f"seed {seed}: {dict(totals)}"

        # No more kills (and no size cap, whose eviction can fail a hit: see the test below): every client
        # gets every body, whole and right, from the store the crashes left.
        proxy.args = proxy_args(crates_origin, dist, origin_tls, None)
        proxy.start()
        clients = ClientRound(proxy, targets, rng)
        final_started = time.monotonic()
        clients.start()
        results = clients.join()
        print(f"final round: {len(results)} requests in {time.monotonic() - final_started:.1f}s")
        failures = [r.describe() for r in results if not r.complete]
        assert not failures, f"seed {seed}, final round: clients failed:\n" + "\n".join(failures)
        wrong = wrong_bodies(results)
        assert not wrong, f"seed {seed}, final round: wrong bodies:\n" + "\n".join(wrong)
        assert proxy.stop() == 0, f"the proxy did not exit cleanly on SIGTERM:\n{proxy.log()[-4000:]}"
        final = check_store(proxy.cache_dir, targets, f"seed {seed}, after the final round")
        assert final.leftover_tmp == 0, "a cleanly stopped proxy left temporary files"
    finally:
        if proxy.process is not None and proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait(10)
    print(f"seed {seed}: {dict(totals)} in {time.monotonic() - started:.1f}s")
    assert "Traceback" not in proxy.log(), proxy.log()[-4000:]


CAP_PASSES = 4
CAP_MIX = {"crate": 40, "index": 10, "archive": 50}


def test_size_cap_eviction_never_fails_a_concurrent_hit(
    start_proxy: ProxyFactory, crates_origin: FakeCratesIo, dist: FakeRustDist, origin_tls: OriginTLS
) -> None:
    """Found by the crash torture: with --max-size, no kill and no fault, 50 clients asking for bodies that
    keep evicting each other must all get them whole. A hit looked up just before another request's commit
    evicts its blob must still be answered (or fetched again), never a 404 or a 503."""
    seed = int(os.environ.get(SEED_ENV) or secrets.randbits(32))
    rng = random.Random(seed)
    targets = make_targets(crates_origin, dist, publish(dist), origin_tls)
    proxy = start_proxy(proxy_args(crates_origin, dist, origin_tls, MAX_SIZE))
    for number in range(1, CAP_PASSES + 1):
        clients = ClientRound(proxy, targets, rng, CAP_MIX)
        clients.start()
        results = clients.join()
        wrong = wrong_bodies(results)
        assert not wrong, f"seed {seed}, pass {number}: wrong bodies:\n" + "\n".join(wrong)
        failures = [r.describe() for r in results if not r.complete]
        assert not failures, f"seed {seed}, pass {number}: {len(failures)} of {len(results)} requests failed:\n" + (
            "\n".join(failures)
        )
    assert proxy.stop() == 0
    check_store(proxy.cache_dir, targets, f"seed {seed}, after {CAP_PASSES} passes")
