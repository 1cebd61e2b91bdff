"""``stepcare compare --seeds N``: the trial comparison over N simulated cohorts, each number as
its mean over the seeds with a 95% confidence interval.

For each seed s (``--seed``, ``--seed`` + 1, ... ``--seed`` + N - 1) every policy gets its own
arm, simulated with that policy in the loop (the same patients in every arm: see
docs/simulation.md), and runs over it (:class:`~streams.analysis.compare.Run`). Each number of a
run's row (:meth:`Run.report`), and each ratio of a run's number to the first run's (B/A, the
ratio taken seed by seed), is summarised over the seeds as its mean and the two-sided 95%
Student-t interval ``mean ± t(0.975, n - 1) · sd / √n`` (``sd`` the sample standard deviation
over the n seeds that have the number: a median of nobody stepped up, or a ratio over 0, has
none). The seeds are independent replications, so this is the interval of the mean of the
simulation model, not of a trial: it says how much of a difference is simulation noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from streams.analysis.compare import Run, _labels, _letter, ratio
from streams.analysis.simulate import ACCRUAL_WEEKS, TRIAL_START, Cohort, simulate
from streams.clinical.events import DAY_MS, event_from_json, parse_time
from streams.clinical.policy import Policy

# t(0.975, df) for df = 1..30 (two-sided 95%); above 30 the Cornish-Fisher expansion below.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959963984540054
# The numbers of a row that are not counts or shares of the run: never summarised.
NOT_SUMMARISED = ("label", "policy_id", "policy_version", "input", "rejected")


def t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (3 decimals)."""
    if df < 1:
        raise ValueError("df must be at least 1")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return round(z + sum(term / df ** (k + 1) for k, term in enumerate(terms)), 3)


@dataclass(frozen=True)
class Interval:
    """Mean over n seeds and its 95% t interval (None bounds with fewer than 2 seeds)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def text(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} [{self.low:.2f}, {self.high:.2f}]"


def interval(values: Sequence[float]) -> Interval | None:
    """The mean of ``values`` and its two-sided 95% Student-t interval; None if empty."""
    n = len(values)
    if n == 0:
        return None
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, None, None, n)
    half = t_975(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def simulated_runs(
    policies: Sequence[Policy],
    seed: int,
    patients: int,
    weeks: float,
    *,
    until: int | None = None,
) -> list[Run]:
    """One seed: each policy over its own simulated arm (as ``stepcare simulate --arm``)."""
    start = parse_time(TRIAL_START)
    day0 = -(-start // DAY_MS) * DAY_MS
    cohort = Cohort(seed, patients, weeks, day0, ACCRUAL_WEEKS)
    labels = _labels([(f"seed {seed}", p) for p in policies], paired=False)
    runs = []
    for label, policy in zip(labels, policies, strict=True):
        run = Run(label, policy, f"simulated, seed {seed}")
        for obj in simulate(cohort, policy):
            run.feed(event_from_json(obj))
        run.finish(until)
        runs.append(run)
    return runs


@dataclass
class SeedSummary:
    labels: list[str]
    metrics: list[str]  # the row keys summarised, in row order
    runs: list[dict[str, Interval | None]]  # per run: metric -> interval
    ratios: list[dict[str, Interval | None]]  # per run after the first: metric -> B/A interval
    seeds: int


def summarise(rows_by_seed: Sequence[Sequence[dict[str, object]]]) -> SeedSummary:
    """Each run's numbers (and ratios to the first run) over the seeds."""
    first = rows_by_seed[0]
    metrics = [k for k, v in first[0].items() if k not in NOT_SUMMARISED]
    count = len(first)

    def numbers(pick: Callable[[Sequence[dict[str, object]]], object]) -> list[float]:
        found = (pick(rows) for rows in rows_by_seed)
        return [float(v) for v in found if isinstance(v, int | float)]

    runs = [
        {m: interval(numbers(lambda rows, i=i, m=m: rows[i][m])) for m in metrics}
        for i in range(count)
    ]
    ratios = [
        {
            m: interval(numbers(lambda rows, i=i, m=m: ratio(rows[i][m], rows[0][m])))
            for m in metrics
        }
        for i in range(1, count)
    ]
    labels = [str(row["policy_id"]) for row in first]
    return SeedSummary(labels, metrics, runs, ratios, len(rows_by_seed))


def seeds_table(summary: SeedSummary) -> str:
    """One line per number (named as the CSV columns), one column per run: mean [95% CI]; then
    a B/A column per run after the first."""
    letters = [_letter(i) for i in range(len(summary.labels))]
    header = [f"{letter}: {label}" for letter, label in zip(letters, summary.labels, strict=True)]
    header += [f"{letter}/A" for letter in letters[1:]]
    title = f"mean [95% CI], {summary.seeds} seeds"
    lines = [(title, header)]
    for metric in summary.metrics:
        cells = [_text(run[metric]) for run in summary.runs]
        cells += [_text(r[metric]) for r in summary.ratios]
        lines.append((metric, cells))
    width = max(len(name) for name, _ in lines)
    cols = [max(len(cells[i]) for _, cells in lines) for i in range(len(header))]
    out = [
        f"{name:<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(cells, cols, strict=True))
        for name, cells in lines
    ]
    return "\n".join(line.rstrip() for line in out) + "\n"


def _text(found: Interval | None) -> str:
    return "-" if found is None else found.text()
