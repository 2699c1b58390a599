"""The main benchmark: cargo and rustup through ruststash against direct access and against Squid, one invocation.

Run from the repository root: ``python -m bench.compare`` (full: cargo and rustup workloads, every scenario,
5 runs; about 45 minutes on 2 cores) or ``python -m bench.compare --quick`` (ripgrep, 3 runs, a subset; a few
minutes).

Workloads (each with its own local origins on 127.0.0.1, tests/origins/):

- cargo / ripgrep: a fake crates.io whose registry has the names, versions and dependency graph of
  ../shared/workloads/<name>.Cargo.lock (523 / 52 packages, real ``.crate`` files of realistic sizes, 54 /
  6 MB). One client run is ``cargo generate-lockfile`` then ``cargo fetch`` in a fresh HOME and CARGO_HOME.
  Index files say ``max-age=0`` (validators honoured), so every warm index request is a revalidation.
- rustup: a fake static.rust-lang.org with one release, 1.95.0 of 2026-04-16, whose host archives carry
  incompressible padding: rustc 70 MiB, rust-std 30 MiB, cargo 10 MiB (``--archive-mib``), about the
  compressed sizes of the real x86_64-unknown-linux-gnu archives. One client run is ``rustup toolchain install
  1.95.0 --profile minimal`` with a fresh RUSTUP_HOME and CARGO_HOME.

Clients always use the real host names (HTTPS_PROXY and the proxy's CA) except in the direct scenarios, where
cargo's source replacement / RUSTUP_DIST_SERVER point them at the origins (no proxy: the floor).

Scenarios: see SCENARIOS below and bench/README.md. Each proxy run gets a new proxy process (ruststash or
Squid) on an empty cache (cold) or on a copy of a cache filled once by an untimed run (warm). Per scenario:
median wall time (min-max), ratio to direct (with the same number of clients), proxy CPU seconds and CPU per
request (utime + stime of the proxy's process tree over the run), proxy peak RSS (VmHWM of its main process,
which lives for that run only), requests and outcomes, requests and bytes upstream sent.

Targets from the issue are evaluated and printed (met / not met), never asserted. A Markdown report is printed
and appended to docs/benchmarks.md. Everything talks to 127.0.0.1 only; every client command has a timeout;
every process started here is stopped here, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bench.common import (
    CLIENT_TMPFS_MIN_FREE,
    KIB,
    MIB,
    WORKLOADS_DIR,
    cache_place_text,
    crates_body_sizes,
    default_client_dir,
    default_workdir,
    file_creation_ms,
    machine_line,
    measure_file_creation_at_end,
    place_text,
    publish,
    size_text,
    stop_proxy,
)
from bench.memory import DEFAULT_OUTPUT, machine_description, proc_status_kib
from bench.slow_upstream import read_access
from bench.squid import Peer, SquidCA, SquidProcess, copy_cache, squid_available, squid_version
from tests.harness import ProxyProcess
from tests.origins.clients import CargoSandbox, source_replacement_toml, write_consumer
from tests.origins.crates_io import DIRECT_DL, FakeCratesIo, proxy_upstream_args
from tests.origins.registry import Registry, build_registry, spec_from_lockfile
from tests.origins.rustlang import FakeRustDist, PublishedRelease
from tests.origins.rustup_client import make_rustup_client
from tests.origins.tls import OriginTLS, make_origin_tls

REGISTRY_CACHE = Path(tempfile.gettempdir()) / "ruststash-bench-registries"
MAX_RUNS = 20
SETTLE_TIMEOUT = 5.0
RUST_VERSION, RUST_DATE = "1.95.0", "2026-04-16"
DEFAULT_ARCHIVE_MIB = {"rustc": 70, "rust-std": 30, "cargo": 10}
# Throttle per workload: seconds before each response, link rate (bytes/s). Cold runs must stay inside the
# proxy's 30 s --miss-timeout for a whole crate and cargo's 30 s low-speed limit (see bench.slow_upstream).
THROTTLE = {"ripgrep": (0.3, 256 * KIB), "cargo": (0.3, 4096 * KIB), "rustup": (0.3, 16 * MIB)}
ALL_WORKLOADS = ("ripgrep", "cargo", "rustup")
QUICK_SCENARIOS = ("direct", "cold", "warm", "warm-hung", "direct-c4", "warm-c4", "squid-cold", "squid-warm")


@dataclass(frozen=True)
class Scenario:
    name: str
    via: str  # "direct", "ruststash" or "squid"
    warm: bool = False
    fault: str | None = None  # "throttle", "hang" or "gone"
    clients: int = 1
    what: str = ""
    primed: bool = False  # the same proxy served the workload once (untimed) just before: a long-running proxy

    @property
    def direct_name(self) -> str:
        return "direct" if self.clients == 1 else f"direct-c{self.clients}"


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("direct", "direct", what="no proxy, clients straight to the origins: the floor"),
        Scenario("cold", "ruststash", what="empty cache"),
        Scenario("warm", "ruststash", True, what="cache filled beforehand"),
        Scenario("warm-gone", "ruststash", True, "gone", what="warm; origins stopped (connection refused)"),
        Scenario("warm-throttled", "ruststash", True, "throttle", what="warm; upstream delayed and rate-capped"),
        Scenario("cold-throttled", "ruststash", False, "throttle", what="empty cache; upstream throttled"),
        Scenario("warm-hung", "ruststash", True, "hang", what="warm; upstream accepts and never answers"),
        Scenario("warm-primed", "ruststash", True, primed=True, what="warm; the proxy served this workload once"),
        Scenario("direct-c4", "direct", clients=4, what="4 clients at once, no proxy"),
        Scenario("warm-c4", "ruststash", True, clients=4, what="4 clients at once, each its own home"),
        Scenario("direct-c8", "direct", clients=8, what="8 clients at once, no proxy"),
        Scenario("warm-c8", "ruststash", True, clients=8, what="8 clients at once"),
        Scenario("squid-cold", "squid", what="Squid ssl-bump, empty cache"),
        Scenario("squid-warm", "squid", True, what="Squid, cache filled beforehand"),
        Scenario("squid-warm-gone", "squid", True, "gone", what="Squid warm; origins stopped"),
        Scenario("squid-warm-primed", "squid", True, primed=True, what="Squid warm; it served this workload once"),
        Scenario("squid-warm-c4", "squid", True, clients=4, what="Squid warm, 4 clients"),
        Scenario("squid-warm-c8", "squid", True, clients=8, what="Squid warm, 8 clients"),
    )
}

SINGLE_CLIENT = tuple(name for name, s in SCENARIOS.items() if s.clients == 1)
MULTI_CLIENT = tuple(name for name, s in SCENARIOS.items() if s.clients > 1)
# Without --workloads and --scenarios: every scenario, with concurrency measured on ripgrep rather than on
# the 523-crate workload (whose 4- and 8-client rows alone took about 16 of a 45-minute run).
DEFAULT_PLAN = (("cargo", SINGLE_CLIENT), ("ripgrep", MULTI_CLIENT), ("rustup", tuple(SCENARIOS)))


# --------------------------------------------------------------------------------------------------
# Processes


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Squid's certificate helpers, for example)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 1000:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def children_cpu_seconds() -> float:
    """User + system time of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its live descendants (all threads), plus children it reaped."""
    total, found = 0.0, False
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found = True
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total if found else None


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class Run:
    ok: bool
    wall: float
    error: str = ""
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    proxy_cpu: float | None = None
    # user + system time of the clients (cargo, rustup and what they ran) during the run
    client_cpu: float | None = None
    peak_kib: int | None = None
    upstream_requests: int = 0
    upstream_bytes: int = 0
    # (bytes, ms) of the largest body the proxy served from its cache during the run
    largest_hit: tuple[int, float] | None = None
    # (bytes, seconds) of one large cached body fetched alone with curl after the run (`Workload.large_body`)
    single_fetch: tuple[int, float] | None = None


@dataclass
class Row:
    workload: str
    scenario: Scenario
    runs: list[Run] = field(default_factory=list)

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def median(self, attribute: str) -> float | None:
        values = [getattr(r, attribute) for r in self.good if getattr(r, attribute) is not None]
        return statistics.median(values) if values else None

    def single_fetch_mib_s(self) -> float | None:
        rates = [b / MIB / s for r in self.good if r.single_fetch for b, s in [r.single_fetch] if s > 0]
        return statistics.median(rates) if rates else None

    def largest_hit_mib_s(self) -> float | None:
        rates = [b / MIB / (ms / 1000) for r in self.good if r.largest_hit for b, ms in [r.largest_hit] if ms > 0]
        return statistics.median(rates) if rates else None


# --------------------------------------------------------------------------------------------------
# Workloads

ClientRun = Callable[[], str]  # runs one client to its end; returns an error or ""


class Workload:
    """Origins for one workload, and how to run a client directly or through a proxy."""

    name = ""
    description = ""

    def __init__(self, tls: OriginTLS, timeout: float) -> None:
        self.tls = tls
        self.timeout = timeout
        self.delay, self.rate = THROTTLE.get(self.name, (0.3, 256 * KIB))

    def proxy_args(self) -> list[str]:
        raise NotImplementedError

    def peers(self) -> list[Peer]:
        raise NotImplementedError

    def direct_client(self, root: Path) -> ClientRun:
        raise NotImplementedError

    def proxied_client(self, root: Path, proxy_url: str, ca: Path) -> ClientRun:
        raise NotImplementedError

    def reset_counts(self) -> None:
        raise NotImplementedError

    def large_body(self) -> str | None:
        """The URL of this workload's largest body, fetched alone after a warm run (None: not measured)."""
        return None

    def upstream(self, direct: bool) -> tuple[int, int]:
        """(requests the origins received, bytes of 200 bodies sent) since `reset_counts`, once settled."""
        raise NotImplementedError

    def set_fault(self, mode: str) -> None:
        raise NotImplementedError

    def stop_origins(self) -> None:
        raise NotImplementedError

    def restore(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _settled(count: Callable[[], int]) -> None:
    """Wait until no new request arrived for 0.5 s (at most SETTLE_TIMEOUT)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return
        time.sleep(0.1)


class CargoWorkload(Workload):
    def __init__(self, name: str, registry: Registry, tls: OriginTLS, timeout: float) -> None:
        self.name = name
        super().__init__(tls, timeout)
        self.registry = registry
        self.description = (
            f"{name}.Cargo.lock: {len(registry.crates)} crates, {registry.total_bytes() / MIB:.1f} MiB; "
            "`cargo generate-lockfile` + `cargo fetch`"
        )
        # Behind a proxy: index files max-age=0 with validators, so each warm index request is a revalidation.
        self.origin = FakeCratesIo(registry, tls, index_cache_control="public,max-age=0")
        self.direct_origin = FakeCratesIo(registry, tls, dl=DIRECT_DL, index_cache_control="public,max-age=0")
        self.sizes = crates_body_sizes(self.origin)
        self.deps = registry.consumer_deps()

    def proxy_args(self) -> list[str]:
        return proxy_upstream_args(self.origin, self.tls)

    def peers(self) -> list[Peer]:
        return [
            Peer("index.crates.io", urlparse(self.origin.index_url).port or 443),
            Peer("static.crates.io", urlparse(self.origin.static_url).port or 443),
        ]

    def _client(self, box: CargoSandbox, root: Path) -> ClientRun:
        project = write_consumer(root / "project", self.deps)

        def run() -> str:
            for command in ("generate-lockfile", "fetch"):
                try:
                    result = box.run([command], project, check=False, timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    return f"cargo {command}: no exit within {self.timeout:g} s"
                if result.returncode != 0:
                    tail = " / ".join(result.stderr.strip().splitlines()[-2:])
                    return f"cargo {command} exited {result.returncode}: {tail}"
            return ""

        return run

    def direct_client(self, root: Path) -> ClientRun:
        box = CargoSandbox(
            root / "client",
            config_toml=source_replacement_toml(self.direct_origin.index_url),
            env_extra={"CARGO_HTTP_CAINFO": str(self.tls.ca_pem)},
        )
        return self._client(box, root)

    def proxied_client(self, root: Path, proxy_url: str, ca: Path) -> ClientRun:
        env = {"HTTPS_PROXY": proxy_url, "https_proxy": proxy_url, "CARGO_HTTP_CAINFO": str(ca)}
        return self._client(CargoSandbox(root / "client", env_extra=env), root)

    def reset_counts(self) -> None:
        self.origin.reset_counts()
        self.direct_origin.reset_counts()

    def upstream(self, direct: bool) -> tuple[int, int]:
        origin = self.direct_origin if direct else self.origin
        _settled(lambda: len(origin.records()))
        records = origin.records()
        return len(records), sum(self.sizes.get(r.path, 0) for r in records if r.status == 200)

    def set_fault(self, mode: str) -> None:
        if mode == "throttle":
            self.origin.set_fault("/", "throttle", delay=self.delay, rate=self.rate, chunk=16 * KIB)
        elif mode == "hang":
            self.origin.set_fault("/", "hang", hang_max=2 * self.timeout + 60)
        elif mode == "gone":
            self.origin.stop()

    def stop_origins(self) -> None:
        self.origin.stop()

    def restore(self) -> None:
        self.origin.restore()
        self.origin.start()

    def close(self) -> None:
        self.origin.close()
        self.direct_origin.close()


class RustupWorkload(Workload):
    name = "rustup"

    def __init__(self, tls: OriginTLS, workdir: Path, archive_mib: dict[str, int], timeout: float) -> None:
        super().__init__(tls, timeout)
        self.dist = FakeRustDist(tls, workdir / "rust-dist")
        print(f"publishing {RUST_VERSION} with padded archives {archive_mib} (cached after the first build) ...")
        pads = {pkg: mib * MIB for pkg, mib in archive_mib.items()}
        self.release: PublishedRelease = self.dist.publish(RUST_VERSION, RUST_DATE, pad_bytes=pads)
        sizes = {
            pkg: self.dist.file(self.release.archive_path(pkg)).stat().st_size / MIB for pkg in ("rustc", "rust-std")
        }
        sizes["cargo"] = self.dist.file(self.release.archive_path("cargo")).stat().st_size / MIB
        self.description = (
            f"`rustup toolchain install {RUST_VERSION} --profile minimal`: rustc {sizes['rustc']:.0f} MiB, rust-std "
            f"{sizes['rust-std']:.0f} MiB, cargo {sizes['cargo']:.0f} MiB (.tar.xz, incompressible padding)"
        )

    def proxy_args(self) -> list[str]:
        return ["--upstream", f"static.rust-lang.org={self.dist.url}", "--upstream-ca", str(self.tls.ca_pem)]

    def peers(self) -> list[Peer]:
        return [Peer("static.rust-lang.org", urlparse(self.dist.url).port or 443)]

    def _client(self, root: Path, **kwargs: object) -> ClientRun:
        client = make_rustup_client(root / "client", **kwargs)  # type: ignore[arg-type]

        def run() -> str:
            try:
                result = client.rustup(
                    "toolchain",
                    "install",
                    RUST_VERSION,
                    "--profile",
                    "minimal",
                    "--no-self-update",
                    check=False,
                    timeout=self.timeout,
                )
            except subprocess.TimeoutExpired:
                return f"rustup: no exit within {self.timeout:g} s"
            if result.returncode != 0:
                return f"rustup exited {result.returncode}: " + " / ".join(result.stderr.strip().splitlines()[-2:])
            return ""

        return run

    def direct_client(self, root: Path) -> ClientRun:
        return self._client(root, dist_server=self.dist.url, ca_pem=self.tls.ca_pem)

    def proxied_client(self, root: Path, proxy_url: str, ca: Path) -> ClientRun:
        return self._client(root, proxy=proxy_url, ca_pem=ca)

    def reset_counts(self) -> None:
        self.dist.reset_counts()

    def large_body(self) -> str:
        return f"https://static.rust-lang.org{self.release.archive_path('rustc')}"

    def upstream(self, direct: bool) -> tuple[int, int]:
        _settled(lambda: len(self.dist.records()))
        records = self.dist.records()
        total = 0
        for record in records:
            if record.status == 200:
                with contextlib.suppress(OSError):
                    total += self.dist.file(record.path).stat().st_size
        return len(records), total

    def set_fault(self, mode: str) -> None:
        if mode == "throttle":
            self.dist.set_fault("/", "throttle", delay=self.delay, rate=self.rate, chunk=64 * KIB)
        elif mode == "hang":
            self.dist.set_fault("/", "hang", hang_max=2 * self.timeout + 60)
        elif mode == "gone":
            self.dist.stop()

    def stop_origins(self) -> None:
        self.dist.stop()

    def restore(self) -> None:
        self.dist.restore()
        self.dist.start()

    def close(self) -> None:
        self.dist.close()


# --------------------------------------------------------------------------------------------------
# Proxies under test


@dataclass
class Proxied:
    """A running proxy as a scenario sees it."""

    url: str
    ca: Path
    pid: int
    # (requests, outcomes, largest hit) of the requests after the first `since`
    access: Callable[[int], tuple[int, Counter[str], tuple[int, float] | None]]


def ruststash_access(proxy: ProxyProcess, since: int = 0) -> tuple[int, Counter[str], tuple[int, float] | None]:
    records = read_access(proxy.log())[since:]
    hits = [(int(r.fields.get("bytes", "0") or 0), r.ms) for r in records if r.outcome == "HIT"]
    return len(records), Counter(r.outcome for r in records), max(hits, default=None)


def squid_access(squid: SquidProcess, since: int = 0) -> tuple[int, Counter[str], tuple[int, float] | None]:
    lines = [line.split() for line in squid.access()]
    # Leave out the CONNECT lines and the "NONE_NONE/000" line of a connection closed between requests.
    requests = [f for f in lines if len(f) > 6 and f[5] != "CONNECT" and not f[3].endswith("/000")][since:]
    outcomes = Counter(f[3].split("/")[0] for f in requests)
    hits = [(int(f[4]), float(f[1])) for f in requests if "HIT" in f[3] and f[4].isdigit()]
    return len(requests), outcomes, max(hits, default=None)


class Bench:
    def __init__(self, workdir: Path, client_dir: Path, keep: bool, timeout: float, profile: Path | None) -> None:
        self.workdir = workdir
        self.client_dir = client_dir  # the clients' homes and projects (proxies' caches stay in workdir)
        self.keep = keep
        self.timeout = timeout
        self.profile = profile
        self.profiled: set[tuple[str, str]] = set()  # (workload, scenario) profiled already
        # What creating a file costs in the work directory, at the start and (`creation_measured_at_end`) the end.
        self.file_creation_ms: list[float] = [file_creation_ms(workdir)]
        self.tls = make_origin_tls(workdir / "tls")
        self.squid_ca: SquidCA | None = None
        self.ssl_db = workdir / "squid-ssl-db"
        self.templates: dict[tuple[str, str], Path] = {}
        self.fill_seconds: dict[tuple[str, str], float] = {}
        self.warnings: list[str] = []
        self.profile_notes: list[str] = []

    # ---- proxies

    @contextlib.contextmanager
    def ruststash(self, workload: Workload, root: Path, cache: Path | None) -> Iterator[Proxied]:
        proxy = ProxyProcess(root / "proxy", workload.proxy_args(), cache_dir=cache)
        try:
            proxy.start()
            assert proxy.process is not None
            yield Proxied(proxy.url, proxy.bundle, proxy.process.pid, lambda since: ruststash_access(proxy, since))
        finally:
            if (warning := stop_proxy(proxy, f"{workload.name} {root.name}")) is not None:
                self.warnings.append(warning)

    @contextlib.contextmanager
    def squid(self, workload: Workload, root: Path, cache: Path | None) -> Iterator[Proxied]:
        if self.squid_ca is None:
            self.squid_ca = SquidCA(self.workdir / "squid-ca")
        squid = SquidProcess(root / "squid", workload.peers(), self.tls.ca_pem, self.squid_ca, self.ssl_db, cache)
        try:
            squid.start()
            assert squid.pid is not None
            yield Proxied(squid.url, self.squid_ca.cert_pem, squid.pid, lambda since: squid_access(squid, since))
        finally:
            code = squid.stop()
            if code not in (0, -15):
                self.warnings.append(f"{workload.name} {root.name}: squid exited with {code}")

    def proxy(
        self, via: str, workload: Workload, root: Path, cache: Path | None
    ) -> contextlib.AbstractContextManager[Proxied]:
        return self.ruststash(workload, root, cache) if via == "ruststash" else self.squid(workload, root, cache)

    # ---- warm caches

    def template(self, workload: Workload, via: str) -> Path:
        """A cache filled by one untimed cold run through `via` (made on first use)."""
        key = (workload.name, via)
        if key not in self.templates:
            root = self.workdir / f"fill-{workload.name}-{via}"
            cache = root / "cache"
            print(f"  filling a {via} cache for {workload.name} (untimed) ...", flush=True)
            with self.proxy(via, workload, root, cache) as proxied, self.clients_root(root) as clients_root:
                client = workload.proxied_client(clients_root, proxied.url, proxied.ca)
                began = time.monotonic()
                error = client()
                self.fill_seconds[key] = time.monotonic() - began
            if error:
                raise RuntimeError(f"filling the {via} cache for {workload.name} failed: {error}")
            self.templates[key] = cache
        return self.templates[key]

    @contextlib.contextmanager
    def clients_root(self, root: Path) -> Iterator[Path]:
        """Where the clients of the run in `root` keep their homes: under `client_dir`, removed afterwards
        (unless --keep)."""
        clients_root = self.client_dir / root.name
        clients_root.mkdir(parents=True)
        try:
            yield clients_root
        finally:
            if not self.keep:
                shutil.rmtree(clients_root, ignore_errors=True)

    # ---- one run

    def run(self, workload: Workload, scenario: Scenario, number: int) -> Run:
        root = self.workdir / f"{workload.name}-{scenario.name}-{number}"
        root.mkdir(parents=True)
        try:
            if scenario.via == "direct":
                return self._direct(workload, scenario, root)
            return self._proxied(workload, scenario, root, number)
        finally:
            workload.restore()
            if not self.keep:
                shutil.rmtree(root, ignore_errors=True)

    def _clients(self, clients: list[ClientRun]) -> tuple[float, float, str]:
        """Run the clients at once; (wall seconds until the last ended, their CPU seconds, first error or "").
        Their CPU is that of the child processes that ended meanwhile: only the clients end during a run."""
        began, cpu_before = time.monotonic(), children_cpu_seconds()
        with ThreadPoolExecutor(len(clients)) as pool:
            errors = list(pool.map(lambda client: client(), clients))
        wall, cpu = time.monotonic() - began, children_cpu_seconds() - cpu_before
        failed = [e for e in errors if e]
        return wall, cpu, (f"{len(failed)}/{len(clients)} clients failed: {failed[0]}" if failed else "")

    def _direct(self, workload: Workload, scenario: Scenario, root: Path) -> Run:
        with self.clients_root(root) as clients_root:
            clients = [workload.direct_client(clients_root / f"c{i}") for i in range(scenario.clients)]
            workload.reset_counts()
            wall, client_cpu, error = self._clients(clients)
        run = Run(not error, wall, error, client_cpu=client_cpu)
        run.upstream_requests, run.upstream_bytes = workload.upstream(direct=True)
        run.requests = run.upstream_requests
        return run

    def _proxied(self, workload: Workload, scenario: Scenario, root: Path, number: int) -> Run:
        cache = None
        if scenario.warm:
            template = self.template(workload, scenario.via)
            cache = root / "cache"
            if scenario.via == "squid":
                copy_cache(template, cache)
            else:
                shutil.copytree(template, cache)
        with self.proxy(scenario.via, workload, root, cache) as proxied, self.clients_root(root) as clients_root:
            clients = [
                workload.proxied_client(clients_root / f"c{i}", proxied.url, proxied.ca)
                for i in range(scenario.clients)
            ]
            since = 0
            if scenario.primed:
                primer = workload.proxied_client(clients_root / "primer", proxied.url, proxied.ca)
                if error := primer():
                    raise RuntimeError(f"priming {scenario.via} for {workload.name} failed: {error}")
                since = proxied.access(0)[0]
            if scenario.fault:
                workload.set_fault(scenario.fault)
            workload.reset_counts()
            profiler = self._start_profile(workload, scenario, number, proxied.pid)
            cpu_before = tree_cpu_seconds(proxied.pid)
            wall, client_cpu, error = self._clients(clients)
            cpu_after = tree_cpu_seconds(proxied.pid)
            peak = proc_status_kib(proxied.pid, "VmHWM")
            self._stop_profile(profiler)
            requests, outcomes, largest_hit = proxied.access(since)
            single = None
            if scenario.warm and scenario.clients == 1 and not scenario.fault and not error:
                single = self._fetch_alone(workload, proxied)
        # The proxy is stopped: end hangs so the origin records those requests, then count.
        workload.restore()
        run = Run(not error, wall, error, requests, outcomes, client_cpu=client_cpu, peak_kib=peak)
        run.largest_hit = largest_hit
        run.single_fetch = single
        if cpu_before is not None and cpu_after is not None:
            run.proxy_cpu = cpu_after - cpu_before
        run.upstream_requests, run.upstream_bytes = workload.upstream(direct=False)
        return run

    def _fetch_alone(self, workload: Workload, proxied: Proxied) -> tuple[int, float] | None:
        """(bytes, seconds) of the workload's large body fetched once more, alone, with curl through the
        proxy: what the proxy serves a cached large body at, without rustup's parallel downloads and hashing."""
        url, curl = workload.large_body(), shutil.which("curl")
        if url is None or curl is None:
            return None
        command = [curl, "-sS", "-o", os.devnull, "--proxy", proxied.url, "--cacert", str(proxied.ca)]
        command += ["--max-time", str(int(self.timeout)), "-w", "%{http_code} %{size_download} %{time_total}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout + 10, check=False)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) != 3 or fields[0] != "200":
            self.warnings.append(f"curl {url} through {proxied.url}: {done.returncode} {done.stdout} {done.stderr}")
            return None
        return int(fields[1]), float(fields[2])

    # ---- profiling (py-spy: the first run of each ruststash scenario of each workload)

    def _start_profile(
        self, workload: Workload, scenario: Scenario, number: int, pid: int
    ) -> subprocess.Popen[bytes] | None:
        key = (workload.name, scenario.name)
        if self.profile is None or key in self.profiled or scenario.via != "ruststash":
            return None
        self.profiled.add(key)
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            if not self.profile_notes:
                self.profile_notes.append("py-spy not found next to the Python interpreter: no profile")
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        out = self.profile / f"{workload.name}-{scenario.name}-{number}.collapsed"
        command = [str(py_spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--threads"]
        command += ["--output", str(out)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # let py-spy attach before the clients start
        during = f"{workload.name} {scenario.name} #{number}"
        self.profile_notes.append(f"py-spy record ({' '.join(command[1:])}) during {during}")
        return process

    def _stop_profile(self, process: subprocess.Popen[bytes] | None) -> None:
        if process is None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --------------------------------------------------------------------------------------------------
# Report


def mix_text(runs: list[Run]) -> str:
    if not runs:
        return "—"
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.outcomes)
    parts = []
    for outcome, count in total.most_common():
        mean = count / len(runs)
        parts.append(f"{outcome} {mean:.0f}" if mean == int(mean) else f"{outcome} {mean:.1f}")
    return ", ".join(parts) or "—"


def render_table(rows: list[Row]) -> list[str]:
    header = (
        "| workload | scenario | ok runs | wall s (min-max) | x direct | client CPU s | proxy CPU s | "
        "proxy CPU ms/request | proxy peak RSS | requests | outcomes per run | upstream requests | from upstream |"
    )
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    medians = {(r.workload, r.scenario.name): r.median("wall") for r in rows}
    for row in rows:
        good = row.good
        wall = row.median("wall")
        spread = "—"
        if wall is not None:
            spread = f"{wall:.2f} ({min(r.wall for r in good):.2f}-{max(r.wall for r in good):.2f})"
        base = medians.get((row.workload, row.scenario.direct_name))
        ratio = "—" if wall is None or not base else f"{wall / base:.2f}"
        proxied = row.scenario.via != "direct"
        cpu, requests = row.median("proxy_cpu"), row.median("requests")
        ms_per_request = cpu_ms_per_request(row)
        per_request = "—" if ms_per_request is None else f"{ms_per_request:.1f}"
        peak, client_cpu = row.median("peak_kib"), row.median("client_cpu")
        up_req, up_bytes = row.median("upstream_requests"), row.median("upstream_bytes")
        cells = [
            row.workload,
            f"{row.scenario.name} ({row.scenario.via})" if proxied else row.scenario.name,
            f"{len(good)}/{len(row.runs)}",
            spread,
            ratio,
            "—" if client_cpu is None else f"{client_cpu:.2f}",
            f"{cpu:.2f}" if proxied and cpu is not None else "—",
            per_request,
            f"{peak / KIB:.0f} MiB" if proxied and peak is not None else "—",
            "—" if requests is None else f"{requests:.0f}",
            mix_text(good) if proxied else "—",
            "—" if up_req is None else f"{up_req:.0f}",
            "—" if up_bytes is None else size_text(up_bytes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def cpu_ms_per_request(row: Row) -> float | None:
    """The proxy's median CPU time over its median count of logged requests, in ms (None for direct runs)."""
    cpu, requests = row.median("proxy_cpu"), row.median("requests")
    if row.scenario.via == "direct" or cpu is None or not requests:
        return None
    return cpu * 1000 / requests


# ruststash's scenarios and Squid's that cache the same way.
SQUID_PAIRS = (
    ("cold", "squid-cold"),
    ("warm", "squid-warm"),
    ("warm-gone", "squid-warm-gone"),
    ("warm-primed", "squid-warm-primed"),
    ("warm-c4", "squid-warm-c4"),
    ("warm-c8", "squid-warm-c8"),
)


def cpu_beside_squid(rows: list[Row]) -> str | None:
    """Proxy CPU per request of ruststash and Squid, scenario by scenario: steadier than wall times here, where a
    warm cargo run's wall time is mostly cargo's own CPU."""
    per_request = {(r.workload, r.scenario.name): cpu_ms_per_request(r) for r in rows}
    pairs = []
    for workload in sorted({r.workload for r in rows}):
        for ours_name, squid_name in SQUID_PAIRS:
            ours, squid = per_request.get((workload, ours_name)), per_request.get((workload, squid_name))
            if ours is not None and squid is not None:
                pairs.append(f"{workload} {ours_name} {ours:.1f} vs {squid:.1f}")
    if not pairs:
        return None
    return "Proxy CPU ms per request, ruststash vs Squid: " + "; ".join(pairs) + "."


@dataclass
class Verdict:
    target: str
    met: bool | None
    evidence: str

    def text(self) -> str:
        mark = {True: "met", False: "NOT met", None: "not measured"}[self.met]
        return f"- **{mark}**: {self.target} — {self.evidence}"


def large_body_verdict(rows: list[Row]) -> Verdict:
    """A cached large body ≥ 200 MiB/s: judged on curl fetching it alone after each warm rustup run (median);
    the rate rustup itself got (three downloads at once, hashing as it reads) and Squid's are given beside."""
    target = "a cached large body ≥ 200 MiB/s"
    rustup = {r.scenario.name: r for r in rows if r.workload == "rustup"}
    ours, squid = rustup.get("warm"), rustup.get("squid-warm")
    alone = ours.single_fetch_mib_s() if ours is not None else None
    if ours is None or alone is None:
        return Verdict(target, None, "no warm rustup run through ruststash with a curl fetch after it")
    size = max((r.single_fetch[0] for r in ours.good if r.single_fetch), default=0)
    evidence = f"{alone:.0f} MiB/s: the cached {size_text(size)} rustc archive fetched alone with curl after each "
    evidence += "warm run"
    if squid is not None and (squid_alone := squid.single_fetch_mib_s()) is not None:
        evidence += f" (Squid: {squid_alone:.0f} MiB/s)"
    if (in_run := ours.largest_hit_mib_s()) is not None:
        evidence += f"; {in_run:.0f} MiB/s as rustup read it during the run (body bytes / the proxy's `ms`; rustup "
        evidence += "downloads three archives at once and hashes as it reads)"
    return Verdict(target, alone >= 200, evidence)


# "The hit path must cost well under 1 ms of CPU per request" (the issue), taken as at most this: the Squid CPU
# per request the issue measured.
HIT_CPU_MS = 0.5


def hit_cpu_verdicts(rows: list[Row], cargo_workloads: list[str]) -> list[Verdict]:
    """The hit path's CPU per request, judged on warm-gone, where every request is answered from the cache
    without asking upstream (warm also revalidates half of its requests upstream)."""
    per_request = {(r.workload, r.scenario.name): cpu_ms_per_request(r) for r in rows}
    verdicts = []
    for w in cargo_workloads:
        target = f"the hit path well under 1 ms of CPU per request, here ≤ {HIT_CPU_MS} ms ({w} warm-gone)"
        ours = per_request.get((w, "warm-gone"))
        if ours is None:
            verdicts.append(Verdict(target, None, "warm-gone not run"))
            continue
        squid = per_request.get((w, "squid-warm-gone"))
        evidence = f"{ours:.2f} ms per request" + (f" (Squid {squid:.2f})" if squid is not None else "")
        verdicts.append(Verdict(target, ours <= HIT_CPU_MS, evidence))
    return verdicts


def evaluate_targets(rows: list[Row]) -> list[Verdict]:
    def wall(workload: str, scenario: str) -> float | None:
        for row in rows:
            if row.workload == workload and row.scenario.name == scenario:
                return row.median("wall")
        return None

    def row_of(workload: str, scenario: str) -> Row | None:
        return next((r for r in rows if r.workload == workload and r.scenario.name == scenario), None)

    verdicts: list[Verdict] = []
    cargo_workloads = [w for w in ("cargo", "ripgrep") if wall(w, "warm") is not None]
    for w in cargo_workloads:
        ours, squid = wall(w, "warm"), wall(w, "squid-warm")
        if ours is not None and squid is not None:
            verdicts.append(
                Verdict(
                    f"warm cargo fetch faster than Squid warm ({w})", ours < squid, f"{ours:.2f} s vs {squid:.2f} s"
                )
            )
        else:
            verdicts.append(Verdict(f"warm cargo fetch faster than Squid warm ({w})", None, "a scenario was not run"))
    ours, direct = wall("rustup", "warm"), wall("rustup", "direct")
    if ours is not None and direct is not None:
        verdicts.append(
            Verdict(
                "warm rustup ≤ 1.1x direct", ours <= 1.1 * direct, f"{ours:.2f} s = {ours / direct:.2f}x {direct:.2f} s"
            )
        )
    else:
        verdicts.append(Verdict("warm rustup ≤ 1.1x direct", None, "rustup warm or direct not run"))
    verdicts.append(large_body_verdict(rows))
    c8 = row_of("rustup", "warm-c8")
    if c8 is not None and c8.median("peak_kib") is not None:
        peak = max(r.peak_kib or 0 for r in c8.good) / KIB
        verdicts.append(
            Verdict(
                "peak RSS < 200 MB with 8 clients pulling large archives",
                peak * MIB < 200e6,
                f"{peak:.0f} MiB (largest over the runs; archives up to 70 MiB here, see bench.memory for 300 MiB)",
            )
        )
    else:
        verdicts.append(Verdict("peak RSS < 200 MB with 8 clients", None, "rustup warm-c8 not run"))
    for w in sorted({r.workload for r in rows}):
        hung, warm = wall(w, "warm-hung"), wall(w, "warm")
        if hung is not None and warm is not None:
            verdicts.append(
                Verdict(
                    f"hung upstream warm within 1.2x unfaulted warm ({w})",
                    hung <= 1.2 * warm,
                    f"{hung:.2f} s = {hung / warm:.2f}x {warm:.2f} s",
                )
            )
    verdicts.extend(hit_cpu_verdicts(rows, [w for w in ("cargo", "ripgrep") if any(r.workload == w for r in rows)]))
    compared, slower = [], []
    for w in sorted({r.workload for r in rows}):
        for ours_name, squid_name in SQUID_PAIRS:
            ours, squid = wall(w, ours_name), wall(w, squid_name)
            if ours is None or squid is None:
                continue
            compared.append(f"{w} {ours_name} {ours:.2f} vs {squid:.2f} s")
            if ours >= squid:
                slower.append(f"{w} {ours_name} ({ours:.2f} s vs {squid:.2f} s)")
    if compared:
        verdicts.append(
            Verdict(
                "faster than Squid in every scenario where both cache",
                not slower,
                ("slower in: " + "; ".join(slower)) if slower else "; ".join(compared),
            )
        )
    else:
        verdicts.append(Verdict("faster than Squid in every scenario where both cache", None, "no Squid scenario run"))
    return verdicts


def render(
    rows: list[Row],
    bench: Bench,
    workloads: list[Workload],
    machine: dict[str, str],
    when: str,
    label: str,
    runs: int,
    extra_notes: list[str],
) -> str:
    machine_text = machine_line(machine, f"Squid {squid_version()}")
    lines = [
        f"### Comparison: direct, ruststash, Squid ({runs} runs per scenario), {when}"
        + (f" ({label})" if label else ""),
        "",
    ]
    lines += [machine_text, ""]
    lines += [f"- {w.name}: {w.description}" for w in workloads]
    throttles = ", ".join(
        f"{w.name} +{w.delay * 1000:.0f} ms/response, {w.rate / KIB:.0f} KiB/s link" for w in workloads
    )
    lines += [
        f"- Throttled: {throttles}. Hung: upstream accepts, never answers. Gone: origins stopped. "
        "ruststash with its default options; Squid "
        f"{squid_version()} with ssl-bump and the config of bench/squid.py. Index files `max-age=0` (revalidated); "
        "warm runs start a new proxy on a copy of a cache filled by one untimed cold run. "
        f"Clients' homes: {place_text(bench.client_dir)}; the proxies' caches: "
        f"{cache_place_text(bench.workdir, bench.file_creation_ms)}.",
        "",
    ]
    lines += render_table(rows)
    lines += [
        "",
        "Wall: all clients of a run, from start to the last exit (cargo: generate-lockfile + fetch; rustup: toolchain "
        "install). x direct: over the direct scenario with as many clients. Client CPU: user + system time of all the "
        "clients' processes (cargo, rustup and what they ran). Proxy CPU: user + system time of the proxy "
        "process tree during the run (Squid: with its helpers); per request: over its logged requests (Squid: "
        "without CONNECT lines). Peak RSS: VmHWM of the proxy's main process, which was started for that run. "
        "Outcomes: ruststash's access log; Squid's result codes. Upstream: requests the origins received (304s "
        "included) and the bytes of the 200 bodies they sent. Medians over successful runs; the runs of a "
        "workload's scenarios are interleaved (run 1 of each, then run 2, ...).",
        "",
    ]
    fills = ", ".join(f"{w} via {v}: {s:.1f} s" for (w, v), s in bench.fill_seconds.items())
    if fills:
        lines += [f"Cache fills (untimed): {fills}.", ""]
    lines += ["Targets (reported, never asserted):", ""]
    lines += [v.text() for v in evaluate_targets(rows)]
    if (cpu_line := cpu_beside_squid(rows)) is not None:
        lines += ["", cpu_line]
    failures = [(f"{row.workload} {row.scenario.name}", r.error) for row in rows for r in row.runs if r.error]
    notes = [f"{name}: {error}" for name, error in failures[:10]] + bench.warnings[:10] + extra_notes
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Profile summary


IDLE_FRAMES = (
    "_worker (concurrent/futures/thread.py:89)",  # a thread-pool worker waiting for work
    "EpollSelector.select (",  # the event loop waiting for I/O
    "Condition.wait (",
)


def summarize_profile(path: Path, top: int = 15) -> list[str]:
    """Top costs in a py-spy raw (collapsed) profile, idle waits left out: by leaf frame, and by the innermost
    ruststash frame of each stack, split into the event-loop thread and the worker threads."""
    if not path.exists():
        return [f"no profile at {path}"]
    leaves: Counter[str] = Counter()
    owners: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        if any(frames[-1].startswith(frame) for frame in IDLE_FRAMES):
            idle += count
            continue
        total += count
        leaves[frames[-1]] += count
        thread = "loop" if "MainThread" in frames[0] else "worker"
        ours = [f for f in frames if "ruststash/" in f and "__main__" not in f and "cli.py" not in f]
        owners[f"[{thread}] " + (ours[-1] if ours else "(mitmproxy/asyncio, no ruststash frame)")] += count
    if not total:
        return [f"{path.name}: no busy samples ({idle} idle)"]
    lines = [f"{path.name}: {total} busy samples ({idle} idle left out)", "by leaf frame:"]
    lines += [f"  {c * 100 / total:5.1f}%  {f}" for f, c in leaves.most_common(top)]
    lines += ["by innermost ruststash frame:"]
    lines += [f"  {c * 100 / total:5.1f}%  {f}" for f, c in owners.most_common(top)]
    return lines


# --------------------------------------------------------------------------------------------------


def parse_list(value: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what} are a comma-separated subset of {', '.join(allowed)}")
    return [n for n in allowed if n in names]


def parse_archive_mib(value: str) -> dict[str, int]:
    result = dict(DEFAULT_ARCHIVE_MIB)
    for part in value.split(","):
        if not part.strip():
            continue
        pkg, _, mib = part.partition("=")
        if pkg.strip() not in DEFAULT_ARCHIVE_MIB or not mib.strip().isdigit() or not 0 <= int(mib) <= 1024:
            raise argparse.ArgumentTypeError("--archive-mib takes rustc=N,rust-std=N,cargo=N (MiB, 0..1024)")
        result[pkg.strip()] = int(mib)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ripgrep, 3 runs, " + ",".join(QUICK_SCENARIOS))
    parser.add_argument(
        "--workloads",
        type=lambda v: parse_list(v, ALL_WORKLOADS, "workloads"),
        help=f"comma-separated subset of {','.join(ALL_WORKLOADS)} (default: cargo and rustup, and ripgrep "
        "for the 4- and 8-client scenarios)",
    )
    parser.add_argument(
        "--scenarios",
        type=lambda v: parse_list(v, list(SCENARIOS), "scenarios"),
        help="comma-separated subset (default: all)",
    )
    parser.add_argument("--runs", type=int, help=f"runs per scenario, 1..{MAX_RUNS} (default 5; --quick 3)")
    parser.add_argument(
        "--archive-mib", type=parse_archive_mib, default=dict(DEFAULT_ARCHIVE_MIB), help="rustc=70,rust-std=30,cargo=10"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="timeout of each client command, seconds")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the proxy in the first run of each ruststash scenario; output here"
    )
    parser.add_argument("--registry-cache", type=Path, default=REGISTRY_CACHE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to append to")
    parser.add_argument("--no-write", action="store_true", help="print the report only")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where caches, homes and logs go (default: a new directory in the user cache directory)",
    )
    parser.add_argument(
        "--client-dir",
        type=Path,
        help="where the clients' homes go (default: a directory on the tmpfs /dev/shm if it has "
        f"{CLIENT_TMPFS_MIN_FREE // (1024 * MIB)} GiB free, else in the work directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--label", default="", help="a note for the report's heading")
    args = parser.parse_args(argv)
    if args.workloads or args.scenarios or args.quick:
        workload_names = args.workloads or (["ripgrep"] if args.quick else [name for name, _ in DEFAULT_PLAN])
        scenario_names = args.scenarios or (list(QUICK_SCENARIOS) if args.quick else list(SCENARIOS))
        plan = [(name, tuple(scenario_names)) for name in workload_names]
    else:
        plan = list(DEFAULT_PLAN)
    runs = args.runs or (3 if args.quick else 5)
    if not 1 <= runs <= MAX_RUNS:
        parser.error(f"--runs must be 1..{MAX_RUNS}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    squid_problem = squid_available()
    if squid_problem and any(SCENARIOS[s].via == "squid" for _, names in plan for s in names):
        print(f"Squid scenarios skipped: {squid_problem}", file=sys.stderr)
        plan = [(w, tuple(s for s in names if SCENARIOS[s].via != "squid")) for w, names in plan]

    workdir = args.workdir or default_workdir("ruststash-bench-compare-")
    workdir.mkdir(parents=True, exist_ok=True)
    client_dir, made_client_dir = args.client_dir, False
    if client_dir is None:
        client_dir, made_client_dir = default_client_dir(workdir), True
    client_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_description()
    began = time.monotonic()
    rows: list[Row] = []
    workloads: list[Workload] = []
    bench: Bench | None = None
    failure = ""
    try:
        bench = Bench(workdir, client_dir, args.keep, args.timeout, args.profile)
        print(f"clients' homes in {client_dir}; caches and logs in {workdir}", flush=True)
        for name, _ in plan:
            if name == "rustup":
                workloads.append(RustupWorkload(bench.tls, workdir, args.archive_mib, args.timeout))
            else:
                print(f"building (or loading) the {name} registry ...", flush=True)
                registry = build_registry(spec_from_lockfile(WORKLOADS_DIR / f"{name}.Cargo.lock"), args.registry_cache)
                workloads.append(CargoWorkload(name, registry, bench.tls, args.timeout))
        for workload, (_, scenario_names) in zip(workloads, plan, strict=True):
            workload_rows = [Row(workload.name, SCENARIOS[name]) for name in scenario_names]
            rows.extend(workload_rows)
            # Interleaved (run 1 of every scenario, then run 2, ...): this machine's speed drifts over minutes
            # (cargo's own CPU time per run doubled within one series), and a drift must not land on one
            # scenario's runs only.
            for number in range(1, runs + 1):
                for row in workload_rows:
                    scenario = row.scenario
                    run = bench.run(workload, scenario, number)
                    row.runs.append(run)
                    print(
                        f"{workload.name} {scenario.name} #{number}: {run.wall:.2f} s, client cpu "
                        f"{run.client_cpu if run.client_cpu is None else round(run.client_cpu, 2)} s, proxy cpu "
                        f"{run.proxy_cpu if run.proxy_cpu is None else round(run.proxy_cpu, 2)} s, peak "
                        f"{(run.peak_kib or 0) // KIB} MiB, {dict(run.outcomes)}, upstream {run.upstream_requests} "
                        f"req {size_text(run.upstream_bytes)}" + (f"; FAILED: {run.error}" if run.error else ""),
                        flush=True,
                    )
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        for workload in workloads:
            with contextlib.suppress(Exception):
                workload.close()
        if bench is not None:
            measure_file_creation_at_end(bench.file_creation_ms, workdir)
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep and made_client_dir:
            shutil.rmtree(client_dir, ignore_errors=True)

    if bench is None:
        print(f"could not start: {failure}", file=sys.stderr)
        return 2
    notes = [f"Total bench time {(time.monotonic() - began) / 60:.1f} min.", *bench.profile_notes]
    report = render(rows, bench, workloads, machine, when, args.label, runs, notes)
    profiles = sorted(args.profile.glob("*.collapsed")) if args.profile is not None else []
    summaries = ["\n".join(summarize_profile(collapsed)) for collapsed in profiles]
    ok = all(run.ok for row in rows for run in row.runs)
    return publish(report, failure, args.output, not args.no_write, ok, summaries)


if __name__ == "__main__":
    sys.exit(main())
