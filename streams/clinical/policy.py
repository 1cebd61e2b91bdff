"""Stepped-care policies: the numbers of the protocol, loaded from TOML and validated.

The default policy ``step-pc-2024`` is the STEP PC trial protocol (Temel et al., JAMA 2024):
an initial palliative-care visit within 4 weeks of enrollment; further visits in step 1 only
after a change of cancer treatment or a hospital discharge (each within 4 weeks); FACT-L every
6 weeks, and a fall of 10 points or more from the baseline steps the patient up to step 2, where
a visit is due every 4 weeks for the rest of the illness. ``early-pc`` is the trial's comparison
arm: a visit within 4 weeks of enrollment, then every 4 weeks (patients start in step 2).

A policy file holds the keys of :class:`Policy` (durations in days); keys that are absent take
the defaults below, an unknown key or a value of the wrong type is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from streams.clinical.events import DAY_MS
from streams.clinical.files import read_small_file

_DURATIONS = (
    "visit_window", "rolling_window", "baseline_lookback", "survey_interval", "survey_grace",
    "overdue_action",
)  # fmt: skip


MAX_DAYS = 3650  # ten years: longer than any clinical window


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class Policy:
    policy_id: str = "step-pc-2024"
    policy_version: int = 1
    # Step a patient enters on enrollment: 1 (stepped care) or 2 (early care: monthly visits).
    enrollment_step: int = 1
    # Every visit request (initial, treatment change, discharge, step-up, monthly) is due within.
    visit_window_days: float = 28
    # Step-up: baseline minus score of at least (">=") or more than (">") this many points.
    step_up_threshold: float = 10.0
    step_up_comparator: str = ">="
    # "fixed": the enrollment baseline (the trial); "rolling": the median of the last
    # ``rolling_count`` valid totals within ``rolling_window_days`` before the survey.
    baseline_mode: str = "fixed"
    rolling_count: int = 3
    rolling_window_days: float = 84
    # Baseline at enrollment: the latest valid FACT-L total within this many days before it.
    baseline_lookback_days: float = 30
    # Surveys held before enrollment: at most this many, the newest, within the lookback.
    held_survey_limit: int = 3
    # FACT-L is expected every ``survey_interval_days``; SURVEY_OVERDUE after a further grace.
    survey_interval_days: float = 42
    survey_grace_days: float = 7
    # The scheduling system must act on VISIT_OVERDUE / SURVEY_OVERDUE within.
    overdue_action_days: float = 7

    # The durations above in ms (derived, not settable): visit_window, rolling_window, ...
    visit_window: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    rolling_window: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    baseline_lookback: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    survey_interval: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    survey_grace: int = dataclasses.field(init=False, repr=False, compare=False, default=0)
    overdue_action: int = dataclasses.field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.enrollment_step not in (1, 2):
            raise PolicyError("enrollment_step must be 1 or 2")
        if self.step_up_comparator not in (">=", ">"):
            raise PolicyError('step_up_comparator must be ">=" or ">"')
        if self.baseline_mode not in ("fixed", "rolling"):
            raise PolicyError('baseline_mode must be "fixed" or "rolling"')
        for name in ("policy_version", "rolling_count", "held_survey_limit"):
            if getattr(self, name) < 1:
                raise PolicyError(f"{name} must be at least 1")
        for name in _DURATIONS:
            if not 0 < getattr(self, f"{name}_days") <= MAX_DAYS:  # NaN and inf fail too
                raise PolicyError(f"{name}_days must be more than 0 and at most {MAX_DAYS}")
        if not self.step_up_threshold > 0:
            raise PolicyError("step_up_threshold must be more than 0")
        for name in _DURATIONS:  # the engine works in ms: convert once
            object.__setattr__(self, name, round(getattr(self, f"{name}_days") * DAY_MS))
            if getattr(self, name) < 1:  # a 0 ms survey cycle would never end
                raise PolicyError(f"{name}_days must be at least 1 millisecond")

    def declined(self, baseline: float, score: float) -> bool:
        """Whether a fall from ``baseline`` to ``score`` reaches the step-up threshold."""
        fall = baseline - score
        if self.step_up_comparator == ">=":
            return fall >= self.step_up_threshold
        return fall > self.step_up_threshold


_TYPES: dict[str, tuple[type, ...]] = {
    f.name: (int,) if f.type == "int" else (int, float) if f.type == "float" else (str,)
    for f in dataclasses.fields(Policy)
    if f.init
}


def policy_from_mapping(values: dict[str, Any], origin: str = "policy") -> Policy:
    """A Policy from parsed TOML; ``PolicyError`` names the origin and the offending key."""
    for key, value in values.items():
        if key not in _TYPES:
            raise PolicyError(f"{origin}: unknown key {key!r}")
        if isinstance(value, bool) or not isinstance(value, _TYPES[key]):
            expected = (
                "a whole number"
                if _TYPES[key] == (int,)
                else ("a number" if int in _TYPES[key] else "a string")
            )
            raise PolicyError(f"{origin}: key {key!r} must be {expected}, not {value!r}")
    # 12 and 12.0 are one threshold: keep numbers floats, so escalations read the same in
    # JSON (replay) and after an Avro double (the worker).
    values = {
        k: float(v) if int in _TYPES[k] and float in _TYPES[k] else v for k, v in values.items()
    }
    try:
        return Policy(**values)
    except PolicyError as exc:
        raise PolicyError(f"{origin}: {exc}") from None


MAX_POLICY_BYTES = 65_536  # a policy is a dozen keys: anything this large is not one


def load_policy(path: Path | str) -> Policy:
    """Load and validate a policy TOML file (UTF-8, a regular file of at most 64 KiB)."""
    path = Path(path)
    try:
        values = tomllib.loads(read_small_file(path, MAX_POLICY_BYTES).decode("utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read policy {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not a policy (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML ({exc})") from None
    except ValueError as exc:  # not a regular file, or too large
        raise PolicyError(f"policy {exc}") from None
    return policy_from_mapping(values, str(path))


BUILTIN = ("step-pc-2024", "early-pc")


def builtin_policy(name: str) -> Policy:
    """One of the policies shipped with stepcare (``streams/clinical/policies/<name>.toml``)."""
    if name not in BUILTIN:
        raise PolicyError(f"no built-in policy {name!r} (there are: {', '.join(BUILTIN)})")
    text = resources.files("streams.clinical.policies").joinpath(f"{name}.toml").read_text()
    return policy_from_mapping(tomllib.loads(text), f"{name}.toml")


def resolve_policy(name_or_path: str | None) -> Policy:
    """A built-in policy by name, or a TOML file by path; the default is ``step-pc-2024``."""
    if name_or_path is None:
        return builtin_policy("step-pc-2024")
    if name_or_path in BUILTIN:
        return builtin_policy(name_or_path)
    return load_policy(name_or_path)
