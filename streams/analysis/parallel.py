"""``stepcare replay --jobs N``: one log replayed by N processes, the same bytes as one.

One job (:func:`streams.analysis.replay.replay_events`) runs ONE engine over the whole log with
ONE clock, the largest ``occurred_at`` of the valid events read so far: before an event is
applied, every timer due before the clock fires, in (deadline, patient id) order across all
patients, then the event's own escalations follow. N jobs split the patients, not the clock:

* **Who runs a patient.** The worker's partitioner: murmur2 of the UTF-8 patient id (the Java
  client's, librdkafka's ``murmur2_random``), sign bit cleared, modulo N. Job k runs exactly
  the patients partition k of an N-partition topic holds. N itself is the partition count: a
  log has thousands of patients, which murmur2 spreads evenly over N, and no job waits on a
  partition it does not own. A record whose patient id cannot be read (not JSON, not an object,
  an id that is not a string) is rejected whoever parses it; it goes to job 0, which says why.
* **One clock for every job.** Whether a line moves the clock depends on its validity, which
  only the job that parses it knows. The parent reads the log once, in chunks of ``CHUNK``
  records, and sends each record to its job (the raw line: each record is parsed once, by its
  job). Per chunk, in two steps:

  1. each job parses its records and returns their ``occurred_at`` (a mark for a rejected
     one) and the (line, reason) of the rejected ones;
  2. the parent merges them into the clock's steps, (line, clock after the line) for every
     valid line, and sends the steps to every job. Each job then runs its engine over the
     chunk: ``advance_to(clock)`` at every step's line (its own or another job's), and
     ``process(event)`` at its own events' lines. Every valid line, not only those where the
     clock grows: one engine fires the timers due before the clock at every line, and a late
     event (older than the clock) can make a timer of its patient due at once; it fires at the
     next valid line, whoever's it is.

  Jobs parse up to ``AHEAD`` chunks ahead, and get chunk c + 1's clock before the parent waits
  for chunk c's escalations, so nobody waits for long.
* **The merge key.** With one engine, the escalations of input line L are, in this order: the
  timers fired when the clock passes to L's value (popped from one heap ordered by (deadline,
  patient id); one patient's pop may fire several, in the order ``advance`` returns them), then
  the escalations of L's own event (one patient). A timer escalation's ``occurred_at`` is the
  deadline it fired for (VISIT_OVERDUE and SURVEY_OVERDUE both). Every job's engine sees the
  same clock at every line and the same states of its patients, so it fires the same timers for
  them; the parent sorts each chunk's escalations, stably, by
  ``(line, phase, deadline, patient id)`` with phase 0 for timers and 1 for the event's own
  (deadline 0, patient id ""), and ``--until``'s timers get a line after every line. Equal keys
  come from one job (patient ids are disjoint), already in the one engine's order.
* **Rejects and --strict.** Rejected lines are written in line order, chunk by chunk. With
  ``--strict`` the parent finds the first rejected line r, lets the jobs run every line before
  r, writes their escalations and then raises the same :class:`RejectedLine` as one job.
* **Processes.** Forked; they ignore Ctrl-C (the parent ends them, on any error too, and a job
  whose parent was killed ends by itself within a second). Each holds
  its own patients' states and at most ``AHEAD`` chunks of its records: memory does not grow with
  the log, and the log is held nowhere whole.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from operator import itemgetter
from typing import IO, Any

import orjson

from streams.analysis.replay import RejectedLine, ReplaySummary
from streams.clinical.events import EventError, EventType, PatientEvent, event_from_json
from streams.clinical.partition import PartitionEngine
from streams.clinical.policy import Policy
from streams.errors import StepcareError
from streams.formats.files import FileError, json_line, numbered_lines
from streams.formats.logs import LogReader

MAX_JOBS = 64
CHUNK = 16_384  # records per chunk: big enough that the per-chunk exchange costs little
AHEAD = 3  # chunks sent before the first merge (jobs hold at most this many parsed chunks)
_REJECTED = -(2**63)  # the time of a rejected record in a job's times (below any valid time)
_LAST_LINE = sys.maxsize  # the line of --until's timers: after every line of the log
_JOB_POLL = 1.0  # seconds between checks that the jobs are still alive while waiting

Key = tuple[int, int, int, str]  # (line, phase, deadline, patient id)
_OWN = 1  # phase of an event's own escalations (timers: 0)


class JobError(StepcareError):
    """A replay job ended without finishing (killed, out of memory)."""


# -- the partitioner ----------------------------------------------------------------------------


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``): a 32-bit hash."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    whole = length & ~3
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    extra = length & 3
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(patient_id: str, partitions: int) -> int:
    """The partition of a patient among ``partitions``: as the worker's producers choose it."""
    return (murmur2(patient_id.encode()) & 0x7FFFFFFF) % partitions


# -- the parent ---------------------------------------------------------------------------------


def replay_parallel(
    name: str,
    policy: Policy,
    output: IO[str],
    jobs: int,
    *,
    until: int | None = None,
    strict: bool = False,
    rejects: IO[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReplaySummary, int]:
    """Replay the log ``name`` (``-``: stdin) in ``jobs`` processes; (summary, patients).

    The same escalations (bytes and order), rejects and summary as ``replay_events`` over
    ``read_events(name)``; see the module documentation for how.
    """
    if not 1 <= jobs <= MAX_JOBS:
        raise ValueError(f"jobs must be 1-{MAX_JOBS}")
    rejects = sys.stderr if rejects is None else rejects
    reader = LogReader(name)  # opened before any job starts: a missing file fails here
    started = time.monotonic()
    context = multiprocessing.get_context("fork")
    inboxes: list[Queue[Any]] = [context.Queue() for _ in range(jobs)]
    outboxes: list[Queue[Any]] = [context.Queue() for _ in range(jobs)]
    processes = [
        context.Process(
            target=_job, args=(policy, inboxes[k], outboxes[k]), name=f"replay-job-{k}", daemon=True
        )
        for k in range(jobs)
    ]
    for stream in (output, sys.stdout, sys.stderr):  # a forked job flushes its copy at exit
        stream.flush()
    try:
        for process in processes:
            process.start()
        parent = _Parent(reader, jobs, inboxes, outboxes, processes)
        summary, patients = parent.run(output, until, strict, rejects, progress)
        for process in processes:
            process.join()  # each has sent its last message: ends at once
    finally:
        reader.close()
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
        for box in (*inboxes, *outboxes):
            box.cancel_join_thread()  # nothing may wait on a dead job's pipe
            box.close()
    summary.seconds = time.monotonic() - started
    return summary, patients


class _Parent:
    def __init__(
        self,
        reader: LogReader,
        jobs: int,
        inboxes: list[Queue[Any]],
        outboxes: list[Queue[Any]],
        processes: Sequence[BaseProcess],
    ) -> None:
        self.jobs = jobs
        self.inboxes = inboxes
        self.outboxes = outboxes
        self.processes = processes
        self.records = self._records(reader)
        self.read_error: FileError | None = None  # raised once what came before is written
        self.job_of: dict[bytes | str | None, int] = {}  # patient id (bytes or str) -> job
        self.sent: deque[tuple[list[int], bytearray]] = deque()  # chunks not yet run: lines, jobs
        self.stash: list[dict[str, deque[Any]]] = [defaultdict(deque) for _ in range(jobs)]
        self.clock: int | None = None

    def run(
        self,
        output: IO[str],
        until: int | None,
        strict: bool,
        rejects: IO[str],
        progress: Callable[[int], None] | None,
    ) -> tuple[ReplaySummary, int]:
        rejected = 0
        # Jobs parse AHEAD chunks ahead of the merge, and have the next chunk's clock before
        # the parent waits for this chunk's escalations: a job that is done with a chunk does
        # not wait for the slower one.
        pending = sum(self._send_chunk() for _ in range(AHEAD))
        running: deque[tuple[list[tuple[int, str]], int | None, int]] = deque()
        while pending or running:
            if pending:
                pending -= 1
                parsed = [self._receive(k, "parsed") for k in range(self.jobs)]
                reasons = sorted(r for message in parsed for r in message[2])
                stop = reasons[0][0] if strict and reasons else None
                numbers, order = self.sent.popleft()
                steps = self._steps(numbers, order, [message[1] for message in parsed], stop)
                for inbox in self.inboxes:
                    inbox.put(("run", steps, stop))
                running.append((reasons, stop, numbers[-1]))
                if stop is None:
                    pending += self._send_chunk()
                else:
                    pending = 0  # nothing after the first bad line is run
                if pending and len(running) < 2:
                    continue
            reasons, stop, last_line = running.popleft()
            results = [self._receive(k, "out") for k in range(self.jobs)]
            items = [item for message in results for item in message[1]]
            items.sort(key=itemgetter(0))
            output.write("".join([line for _, line in items]))
            if stop is not None:
                raise RejectedLine(*reasons[0])
            if reasons:
                rejects.write("".join([f"line {n}: {reason}\n" for n, reason in reasons]))
                rejected += len(reasons)
            if progress is not None:
                progress(last_line)
        if self.read_error is not None:
            raise self.read_error
        for inbox in self.inboxes:
            inbox.put(("end", until))
        finals = [self._receive(k, "end") for k in range(self.jobs)]
        items = [item for message in finals for item in message[1]]
        items.sort(key=itemgetter(0))
        output.write("".join([line for _, line in items]))
        summary = ReplaySummary(rejected=rejected)
        patients = 0
        for message in finals:
            events, outcomes, suppressed, kinds, count = message[2]
            summary.events += events
            summary.outcomes.update(outcomes)
            summary.suppressed.update(suppressed)
            summary.escalations.update(kinds)
            patients += count
        return summary, patients

    def _records(self, reader: LogReader) -> Iterator[list[tuple[int, Any]]]:
        """Lists of up to ``CHUNK`` (line, raw JSONL line or decoded Avro record); blank lines
        are skipped (their numbers are kept), as ``read_events`` does. A read error (damage)
        comes after the list of the records before it."""
        chunk: list[tuple[int, Any]] = []
        try:
            if reader.avro:
                for item in reader:
                    chunk.append(item)
                    if len(chunk) == CHUNK:
                        yield chunk
                        chunk = []
            else:
                for number, line in numbered_lines(reader.fo):
                    if line.strip():
                        chunk.append((number, line))
                        if len(chunk) == CHUNK:
                            yield chunk
                            chunk = []
        except OSError as exc:
            self.read_error = FileError(f"cannot read {reader.name}: {exc.strerror}")
        except FileError as exc:
            self.read_error = exc
        if chunk:
            yield chunk

    def _send_chunk(self) -> int:
        """Read up to ``CHUNK`` records and send each job its own; 0 when the log is done."""
        chunk = next(self.records, None)  # after damage: what came before it, then None
        if chunk is None:
            return 0
        numbers: list[list[int]] = [[] for _ in range(self.jobs)]
        payloads: list[list[Any]] = [[] for _ in range(self.jobs)]
        job_of = self.job_of
        patient_of = _patient_of
        order = bytearray()  # the job of each record, in log order
        for number, record in chunk:
            patient = patient_of(record)
            job = job_of.get(patient)
            if job is None:
                job = job_of[patient] = self._job_of(patient)
            numbers[job].append(number)
            payloads[job].append(record)
            order.append(job)
        self.sent.append(([number for number, _ in chunk], order))
        for k, inbox in enumerate(self.inboxes):
            inbox.put(("lines", numbers[k], payloads[k]))
        return 1

    def _job_of(self, patient: bytes | str | None) -> int:
        if isinstance(patient, bytes):
            try:
                patient = patient.decode()
            except UnicodeDecodeError:  # not UTF-8: the line is rejected, by any job
                return 0
        return 0 if patient is None else partition_of(patient, self.jobs)

    def _steps(
        self, numbers: list[int], order: bytearray, times: list[array[int]], stop: int | None
    ) -> tuple[array[int], array[int]]:
        """(lines, clocks): the clock after every valid line before ``stop``.

        Every line, not only those where the clock grows: one engine fires, at each valid
        line, the timers due before the clock, and an event later than the clock can make a
        timer already due (a late enrollment: its visit is due before the clock). That timer
        fires at the next valid line, whoever's it is. ``times[k]`` holds job k's records'
        times in their order (``_REJECTED`` for a rejected one)."""
        lines, clocks = array("q"), array("q")
        add_line, add_clock = lines.append, clocks.append
        next_time = [iter(t).__next__ for t in times]
        clock = self.clock
        for number, job in zip(numbers, order, strict=True):
            at = next_time[job]()
            if at == _REJECTED:
                continue
            if stop is not None and number >= stop:
                break
            if clock is None or at > clock:
                clock = at
            add_line(number)
            add_clock(clock)
        self.clock = clock
        return lines, clocks

    def _receive(self, k: int, kind: str) -> Any:
        """The job's next message of this kind (a job may answer the next chunk's "lines"
        before this chunk's "run": the other kinds wait in the stash)."""
        stash = self.stash[k]
        if stash[kind]:
            return stash[kind].popleft()
        while True:
            try:
                message = self.outboxes[k].get(timeout=_JOB_POLL)
            except queue.Empty:
                process = self.processes[k]
                if not process.is_alive():
                    raise JobError(
                        f"replay job {k} ended unexpectedly (exit code {process.exitcode})"
                    ) from None
                continue
            if message[0] == "error":
                raise JobError(f"replay job {k} failed: {message[1]}")
            if message[0] == kind:
                return message
            stash[message[0]].append(message)


# The starts of canonical lines: compact (stepcare's writers) and json.dumps' default spacing.
_CANONICAL = (
    (b'{"event_id":"', b'","patient_id":"'),
    (b'{"event_id": "', b'", "patient_id": "'),
)


def _patient_of(record: Any) -> bytes | str | None:
    """The patient id of a record, cheaply: the UTF-8 bytes from a canonical JSONL line, the
    value from a decoded record; None if it cannot be read (the record is rejected anyway).

    Canonical JSONL (``{"event_id":"…","patient_id":"…",…``, as stepcare writes it, or with
    ``json.dumps``' spaces) is read without decoding JSON. The shortcut applies only to lines
    with no backslash (no escape can hide a key or a quote) and one ``"patient_id"`` (JSON's
    last duplicate key would win); other lines are decoded. A CLOCK_TICK without a patient id
    has the id ""."""
    if type(record) is bytes:
        for first, second in _CANONICAL:
            if record.startswith(first) and b"\\" not in record:
                end = record.find(b'"', len(first))
                if record.startswith(second, end) and record.count(b'"patient_id"') == 1:
                    start = end + len(second)
                    return record[start : record.find(b'"', start)]
        try:
            record = orjson.loads(record)
        except orjson.JSONDecodeError:
            return None
    if type(record) is not dict:
        return None
    patient = record.get("patient_id", "")
    return patient if type(patient) is str else None


# -- a job --------------------------------------------------------------------------------------


def _job(policy: Policy, inbox: Queue[Any], outbox: Queue[Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's terminate() ends a job
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    try:
        _Job(policy, outbox).serve(inbox)
    except BaseException as exc:  # reported to the parent, which stops
        outbox.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        outbox.close()
        outbox.join_thread()


def _orphan_watch(parent: int) -> None:
    """End the job at once if its parent is gone (SIGKILLed): it may be blocked on a pipe that
    nobody will write to again."""
    while True:
        time.sleep(_JOB_POLL)
        if os.getppid() != parent:
            os._exit(1)


class _Job:
    def __init__(self, policy: Policy, outbox: Queue[Any]) -> None:
        self.engine = PartitionEngine(policy)
        self.outbox = outbox
        self.chunks: list[list[tuple[int, PatientEvent]]] = []  # parsed, not yet run
        self.events = 0
        self.outcomes: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()

    def serve(self, inbox: Queue[Any]) -> None:
        while True:
            message = inbox.get()
            if message[0] == "lines":
                self.outbox.put(self.parse(message[1], message[2]))
            elif message[0] == "run":
                self.outbox.put(("out", self.run(self.chunks.pop(0), message[1], message[2])))
            else:
                self.outbox.put(("end", self.end(message[1]), self.totals()))
                return

    def parse(self, numbers: list[int], payloads: list[Any]) -> tuple[Any, ...]:
        """As ``read_events`` does: (line, event) kept, (line, reason) for a rejected record."""
        events: list[tuple[int, PatientEvent]] = []
        times = array("q")  # per record: its time, or _REJECTED
        reasons: list[tuple[int, str]] = []
        loads = orjson.loads
        for number, payload in zip(numbers, payloads, strict=True):
            obj = payload
            if type(payload) is bytes:
                try:
                    obj = loads(payload)
                except orjson.JSONDecodeError:
                    reasons.append((number, str(json_line(payload)[1])))
                    times.append(_REJECTED)
                    continue
                if type(obj) is str:
                    reasons.append((number, "an event is a JSON object, not str"))
                    times.append(_REJECTED)
                    continue
            try:
                event = event_from_json(obj)
            except EventError as exc:
                reasons.append((number, str(exc)))
                times.append(_REJECTED)
                continue
            events.append((number, event))
            times.append(event.occurred_at)
        self.chunks.append(events)
        return ("parsed", times, reasons)

    def run(
        self,
        events: list[tuple[int, PatientEvent]],
        steps: tuple[array[int], array[int]],
        stop: int | None,
    ) -> list[tuple[Key, str]]:
        """The chunk's events through the engine, the clock moved at every step's line."""
        engine = self.engine
        out: list[tuple[Key, str]] = []
        fire = self._fire
        i = 0
        lines, clocks = steps
        n_steps = len(lines)
        tick = EventType.CLOCK_TICK
        for number, event in events:
            if stop is not None and number >= stop:
                break
            while i < n_steps and lines[i] < number:
                fire(out, lines[i], engine.advance_to(clocks[i]))
                i += 1
            if i < n_steps and lines[i] == number:
                i += 1  # this event's own step: process() moves the clock to its time
            fire(out, number, engine.advance_to(event.occurred_at))
            processed = engine.process(event)  # its timers have fired: its own escalations
            if event.type is not tick:
                self.events += 1
                self.outcomes[processed.outcome] += 1
            for kind in processed.suppressed:
                self.suppressed[kind] += 1
            key = (number, _OWN, 0, "")
            for escalation in processed.escalations:
                self.kinds[escalation.kind] += 1
                out.append((key, orjson.dumps(escalation.to_json()).decode() + "\n"))
        while i < n_steps:
            fire(out, lines[i], engine.advance_to(clocks[i]))
            i += 1
        return out

    def _fire(self, out: list[tuple[Key, str]], number: int, fired: tuple[Any, ...]) -> None:
        for escalation in fired:
            self.kinds[escalation.kind] += 1
            out.append(
                (
                    (number, 0, escalation.occurred_at, escalation.patient_id),
                    orjson.dumps(escalation.to_json()).decode() + "\n",
                )
            )

    def end(self, until: int | None) -> list[tuple[Key, str]]:
        out: list[tuple[Key, str]] = []
        if until is not None:
            self._fire(out, _LAST_LINE, self.engine.advance_to(until))
        return out

    def totals(self) -> tuple[Any, ...]:
        return (
            self.events, self.outcomes, self.suppressed, self.kinds, len(self.engine.states)
        )  # fmt: skip
