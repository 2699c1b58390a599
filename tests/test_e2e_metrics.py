"""The admin server as an operator's Prometheus and probes see it, after real cargo traffic."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ruststash.settings import DEFAULT_HOT_BYTES
from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess
from tests.origins.clients import write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args

pytestmark = pytest.mark.e2e


def scrape(proxy: ProxyProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/metrics", timeout=10) as response:
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_cargo_traffic(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    before = scrape(proxy)
    # Known label values are there before any traffic, at zero.
    assert value(before, "ruststash_requests_total", kind="archive", outcome="stale") == 0
    assert value(before, "ruststash_upstream_errors_total", cause="timeout") == 0
    assert value(before, "ruststash_integrity_failures_total", kind="crate") == 0
    assert value(before, "ruststash_upstream_circuit_state", upstream=crates_origin.index_url, state="closed") == 1
    assert value(before, "ruststash_store_entries") == 0

    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    sandbox(tmp_path / "cold", proxy).run(["fetch"], project)
    (project / "Cargo.lock").unlink()
    sandbox(tmp_path / "warm", proxy).run(["fetch"], project)
    after = scrape(proxy)
    crate_misses = value(after, "ruststash_requests_total", kind="crate", outcome="miss")
    assert crate_misses > 0
    assert value(after, "ruststash_requests_total", kind="crate", outcome="hit") == crate_misses
    assert value(after, "ruststash_served_bytes_total", source="cache") > 0
    assert value(after, "ruststash_upstream_fetch_seconds_count", upstream=crates_origin.static_url) == crate_misses
    assert value(after, "ruststash_upstream_fetch_seconds_bucket", upstream=crates_origin.static_url, le="300.0") > 0
    assert value(after, "ruststash_store_entries") >= crate_misses
    assert value(after, "ruststash_store_bytes") > 0
    assert value(after, "ruststash_store_free_bytes") > 0
    assert value(after, "ruststash_upstream_up", upstream=crates_origin.index_url) == 1
    # The warm run's crates were stored by the cold run moments before: answered from memory.
    assert value(after, "ruststash_memory_cache_hits_total") >= crate_misses
    assert 0 < value(after, "ruststash_memory_cache_bytes") <= DEFAULT_HOT_BYTES

    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/api/stats", timeout=10) as response:
        stats = json.loads(response.read())
    assert stats["store"]["entries"] == value(after, "ruststash_store_entries")
    assert stats["store"]["memory_hits"] >= crate_misses
    assert stats["metrics"]["ruststash_requests_total"]["crate/hit"] == crate_misses


def test_readyz_reports_what_is_wrong(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy([])
    url = f"http://127.0.0.1:{proxy.admin_port}/readyz"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.loads(response.read()) == {"ready": True, "checks": {"store": "ok", "ca": "ok", "disk": "ok"}}
    (proxy.data_dir / "mitmproxy-ca.pem").rename(proxy.data_dir / "moved-away.pem")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(url, timeout=10)
    assert raised.value.code == 503
    body = json.loads(raised.value.read())
    raised.value.close()
    assert body["ready"] is False and "is missing" in body["checks"]["ca"]
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.admin_port}/healthz", timeout=10) as response:
        assert response.status == 200
