"""A full cache disk: the proxy keeps serving (without storing), says so once, and recovers.

The cache lives on a small tmpfs mounted in the proxy's own mount namespace (the test runs as root), so
this machine's disks are never filled. `nsenter` reaches into that namespace to fill and free the space.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess
from tests.origins.clients import write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args

pytestmark = pytest.mark.e2e

FULL_WARNING = "is full: serving without storing until space returns"


def in_namespace(proxy: ProxyProcess, *command: str) -> subprocess.CompletedProcess[str]:
    assert proxy.process is not None
    return subprocess.run(
        ["nsenter", "--target", str(proxy.process.pid), "--mount", *command],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def store_stats(proxy: ProxyProcess) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/api/stats", timeout=10) as response:
        store: dict[str, object] = json.loads(response.read())["store"]
        return store


def test_full_disk_passes_through_then_recovers(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.fail("this test needs root, unshare and nsenter (util-linux)")
    cache = tmp_path / "cache"
    cache.mkdir()
    mount_then_run = 'mount -t tmpfs -o size=8m tmpfs "$0" && exec "$@"'
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_run, str(cache)]
    proxy = start_proxy(upstream_args(crates_origin, origin_tls), cache_dir=cache, wrap=wrap)
    assert in_namespace(proxy, "findmnt", "-n", "-o", "FSTYPE", str(cache)).stdout.strip() == "tmpfs"
    assert not list(cache.iterdir()), "the tmpfs must not be visible outside the proxy's namespace"

    # Fill the disk (dd stops when it is full).
    in_namespace(proxy, "dd", "if=/dev/zero", f"of={cache}/ballast", "bs=64k")
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    box = sandbox(tmp_path / "full", proxy)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)
    box.run(["build", "--offline"], project)
    assert proxy.log().count(FULL_WARNING) == 1, "one clear warning, not one per request"
    assert store_stats(proxy)["disk_full"] is True
    assert store_stats(proxy)["entries"] == 0
    notes = {r.get("note") for r in proxy.access() if r["path"].startswith("/crates/")}
    assert notes == {"not stored: the cache disk is full"}
    assert in_namespace(proxy, "ls", "-A", f"{cache}/tmp").stdout == "", "partial bodies left behind"
    refused = in_namespace(proxy, *_ruststash(), "verify", "--cache-dir", str(cache))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr

    # Space returns: storing resumes (within the proxy's retry interval), and what is stored is whole.
    in_namespace(proxy, "rm", f"{cache}/ballast")
    deadline = time.monotonic() + 40
    attempt = 0
    while store_stats(proxy)["entries"] == 0:
        assert time.monotonic() < deadline, "storing never resumed"
        attempt += 1
        (project / "Cargo.lock").unlink(missing_ok=True)
        sandbox(tmp_path / f"after-{attempt}", proxy).run(["fetch"], project)
        time.sleep(1)
    assert store_stats(proxy)["disk_full"] is False
    assert "has space again: storing resumed" in proxy.log()
    # The run that resumed storing may have passed some crates through before it did: one more run stores
    # them, and the next gets every crate from the cache.
    (project / "Cargo.lock").unlink(missing_ok=True)
    sandbox(tmp_path / "stored", proxy).run(["fetch"], project)
    seen = len(proxy.access())
    (project / "Cargo.lock").unlink(missing_ok=True)
    sandbox(tmp_path / "recovered", proxy).run(["fetch"], project)
    crate_outcomes = [r["outcome"] for r in proxy.access()[seen:] if r["path"].startswith("/crates/")]
    assert crate_outcomes and set(crate_outcomes) == {"HIT"}, crate_outcomes
    verify = in_namespace(proxy, *_ruststash(), "verify", "--cache-dir", str(cache))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _ruststash() -> list[str]:
    import sys

    return [sys.executable, "-m", "ruststash"]
