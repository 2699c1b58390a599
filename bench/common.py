"""What the benchmark scripts share: units, where the workloads are, and how sizes and the machine are
written in their reports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ruststash import cli
from tests.harness import ProxyProcess
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import index_path

KIB = 1024
MIB = 1024 * 1024
# The real Cargo.lock files and channel manifest live in ../shared/workloads beside the repository
# (RUSTSTASH_WORKLOADS overrides).
WORKLOADS_DIR = Path(
    os.environ.get("RUSTSTASH_WORKLOADS") or Path(__file__).resolve().parents[2] / "shared" / "workloads"
)


def crates_body_sizes(origin: FakeCratesIo) -> dict[str, int]:
    """URL path -> length of the 200 body a fake crates.io sends for it (to count bytes from upstream)."""
    sizes: dict[str, int] = {"/config.json": len(json.dumps(origin.config).encode())}
    by_path: Counter[str] = Counter()
    for crate in origin.registry.crates:
        by_path["/" + index_path(crate.name)] += len(crate.index_line()) + 1
        sizes[crate.download_path] = crate.size
        sizes[f"/crates/{crate.name}/{crate.filename}"] = crate.size
    sizes.update(by_path)
    return sizes


def size_text(n: float) -> str:
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= KIB:
        return f"{n / KIB:.0f} KiB"
    return f"{n:.0f} B"


def machine_line(machine: dict[str, str], extra: str = "") -> str:
    """The report's "Machine:" line, from `bench.memory.machine_description()`."""
    return (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram']} RAM, Linux {machine['kernel']}; "
        f"Python {machine['python']}, mitmproxy {machine['mitmproxy']}, aiohttp {machine['aiohttp']}, "
        f"ruststash {machine['ruststash']}{'; ' + extra if extra else ''}."
    )


INTRO = """# Benchmarks

Numbers measured with the scripts in `bench/` (see bench/README.md for what each measures and how to run it).
Each run appends a section; the machine and versions are given with every table.

"""


def append_report(output: Path, text: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    existing = output.read_text(encoding="utf-8") if output.exists() else INTRO
    if not existing.endswith("\n\n"):
        existing = existing.rstrip("\n") + "\n\n"
    output.write_text(existing + text, encoding="utf-8")


def publish(report: str, failure: str, output: Path, write: bool, ok: bool, after: Iterable[str] = ()) -> int:
    """Print the report (and the `after` lines), append it to `output` unless `write` is off or the run
    stopped early (`failure`); the exit code: 2 stopped early, 1 some run failed, 0 all well."""
    print(report)
    for line in after:
        print(line)
    if failure:
        print(f"stopped early, nothing appended: {failure}", file=sys.stderr)
        return 2
    if write:
        append_report(output, report)
        print(f"appended to {output}", file=sys.stderr)
    return 0 if ok else 1


def stop_proxy(proxy: ProxyProcess, label: str) -> str | None:
    """Stop a benchmarked `ruststash serve`. If it did not exit cleanly (within 15 s of SIGTERM, with code 0
    or -15 and no traceback in its log): a warning for the report, also printed to stderr with its log tail."""
    try:
        code = proxy.stop()
        problem = None if code in (0, -15) else f"exited with {code}"
    except RuntimeError as exc:
        problem = str(exc)
    log = proxy.log()
    if problem is None and "Traceback" in log:
        problem = "logged a traceback"
    if problem is None:
        return None
    print(f"warning: ruststash {label} {problem}; log tail:\n{log[-2000:]}", file=sys.stderr, flush=True)
    return f"{label}: ruststash {problem}"


# The clients' homes go to a tmpfs when there is one with this much free: on this machine creating a file on the
# disk cost up to about 1 ms of kernel time (see `file_creation_ms`), and cargo creates thousands, so its own
# CPU per warm fetch swung from 2.4 to 6.4 s run to run, drowning the proxies' differences (bench/README.md).
# The proxies' caches stay in the work directory, on the disk.
CLIENT_TMPFS = Path("/dev/shm")
CLIENT_TMPFS_MIN_FREE = 4 * 1024 * MIB


def default_client_dir(workdir: Path) -> Path:
    """A fresh directory on CLIENT_TMPFS if it is there and roomy, else `workdir`/clients."""
    with contextlib.suppress(OSError):
        fs = os.statvfs(CLIENT_TMPFS)
        if fs.f_bavail * fs.f_frsize >= CLIENT_TMPFS_MIN_FREE and os.access(CLIENT_TMPFS, os.W_OK):
            return Path(tempfile.mkdtemp(prefix="ruststash-bench-clients-", dir=CLIENT_TMPFS))
    return workdir / "clients"


def default_workdir(prefix: str) -> Path:
    """A fresh work directory (the proxies' caches, logs, the origins' trees) beside the directory where
    `ruststash serve` keeps its cache by default, the user cache directory: where a user's cache would be."""
    parent = cli.default_cache_dir().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


# Files made to time a file creation (`file_creation_ms`).
CREATION_SAMPLES = 200


def file_creation_ms(directory: Path) -> float:
    """CPU time (ms, median) to create a file in `directory` and keep it, as both proxies do for each body
    they store. On this machine kind it swung from 0.01 ms to about 1 ms with the history of that part of the
    disk (where many files were made and removed lately, as a benchmark does), which moves cold runs by about
    a second: the report shows it (bench/README.md)."""
    probe = Path(tempfile.mkdtemp(prefix="file-creation-", dir=directory))
    costs: list[float] = []
    try:
        for n in range(CREATION_SAMPLES):
            began = time.thread_time()
            os.close(os.open(probe / str(n), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            costs.append(time.thread_time() - began)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return statistics.median(costs) * 1000


def measure_file_creation_at_end(measured: list[float], directory: Path) -> None:
    """Add the end's `file_creation_ms` to the start's (before the work directory is removed)."""
    with contextlib.suppress(OSError):
        measured.append(file_creation_ms(directory))


def cache_place_text(directory: Path, creation_ms: list[float]) -> str:
    """`place_text` of the proxies' work directory and what a file creation cost there at the start and the
    end of the benchmark."""
    at = ", ".join(f"{ms:.2f} ms at the {when}" for ms, when in zip(creation_ms, ("start", "end"), strict=False))
    return f"{place_text(directory)}, where creating a file cost {at} (CPU)"


def place_text(directory: Path) -> str:
    """A directory and its file system, for the report."""
    fs_type = "?"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        best = ""
        resolved = str(directory.resolve())
        for line in mounts:
            fields = line.split()
            if len(fields) < 3 or len(fields[1]) < len(best):
                continue
            if resolved == fields[1] or resolved.startswith(fields[1].rstrip("/") + "/"):
                best, fs_type = fields[1], fields[2]
    return f"{directory} ({fs_type})"
