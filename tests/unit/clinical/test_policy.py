"""Policy files: the shipped protocols, and clear errors that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.analysis.replay import canonical_json
from streams.clinical.escalations import Escalation, Kind, Reason
from streams.clinical.events import DAY_MS
from streams.clinical.policy import Policy, PolicyError, builtin_policy, load_policy, resolve_policy
from streams.formats.avro import decode_escalation, encode_escalation


def test_the_default_policy_is_the_trial_protocol() -> None:
    policy = resolve_policy(None)
    assert policy == Policy()  # the file and the documented defaults agree
    assert (policy.policy_id, policy.policy_version, policy.enrollment_step) == (
        "step-pc-2024",
        1,
        1,
    )
    assert policy.visit_window_days == 28  # visits within 4 weeks
    assert (policy.step_up_threshold, policy.step_up_comparator) == (10.0, ">=")
    assert policy.survey_interval_days == 42  # FACT-L every 6 weeks
    assert policy.baseline_mode == "fixed"


def test_early_care_starts_patients_in_monthly_visits() -> None:
    policy = builtin_policy("early-pc")
    assert (policy.policy_id, policy.enrollment_step, policy.visit_window_days) == (
        "early-pc",
        2,
        28,
    )


def test_a_policy_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "eight-points.toml"
    path.write_text('policy_id = "site-8pt"\nstep_up_threshold = 8\n')
    policy = load_policy(path)
    assert (policy.policy_id, policy.step_up_threshold, policy.visit_window_days) == (
        "site-8pt",
        8,
        28,
    )
    assert resolve_policy(str(path)) == policy


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("step_up_treshold = 8", "unknown key 'step_up_treshold'"),
        ('step_up_threshold = "8"', "key 'step_up_threshold' must be a number, not '8'"),
        ("policy_version = 1.5", "key 'policy_version' must be a whole number, not 1.5"),
        ("enrollment_step = true", "key 'enrollment_step' must be a whole number, not True"),
        ('step_up_comparator = "=>"', 'step_up_comparator must be ">=" or ">"'),
        ('baseline_mode = "median"', 'baseline_mode must be "fixed" or "rolling"'),
        ("enrollment_step = 3", "enrollment_step must be 1 or 2"),
        ("visit_window_days = 0", "visit_window_days must be more than 0"),
        ("survey_interval_days = 1e-9", "survey_interval_days must be at least 1 millisecond"),
        ("step_up_threshold =", "not valid TOML"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_the_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text + "\n")
    with pytest.raises(PolicyError) as error:
        load_policy(path)
    assert str(error.value).startswith(f"{path}: ")
    assert message in str(error.value)


def test_a_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read policy .*absent\.toml: No such file"):
        resolve_policy(str(tmp_path / "absent.toml"))


def test_declined_uses_the_comparator() -> None:
    assert Policy().declined(104, 94) and not Policy().declined(104, 94.5)
    strict = Policy(step_up_comparator=">")
    assert not strict.declined(104, 94) and strict.declined(104, 93.9)


def test_a_whole_number_threshold_is_the_same_threshold_in_json_and_avro(tmp_path: Path) -> None:
    policy_file = tmp_path / "site.toml"
    policy_file.write_text('policy_id = "site"\nstep_up_threshold = 12\n')
    policy = load_policy(policy_file)
    assert type(policy.step_up_threshold) is float
    reason = Reason("fell 12 points", "FACT-L", 100.0, 88.0, -12.0, policy.step_up_threshold)
    escalation = Escalation(
        "id", "p1", Kind.STEP_UP, 2, 0, DAY_MS, "e1", policy.policy_id, 1, reason
    )
    rendered = canonical_json(escalation.to_json())
    assert '"threshold":12.0' in rendered
    assert canonical_json(decode_escalation(encode_escalation(escalation.to_json()))) == rendered
