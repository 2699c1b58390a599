"""Proxy memory and throughput while N clients pull one large rustup archive at once.

Run from the repository root: ``python -m bench.memory [--size-mb 300] [--clients 4,8]``.

A fake static.rust-lang.org (tests/origins/rustlang.py) serves a release whose rust-std archive is padded to
``--size-mb``. For each client count N, three scenarios run, each proxy scenario in a new `ruststash serve`
process with an empty cache (tests/harness.py), so every peak is that scenario's own:

- direct: N clients download the archive straight from the origin (no proxy): the floor.
- miss: N clients ask the proxy at once; the archive is downloaded once and streamed to all of them.
- hit: one client downloads it first (warming the cache), then N clients download the stored copy at once.

Per scenario: wall time, aggregate MiB/s, the proxy's peak RSS (VmHWM of /proc/<pid>/status, reset through
/proc/<pid>/clear_refs just before the measured part so the peak is the measured part's own; the VmHWM before
the reset is reported as the baseline), the largest RSS sampled every 20 ms, bytes fetched from upstream,
the worst response time of the admin ``/healthz`` polled every 20 ms (an event-loop stall), and whether every
client got exactly the origin's bytes (sha256). Clients are threads in a child process (so they do not share
a GIL with the origin, which runs in this one) with blocking ``http.client`` connections (a CONNECT tunnel
through the proxy), each reading into one 1 MiB buffer and hashing as it goes.

The result is printed as a Markdown table and appended to docs/benchmarks.md. Everything talks to 127.0.0.1
only; clients have socket timeouts and a per-scenario deadline; processes started here are stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import MIB, default_workdir, machine_line, publish, stop_proxy
from tests.harness import ProxyProcess
from tests.origins.rustlang import FakeRustDist
from tests.origins.tls import OriginTLS, make_origin_tls

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
HOST = "static.rust-lang.org"
MANIFEST_SHA256 = "/dist/channel-rust-stable.toml.sha256"
READ_BUFFER = MIB
SOCKET_TIMEOUT = 60.0
POLL_INTERVAL = 0.020
POLL_TIMEOUT = 10.0
MAX_CLIENTS = 64
TARGET_MIB = 200
WORKER_FLAG = "--client-worker"


# --------------------------------------------------------------------------------------------------
# /proc


def proc_status_kib(pid: int, field_name: str) -> int | None:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs). False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def machine_description() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / MIB:.1f} GiB"
                break
    try:
        from mitmproxy.version import VERSION as mitmproxy_version
    except ImportError:
        mitmproxy_version = "?"
    try:
        from ruststash import __version__ as ruststash_version
    except ImportError:
        ruststash_version = "?"
    ruststash_version += f" ({ruststash_source()})"
    try:
        import aiohttp

        aiohttp_version = aiohttp.__version__
    except ImportError:
        aiohttp_version = "?"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "ram": ram,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy_version,
        "aiohttp": aiohttp_version,
        "ruststash": ruststash_version,
    }


def ruststash_source() -> str:
    """Which ruststash the proxy processes run: the git commit of its source (and whether src/ differs from
    it), or the directory it is imported from (e.g. a snapshot put first on PYTHONPATH)."""
    spec = importlib.util.find_spec("ruststash")
    if spec is None or spec.origin is None:
        return "not importable"
    package = Path(spec.origin).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"from {package}"
    return f"commit {commit}" + (" + uncommitted changes" if changes else "")


# --------------------------------------------------------------------------------------------------
# Clients


@dataclass
class Download:
    status: int | None = None
    size: int = 0
    sha256: str = ""
    x_cache: str = ""
    error: str = ""
    seconds: float = 0.0


Connect = Callable[[], http.client.HTTPConnection]


class Client(threading.Thread):
    """One download, streamed into sha256 through a single reusable buffer (never the body whole)."""

    def __init__(self, connect: Connect, path: str, deadline: float, start: threading.Barrier) -> None:
        super().__init__(name="bench-client", daemon=True)
        self._connect = connect
        self._path = path
        self._deadline = deadline
        self._start_barrier = start
        self.connection: http.client.HTTPConnection | None = None
        self.result = Download()

    def run(self) -> None:
        began = time.monotonic()
        try:
            self._start_barrier.wait(SOCKET_TIMEOUT)
            began = time.monotonic()
            self.connection = self._connect()
            self._fetch(self.connection)
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.result.seconds = time.monotonic() - began
            if self.connection is not None:
                self.connection.close()

    def _fetch(self, connection: http.client.HTTPConnection) -> None:
        connection.request("GET", self._path, headers={"User-Agent": "ruststash-bench", "Accept": "*/*"})
        response = connection.getresponse()
        self.result.status = response.status
        self.result.x_cache = response.getheader("x-cache", "")
        digest = hashlib.sha256()
        buffer = bytearray(READ_BUFFER)
        view = memoryview(buffer)
        while True:
            if time.monotonic() > self._deadline:
                raise TimeoutError("scenario deadline passed")
            count = response.readinto(buffer)
            if not count:
                break
            digest.update(view[:count])
            self.result.size += count
        self.result.sha256 = digest.hexdigest()

    def abort(self) -> None:
        """Unblock a read that outlived the deadline."""
        connection = self.connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class Target:
    """Where a client process connects: the origin directly, or the proxy (CONNECT to static.rust-lang.org)."""

    port: int
    cafile: str
    tunnel: bool

    def connector(self) -> Connect:
        context = ssl.create_default_context(cafile=self.cafile)

        def connect() -> http.client.HTTPConnection:
            connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=SOCKET_TIMEOUT)
            if self.tunnel:
                connection.set_tunnel(HOST, 443)
            return connection

        return connect


def run_clients(connect: Connect, path: str, count: int, timeout: float) -> tuple[float, list[Download]]:
    """``count`` concurrent downloads, released together; (wall seconds, results)."""
    deadline = time.monotonic() + timeout
    barrier = threading.Barrier(count + 1)
    clients = [Client(connect, path, deadline, barrier) for _ in range(count)]
    for client in clients:
        client.start()
    barrier.wait(SOCKET_TIMEOUT)
    began = time.monotonic()
    for client in clients:
        client.join(max(0.0, deadline - time.monotonic()))
    wall = time.monotonic() - began
    for client in clients:
        if client.is_alive():
            client.abort()
            client.join(5)
            if not client.result.error:
                client.result.error = "did not finish before the deadline"
    return wall, [client.result for client in clients]


def client_process(target: Target, path: str, count: int, timeout: float) -> tuple[float, list[Download]]:
    """`run_clients` in a child process, so the clients' TLS and hashing do not share a GIL with the origin
    (which runs in this process); the child reports (wall seconds, results) as JSON on stdout."""
    spec = json.dumps({"target": asdict(target), "path": path, "count": count, "timeout": timeout})
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.memory", WORKER_FLAG, spec],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
    )
    try:
        out, _ = child.communicate(timeout=timeout + 2 * SOCKET_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise RuntimeError("the client process did not finish in time") from None
    if child.returncode != 0:
        raise RuntimeError(f"the client process exited with {child.returncode}")
    result = json.loads(out)
    return result["wall"], [Download(**d) for d in result["downloads"]]


def client_worker(spec_json: str) -> int:
    spec = json.loads(spec_json)
    count = int(spec["count"])
    if not 1 <= count <= MAX_CLIENTS:
        raise SystemExit(f"client count out of range: {count}")
    target = Target(**spec["target"])
    wall, downloads = run_clients(target.connector(), spec["path"], count, float(spec["timeout"]))
    json.dump({"wall": wall, "downloads": [asdict(d) for d in downloads]}, sys.stdout)
    return 0


# --------------------------------------------------------------------------------------------------
# Watching the proxy while clients run


@dataclass
class Watch:
    polls: int = 0
    failures: int = 0
    worst_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    max_rss_kib: int = 0

    @property
    def p99_ms(self) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Watcher(threading.Thread):
    """Poll ``/healthz`` on the admin port every 20 ms (one keep-alive connection) and sample VmRSS."""

    def __init__(self, pid: int, admin_port: int) -> None:
        super().__init__(name="bench-watcher", daemon=True)
        self._pid = pid
        self._admin_port = admin_port
        self._stop_event = threading.Event()
        self.watch = Watch()

    def stop(self) -> Watch:
        self._stop_event.set()
        self.join(POLL_TIMEOUT + 5)
        return self.watch

    def run(self) -> None:
        connection: http.client.HTTPConnection | None = None
        while not self._stop_event.is_set():
            rss = proc_status_kib(self._pid, "VmRSS")
            if rss is not None:
                self.watch.max_rss_kib = max(self.watch.max_rss_kib, rss)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self._admin_port, timeout=POLL_TIMEOUT)
            began = time.perf_counter()
            try:
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                connection.close()
                connection = None
            elapsed_ms = (time.perf_counter() - began) * 1000
            self.watch.polls += 1
            self.watch.latencies_ms.append(elapsed_ms)
            self.watch.worst_ms = max(self.watch.worst_ms, elapsed_ms)
            if not ok:
                self.watch.failures += 1
            self._stop_event.wait(POLL_INTERVAL)
        if connection is not None:
            connection.close()


# --------------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Row:
    scenario: str
    clients: int
    wall: float
    size: int
    downloads: list[Download]
    expected_sha256: str
    upstream_requests: int
    baseline_kib: int | None = None
    peak_kib: int | None = None
    peak_reset: bool = False
    watch: Watch | None = None
    warm_seconds: float | None = None
    proxy_cpu: float | None = None

    @property
    def ok(self) -> bool:
        return all(
            d.status == 200 and d.size == self.size and d.sha256 == self.expected_sha256 and not d.error
            for d in self.downloads
        )

    @property
    def mib_per_s(self) -> float:
        received = sum(d.size for d in self.downloads)
        return received / MIB / self.wall if self.wall > 0 else 0.0

    def meets_target(self, target_mib: float) -> bool | None:
        if self.peak_kib is None:
            return None
        return self.peak_kib / 1024 <= target_mib


class Bench:
    def __init__(self, workdir: Path, size: int, timeout: float, keep: bool) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.keep = keep
        self.tls: OriginTLS = make_origin_tls(workdir / "tls")
        self.dist = FakeRustDist(self.tls, workdir / "origin")
        release = self.dist.publish("9.98.0", "2026-04-14", pad_bytes={"rust-std": size})
        self.path = release.archive_path("rust-std")
        origin_file = self.dist.file(self.path)
        self.size = origin_file.stat().st_size
        self.sha256 = file_sha256(origin_file)
        self._proxies = 0

    def close(self) -> None:
        self.dist.close()

    @contextlib.contextmanager
    def proxy(self) -> Iterator[ProxyProcess]:
        """A new `ruststash serve` with an empty cache, stopped (and its cache removed) afterwards."""
        self._proxies += 1
        root = self.workdir / f"proxy-{self._proxies}"
        proxy = ProxyProcess(
            root, ["--upstream", f"{HOST}={self.dist.url}", "--upstream-ca", str(self.tls.ca_pem)]
        ).start()
        try:
            yield proxy
        finally:
            stop_proxy(proxy, root.name)  # a problem is printed with the log tail
            if not self.keep:
                shutil.rmtree(root / "cache", ignore_errors=True)

    def origin_requests(self) -> int:
        return self.dist.count(self.path)

    def direct(self, clients: int) -> Row:
        target = Target(int(self.dist.url.rsplit(":", 1)[1]), str(self.tls.ca_pem), tunnel=False)
        before = self.origin_requests()
        wall, downloads = client_process(target, self.path, clients, self.timeout)
        return Row("direct", clients, wall, self.size, downloads, self.sha256, self.origin_requests() - before)

    def through_proxy(self, clients: int, warm: bool) -> Row:
        with self.proxy() as proxy:
            assert proxy.process is not None
            pid = proxy.process.pid
            target = Target(proxy.port, str(proxy.ca_cert), tunnel=True)
            # As rustup does: the manifest's .sha256 first, so the proxy learns the archive's sha256.
            manifest = fetch_small(target.connector(), MANIFEST_SHA256)
            if manifest.status != 200:
                raise RuntimeError(f"{MANIFEST_SHA256} through the proxy: {manifest.status} {manifest.error}")
            warm_seconds = None
            before = self.origin_requests()
            if warm:
                warm_seconds, (first,) = client_process(target, self.path, 1, self.timeout)
                if first.error or first.sha256 != self.sha256:
                    raise RuntimeError(f"warming download failed: {first}")
                before = self.origin_requests()
            baseline = proc_status_kib(pid, "VmHWM")
            reset = reset_peak_rss(pid)
            cpu_before = cpu_seconds(pid)
            watcher = Watcher(pid, proxy.admin_port)
            watcher.start()
            try:
                wall, downloads = client_process(target, self.path, clients, self.timeout)
            finally:
                watch = watcher.stop()
            peak = proc_status_kib(pid, "VmHWM")
            cpu_after = cpu_seconds(pid)
            return Row(
                "hit" if warm else "miss",
                clients,
                wall,
                self.size,
                downloads,
                self.sha256,
                self.origin_requests() - before,
                baseline_kib=baseline,
                peak_kib=peak,
                peak_reset=reset,
                watch=watch,
                warm_seconds=warm_seconds,
                proxy_cpu=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
            )


def fetch_small(connect: Connect, path: str) -> Download:
    barrier = threading.Barrier(1)
    client = Client(connect, path, time.monotonic() + SOCKET_TIMEOUT, barrier)
    client.run()
    return client.result


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(READ_BUFFER):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Report


def mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.0f}"


def render(rows: list[Row], machine: dict[str, str], size: int, target_mib: float, when: str, label: str = "") -> str:
    lines = [
        f"### Memory: {size / MIB:.0f} MiB archive, {when}" + (f" ({label})" if label else ""),
        "",
        machine_line(machine),
        "",
        "| scenario | clients | wall s | MiB/s (all clients) | proxy RSS before MiB | proxy peak RSS MiB "
        "| max sampled RSS MiB | proxy CPU s | from upstream | worst /healthz ms (p99) | bytes correct "
        f"| peak ≤ {target_mib:g} MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for row in rows:
        upstream = f"{row.upstream_requests} x {size / MIB:.0f} MiB = {row.upstream_requests * size / MIB:.0f} MiB"
        if row.watch is None:
            stall = "—"
        else:
            stall = f"{row.watch.worst_ms:.0f} ({row.watch.p99_ms:.0f})"
            if row.watch.failures:
                stall += f", {row.watch.failures} failed"
        good = sum(
            1 for d in row.downloads if d.status == 200 and d.size == row.size and d.sha256 == row.expected_sha256
        )
        correct = f"{'yes' if row.ok else 'NO'} ({good}/{row.clients})"
        meets = row.meets_target(target_mib)
        verdict = "—" if meets is None else ("yes" if meets else "**no**")
        peak = mib(row.peak_kib) + ("" if row.peak_reset or row.peak_kib is None else " (since start)")
        sampled = "—" if row.watch is None else mib(row.watch.max_rss_kib)
        cpu = "—" if row.proxy_cpu is None else f"{row.proxy_cpu:.1f}"
        lines.append(
            f"| {row.scenario} | {row.clients} | {row.wall:.1f} | {row.mib_per_s:.0f} | {mib(row.baseline_kib)} "
            f"| {peak} | {sampled} | {cpu} | {upstream} | {stall} | {correct} | {verdict} |"
        )
    lines += [
        "",
        "Proxy RSS before: VmHWM of the proxy process just before the measured part (after start-up and the "
        "manifest request; for hit also after the one warming download). Proxy peak RSS: VmHWM over the measured "
        "part alone (reset through /proc/<pid>/clear_refs first). Proxy CPU: user + system seconds of the proxy "
        "process (all threads) during the measured part. /healthz is polled every 20 ms from the benchmark "
        "process; its time includes CPU contention on this machine, not only the proxy's loop. Target: "
        f"peak RSS ≤ {target_mib:g} MiB (not asserted).",
    ]
    errors = [(row, d) for row in rows for d in row.downloads if d.error]
    if errors:
        lines.append("")
        lines += [f"- {row.scenario} x {row.clients}: {d.error}" for row, d in errors[:10]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------


def parse_clients(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {value!r}") from None
    if not counts or any(not 1 <= n <= MAX_CLIENTS for n in counts):
        raise argparse.ArgumentTypeError(f"client counts must be 1..{MAX_CLIENTS}")
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [WORKER_FLAG] and len(argv) == 2:
        return client_worker(argv[1])
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300, help="archive size in MiB (default 300)")
    parser.add_argument("--clients", type=parse_clients, default=[4, 8], help="client counts (default 4,8)")
    parser.add_argument("--timeout", type=float, default=600.0, help="deadline per scenario, seconds")
    parser.add_argument("--target-mib", type=float, default=TARGET_MIB, help="RSS target to report against")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to append to")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="where origin files and caches go (default: a new directory in the user cache directory)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--label", default="", help="a note for the table's heading (what was measured)")
    args = parser.parse_args(argv)
    if args.size_mb < 1:
        parser.error("--size-mb must be at least 1")

    workdir = args.workdir or default_workdir("ruststash-bench-")
    workdir.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    machine = machine_description()
    rows: list[Row] = []
    bench: Bench | None = None
    failure = ""
    try:
        print(f"preparing a {args.size_mb} MiB archive in {workdir} ...", file=sys.stderr)
        bench = Bench(workdir, args.size_mb * MIB, args.timeout, args.keep)
        for clients in args.clients:
            for scenario in ("direct", "miss", "hit"):
                print(f"{scenario} x {clients} ...", file=sys.stderr, flush=True)
                if scenario == "direct":
                    row = bench.direct(clients)
                else:
                    row = bench.through_proxy(clients, warm=scenario == "hit")
                rows.append(row)
                print(
                    f"  {row.wall:.1f} s, {row.mib_per_s:.0f} MiB/s, peak RSS {mib(row.peak_kib)} MiB, "
                    f"correct: {row.ok}",
                    file=sys.stderr,
                    flush=True,
                )
    except (RuntimeError, OSError, ValueError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        if bench is not None:
            bench.close()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report = render(rows, machine, bench.size if bench else args.size_mb * MIB, args.target_mib, when, args.label)
    verdicts = [
        f"{row.scenario} x {row.clients}: {'meets' if meets else 'does NOT meet'} the {args.target_mib:g} MiB peak "
        "RSS target"
        for row in rows
        if (meets := row.meets_target(args.target_mib)) is not None
    ]
    return publish(report, failure, args.output, not args.no_write, all(row.ok for row in rows), verdicts)


if __name__ == "__main__":
    sys.exit(main())
