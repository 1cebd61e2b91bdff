"""The Alertmanager configuration (deploy/alertmanager/alertmanager.yml, docs/runbook.md "Routing
alerts"), checked with Debian's ``amtool`` (package prometheus-alertmanager).

Every alert of every rule file is routed with ``amtool config routes test`` on its own labels and
must land on ``<team>-page`` (critical) or ``<team>-ticket`` (warning): a new alert whose team has
no route lands on ``default`` and fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
RUNBOOK = REPO / "docs" / "runbook.md"
KINDS = {"critical": "page", "warning": "ticket"}

AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None,
    reason="amtool is not installed (Debian package prometheus-alertmanager; .ci/run installs it)",
)


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert AMTOOL is not None
    return subprocess.run(
        [AMTOOL, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def alerts() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def routed(config: Path, labels: dict[str, str]) -> str:
    """The receiver(s) amtool routes an alert with these labels to (comma-separated)."""
    result = amtool(
        "config", "routes", "test", "--config.file", config,
        *(f"{key}={value}" for key, value in sorted(labels.items())),
    )  # fmt: skip
    assert result.returncode == 0, output(result)
    return result.stdout.strip()


def load() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return config


@needs_amtool
def test_amtool_check_config() -> None:
    result = amtool("check-config", CONFIG)
    assert result.returncode == 0, output(result)
    assert "SUCCESS" in result.stdout
    assert "7 receivers" in result.stdout and "3 inhibit rules" in result.stdout


@needs_amtool
def test_amtool_rejects_a_route_to_an_unknown_receiver(tmp_path: Path) -> None:
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(CONFIG.read_text().replace("receiver: ops-page", "receiver: ops-pager"))
    result = amtool("check-config", broken)
    assert result.returncode != 0, output(result)
    assert "ops-pager" in result.stdout + result.stderr, output(result)


ALERTS = alerts()


@needs_amtool
@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: rule["alert"])
def test_every_alert_reaches_its_team_and_severity_receiver(rule: dict[str, Any]) -> None:
    labels = {"alertname": rule["alert"], **rule["labels"]}
    expected = f"{labels['team']}-{KINDS[labels['severity']]}"
    # Typical labels of a firing alert too: they must not change the route.
    labels |= {"job": "stepcare", "instance": "worker:6066"}
    assert routed(CONFIG, labels) == expected


TEAMS = ["ops", "integration", "clinical"]


@needs_amtool
@pytest.mark.parametrize("severity", sorted(KINDS))
@pytest.mark.parametrize("team", TEAMS)
def test_every_team_and_severity_has_its_receiver(team: str, severity: str) -> None:
    assert routed(CONFIG, {"team": team, "severity": severity}) == f"{team}-{KINDS[severity]}"


@needs_amtool
@pytest.mark.parametrize(
    "labels",
    [{"team": "billing", "severity": "critical"}, {"team": "ops"}, {"severity": "warning"}, {}],
    ids=["unknown team", "no severity", "no team", "no labels"],
)
def test_an_unrouted_alert_lands_on_the_default_receiver(labels: dict[str, str]) -> None:
    assert routed(CONFIG, {"alertname": "StepcareSomethingNew", **labels}) == "default"


def test_the_rules_use_only_routed_teams_and_severities() -> None:
    for rule in ALERTS:
        assert rule["labels"]["team"] in TEAMS, rule["alert"]
        assert rule["labels"]["severity"] in KINDS, rule["alert"]


def test_receivers_are_loopback_placeholders_named_after_their_route() -> None:
    config = load()
    names = {receiver["name"] for receiver in config["receivers"]}
    assert names == {"default"} | {f"{t}-{k}" for t in TEAMS for k in KINDS.values()}
    ports = set()
    for receiver in config["receivers"]:
        [webhook] = receiver["webhook_configs"]
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/([\w/-]+)", webhook["url"])
        assert match, webhook["url"]
        assert match[2] == receiver["name"].replace("-", "/"), webhook["url"]
        ports.add(match[1])
    assert len(ports) == len(names)  # one port each: a test receiver can tell them apart
    documented = RUNBOOK.read_text().split("\n## Routing alerts\n", 1)[1].split("\n## ", 1)[0]
    for receiver in names:
        assert f"`{receiver}`" in documented, f"docs/runbook.md, Routing alerts: {receiver}"


def test_inhibitions_name_real_alerts() -> None:
    names = {rule["alert"] for rule in ALERTS}
    for inhibit in load()["inhibit_rules"]:
        for key in ("source_matchers", "target_matchers"):
            [matcher] = inhibit[key]
            match = re.fullmatch(r'alertname="(\w+)"', matcher)
            assert match and match[1] in names, matcher
        assert set(inhibit["equal"]) <= {"job", "instance"}, inhibit
