"""Offline replay benchmark: throughput of ``stepcare replay`` and the size of patient state.

Run it from the project root (it is a command, never a test)::

    .venv/bin/python bench/replay.py                      # 1,000,000 events, seed 7
    .venv/bin/python bench/replay.py --events 200000 --profile
    .venv/bin/python bench/replay.py --patients 5000 --seed 3 --log /tmp/x.jsonl --keep

What it does:

1. Generates a deterministic (seeded) synthetic replay log of about ``--events`` events,
   ordered by ``occurred_at``: patients enroll over two years, may submit 0-2 FACT-L surveys
   before enrollment, then one every ~6 weeks (jitter +/- 5 days, ~10% missed, ~5% with a few
   missing items) whose totals follow a stable, gradual or abrupt trajectory; treatment changes,
   hospital stays and palliative-care visits are sprinkled in, ~2% of events are delivered
   twice, and ~60% of patients die or are disenrolled. The log goes to ``--log`` (default: a
   temporary file in ``bench/.data/``) and is deleted at the end unless ``--keep``. Generation
   time is reported separately and is not part of any throughput figure.
2. Times the whole offline path in-process on one core, ``streams.analysis.replay.replay`` over the
   file (JSON parsing, validation, FACT-L scoring, engine, JSON output to ``/dev/null``), with
   the clock advanced to 400 days after the last event at the end; then times the CLI end to
   end once (``python -m streams.cli replay``, interpreter start-up included); then, with
   ``--jobs N`` (default 2), the CLI with ``--jobs 1`` and ``--jobs N`` alternately, three
   times each (the machine is shared: every round is reported, the goal judged best against
   best).
3. Measures the encoded state of every patient after the replay (``encode_state``): mean,
   median, p95 and max bytes, for all patients and for those still monitored.
4. Prints a Markdown results block with the machine and the goals: >= 100,000 events/s on one
   core, ``--jobs 2`` >= 1.8x ``--jobs 1``, <= 512 bytes of state per patient (judged on the
   largest state).
5. With ``--profile``: runs cProfile over the in-process replay of the first 200,000 lines and
   prints the 15 functions with the most own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from random import Random

from streams.analysis.replay import ReplaySummary, replay
from streams.clinical.engine import PatientState
from streams.clinical.events import DAY_MS, EventType, format_time, parse_time
from streams.clinical.policy import Policy, resolve_policy
from streams.clinical.scoring import REVERSED, SUBSCALES, UNSCORED
from streams.formats.state import encode_state

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / ".data"

GOAL_EVENTS_PER_SECOND = 100_000
GOAL_JOBS_SPEEDUP = 1.8  # --jobs 2 against --jobs 1 on a 2-core machine
JOBS_ROUNDS = 3
GOAL_STATE_BYTES = 512
UNTIL_AFTER_LAST = 400 * DAY_MS
PROFILE_LINES = 200_000

# -- synthetic log: shape of the cohort -----------------------------------------------------------

STUDY_START = parse_time("2023-01-02T00:00:00Z")
ENROLLMENT_DAYS = 730  # patients enroll over two years
DATA_CUTOFF_DAY = ENROLLMENT_DAYS + 180  # the log ends six months after the last enrollment
SURVEY_EVERY_DAYS = 42
SURVEY_JITTER_DAYS = 5
SURVEY_MISSED = 0.10
SURVEY_INCOMPLETE = 0.05
DUPLICATED = 0.02
ENDED = 0.60
DECEASED_SHARE = 0.7  # of the ended patients; the others are disenrolled
MEAN_FOLLOW_UP_DAYS = 300  # of the patients who end (exponential, plus two weeks)
MEAN_DAYS_BETWEEN_TREATMENT_CHANGES = 100
MEAN_DAYS_BETWEEN_ADMISSIONS = 180

SCORED_ITEMS = tuple(code for items in SUBSCALES.values() for code in items)
ITEM_ORDER = SCORED_ITEMS + tuple(sorted(UNSCORED))  # sorted: frozenset order is not stable
MAX_ITEM = 4
MAX_TOTAL = MAX_ITEM * len(SCORED_ITEMS)  # 136
NOT_ANSWERED = 255  # marks a missing item in the packed responses
SOURCES = {
    EventType.SURVEY_SUBMITTED: "portal",
    EventType.HOSPITAL_ADMITTED: "adt",
    EventType.HOSPITAL_DISCHARGED: "adt",
}

# One event of the log: (occurred_at ms, patient number, sequence within the patient, type,
# event id, packed FACT-L responses or None). Sorting records sorts the log by time; a
# duplicate is an equal record, so it lands right after the original.
Record = tuple[int, int, int, EventType, str, bytes | None]


@dataclass(frozen=True, slots=True)
class Trajectory:
    """A patient's FACT-L total over 6-week survey cycles (cycle 0: at enrollment)."""

    baseline: float
    slope: float = 0.0  # points lost per 6-week cycle (gradual decline)
    drop: float = 0.0  # points lost at once at cycle ``drop_at`` (abrupt decline)
    drop_at: int = 0

    @classmethod
    def draw(cls, rng: Random) -> Trajectory:
        baseline = min(max(rng.gauss(96, 15), 50), 130)
        shape = rng.random()
        if shape < 0.5:
            return cls(baseline)
        if shape < 0.8:
            return cls(baseline, slope=rng.uniform(0.8, 3.0))
        return cls(baseline, drop=rng.uniform(12, 30), drop_at=rng.randint(1, 6))

    def total(self, cycle: int, rng: Random) -> int:
        value = self.baseline - self.slope * max(cycle, 0) + rng.gauss(0, 3)
        if self.drop and cycle >= self.drop_at:
            value -= self.drop
        return min(max(round(value), 0), MAX_TOTAL)


def survey_responses(rng: Random, total: int, missing: int) -> bytes:
    """Packed responses (``ITEM_ORDER``) whose FACT-L total is exactly ``total`` when complete."""
    n = len(SCORED_ITEMS)
    base, extra = divmod(total, n)
    scores = [base + 1] * extra + [base] * (n - extra)
    rng.shuffle(scores)
    for _ in range(12):  # spread the scores, keeping the total: move a point between two items
        up, down = rng.randrange(n), rng.randrange(n)
        if up != down and scores[up] < MAX_ITEM and scores[down] > 0:
            scores[up] += 1
            scores[down] -= 1
    responses = [
        MAX_ITEM - score if code in REVERSED else score
        for code, score in zip(SCORED_ITEMS, scores, strict=True)
    ]
    for index in rng.sample(range(n), missing):
        responses[index] = NOT_ANSWERED
    responses.extend(rng.randint(0, MAX_ITEM) for _ in UNSCORED)
    return bytes(responses)


def moment(rng: Random, day: int) -> int:
    """A time between 07:00 and 21:00 UTC on ``day`` of the study, in ms."""
    return STUDY_START + day * DAY_MS + rng.randrange(7 * 3600, 21 * 3600) * 1000


def patient_events(rng: Random) -> list[tuple[int, EventType, bytes | None]]:
    """One patient's events (time, type, responses), unordered, without duplicates."""
    events: list[tuple[int, EventType, bytes | None]] = []
    trajectory = Trajectory.draw(rng)

    def survey(at: int, cycle: int) -> None:
        missing = rng.randint(1, 3) if rng.random() < SURVEY_INCOMPLETE else 0
        responses = survey_responses(rng, trajectory.total(cycle, rng), missing)
        events.append((at, EventType.SURVEY_SUBMITTED, responses))

    enroll_day = rng.randrange(ENROLLMENT_DAYS)
    if rng.random() < ENDED:
        follow_up = 14 + int(rng.expovariate(1 / MEAN_FOLLOW_UP_DAYS))
        end_day = min(enroll_day + follow_up, DATA_CUTOFF_DAY - 1)
        end = EventType.DECEASED if rng.random() < DECEASED_SHARE else EventType.DISENROLLED
        events.append((moment(rng, end_day), end, None))
    else:
        end_day = DATA_CUTOFF_DAY  # still monitored when the log ends

    enrolled_at = moment(rng, enroll_day)
    events.append((enrolled_at, EventType.ENROLLED, None))
    held = rng.choices((0, 1, 2), weights=(3, 4, 3))[0]
    for _ in range(held):
        survey(moment(rng, enroll_day - rng.randint(1, 45)), 0)
    if not held:  # the baseline survey, filled in at the enrollment visit
        survey(enrolled_at + rng.randint(10, 180) * 60_000, 0)
    for cycle in itertools.count(1):
        day = enroll_day + cycle * SURVEY_EVERY_DAYS
        day += rng.randint(-SURVEY_JITTER_DAYS, SURVEY_JITTER_DAYS)
        if day >= end_day:
            break
        if rng.random() >= SURVEY_MISSED:
            survey(moment(rng, day), cycle)

    day = enroll_day + rng.randint(7, 35)  # initial visit, sometimes late
    while day < end_day:
        events.append((moment(rng, day), EventType.PALLIATIVE_VISIT_COMPLETED, None))
        day += rng.randint(28, 56)
    day = enroll_day + 1 + int(rng.expovariate(1 / MEAN_DAYS_BETWEEN_TREATMENT_CHANGES))
    while day < end_day:
        events.append((moment(rng, day), EventType.TREATMENT_CHANGED, None))
        day += 1 + int(rng.expovariate(1 / MEAN_DAYS_BETWEEN_TREATMENT_CHANGES))
    day = enroll_day + 1 + int(rng.expovariate(1 / MEAN_DAYS_BETWEEN_ADMISSIONS))
    while (discharge_day := day + rng.randint(1, 10)) < end_day:
        events.append((moment(rng, day), EventType.HOSPITAL_ADMITTED, None))
        events.append((moment(rng, discharge_day), EventType.HOSPITAL_DISCHARGED, None))
        day = discharge_day + 1 + int(rng.expovariate(1 / MEAN_DAYS_BETWEEN_ADMISSIONS))
    return events


def patient_records(rng: Random, patient: int) -> list[Record]:
    """The patient's log records, with uuid-like event ids and ~2% delivered twice."""
    records: list[Record] = []
    for seq, (at, kind, responses) in enumerate(patient_events(rng)):
        event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        record = (at, patient, seq, kind, event_id, responses)
        records.append(record)
        if rng.random() < DUPLICATED:
            records.append(record)
    return records


def patient_id(patient: int) -> str:
    return f"p-{patient:06d}"


def render(record: Record) -> str:
    """One JSONL line (a PatientEvent, as in ``examples/three-patients.jsonl``)."""
    at, patient, _, kind, event_id, responses = record
    obj: dict[str, object] = {
        "event_id": event_id,
        "patient_id": patient_id(patient),
        "occurred_at": format_time(at),
        "type": str(kind),
        "source": SOURCES.get(kind, "ehr"),
    }
    if responses is not None:
        answers = {
            code: None if value == NOT_ANSWERED else value
            for code, value in zip(ITEM_ORDER, responses, strict=True)
        }
        obj["survey"] = {"instrument": "FACT-L", "version": "4", "responses": answers}
    return json.dumps(obj) + "\n"


@dataclass(frozen=True, slots=True)
class GeneratedLog:
    lines: int
    patients: int
    last_at: int
    seconds: float


def generate(path: Path, events: int, patients: int | None, seed: int) -> GeneratedLog:
    """Write the log: ``patients`` patients, or as many as it takes to reach ``events`` lines."""
    started = time.perf_counter()
    rng = Random(seed)
    records: list[Record] = []
    patient = 0
    while (patient < patients) if patients is not None else (len(records) < events):
        patient += 1
        records.extend(patient_records(rng, patient))
    records.sort()
    with path.open("w", encoding="utf-8") as log:
        log.writelines(map(render, records))
    last_at = records[-1][0] if records else STUDY_START
    return GeneratedLog(len(records), patient, last_at, time.perf_counter() - started)


# -- measurements -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayRun:
    summary: ReplaySummary
    states: list[PatientState]
    seconds: float
    rejects: str

    @property
    def events(self) -> int:
        return self.summary.events + self.summary.rejected


def replay_file(
    path: Path, policy: Policy, until: int | None, limit: int | None = None
) -> ReplayRun:
    """Replay the log (or its first ``limit`` lines) in-process; escalations to /dev/null."""
    rejects = io.StringIO()
    with (
        path.open(encoding="utf-8") as lines,
        open(os.devnull, "w", encoding="utf-8") as sink,
    ):
        started = time.perf_counter()
        summary, engine = replay(
            itertools.islice(lines, limit), policy, sink, until=until, rejects=rejects
        )
        seconds = time.perf_counter() - started
    return ReplayRun(summary, list(engine.states.values()), seconds, rejects.getvalue())


@dataclass(frozen=True, slots=True)
class CliRun:
    seconds: float
    returncode: int
    stderr: str


def replay_cli(path: Path, until: int, jobs: int = 1) -> CliRun:
    """``python -m streams.cli replay --jobs N`` end to end (start-up, imports, replay, output)."""
    command = [sys.executable, "-m", "streams.cli", "replay", "--input", str(path)]
    command += ["--output", os.devnull, "--until", format_time(until), "--jobs", str(jobs)]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    return CliRun(time.perf_counter() - started, done.returncode, done.stderr.strip())


@dataclass(frozen=True, slots=True)
class SizeStats:
    patients: int
    mean: float
    median: float
    p95: int
    max: int

    @classmethod
    def of(cls, sizes: Sequence[int]) -> SizeStats:
        if not sizes:
            return cls(0, 0.0, 0.0, 0, 0)
        ordered = sorted(sizes)
        p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank
        return cls(
            len(ordered), statistics.fmean(ordered), statistics.median(ordered), p95, ordered[-1]
        )

    def text(self) -> str:
        return f"mean {self.mean:.0f}, median {self.median:.0f}, p95 {self.p95}, max {self.max}"


@dataclass(frozen=True, slots=True)
class JobsRun:
    """``stepcare replay`` with 1 and with N jobs, run alternately (the machine is shared)."""

    jobs: int
    one: list[CliRun]  # --jobs 1, each round
    many: list[CliRun]  # --jobs N, each round

    @property
    def ok(self) -> bool:
        return all(r.returncode == 0 for r in (*self.one, *self.many))

    def speedups(self) -> list[float]:
        """Per round: seconds with one job / seconds with N."""
        return [a.seconds / b.seconds for a, b in zip(self.one, self.many, strict=True)]

    def best(self) -> tuple[float, float]:
        """The fastest run of each (the least disturbed by other processes)."""
        return min(r.seconds for r in self.one), min(r.seconds for r in self.many)


def replay_jobs(path: Path, until: int, jobs: int, rounds: int = JOBS_ROUNDS) -> JobsRun:
    """The CLI with ``--jobs 1`` and ``--jobs N``, alternately, ``rounds`` times each."""
    one, many = [], []
    for _ in range(rounds):
        one.append(replay_cli(path, until, 1))
        many.append(replay_cli(path, until, jobs))
    return JobsRun(jobs, one, many)


def profile_replay(path: Path, policy: Policy) -> None:
    """cProfile the in-process replay of the first ``PROFILE_LINES`` lines; top 15 by tottime."""
    profiler = cProfile.Profile()
    run = profiler.runcall(replay_file, path, policy, None, PROFILE_LINES)
    print(f"\n## Profile: first {run.events:,} lines, sorted by own time (tottime)\n")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


# -- report -------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name where Linux tells it, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def status(met: bool) -> str:
    return "met" if met else "**not met**"


def rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else 0.0


def report(
    log: GeneratedLog, run: ReplayRun, cli: CliRun, seed: int, jobs: JobsRun | None = None
) -> None:
    in_process = rate(run.events, run.seconds)
    cli_rate = rate(run.events, cli.seconds)
    everyone = SizeStats.of([len(encode_state(s)) for s in run.states])
    monitored = SizeStats.of([len(encode_state(s)) for s in run.states if not s.ended])
    goal_rate = f"≥ {GOAL_EVENTS_PER_SECOND:,} events/s"
    goal_size = f"≤ {GOAL_STATE_BYTES} B (max)"
    cli_value = (
        f"{cli_rate:,.0f} events/s ({cli.seconds:.1f} s)"
        if cli.returncode == 0
        else f"failed (exit {cli.returncode})"
    )
    rows = [
        (
            "Replay in-process, one core",
            f"{in_process:,.0f} events/s ({run.seconds:.1f} s)",
            goal_rate,
            status(in_process >= GOAL_EVENTS_PER_SECOND),
        ),
        (
            "Replay CLI end to end",
            cli_value,
            goal_rate,
            status(cli.returncode == 0 and cli_rate >= GOAL_EVENTS_PER_SECOND),
        ),
        *([] if jobs is None else jobs_rows(jobs, run.events)),
        (
            f"State bytes/patient, all ({everyone.patients:,})",
            everyone.text(),
            goal_size,
            status(everyone.max <= GOAL_STATE_BYTES),
        ),
        (
            f"State bytes/patient, monitored ({monitored.patients:,})",
            monitored.text(),
            goal_size,
            status(monitored.max <= GOAL_STATE_BYTES),
        ),
    ]
    summary = run.summary
    outcomes = ", ".join(f"{n:,} {o}" for o, n in sorted(summary.outcomes.items()))
    kinds = ", ".join(f"{n:,} {k}" for k, n in sorted(summary.escalations.items()))
    print("\n## Replay benchmark\n")
    print(
        f"- Machine: {cpu_model()} (platform.processor(): {platform.processor()!r}), "
        f"{os.cpu_count()} CPUs, {platform.platform()}"
    )
    print(f"- Python {platform.python_version()} ({platform.python_implementation()})")
    print(
        f"- Log: {log.lines:,} events, {log.patients:,} patients (seed {seed}), "
        f"generated in {log.seconds:.1f} s (not timed below); clock advanced to "
        f"{format_time(log.last_at + UNTIL_AFTER_LAST)} at the end"
    )
    print(f"- Replayed: {run.events:,} events ({outcomes}), {summary.rejected:,} rejected")
    print(f"- Escalations: {sum(summary.escalations.values()):,} ({kinds or 'none'})")
    print(f"- Patients in the engine: {len(run.states):,}\n")
    print("| Measure | Value | Goal | Status |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if run.rejects:
        print("\nFirst rejected lines:")
        print("\n".join(run.rejects.splitlines()[:5]))
    if cli.returncode != 0:
        print(f"\nThe CLI failed:\n{cli.stderr}")


def jobs_rows(jobs: JobsRun, events: int) -> list[tuple[str, str, str, str]]:
    """The Goals rows of ``--jobs 1`` against ``--jobs N`` (CLI end to end, every round)."""
    if not jobs.ok:
        return [(f"Replay CLI --jobs {jobs.jobs}", "failed", "", status(False))]
    one, many = jobs.best()
    rounds = ", ".join(f"{x:.2f}x" for x in jobs.speedups())
    return [
        (
            f"Replay CLI --jobs 1 / --jobs {jobs.jobs} (best of {len(jobs.one)})",
            f"{rate(events, one):,.0f} / {rate(events, many):,.0f} events/s "
            f"({one:.1f} s / {many:.1f} s)",
            goal_rate_text(),
            status(rate(events, many) >= GOAL_EVENTS_PER_SECOND),
        ),
        (
            f"Replay --jobs {jobs.jobs} speed-up over --jobs 1",
            f"{one / many:.2f}x best against best (rounds: {rounds})",
            f"≥ {GOAL_JOBS_SPEEDUP:g}x",
            status(one / many >= GOAL_JOBS_SPEEDUP),
        ),
    ]


def goal_rate_text() -> str:
    return f"≥ {GOAL_EVENTS_PER_SECOND:,} events/s"


# -- command ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--events", type=int, default=1_000_000, help="about this many events (default 1000000)"
    )
    parser.add_argument(
        "--patients", type=int, help="exactly this many patients (then --events is ignored)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--log", type=Path, help="write the log here (default: bench/.data/)")
    parser.add_argument("--keep", action="store_true", help="do not delete the log at the end")
    parser.add_argument(
        "--profile", action="store_true", help=f"cProfile the first {PROFILE_LINES:,} lines"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help=f"also time the CLI with --jobs 1 and --jobs N, alternately, {JOBS_ROUNDS} times "
        "each (default 2; 1: skip)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path: Path = args.log
    if path is None:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="replay-", suffix=".jsonl", dir=DATA_DIR)
        os.close(handle)
        path = Path(name)
    try:
        log = generate(path, args.events, args.patients, args.seed)
        print(
            f"generated {log.lines:,} events for {log.patients:,} patients in "
            f"{log.seconds:.1f} s ({path.stat().st_size / 1e6:,.0f} MB): {path}",
            flush=True,
        )
        policy = resolve_policy(None)
        until = log.last_at + UNTIL_AFTER_LAST
        run = replay_file(path, policy, until)
        print(f"in-process replay: {run.seconds:.1f} s", flush=True)
        cli = replay_cli(path, until)
        print(f"CLI replay: {cli.seconds:.1f} s; it said: {cli.stderr}", flush=True)
        jobs = None
        if args.jobs > 1:
            jobs = replay_jobs(path, until, args.jobs)
            print(
                f"CLI --jobs 1: {', '.join(f'{r.seconds:.1f}' for r in jobs.one)} s; "
                f"--jobs {args.jobs}: {', '.join(f'{r.seconds:.1f}' for r in jobs.many)} s",
                flush=True,
            )
        report(log, run, cli, args.seed, jobs)
        if args.profile:
            profile_replay(path, policy)
    finally:
        if args.keep:
            print(f"\nkept the log: {path}")
        else:
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
