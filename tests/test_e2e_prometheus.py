"""The dashboard's and the alerts' PromQL against a real Prometheus scraping a ruststash that served real
cargo and rustup traffic.

One proxy fronts a fake crates.io and a fake static.rust-lang.org; a Prometheus of our own (127.0.0.1, its
own config and data directory) scrapes its admin server every second with deploy/prometheus/alerts.yml
loaded. After cargo (cold, then warm) and rustup (cold, then warm) have gone through the proxy and
Prometheus has ingested what they did, every expression of every dashboard panel must parse and return
data, and so must every alert's signal (see below); Prometheus must have loaded every rule without error.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.conftest import ProxyFactory
from tests.harness import free_port
from tests.origins.clients import write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.rustlang import FakeRustDist
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args
from tests.test_e2e_rustup import client
from tests.test_monitoring import (
    ALERTS,
    ALERTS_YML,
    GRAFANA_VARIABLES,
    PROMETHEUS_YML,
    alert_rules,
    compare,
    dashboard_exprs,
    load_dashboard,
    require,
    substitute,
)

pytestmark = pytest.mark.e2e

SCRAPE_INTERVAL = "1s"
PROMETHEUS_START_TIMEOUT = 30.0
INGEST_TIMEOUT = 30.0
# A cap far above what the test stores, so the "store against its cap" panel and alert have a cap to show.
MAX_SIZE = "50GiB"
OPPOSITE = {"<": ">=", ">=": "<", ">": "<=", "<=": ">", "==": "!=", "!=": "=="}


def wait_for[T](what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    """Call `probe` until it returns something other than None (or `timeout` seconds pass: then fail)."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Prometheus:
    """A real Prometheus on 127.0.0.1:<free port> scraping one ruststash admin server."""

    def __init__(self, workdir: Path, admin_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        workdir.mkdir(parents=True, exist_ok=True)
        # deploy/prometheus/prometheus.yml as shipped, but: the local proxy as target, scraped and evaluated
        # every second, and alerts.yml by its absolute path.
        config = YAML(typ="safe", pure=True).load(PROMETHEUS_YML.read_text())
        config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
        config["rule_files"] = [str(ALERTS_YML)]
        (job,) = config["scrape_configs"]
        job.update(scrape_interval=SCRAPE_INTERVAL, scrape_timeout=SCRAPE_INTERVAL)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{admin_port}"]}]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        command = [
            require("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

        def ready() -> bool | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return True if response.status == 200 else None
            except OSError:
                return None

        wait_for("Prometheus to be ready", ready, PROMETHEUS_START_TIMEOUT)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns the parsed body, status "success" or not (4xx bodies are JSON too)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            with error:
                return json.loads(error.read())

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """An instant query at `at`; it must succeed. Returns the result vector."""
        body = self.api("query", query=expr, time=f"{at:.3f}")
        assert body["status"] == "success", f"{expr!r}: {body.get('errorType')}: {body.get('error')}"
        assert body["data"]["resultType"] == "vector", expr
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr, time.time())
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def dist(tmp_path: Path, origin_tls: OriginTLS) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path / "dist")
    yield origin
    origin.close()


def total_requests(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(value) for value in re.findall(r"^ruststash_requests_total\{[^}]*\} (\S+)$", text, re.M))


def labels(sample: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(sample["metric"].items()))


def test_dashboard_and_alert_expressions_return_data(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    crates_origin: FakeCratesIo,
    origin_tls: OriginTLS,
    dist: FakeRustDist,
) -> None:
    started = time.monotonic()
    dist.publish("9.98.0", "2026-04-14")
    proxy = start_proxy(
        [
            *upstream_args(crates_origin, origin_tls),
            *("--upstream", f"static.rust-lang.org={dist.url}"),
            *("--max-size", MAX_SIZE),
        ]
    )
    prometheus = Prometheus(tmp_path / "prometheus", proxy.admin_port).start()
    try:
        # Prometheus applies its targets a few seconds after start: let it scrape the idle proxy first, so
        # that every counter has a sample from before the traffic.
        wait_for(
            "the first scrape",
            lambda: True if prometheus.scalar('up{job="ruststash"}') == 1 else None,
            PROMETHEUS_START_TIMEOUT,
        )
        # Real clients through the proxy: cargo cold then warm (new CARGO_HOME), rustup cold then warm.
        project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
        for run in ("cargo-cold", "cargo-warm"):
            (project / "Cargo.lock").unlink(missing_ok=True)
            box = sandbox(tmp_path / run, proxy)
            box.run(["generate-lockfile"], project)
            box.run(["fetch"], project)
        for run in ("rustup-cold", "rustup-warm"):
            client(tmp_path / run, proxy).install("stable")
        traffic_done = time.monotonic()

        # Prometheus has the proxy's final request count, then a few more scrapes.
        expected = total_requests(proxy.admin_port)
        assert expected >= 60, "too little traffic for the hit-ratio alert's signal (50 cacheable requests)"
        wait_for(
            f"Prometheus to ingest {expected:.0f} requests",
            lambda: True if prometheus.scalar('sum(ruststash_requests_total{job="ruststash"})') == expected else None,
            INGEST_TIMEOUT,
        )
        count = 'count_over_time(up{job="ruststash"}[10m])'
        scrapes = prometheus.scalar(count) or 0.0
        wait_for("3 more scrapes", lambda: True if (prometheus.scalar(count) or 0) >= scrapes + 3 else None, 10)

        # Every rule loaded and evaluated without error.
        def rules_evaluated() -> dict[str, dict[str, Any]] | None:
            body = prometheus.api("rules")
            assert body["status"] == "success", body
            rules = {r["name"]: r for g in body["data"]["groups"] for r in g["rules"] if r["type"] == "alerting"}
            return rules if rules and all(r["health"] != "unknown" for r in rules.values()) else None

        rules = wait_for("every rule to be evaluated", rules_evaluated, 10)
        assert set(rules) == ALERTS
        for name, rule in rules.items():
            assert rule["health"] == "ok" and not rule.get("lastError"), f"{name}: {rule.get('lastError')}"

        # The dashboard's `instance` variable: Grafana fills it from the label's values on ruststash_build_info.
        body = prometheus.api("label/instance/values", **{"match[]": "ruststash_build_info"})
        assert body["status"] == "success" and body["data"] == [f"127.0.0.1:{proxy.admin_port}"], body

        # Every query below runs at one instant: half a second after the newest scrape Prometheus shows (all
        # of a scrape's samples become visible at once; the next scrape's are stamped a second later), so
        # that comparing two queries' results cannot be upset by a scrape arriving in between.
        latest = prometheus.scalar('timestamp(up{job="ruststash"})')
        assert latest is not None
        at = latest + 0.5

        # Every panel expression, with the "All" value and with this one instance selected.
        problems = []
        checked = 0
        for instance in (GRAFANA_VARIABLES["instance"], re.escape(f"127.0.0.1:{proxy.admin_port}")):
            values = {**GRAFANA_VARIABLES, "instance": instance.replace("\\", "\\\\")}
            for title, expr in dashboard_exprs(load_dashboard()):
                query = substitute(expr, values)
                if not prometheus.query(query, at):
                    problems.append(f"{title}: no data for {query}")
                checked += 1
        assert not problems, "\n".join(problems)

        # Alert rules. A rule's full expression is empty until it fires, which says nothing about whether it
        # selects anything at all. alerts.yml keeps every expr as `<signal> <op> <threshold>` with the
        # comparison outermost (split_alert_expr checks that), so: the signal alone must return data; the
        # full expression must return exactly the signal's series whose value passes the comparison, and the
        # same signal with the opposite comparison exactly the others (all at the same instant). The last
        # check has results to compare even while no alert fires.
        for rule in alert_rules():
            signal_result = prometheus.query(rule.signal, at)
            assert signal_result, f"{rule.name}: the signal returned no data: {rule.signal}"
            values = {labels(s): float(s["value"][1]) for s in signal_result}
            assert not any(math.isnan(v) for v in values.values()), f"{rule.name}: NaN in {signal_result}"
            full = {labels(s): float(s["value"][1]) for s in prometheus.query(rule.expr, at)}
            passing = {k: v for k, v in values.items() if compare(v, rule.op, rule.threshold)}
            assert full == passing, f"{rule.name}: the full expression is not the signal filtered by the threshold"
            inverse = f"{rule.signal}\n{OPPOSITE[rule.op]} {rule.threshold!r}"
            others = {labels(s): float(s["value"][1]) for s in prometheus.query(inverse, at)}
            assert others == {k: v for k, v in values.items() if k not in passing}, f"{rule.name}: {inverse}"
            checked += 3

        # A few values that must follow from the traffic (the warm runs were served from the cache).
        hit_ratio = prometheus.scalar(substitute(dashboard_query("Hit ratio (time range)"), GRAFANA_VARIABLES))
        assert hit_ratio is not None and 0.2 < hit_ratio < 1, hit_ratio
        assert (prometheus.scalar('sum(ruststash_served_bytes_total{source="cache"})') or 0) > 0
        assert prometheus.scalar("min(ruststash_upstream_up)") == 1
        down = prometheus.query('ALERTS{alertname="RuststashDown"}', time.time())
        assert not down, down
        print(
            f"checked {checked} queries; traffic {traffic_done - started:.1f} s, "
            f"ingest and queries {time.monotonic() - traffic_done:.1f} s, {expected:.0f} requests"
        )
    finally:
        prometheus.stop()
    assert "level=error" not in prometheus.log().lower(), prometheus.log()[-4000:]


def dashboard_query(title: str) -> str:
    (expr,) = [expr for panel_title, expr in dashboard_exprs(load_dashboard()) if panel_title == title]
    return expr
