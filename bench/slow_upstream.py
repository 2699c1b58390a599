"""Cargo through ruststash with a warm cache while upstream is slow or hung, against an unfaulted run.

Run from the repository root: ``python -m bench.slow_upstream [--workload ripgrep|cargo] [--runs 5]``.

A fake crates.io (tests/origins/crates_io.py) serves a registry of real ``.crate`` files built from a Cargo.lock
in ../shared/workloads (ripgrep: 52 crates; cargo: 523). Each run is ``cargo generate-lockfile`` then
``cargo fetch`` of a consumer of the registry's top crates, in a fresh HOME and CARGO_HOME (tests/origins/clients),
timed together. Scenarios, each ``--runs`` times (median reported):

- direct: cargo straight to an unfaulted origin (source replacement, no proxy): the floor.
- warm, unfaulted: a new ``ruststash serve`` on a copy of a cache filled once beforehand (not timed).
- warm, throttled: the same while every upstream response waits ``--delay`` (300 ms) before its headers and
  bodies share a ``--rate-kib`` link (fault mode "throttle").
- cold, throttled: a new proxy with an empty cache, upstream throttled the same way.
- warm, hung: upstream accepts connections and never answers (fault mode "hang").

The proxy's origin says ``max-age=0`` for index files and ignores validators (``conditional=False``), so every
index request of a warm run reaches upstream and meets the fault; crates are immutable and served from the cache.
The proxy runs with ``--stale-after`` (default here 1 s): that long it waits for upstream before serving its copy.

Per scenario: median wall time (and its generate-lockfile/fetch parts), ratios to direct and to warm unfaulted,
requests and their outcomes from the proxy's log (HIT/STALE/REVALIDATED/MISS), how long the index requests took
in the proxy (each, and the time at least one was waiting), proxy CPU per request (/proc/<pid>/stat), and the
requests and bytes upstream sent (the origin's request records). A Markdown table is printed and appended to
docs/benchmarks.md; nothing is asserted. Everything talks to 127.0.0.1 only; every cargo command has a
timeout; processes started here are stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
from bench.memory import DEFAULT_OUTPUT, cpu_seconds, machine_description
from tests.harness import ProxyProcess, proxy_client_env
from tests.origins.clients import CargoSandbox, source_replacement_toml, write_consumer
from tests.origins.crates_io import DIRECT_DL, FakeCratesIo, RequestRecord, proxy_upstream_args
from tests.origins.registry import Registry, build_registry, spec_from_lockfile
from tests.origins.tls import OriginTLS, make_origin_tls

# Default link rate per workload (KiB/s), chosen so a cold throttled run stays well inside the proxy's
# --miss-timeout (30 s for a whole crate) and cargo's 30 s low-speed timeout: ripgrep's 6 MB take ~25 s.
WORKLOADS = {"ripgrep": 256, "cargo": 4096}
SCENARIOS = ("direct", "warm-unfaulted", "warm-throttled", "cold-throttled", "warm-hung")
MAX_RUNS = 20
SETTLE_TIMEOUT = 5.0
REGISTRY_CACHE = Path(tempfile.gettempdir()) / "ruststash-bench-registries"
_ACCESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ ruststash\.access: (.*)$")
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


# --------------------------------------------------------------------------------------------------
# The proxy's access log


@dataclass(frozen=True)
class Access:
    """One line of the proxy's per-request log: when it was written (the answer's end) and its fields."""

    end: float
    fields: dict[str, str]

    @property
    def outcome(self) -> str:
        return self.fields.get("outcome", "?")

    @property
    def path(self) -> str:
        return self.fields.get("path", "")

    @property
    def ms(self) -> float:
        try:
            return float(self.fields.get("ms", "0"))
        except ValueError:
            return 0.0

    @property
    def is_crate(self) -> bool:
        return self.path.startswith("/crates/")


def read_access(log: str) -> list[Access]:
    records = []
    for line in log.splitlines():
        match = _ACCESS.match(line)
        if match is None:
            continue
        end = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        fields = {k: v.strip('"') for k, v in _LOGFMT.findall(match[2])}
        records.append(Access(end, fields))
    return records


def busy_seconds(records: list[Access]) -> float:
    """How long at least one of these requests was in the proxy (the union of their [end - ms, end])."""
    spans = sorted((r.end - r.ms / 1000, r.end) for r in records)
    total, cur_start, cur_end = 0.0, None, None
    for start, end in spans:
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def sequence_length(records: list[Access], slack: float = 0.01) -> int:
    """The most of these requests that ran one after another (each starting after the previous ended): how
    many waits cargo could not overlap, i.e. the depth of its index walk."""
    count, last_end = 0, float("-inf")
    for start, end in sorted(((r.end - r.ms / 1000, r.end) for r in records), key=lambda span: span[1]):
        if start >= last_end - slack:
            count, last_end = count + 1, end
    return count


# --------------------------------------------------------------------------------------------------
# Runs and rows


@dataclass
class Run:
    ok: bool
    wall: float
    lock: float
    fetch: float
    error: str = ""
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    index_ms: list[float] = field(default_factory=list)
    index_busy: float = 0.0
    index_sequence: int = 0
    proxy_cpu: float | None = None
    upstream_requests: int = 0
    upstream_bytes: int = 0


@dataclass
class Row:
    scenario: str
    runs: list[Run]

    @property
    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def median(self, attribute: str) -> float | None:
        values = [getattr(r, attribute) for r in self.good if getattr(r, attribute) is not None]
        return statistics.median(values) if values else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------------
# The bench


@dataclass(frozen=True)
class Settings:
    workload: str
    runs: int
    delay: float
    rate: float
    chunk: int
    stale_after: float
    timeout: float


class Bench:
    def __init__(self, workdir: Path, client_dir: Path, registry: Registry, settings: Settings, keep: bool) -> None:
        self.workdir = workdir
        self.client_dir = client_dir  # cargo's homes and projects (the proxy's cache stays in workdir)
        self.registry = registry
        self.settings = settings
        self.keep = keep
        # What creating a file costs in the work directory, at the start and (`creation_measured_at_end`) the end.
        self.file_creation_ms: list[float] = [file_creation_ms(workdir)]
        self.tls: OriginTLS = make_origin_tls(workdir / "tls")
        # The floor: crates.io as cargo sees it without a proxy (its dl points at its own static listener).
        self.direct_origin = FakeCratesIo(registry, self.tls, dl=DIRECT_DL)
        # Behind the proxy: index files never fresh, validators ignored, so each warm index request meets
        # upstream (and its fault) with a full body.
        self.origin = FakeCratesIo(registry, self.tls, index_cache_control="public,max-age=0", conditional=False)
        self.sizes = crates_body_sizes(self.origin)
        self.template: Path | None = None
        self.fill_seconds: float | None = None
        self.fill_outcomes: Counter[str] = Counter()
        self.warnings: list[str] = []

    def close(self) -> None:
        self.origin.close()
        self.direct_origin.close()

    def proxy_args(self) -> list[str]:
        return [*proxy_upstream_args(self.origin, self.tls), "--stale-after", f"{self.settings.stale_after:g}"]

    # ---- cargo

    def cargo(self, box: CargoSandbox, project: Path) -> tuple[float, float, str]:
        """generate-lockfile, then fetch: (seconds, seconds, error or ""); a failed step ends the run."""
        times = [0.0, 0.0]
        for step, command in enumerate(("generate-lockfile", "fetch")):
            began = time.monotonic()
            try:
                result = box.run([command], project, check=False, timeout=self.settings.timeout)
            except subprocess.TimeoutExpired:
                times[step] = time.monotonic() - began
                return times[0], times[1], f"cargo {command}: no exit within {self.settings.timeout:g} s"
            times[step] = time.monotonic() - began
            if result.returncode != 0:
                tail = " / ".join(result.stderr.strip().splitlines()[-3:])
                return times[0], times[1], f"cargo {command} exited {result.returncode}: {tail}"
        return times[0], times[1], ""

    def project(self, clients: Path) -> Path:
        return write_consumer(clients / "project", self.registry.consumer_deps())

    def clients(self, root: Path) -> Path:
        """Where cargo's home and project of the run in `root` go: under `client_dir`."""
        clients = self.client_dir / root.name
        clients.mkdir(parents=True, exist_ok=True)
        return clients

    # ---- proxy

    @contextlib.contextmanager
    def proxy(self, root: Path, cache_dir: Path | None) -> Iterator[ProxyProcess]:
        proxy = ProxyProcess(root / "proxy", self.proxy_args(), cache_dir=cache_dir).start()
        try:
            yield proxy
        finally:
            if (warning := stop_proxy(proxy, root.name)) is not None:
                self.warnings.append(warning)

    def fill(self) -> None:
        """Fill a cache once with an unfaulted cold run (not part of any scenario's figures)."""
        root = self.workdir / "fill"
        clients = self.clients(root)
        with self.proxy(root, None) as proxy:
            box = CargoSandbox(clients / "client", env_extra=proxy_client_env(proxy))
            began = time.monotonic()
            _lock, _fetch, error = self.cargo(box, self.project(clients))
            self.fill_seconds = time.monotonic() - began
            if error:
                raise RuntimeError(f"filling the cache failed: {error}")
            self.fill_outcomes = Counter(r.outcome for r in read_access(proxy.log()))
            self.template = proxy.cache_dir
        if not self.keep:
            shutil.rmtree(clients, ignore_errors=True)

    # ---- scenarios

    def run(self, scenario: str, number: int) -> Run:
        root = self.workdir / f"{scenario}-{number}"
        if scenario == "direct":
            return self._direct(root)
        warm = scenario.startswith("warm")
        cache_dir = None
        if warm:
            assert self.template is not None
            cache_dir = root / "cache"
            shutil.copytree(self.template, cache_dir)
        try:
            if scenario.endswith("throttled"):
                self.origin.set_fault(
                    "/",
                    "throttle",
                    delay=self.settings.delay,
                    rate=self.settings.rate,
                    chunk=self.settings.chunk,
                )
            elif scenario.endswith("hung"):
                self.origin.set_fault("/", "hang", hang_max=2 * self.settings.timeout + 60)
            return self._proxied(root, cache_dir)
        finally:
            self.origin.restore()
            if not self.keep:
                shutil.rmtree(root, ignore_errors=True)
                shutil.rmtree(self.client_dir / root.name, ignore_errors=True)

    def _direct(self, root: Path) -> Run:
        clients = self.clients(root)
        box = CargoSandbox(
            clients / "client",
            config_toml=source_replacement_toml(self.direct_origin.index_url),
            env_extra={"CARGO_HTTP_CAINFO": str(self.tls.ca_pem)},
        )
        project = self.project(clients)
        self.direct_origin.reset_counts()
        began = time.monotonic()
        lock, fetch, error = self.cargo(box, project)
        wall = time.monotonic() - began
        records = self.direct_origin.records()
        run = Run(not error, wall, lock, fetch, error, requests=len(records))
        run.upstream_requests = len(records)
        run.upstream_bytes = sum(self.sizes.get(r.path, 0) for r in records if r.status == 200)
        if not self.keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(clients, ignore_errors=True)
        return run

    def _proxied(self, root: Path, cache_dir: Path | None) -> Run:
        with self.proxy(root, cache_dir) as proxy:
            assert proxy.process is not None
            pid = proxy.process.pid
            clients = self.clients(root)
            box = CargoSandbox(clients / "client", env_extra=proxy_client_env(proxy))
            project = self.project(clients)
            self.origin.reset_counts()
            cpu_before = cpu_seconds(pid)
            began = time.monotonic()
            lock, fetch, error = self.cargo(box, project)
            wall = time.monotonic() - began
            cpu_after = cpu_seconds(pid)
            log = proxy.log()
        # Proxy stopped: end the hangs so the origin records those requests (as unanswered), then count.
        self.origin.clear_faults()
        records = self._settled_records()
        access = read_access(log)
        index = [r for r in access if not r.is_crate]
        run = Run(not error, wall, lock, fetch, error, requests=len(access))
        run.outcomes = Counter(r.outcome for r in access)
        run.index_ms = [r.ms for r in index]
        run.index_busy = busy_seconds(index)
        run.index_sequence = sequence_length(index)
        if cpu_before is not None and cpu_after is not None and access:
            run.proxy_cpu = (cpu_after - cpu_before) / len(access)
        run.upstream_requests = len(records)
        run.upstream_bytes = sum(self.sizes.get(r.path, 0) for r in records if r.status == 200)
        return run

    def _settled_records(self) -> list[RequestRecord]:
        """The origin's records once no new one arrived for 0.5 s (at most SETTLE_TIMEOUT)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        count, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_count = len(self.origin.records())
            if now_count != count:
                count, stable_since = now_count, time.monotonic()
            elif time.monotonic() - stable_since >= 0.5:
                break
            time.sleep(0.1)
        return self.origin.records()


# --------------------------------------------------------------------------------------------------
# Report


OUTCOME_ORDER = ("HIT", "REVALIDATED", "STALE", "MISS", "PASS", "ERROR")


def mix_text(runs: list[Run]) -> str:
    """Outcome counts per run (the mean over the runs, with one decimal when they differ)."""
    if not runs:
        return "—"
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.outcomes)
    order = [o for o in OUTCOME_ORDER if total[o]] + sorted(o for o in total if o not in OUTCOME_ORDER)
    parts = []
    for outcome in order:
        mean = total[outcome] / len(runs)
        parts.append(f"{outcome} {mean:.0f}" if mean == int(mean) else f"{outcome} {mean:.1f}")
    return ", ".join(parts) or "—"


def ratio(value: float | None, base: float | None) -> str:
    return "—" if value is None or not base else f"{value / base:.2f}"


def render(rows: list[Row], bench: Bench, machine: dict[str, str], when: str, label: str) -> str:
    s = bench.settings
    crates = len(bench.registry.crates)
    total = bench.registry.total_bytes()
    medians = {row.scenario: row.median("wall") for row in rows}
    lines = [
        f"### Slow upstream: {s.workload} workload ({crates} crates, {size_text(total)}), {when}"
        + (f" ({label})" if label else ""),
        "",
        machine_line(machine),
        "",
        f"Each run: `cargo generate-lockfile` + `cargo fetch` in a fresh CARGO_HOME, {s.runs} runs per scenario, "
        f"medians. Throttled: every upstream response waits {s.delay * 1000:.0f} ms before its headers, bodies "
        f"share one {s.rate / KIB:.0f} KiB/s link ({s.chunk // KIB} KiB pieces). Hung: upstream accepts and never "
        f"answers. ruststash `--stale-after {s.stale_after:g}` (other options default); index files "
        "`max-age=0` and validators ignored upstream, so every warm index request goes upstream. Warm runs use a "
        f"copy of a cache filled once by an unfaulted cold run (took {bench.fill_seconds or 0:.1f} s). "
        f"cargo's homes: {place_text(bench.client_dir)}; the proxy's cache: "
        f"{cache_place_text(bench.workdir, bench.file_creation_ms)}.",
        "",
        "| scenario | ok runs | wall s (min-max) | lockfile s + fetch s | x direct | x warm unfaulted | requests "
        "| outcomes per run | index requests in proxy: median ms (max); in sequence; busy s | proxy CPU ms/request "
        "| upstream requests | from upstream |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for row in rows:
        good = row.good
        wall = row.median("wall")
        walls = [r.wall for r in good]
        spread = f"{wall:.2f} ({min(walls):.2f}-{max(walls):.2f})" if wall is not None else "—"
        lock, fetch = row.median("lock"), row.median("fetch")
        parts = "—" if lock is None or fetch is None else f"{lock:.2f} + {fetch:.2f}"
        requests = row.median("requests")
        if row.scenario == "direct":
            mix = index = cpu = "—"
        else:
            mix = mix_text(good)
            index_ms = [ms for r in good for ms in r.index_ms]
            busy = _median([r.index_busy for r in good]) or 0.0
            sequence = _median([float(r.index_sequence) for r in good]) or 0.0
            index = "—"
            if index_ms:
                index = f"{statistics.median(index_ms):.0f} ({max(index_ms):.0f}); {sequence:.0f}; {busy:.2f}"
            cpu_value = row.median("proxy_cpu")
            cpu = "—" if cpu_value is None else f"{cpu_value * 1000:.1f}"
        upstream_requests = row.median("upstream_requests")
        upstream_bytes = row.median("upstream_bytes")
        cells = [
            row.scenario,
            f"{len(good)}/{len(row.runs)}",
            spread,
            parts,
            ratio(wall, medians.get("direct")),
            ratio(wall, medians.get("warm-unfaulted")),
            "—" if requests is None else f"{requests:.0f}",
            mix,
            index,
            cpu,
            "—" if upstream_requests is None else f"{upstream_requests:.0f}",
            "—" if upstream_bytes is None else size_text(upstream_bytes),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Requests: for direct, those the origin received; else the lines of the proxy's access log (outcomes as "
        "logged: an index file upstream sends in full is stored again and logged MISS even when a copy was held). "
        "Index requests in proxy: the proxy's own time (`ms` in its log) for config.json and index files; in "
        "sequence: the most of them that ran one after another (cargo asks for many at once, so this is the depth "
        "of its index walk: the waits it cannot overlap); busy s: how long at least one was in progress. "
        "Proxy CPU: user + system time of the proxy process during the run, divided by its requests. "
        "Upstream: requests the origin received during the run (hung ones included; background refreshes still "
        "running when cargo ended counted if they finished within 5 s), and the bytes of the 200 bodies it sent "
        "in full. Medians over successful runs; nothing is asserted.",
    ]
    failures = [(row.scenario, r.error) for row in rows for r in row.runs if r.error]
    if failures or bench.warnings:
        lines.append("")
        lines += [f"- {scenario}: {error}" for scenario, error in failures[:10]]
        lines += [f"- {warning}" for warning in bench.warnings[:10]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------


def parse_scenarios(value: str) -> list[str]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"scenarios are a comma-separated subset of {', '.join(SCENARIOS)}")
    return [s for s in SCENARIOS if s in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="ripgrep", help="Cargo.lock to mirror")
    parser.add_argument("--runs", type=int, default=5, help=f"runs per scenario, 1..{MAX_RUNS} (default 5)")
    parser.add_argument("--delay", type=float, default=0.3, help="throttle: seconds before each response (0.3)")
    parser.add_argument("--rate-kib", type=float, help="throttle: link rate in KiB/s (ripgrep 256, cargo 4096)")
    parser.add_argument("--chunk-kib", type=int, default=16, help="throttle: body piece size in KiB (16)")
    parser.add_argument("--stale-after", type=float, default=1.0, help="ruststash --stale-after (default here 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="timeout of each cargo command, seconds")
    parser.add_argument(
        "--scenarios", type=parse_scenarios, default=list(SCENARIOS), help="comma-separated subset to run"
    )
    parser.add_argument(
        "--registry-cache", type=Path, default=REGISTRY_CACHE, help="where built registries are kept (reused)"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to append to")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--workdir", type=Path, help="where caches and logs go (default: a new directory in the user cache directory)"
    )
    parser.add_argument(
        "--client-dir",
        type=Path,
        help="where cargo's homes go (default: a directory on the tmpfs /dev/shm if it has "
        f"{CLIENT_TMPFS_MIN_FREE // (1024 * MIB)} GiB free, else in the work directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory and every run's files")
    parser.add_argument("--label", default="", help="a note for the table's heading (what was measured)")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be 1..{MAX_RUNS}")
    if args.delay < 0 or args.stale_after <= 0 or args.timeout <= 0 or args.chunk_kib < 1:
        parser.error("--delay must be ≥ 0; --stale-after, --timeout, --chunk-kib positive")
    rate_kib = args.rate_kib if args.rate_kib is not None else WORKLOADS[args.workload]
    if rate_kib <= 0:
        parser.error("--rate-kib must be positive")
    settings = Settings(
        workload=args.workload,
        runs=args.runs,
        delay=args.delay,
        rate=rate_kib * KIB,
        chunk=args.chunk_kib * KIB,
        stale_after=args.stale_after,
        timeout=args.timeout,
    )

    workdir = args.workdir or default_workdir("ruststash-bench-slow-")
    workdir.mkdir(parents=True, exist_ok=True)
    client_dir, made_client_dir = args.client_dir, False
    if client_dir is None:
        client_dir, made_client_dir = default_client_dir(workdir), True
    client_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_description()
    rows: list[Row] = []
    bench: Bench | None = None
    failure = ""
    try:
        lockfile = WORKLOADS_DIR / f"{args.workload}.Cargo.lock"
        print(f"building (or loading) the {args.workload} registry in {args.registry_cache} ...", file=sys.stderr)
        registry = build_registry(spec_from_lockfile(lockfile), args.registry_cache)
        bench = Bench(workdir, client_dir, registry, settings, args.keep)
        if any(s.startswith("warm") for s in args.scenarios):
            print("filling the cache (unfaulted, not timed) ...", file=sys.stderr, flush=True)
            bench.fill()
            print(f"  {bench.fill_seconds:.1f} s, {dict(bench.fill_outcomes)}", file=sys.stderr, flush=True)
        for scenario in args.scenarios:
            row = Row(scenario, [])
            rows.append(row)
            for number in range(1, args.runs + 1):
                run = bench.run(scenario, number)
                row.runs.append(run)
                print(
                    f"{scenario} #{number}: {run.wall:.2f} s (lock {run.lock:.2f} + fetch {run.fetch:.2f}), "
                    f"{dict(run.outcomes)}, index in sequence {run.index_sequence}, "
                    f"upstream {run.upstream_requests} req {size_text(run.upstream_bytes)}"
                    + (f"; FAILED: {run.error}" if run.error else ""),
                    file=sys.stderr,
                    flush=True,
                )
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        if bench is not None:
            bench.close()
            measure_file_creation_at_end(bench.file_creation_ms, workdir)
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep and made_client_dir:
            shutil.rmtree(client_dir, ignore_errors=True)

    if bench is None:
        print(f"could not start: {failure}", file=sys.stderr)
        return 2
    report = render(rows, bench, machine, when, args.label)
    return publish(report, failure, args.output, not args.no_write, all(run.ok for row in rows for run in row.runs))


if __name__ == "__main__":
    sys.exit(main())
