"""The store under real traffic: a size cap with cargo downloading, and `ruststash verify` on a damaged store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.harness import proxy_process_env, ruststash_command
from tests.origins.clients import write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args
from tests.test_e2e_metrics import scrape, value

pytestmark = pytest.mark.e2e


def test_size_cap_evicts_least_recently_used_while_cargo_downloads(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    total = sum(c.size for c in crates_origin.registry.crates)
    cap = total // 3
    proxy = start_proxy([*upstream_args(crates_origin, origin_tls), "--max-size", str(cap)])
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    box = sandbox(tmp_path / "client", proxy)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)
    box.run(["build", "--offline"], project)
    samples = scrape(proxy)
    assert value(samples, "ruststash_store_max_bytes") == cap
    assert value(samples, "ruststash_store_evictions_total") > 0
    assert value(samples, "ruststash_store_bytes") <= cap
    on_disk = sum(p.stat().st_size for p in (proxy.cache_dir / "blobs").rglob("*") if p.is_file())
    assert on_disk <= cap
    # Whatever was evicted is fetched again on demand: a new client still gets everything.
    (project / "Cargo.lock").unlink()
    sandbox(tmp_path / "again", proxy).run(["fetch"], project)
    result = subprocess.run(
        ruststash_command("verify", "--cache-dir", str(proxy.cache_dir)),
        capture_output=True, text=True, timeout=120, env=proxy_process_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_verify_finds_and_removes_a_corrupt_body(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    sandbox(tmp_path / "client", proxy).run(["fetch"], project)
    assert proxy.stop() == 0
    victim = crates_origin.registry.crates[0]
    blob = next((proxy.cache_dir / "blobs").rglob(victim.cksum))
    blob.write_bytes(b"bit rot" + blob.read_bytes()[7:])

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ruststash_command("verify", "--cache-dir", str(proxy.cache_dir)),
            capture_output=True, text=True, timeout=120, env=proxy_process_env(), check=False,
        )  # fmt: skip

    first = verify()
    assert first.returncode == 1
    assert f"corrupt: {victim.cksum}" in first.stdout
    assert not blob.exists()
    second = verify()
    assert second.returncode == 0 and "ok: every body matches its digest" in second.stdout
    # The proxy fetches the removed crate again and serves it whole.
    crates_origin.reset_counts()
    proxy.start()
    (project / "Cargo.lock").unlink()
    sandbox(tmp_path / "again", proxy).run(["fetch"], project)
    assert crates_origin.count(victim.download_path, site="static") == 1


def test_verify_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    result = subprocess.run(
        ruststash_command("verify", "--cache-dir", str(tmp_path)),
        capture_output=True, text=True, timeout=60, env=proxy_process_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "is not a ruststash store" in result.stderr
