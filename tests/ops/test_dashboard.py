"""The Grafana dashboard and its provisioning, checked without Grafana (DESIGN §7).

The dashboard names no datasource uid: every panel uses the ``$datasource`` variable, so it
imports into any Grafana; every query is filtered by the ``$job`` and ``$instance`` variables;
every query parses (``promtool check rules`` on a rule file with one recording rule per query,
Grafana's macros and variables substituted); every metric a query reads is one the worker
exposes (``streams/worker/metrics.py``), one issue 17 fixed for the bridges and the worker, or
``up``. That the queries also return the right data from a real worker is
``tests/integration/test_dashboard_live.py``.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from streams.clinical.policy import builtin_policy
from streams.worker.metrics import WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
# The compose stack's provisioned datasource; the dashboard must not need it.
DATASOURCE_UID = "stepcare-prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILTERS = ('job=~"$job"', 'instance=~"$instance"')
# Fixed by issue 17 (docs/integration.md, bridge metrics; the worker's SLO and subscriber lag):
# exported by the bridges (job stepcare-bridge) and by the worker of that issue's metrics work.
ISSUE17_SERIES = {
    "stepcare_bridge_records_total",
    "stepcare_bridge_dead_letters_total",
    "stepcare_bridge_consumer_lag",
    "stepcare_escalation_delay_seconds_bucket",
    "stepcare_escalation_delay_seconds_count",
    "stepcare_escalations_late_trigger_total",
    "stepcare_subscriber_lag",
    "stepcare_subscriber_lag_seconds",
}


def load_picture():
    """``deploy/grafana/picture.py``, the dashboard's tooling (a script, not a package)."""
    name = "stepcare_dashboard_picture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, GRAFANA / "picture.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


picture = load_picture()
DASHBOARD = picture.load_dashboard()
PANELS = [p for p in picture.panels(DASHBOARD) if p["type"] != "row"]
TARGETS = picture.targets(DASHBOARD)


def grafana_expr(expr: str) -> str:
    """``expr`` as Prometheus receives it from a panel 15 minutes wide (15 s scrapes)."""
    return picture.substitute(expr, interval=15, rate_interval=60, range_=900)


# -- PromQL parsing without a PromQL parser -----------------------------------------------------

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on",
            "ignoring", "group_left", "group_right"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (identifiers that are not functions, aggregation
    operators, keywords, label names or strings)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = re.findall(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in names if name.lower() not in KEYWORDS}


def test_metric_names_finds_the_selected_metrics_only() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(a_bucket{job="x", le!="1"}[5m]))) '
        "/ on (job) group_left (instance) sum without (kind) (b_total offset 5m) "
        "+ time() - max(c_seconds) * 1e3 > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c_seconds"}


def worker_families() -> list:
    """The worker's metric families (streams/worker/metrics.py), on a fresh registry."""
    registry = CollectorRegistry()
    WorkerMetrics(registry, builtin_policy("step-pc-2024"))
    return list(registry.collect())


SUFFIXES = {  # the series of each metric type (a labelled metric has none until a child exists)
    "counter": ["_total", "_created"],
    "gauge": [""],
    "histogram": ["_bucket", "_count", "_sum", "_created"],
    "info": ["_info"],
}


def worker_series() -> set[str]:
    """Every series name the worker exposes (histogram buckets, _total, _info included)."""
    return {f.name + suffix for f in worker_families() for suffix in SUFFIXES[f.type]}


# -- the dashboard ------------------------------------------------------------------------------


def test_the_dashboard_has_a_fixed_identity() -> None:
    assert DASHBOARD["uid"] == "stepcare-overview"
    assert DASHBOARD["title"] == "stepcare overview"
    assert DASHBOARD.get("id") is None  # Grafana assigns it; the uid is what provisioning keys
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    # Provisioning upserts by uid: two files with one uid would overwrite each other.
    provisioned = [picture.load_dashboard(p) for p in GRAFANA.glob("dashboards/*.json")]
    uids = [d["uid"] for d in provisioned]
    assert len(uids) == len(set(uids)) and "stepcare-overview" in uids


def test_every_panel_queries_the_datasource_variable() -> None:
    assert PANELS
    for panel in PANELS:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def datasource_uids(node: object) -> list[str]:
    """The uid of every ``datasource`` object anywhere in a dashboard (panels, targets,
    variables, annotations)."""
    if isinstance(node, list):
        return [uid for item in node for uid in datasource_uids(item)]
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if key == "datasource" and isinstance(value, dict):
            found.append(value.get("uid"))
        if key == "datasource" and isinstance(value, str):
            found.append(value)  # the legacy form: a datasource name
        found.extend(datasource_uids(value))
    return found


def test_no_datasource_uid_is_hard_coded() -> None:
    uids = datasource_uids(DASHBOARD)
    assert uids and set(uids) == {"${datasource}"}
    assert DATASOURCE_UID not in json.dumps(DASHBOARD)  # not even elsewhere


def test_no_hard_coded_uid_is_found_where_there_is_one() -> None:
    broken = json.loads(json.dumps(DASHBOARD))
    broken["panels"][3]["targets"][0]["datasource"] = {"type": "prometheus", "uid": "abc"}
    assert "abc" in datasource_uids(broken)


def variables() -> dict[str, dict]:
    return {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}


def test_the_variables_select_datasource_job_and_instance() -> None:
    found = variables()
    assert list(found) == ["datasource", "job", "instance"]  # each may use the ones before it
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        variable = found[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == DATASOURCE, name
        assert variable["multi"] is True and variable["includeAll"] is True, name
        assert variable["current"]["value"] == ["$__all"], name
        assert variable["refresh"] == 2, name  # on time range change: new targets appear
        assert variable["definition"] == variable["query"]["query"], name
    # The jobs of the configurations and the alerts; the instances of the jobs selected.
    assert found["job"]["definition"] == 'label_values(up{job=~"stepcare|stepcare-bridge"}, job)'
    assert found["instance"]["definition"] == 'label_values(up{job=~"$job"}, instance)'


_SELECTOR = re.compile(r"\b(stepcare_\w+|up)\b(\{[^}]*\})?(?!\s*\()")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, label matchers) of every series selector in a query."""
    return [(m[1], m[2] or "") for m in _SELECTOR.finditer(expr)]


def test_selectors_are_found() -> None:
    expr = 'sum(rate(a_total[5m])) + up{job="x"} / sum(stepcare_b{le="1"}) - stepcare_c'
    assert selectors(expr) == [("up", '{job="x"}'), ("stepcare_b", '{le="1"}'), ("stepcare_c", "")]


def test_every_query_is_filtered_by_job_and_instance() -> None:
    for panel, target in TARGETS:
        found = selectors(target["expr"])
        assert found, f"{panel['title']}: {target['expr']}"
        for name, matchers in found:
            for matcher in FILTERS:
                assert matcher in matchers, f"{panel['title']}: {name} without {matcher}"


def test_panel_ids_are_unique_and_each_panel_says_what_it_shows() -> None:
    everything = picture.panels(DASHBOARD)
    ids = [p["id"] for p in everything]
    assert len(ids) == len(set(ids))
    titles = [p["title"] for p in everything]
    assert len(titles) == len(set(titles))
    for panel in PANELS:
        assert panel["type"] in {"timeseries", "stat"}, panel["title"]
        assert len(panel.get("description", "")) > 20, panel["title"]
        unit = panel["fieldConfig"]["defaults"]["unit"]
        assert unit in {"ops", "s", "short", "percentunit"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in picture.panels(DASHBOARD):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def unfiltered(expr: str) -> str:
    return expr.replace(", " + FILTERS[0] + ", " + FILTERS[1], "").replace(
        "{" + FILTERS[0] + ", " + FILTERS[1] + "}", ""
    )


def test_the_core_panels_are_there() -> None:
    exprs = {unfiltered(t["expr"]) for _, t in TARGETS}
    assert "sum by (kind) (rate(stepcare_escalations_total[$__rate_interval]))" in exprs
    assert "time() - max(stepcare_last_processed_timestamp_seconds > 0)" in exprs
    assert 'sum(up{job="stepcare"})' in exprs
    assert any(e.startswith("histogram_quantile(0.95,") for e in exprs)
    assert any("by (partition)" in e for e in exprs) and "sum(stepcare_consumer_lag)" in exprs
    # Issue 17: the bridges, the subscribers, the SLO.
    titles = {panel["title"]: panel for panel in PANELS}
    assert (
        "sum by (bridge, outcome) (rate(stepcare_bridge_records_total[$__rate_interval]))" in exprs
    )
    assert (
        "sum by (bridge, reason) (rate(stepcare_bridge_dead_letters_total[$__rate_interval]))"
        in exprs
    )
    assert "sum by (bridge) (stepcare_bridge_consumer_lag)" in exprs
    assert "max by (group) (stepcare_subscriber_lag_seconds)" in exprs
    delay = [unfiltered(t["expr"]) for t in titles["Escalation delay"]["targets"]]
    assert delay == [
        f"histogram_quantile({q}, sum by (le) "
        "(rate(stepcare_escalation_delay_seconds_bucket[$__rate_interval])))"
        for q in ("0.5", "0.95", "0.99")
    ]
    [budget] = titles["Error budget remaining"]["targets"]
    assert '{le=~"900(\\\\.0)?"' in budget["expr"] and "[30d]" in budget["expr"]
    assert titles["Error budget remaining"]["fieldConfig"]["defaults"]["unit"] == "percentunit"


# -- the queries --------------------------------------------------------------------------------


def test_macros_are_substituted_as_grafana_would() -> None:
    expr = "rate(x[$__rate_interval]) + x[$__interval] + $__range_s + ${__range} + $__interval_ms"
    assert picture.substitute(expr, interval=15, rate_interval=60, range_=3600) == (
        "rate(x[60s]) + x[15s] + 3600 + 3600s + 15000"
    )
    expr = 'x{job=~"$job", instance=~"${instance:regex}"}[$__range]'
    assert picture.substitute(expr, interval=1, rate_interval=1, range_=60) == (
        'x{job=~".+", instance=~".+"}[60s]'  # "All"
    )
    chosen = {"job": "stepcare", "instance": "worker:6066"}
    assert picture.substitute(expr, interval=1, rate_interval=1, range_=60, variables=chosen) == (
        'x{job=~"stepcare", instance=~"worker:6066"}[60s]'
    )
    with pytest.raises(ValueError, match="dashboard variable \\$site"):
        picture.substitute("x{site=~'$site'}", interval=1, rate_interval=1, range_=1)
    assert picture.rate_interval(1, 1) == 4 and picture.rate_interval(60, 15) == 75
    with pytest.raises(ValueError, match="__nope"):
        picture.substitute("x[$__nope]", interval=1, rate_interval=1, range_=1)


def promtool_check(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on one recording rule per expression (promtool 2.42 has no
    ``promql`` command); rule names are the keys of ``exprs``."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: apt-get install prometheus"
    rules = [{"record": record, "expr": expr} for record, expr in exprs.items()]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )


def test_every_query_parses(tmp_path: Path) -> None:
    exprs = {
        f"dashboard:panel_{panel['id']}:{target['refId']}": grafana_expr(target["expr"])
        for panel, target in TARGETS
    }
    done = promtool_check(exprs, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_the_syntax_check_catches_a_broken_query(tmp_path: Path) -> None:
    done = promtool_check({"dashboard:broken": "sum by (kind) (rate(x[1m])"}, tmp_path)
    assert done.returncode == 1
    assert "dashboard:broken" in done.stdout + done.stderr


def test_every_query_reads_metrics_the_worker_exposes() -> None:
    exposed = worker_series()
    assert {"stepcare_escalations_total", "stepcare_event_time_lag_seconds_bucket"} <= exposed
    used: set[str] = set()
    for panel, target in TARGETS:
        names = metric_names(grafana_expr(target["expr"]))
        assert names, f"{panel['title']}: {target['expr']}"
        unknown = names - exposed - ISSUE17_SERIES - {"up"}
        assert not unknown, f"{panel['title']}: {sorted(unknown)} not in streams/worker/metrics.py"
        used |= names
    # Every domain metric is on the dashboard, but these two: the build info is metadata, and
    # the event-time watermark is the patients' clock (far in the past in a replay).
    families = {f.name for f in worker_families()}
    graphed = {f for f in families if any(n == f or n.startswith(f + "_") for n in used)}
    assert families - graphed == {"stepcare_build", "stepcare_last_event_timestamp_seconds"}


# -- provisioning -------------------------------------------------------------------------------


def test_the_datasource_is_provisioned_for_compose() -> None:
    config = yaml.safe_load(GRAFANA.joinpath("provisioning/datasources/prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    [datasource] = config["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["access"] == "proxy"


def test_the_dashboards_are_provisioned_from_the_mounted_folder() -> None:
    config = yaml.safe_load(GRAFANA.joinpath("provisioning/dashboards/stepcare.yml").read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["allowUiUpdates"] is False  # dashboards are code


# -- the picture --------------------------------------------------------------------------------


def test_the_picture_draws_every_panel(tmp_path: Path) -> None:
    start, end = 1_700_000_000.0, 1_700_000_060.0
    times = [start + i for i in range(61)]
    data = {
        panel["id"]: [("series", times, [float(i % 7) for i in range(61)])] for panel in PANELS[1:]
    }  # the first panel has no data: it says so
    out = tmp_path / "overview.png"
    picture.draw(DASHBOARD, data, start, end, out, subtitle="synthetic")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_picture_formats_values_in_the_panel_units() -> None:
    assert picture.formatted(0.25, "ops") == "0.25 ops/s"
    assert picture.formatted(86400, "s") == "1 day"
    assert picture.formatted(90, "s") == "1.5 min"
    assert picture.formatted(1500, "short") == "1.5K"
    assert picture.formatted(3, "short") == "3"
