"""The monitoring assets: Prometheus config and alert rules (deploy/prometheus/), Grafana dashboard and
provisioning (grafana/). promtool checks and unit-tests them; the dashboard and the rules may only name
metrics a real `ruststash serve` exports.

promtool comes with Prometheus (Debian: `apt-get install prometheus`); without it these tests fail.
tests/test_e2e_prometheus.py runs every expression against a real Prometheus scraping a busy proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from tests.conftest import ProxyFactory

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YML = PROMETHEUS_DIR / "prometheus.yml"
ALERTS_YML = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_YML = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA_DIR = ROOT / "grafana"
DASHBOARD_JSON = GRAFANA_DIR / "dashboards" / "ruststash.json"
DATASOURCE_YAML = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDER_YAML = GRAFANA_DIR / "provisioning" / "dashboards" / "ruststash.yaml"

DATASOURCE_UID = "prometheus"
DASHBOARD_PATH = "/var/lib/grafana/dashboards"  # where deploy/ mounts grafana/dashboards
ALERTS = {
    "RuststashDown",
    "RuststashUpstreamDown",
    "RuststashHitRatioCollapsed",
    "RuststashStoreNearCap",
    "RuststashIntegrityFailures",
    "RuststashDiskAlmostFull",
    "RuststashDiskFull",
}
SEVERITIES = {"critical", "warning", "info"}
# Series that Prometheus makes itself for every target; everything else must come from ruststash.
PROMETHEUS_SERIES = {"up"}
# What the expressions may call. A name outside this list is more likely a typo than a new need.
PROMQL_FUNCTIONS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk",
    "rate", "irate", "increase", "delta", "histogram_quantile",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
    "clamp_min", "clamp_max", "absent", "vector", "scalar", "label_replace", "time", "timestamp",
}  # fmt: skip
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
# Grafana's variables, as the e2e test substitutes them (instance: the "All" value).
GRAFANA_VARIABLES = {"instance": ".*", "__rate_interval": "1m", "__interval": "30s", "__range": "10m"}


def yaml_load(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path is not None, f"{tool} is not on PATH: install Prometheus (Debian: apt-get install prometheus)"
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([require("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


# ---------------------------------------------------------------- alert rules


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    signal: str  # the expression without its final comparison
    op: str
    threshold: float
    rule: dict[str, Any]


_SPLIT = re.compile(r"^(?P<signal>.+?)\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<threshold>[0-9][0-9.eE+-]*)\s*$", re.DOTALL)


def _top_level(expr: str) -> str:
    """`expr` with everything inside parentheses, braces, brackets and strings blanked out."""
    out = []
    depth = 0
    quote = ""
    for char in expr:
        if quote:
            out.append(" ")
            if char == quote:
                quote = ""
            continue
        if char in "\"'":
            quote = char
            out.append(" ")
        elif char in "({[":
            depth += 1
            out.append(" ")
        elif char in ")}]":
            depth -= 1
            out.append(" ")
        else:
            out.append(char if depth == 0 else " ")
    return "".join(out)


def split_alert_expr(expr: str) -> tuple[str, str, float]:
    """`<signal> <op> <threshold>` (alerts.yml's convention) -> (signal, op, threshold).

    The final comparison must be the expression's outermost operator: the signal may not contain a top-level
    comparison or set operator, which PromQL would bind tighter than (or in place of) the final comparison.
    """
    match = _SPLIT.match(expr.strip())
    assert match, f"not of the form `<signal> <op> <threshold>`: {expr!r}"
    signal = match["signal"].strip()
    top = _top_level(signal)
    assert not re.search(r"==|!=|<|>|\b(and|or|unless)\b", top), f"signal has a top-level operator: {signal!r}"
    return signal, match["op"], float(match["threshold"])


def compare(value: float, op: str, threshold: float) -> bool:
    return {
        "==": value == threshold,
        "!=": value != threshold,
        "<": value < threshold,
        ">": value > threshold,
        "<=": value <= threshold,
        ">=": value >= threshold,
    }[op]


def alert_rules() -> list[AlertRule]:
    rules = []
    for group in yaml_load(ALERTS_YML)["groups"]:
        for rule in group["rules"]:
            signal, op, threshold = split_alert_expr(rule["expr"])
            rules.append(AlertRule(rule["alert"], rule["expr"].strip(), signal, op, threshold, rule))
    return rules


# ---------------------------------------------------------------- dashboard


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text())
    return dashboard


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows (layout only), including panels inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    return [(panel["title"], target["expr"]) for panel in query_panels(dashboard) for target in panel["targets"]]


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana's `$name` and `${name}` as Grafana would; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in values, f"unknown Grafana variable ${name} in {expr!r}"
        return values[name]

    return _VARIABLE.sub(replace, expr)


# ---------------------------------------------------------------- metric names


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, keywords and label names left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        word = match[0]
        if word in PROMQL_KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            assert word in PROMQL_FUNCTIONS, f"unexpected function {word}() in {expr!r}"
        else:
            names.add(word)
    return names


def exported_metric_names(admin_port: int) -> set[str]:
    """The sample names on a running ruststash's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


# ================================================================ tests


def test_promtool_checks_the_alert_rules() -> None:
    out = promtool("check", "rules", str(ALERTS_YML))
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout


def test_promtool_checks_the_prometheus_config(tmp_path: Path) -> None:
    config = yaml_load(PROMETHEUS_YML)
    assert config["rule_files"] == ["alerts.yml"], "rule files are resolved beside prometheus.yml"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "ruststash", "the alert rules select job=ruststash"
    assert job["static_configs"] == [{"targets": ["ruststash:9128"]}]
    assert job["scrape_interval"] == "15s"
    # As deployed: alerts.yml next to prometheus.yml in one directory (a copy, so nothing is written here).
    shutil.copy(PROMETHEUS_YML, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS_YML, tmp_path / "alerts.yml")
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert "1 rule files found" in out.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    out = promtool("test", "rules", str(ALERTS_TEST_YML))
    assert "SUCCESS" in out.stdout
    # Each alert has a test group of its own.
    tested = {test["name"].split()[0] for test in yaml_load(ALERTS_TEST_YML)["tests"]}
    assert tested == ALERTS


def test_alert_rules_are_complete_and_follow_the_signal_threshold_convention() -> None:
    rules = alert_rules()
    assert {rule.name for rule in rules} == ALERTS
    assert len(rules) == len(ALERTS), "an alert name is used twice"
    for rule in rules:
        assert rule.rule["labels"]["severity"] in SEVERITIES, rule.name
        annotations = rule.rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 100, rule.name
        assert re.fullmatch(r"(==|!=|<=|>=|<|>) [0-9.e+]+", rule.expr.splitlines()[-1]), f"{rule.name}: last line"
    assert split_alert_expr("a / (b > 0)\n> 0.9") == ("a / (b > 0)", ">", 0.9)
    for broken in ("a > 1 and b\n> 2", "a or b < 1", "a > b\n== 0", "a\n> b"):
        try:
            split_alert_expr(broken)
        except AssertionError:
            continue
        raise AssertionError(f"{broken!r} was accepted")


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "ruststash"
    assert dashboard["schemaVersion"] >= 36
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "instance" and variable["type"] == "query"
    assert variable["datasource"]["uid"] == DATASOURCE_UID
    assert variable["query"] == "label_values(ruststash_build_info, instance)"
    assert variable["includeAll"] and variable["allValue"] == ".*"

    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for row in (panel for panel in dashboard["panels"] if panel["type"] == "row"):
        assert not row.get("targets"), f"row {row['title']!r} has targets"
    panels = query_panels(dashboard)
    assert len(panels) >= 20
    for panel in panels:
        where = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        assert panel["targets"], f"panel {where!r} has no target"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == DATASOURCE_UID, where
            expr = target["expr"]
            assert expr.strip(), f"panel {where!r} has an empty expression"
            # Every ruststash series is narrowed to the selected instances.
            for selector in re.finditer(r"\b(ruststash_\w+)(\{[^}]*\})?", expr):
                assert selector[2] and 'instance=~"$instance"' in selector[2], f"{where}: {selector[0]}"
            substitute(expr, GRAFANA_VARIABLES)  # no unknown variable

    # No two panels overlap.
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]

    titles = " | ".join(panel["title"] for panel in panels).lower()
    for topic in ("hit ratio", "by kind", "outcome", "cache", "latency", "health", "breaker", "stale", "errors"):
        assert topic in titles, topic
    for topic in ("integrity", "store size and cap", "entries", "evictions", "free disk"):
        assert topic in titles, topic
    latency = next(panel for panel in panels if "latency" in panel["title"].lower())
    assert [t["expr"].split(",")[0] for t in latency["targets"]] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]
    cap = next(panel for panel in panels if panel["title"] == "Store size and cap")
    assert any(t["expr"].endswith('ruststash_store_max_bytes{instance=~"$instance"} > 0') for t in cap["targets"])


def test_grafana_provisioning_matches_the_dashboard() -> None:
    (datasource,) = yaml_load(DATASOURCE_YAML)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["access"] == "proxy"
    (provider,) = yaml_load(DASHBOARD_PROVIDER_YAML)["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARD_PATH
    assert DASHBOARD_PATH in DASHBOARD_PROVIDER_YAML.read_text().split("apiVersion")[0], "the comment names it"


def test_dashboard_and_alerts_use_only_metrics_ruststash_exports(start_proxy: ProxyFactory) -> None:
    proxy = start_proxy([])
    exported = exported_metric_names(proxy.admin_port)
    assert "ruststash_requests_total" in exported
    known = exported | PROMETHEUS_SERIES

    dashboard = load_dashboard()
    used: set[str] = set()
    for title, expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: {expr!r} selects no series"
        assert names <= known, f"{title}: {sorted(names - known)} are not exported by ruststash"
        used |= names
    for variable in dashboard["templating"]["list"]:
        (name,) = re.findall(r"label_values\((\w+),", variable["query"])
        assert name in exported
    for rule in alert_rules():
        names = metric_names(rule.expr)
        assert names and names <= known, f"{rule.name}: {sorted(names - known)} are not exported by ruststash"
        assert metric_names(rule.signal) == names

    # And the dashboard shows every series ruststash exports (bar the histogram's sum, unused by quantiles).
    missing = exported - used - {"ruststash_upstream_fetch_seconds_sum"}
    assert not missing, f"exported but on no panel: {sorted(missing)}"


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (upstream, le) (rate(ruststash_upstream_fetch_seconds_bucket{instance=~"a"}'
        "[$__rate_interval]))) / on (instance) group_left (upstream) up * 1e9 > bool 2"
    )
    assert metric_names(expr) == {"ruststash_upstream_fetch_seconds_bucket", "up"}
    assert metric_names('sum(rate(x_total{a="rate(y)"}[5m])) and z') == {"x_total", "z"}
