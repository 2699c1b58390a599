"""What the benchmark scripts share: units, where the workloads are, and how sizes and the machine are
written in their reports."""

from __future__ import annotations

import os
from pathlib import Path

KIB = 1024
MIB = 1024 * 1024
# The real Cargo.lock files and channel manifest live in ../shared/workloads beside the repository
# (RUSTSTASH_WORKLOADS overrides).
WORKLOADS_DIR = Path(
    os.environ.get("RUSTSTASH_WORKLOADS") or Path(__file__).resolve().parents[2] / "shared" / "workloads"
)


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
