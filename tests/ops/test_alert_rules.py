"""The Prometheus configuration and alert rules in deploy/prometheus (DESIGN §7).

promtool checks the configuration and the rules and runs their unit tests
(deploy/prometheus/tests); the rest holds the rules to what the people paged rely on: every
alert routed (severity, team), explained (summary, description, a runbook section), tested both
ways (a case where it fires and one where it must not), and written against metrics the worker
really exports, so a renamed metric cannot silently disarm an alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
HOSTS_CONFIG = PROMETHEUS_DIR / "prometheus-hosts.yml"  # plain hosts: file_sd targets
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
# Relative to the repository: the page exists in every clone, and a receiver's template makes
# it absolute (docs/runbook.md, "Routing alerts").
RUNBOOK_URL = "docs/runbook.md#"
# Which team each rule file routes to: service health and the SLO to ops, domain signals to
# clinical, the bridges and the subscribers to integration.
TEAMS = {
    "stepcare-service.yml": "ops",
    "stepcare-slo.yml": "ops",
    "stepcare-clinical.yml": "clinical",
    "stepcare-integration.yml": "integration",
}
SEVERITIES = {"critical", "warning"}

# The worker's metrics contract (streams/worker/metrics.py), as series names in PromQL.
CONTRACT = {
    "stepcare_events_total",
    "stepcare_escalations_total",
    "stepcare_suppressed_triggers_total",
    "stepcare_dead_letters_total",
    "stepcare_event_time_lag_seconds_bucket",
    "stepcare_event_time_lag_seconds_sum",
    "stepcare_event_time_lag_seconds_count",
    "stepcare_last_event_timestamp_seconds",
    "stepcare_last_processed_timestamp_seconds",
    "stepcare_clock_ticks_total",
    "stepcare_patients",
    "stepcare_open_visit_requests",
    "stepcare_overdue_visit_requests",
    "stepcare_consumer_lag",
    "stepcare_build_info",
}
# Fixed by issue 17 and exported by the worker (the SLO histogram, the subscribers' lag) or by
# the live bridges (job stepcare-bridge): names only, their code is not part of this check.
ISSUE17_WORKER = {
    "stepcare_escalation_delay_seconds_bucket",
    "stepcare_escalation_delay_seconds_count",
    "stepcare_subscriber_lag_seconds",
}
BRIDGE_CONTRACT = {
    "stepcare_bridge_records_total",
    "stepcare_bridge_dead_letters_total",
    "stepcare_bridge_consumer_lag",
    "stepcare_bridge_last_record_timestamp_seconds",
}
PROMETHEUS_SERIES = {"up"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package prometheus; .ci/run installs it)",
)


def promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[tuple[str, dict[str, Any]]]:
    """Every alerting rule, with the name of its rule file."""
    return [
        (path.name, rule)
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def alert_id(item: tuple[str, dict[str, Any]]) -> str:
    return item[1]["alert"]


# -- PromQL metric names ----------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_CLAUSES = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr}"
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    text = _CLAUSES.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        followed_by = text[match.end() :].lstrip()[:1]
        if name.lower() in _KEYWORDS or followed_by == "(":  # a function or an aggregation
            continue
        names.add(name)
    return names


def test_metric_names_finds_selectors_only() -> None:
    expr = """
        sum by (job, kind) (increase(stepcare_escalations_total{kind=~"A|B", job!="x"}[1d]))
          > 2 * max_over_time(sum without (instance) (rate(up[5m]))[1d:5m] offset 1h) / 7
        and on (job) (time() - stepcare_last_processed_timestamp_seconds > 3e2)
        or absent(stepcare_consumer_lag{partition="0"}) unless bool vector(1)
    """
    assert metric_names(expr) == {
        "stepcare_escalations_total",
        "up",
        "stepcare_last_processed_timestamp_seconds",
        "stepcare_consumer_lag",
    }


# -- promtool ---------------------------------------------------------------------------------


def test_the_expected_files_exist() -> None:
    assert CONFIG.is_file()
    assert {path.name for path in RULE_FILES} == set(TEAMS)
    assert TEST_FILES, "no promtool tests in deploy/prometheus/tests"
    assert RUNBOOK.is_file()


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, output(result)


@needs_promtool
def test_promtool_check_config_resolves_the_rule_files(tmp_path: Path) -> None:
    # From another directory: the rule_files glob is relative to the configuration file.
    result = promtool("check", "config", CONFIG, cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, output(result)
    for path in RULE_FILES:
        assert path.name in result.stdout, output(result)


def test_config_scrapes_the_worker() -> None:
    config = load(CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    assert config["rule_files"] == ["rules/*.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "stepcare"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job["static_configs"] == [{"targets": ["worker:6066"]}]


@needs_promtool
def test_promtool_check_config_for_plain_hosts(tmp_path: Path) -> None:
    result = promtool("check", "config", HOSTS_CONFIG, cwd=tmp_path)
    assert result.returncode == 0, output(result)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout, output(result)


@needs_promtool
def test_promtool_refuses_a_broken_target_file(tmp_path: Path) -> None:
    # The target files are read by the check too: a typo there is caught before a reload.
    shutil.copytree(PROMETHEUS_DIR / "rules", tmp_path / "rules")
    shutil.copytree(PROMETHEUS_DIR / "targets", tmp_path / "targets")
    shutil.copy(HOSTS_CONFIG, tmp_path)
    (tmp_path / "targets" / "stepcare-bridge.json").write_text('[{"targets": ["127.0.0.1:9471"]')
    result = promtool("check", "config", tmp_path / HOSTS_CONFIG.name, cwd=tmp_path)
    assert result.returncode == 1, output(result)
    assert "stepcare-bridge.json" in result.stdout + result.stderr, output(result)


def test_plain_hosts_config_reads_its_targets_from_files() -> None:
    config = load(HOSTS_CONFIG)
    compose = load(CONFIG)
    assert config["global"] == compose["global"]
    assert config["rule_files"] == compose["rule_files"]
    [manager] = config["alerting"]["alertmanagers"]
    assert manager["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The job names are what the alerts select (up{job="stepcare"}, up{job="stepcare-bridge"}).
    assert {"stepcare", "stepcare-bridge"} <= set(jobs)
    targets = {}
    for name in ("stepcare", "stepcare-bridge"):
        [sd] = jobs[name]["file_sd_configs"]
        [path] = sd["files"]
        assert path == f"targets/{name}.json"
        groups = json.loads((PROMETHEUS_DIR / path).read_text())
        targets[name] = [target for group in groups for target in group["targets"]]
        assert all(re.fullmatch(r"[\w.-]+:\d+", target) for target in targets[name])
    assert all(target.endswith(":6066") for target in targets["stepcare"])  # STEPCARE_WEB_PORT
    # The bridges' default --metrics-port, on their default --metrics-host.
    assert targets["stepcare-bridge"] == [f"127.0.0.1:{port}" for port in (9471, 9472, 9473, 9474)]


@needs_promtool
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = promtool("test", "rules", test_file)
    assert result.returncode == 0, output(result)


WRONG_EXPECTATIONS = {
    # The worker is down for 3 minutes, and the test claims no alert.
    "missed alert": """
      - eval_time: 4m
        alertname: StepcareWorkerDown
        exp_alerts: []
    """,
    # The alert fires, but not with this severity.
    "wrong label": """
      - eval_time: 4m
        alertname: StepcareWorkerDown
        exp_alerts:
          - exp_labels: {severity: warning, team: ops, job: stepcare, instance: "worker:6066"}
    """,
    # Down for 1 minute only (pending), and the test claims a firing alert.
    "alert that is only pending": """
      - eval_time: 2m
        alertname: StepcareWorkerDown
        exp_alerts:
          - exp_labels: {severity: critical, team: ops, job: stepcare, instance: "worker:6066"}
    """,
}


@needs_promtool
@pytest.mark.parametrize("case", WRONG_EXPECTATIONS)
def test_promtool_tests_can_fail(tmp_path: Path, case: str) -> None:
    test_file = tmp_path / "wrong.test.yml"
    test_file.write_text(
        f"""
rule_files: ["{PROMETHEUS_DIR / "rules" / "stepcare-service.yml"}"]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'up{{job="stepcare", instance="worker:6066"}}'
        values: '1x3 0x20'
    alert_rule_test:
{WRONG_EXPECTATIONS[case]}
"""
    )
    result = promtool("test", "rules", test_file)
    assert result.returncode != 0, output(result)
    assert "StepcareWorkerDown" in result.stdout + result.stderr, output(result)


@needs_promtool
def test_worker_exposition_passes_promtool_lint() -> None:
    from prometheus_client import generate_latest

    result = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=generate_latest(worker_registry()).decode(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, output(result)


# -- conventions --------------------------------------------------------------------------------


def github_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    anchors = set()
    for line in markdown.splitlines():
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_alert_names_are_camel_case_and_unique() -> None:
    names = [rule["alert"] for _, rule in alerts()]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"Stepcare(?:[A-Z][a-z]+)+", name), name


@pytest.mark.parametrize("item", alerts(), ids=alert_id)
def test_alert_is_routed_and_explained(item: tuple[str, dict[str, Any]]) -> None:
    file_name, rule = item
    name = rule["alert"]
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in SEVERITIES, f"{name}: severity"
    assert labels.get("team") == TEAMS[file_name], f"{name}: team of {file_name}"
    for key in ("summary", "description", "runbook_url"):
        assert annotations.get(key, "").strip(), f"{name}: no {key} annotation"
    assert "{{" in annotations["description"], f"{name}: description without a templated value"
    assert annotations["runbook_url"] == RUNBOOK_URL + name.lower()
    anchor = annotations["runbook_url"].partition("#")[2]
    assert anchor in github_anchors(RUNBOOK.read_text()), f"docs/runbook.md has no #{anchor}"


def test_runbook_has_no_section_for_an_unknown_alert() -> None:
    names = {rule["alert"] for _, rule in alerts()}
    sections = set(re.findall(r"^## (Stepcare\w+)\s*$", RUNBOOK.read_text(), re.MULTILINE))
    assert sections == names


def unit_test_cases() -> list[tuple[Path, set[str], dict[str, Any]]]:
    """Every alert_rule_test case: its test file, the alerts its rule files define, the case."""
    cases = []
    for test_file in TEST_FILES:
        spec = load(test_file)
        loaded = set()
        for pattern in spec.get("rule_files", []):
            for path in test_file.parent.glob(pattern):
                for group in load(path)["groups"]:
                    loaded |= {rule["alert"] for rule in group["rules"] if "alert" in rule}
        for group in spec.get("tests", []):
            for case in group.get("alert_rule_test", []):
                cases.append((test_file, loaded, case))
    return cases


@pytest.mark.parametrize("item", alerts(), ids=alert_id)
def test_alert_has_a_firing_and_a_quiet_test_case(item: tuple[str, dict[str, Any]]) -> None:
    _, rule = item
    name = rule["alert"]
    firing, quiet = [], []
    for test_file, loaded, case in unit_test_cases():
        if case["alertname"] != name:
            continue
        # A case in a file that does not load the rule would pass without testing anything.
        assert name in loaded, f"{test_file.name} tests {name} but does not load its rule file"
        (firing if case.get("exp_alerts") else quiet).append(case)
    assert firing, f"no promtool case in which {name} fires"
    assert quiet, f"no promtool case in which {name} must not fire"
    for case in firing:
        for expected in case["exp_alerts"]:
            labels = expected.get("exp_labels", {})
            assert labels.get("severity") == rule["labels"]["severity"], (name, labels)
            assert labels.get("team") == rule["labels"]["team"], (name, labels)
    assert any(
        {"summary", "description", "runbook_url"} <= set(expected.get("exp_annotations", {}))
        for case in firing
        for expected in case["exp_alerts"]
    ), f"no firing case of {name} checks its summary, description and runbook_url"


# -- the metrics contract -------------------------------------------------------------------


@pytest.mark.parametrize("item", alerts(), ids=alert_id)
def test_alert_uses_only_contract_metrics(item: tuple[str, dict[str, Any]]) -> None:
    _, rule = item
    names = metric_names(rule["expr"])
    assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
    known = CONTRACT | ISSUE17_WORKER | BRIDGE_CONTRACT | PROMETHEUS_SERIES | recorded_names()
    unknown = names - known
    assert not unknown, f"{rule['alert']} uses metrics the worker does not export: {unknown}"


def worker_registry() -> CollectorRegistry:
    from streams.clinical.policy import builtin_policy
    from streams.worker.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics(registry, builtin_policy("step-pc-2024"))
    return registry


def test_contract_is_what_the_worker_exports() -> None:
    suffixes = {
        "counter": ["_total"],
        "gauge": [""],
        "histogram": ["_bucket", "_sum", "_count"],
        "info": ["_info"],
    }
    exported = {
        family.name + suffix
        for family in worker_registry().collect()
        for suffix in suffixes.get(family.type, [""])
    }
    missing = CONTRACT - exported
    assert not missing, f"renamed or removed in streams/worker/metrics.py: {missing}"
