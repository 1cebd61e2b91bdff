"""``stepcare worker`` with a stage breakdown (and optionally cProfile): a benchmark hook.

Run it instead of ``python -m streams.cli worker``, with the same ``STEPCARE_*`` settings::

    STEPCARE_BENCH_PROBE=/tmp/stages.json .venv/bin/python bench/probe.py
    STEPCARE_BENCH_CPROFILE=/tmp/worker.prof .venv/bin/python bench/probe.py   # also cProfile

``bench/run_all.py --profile`` does this itself. Nothing in ``streams/`` changes: the probe
wraps, in this process only, the functions ``Monitor.handle_batch`` calls (they are looked up in
the module at call time), and times with ``time.perf_counter``:

* ``decode``: ``decode_event`` + ``event_from_json`` (Avro SOE to a validated event);
* ``engine``: ``PartitionEngine.process`` (the clinical engine, including the table reads of
  ``BufferedStates`` it triggers: RocksDB get + ``decode_state``);
* ``publish``: ``Monitor.publish`` (encode escalations, ``Producer.send``);
* ``acks``: ``Monitor._until_acked``, once per batch: waiting for the broker's acks of the
  batch's outputs (at least once; exactly once, of its dead letters only);
* ``store``: ``BufferedStates.write``, once per batch and partition (``encode_state``, the
  RocksDB write and faust's changelog send of each changed patient);
* ``rest``: the rest of ``handle_batch`` (key checks, the census, the Prometheus counters, the
  records' acknowledgements);
* ``between``: wall time from the end of one ``handle_batch`` to the start of the next, i.e.
  faust's fetching, ``take_batches`` (with its linger), offset commits, other tasks and the
  event loop's idle time.

Two more totals overlap the stages: ``table_writes`` (every ``Table.__setitem__``: RocksDB
write, changelog send; in ``store`` and ``rest``) and ``state_reads`` (``BufferedStates``
reads: RocksDB get and ``decode_state``; in ``engine``). ``produce_requests`` counts the
produce requests aiokafka sends (every producer of the process: escalations, changelog,
dead letters) and ``produce_batches`` the partition batches they carry; ``commits`` times
faust's offset commits (``Consumer.force_commit``: at least once, a producer flush and the
offset commit; exactly once, the transactions' commit), which run beside the agent.

At exit (SIGTERM) the totals go to ``STEPCARE_BENCH_PROBE`` as JSON: seconds per stage, the
number of records, and the process's CPU seconds. With ``STEPCARE_BENCH_CPROFILE`` the main
thread (the event loop: every stage above) runs under cProfile, dumped there at exit (pstats).
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams import cli  # noqa: E402
from streams.worker import pipeline, states  # noqa: E402

STAGES = ("decode", "engine", "publish", "acks", "store", "rest", "between")
OVERLAPPING = ("table_writes", "state_reads", "commits")
totals = dict.fromkeys(STAGES + OVERLAPPING, 0.0)
counts = {
    "records": 0,
    "batches": 0,
    "escalation_batches": 0,
    "produce_requests": 0,
    "produce_batches": 0,
    "commits": 0,
}
clock = time.perf_counter
_last_end: list[float] = []


def _timed(stage: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = clock()
        try:
            return function(*args, **kwargs)
        finally:
            totals[stage] += clock() - started

    return wrapper


def _timed_async(stage: str, function):
    @functools.wraps(function)
    async def wrapper(*args, **kwargs):
        started = clock()
        try:
            return await function(*args, **kwargs)
        finally:
            totals[stage] += clock() - started
            if stage == "publish":
                counts["escalation_batches"] += 1

    return wrapper


def _wrap(owner: object, name: str, wrapper) -> None:
    """Replace ``owner.name`` by ``wrapper(original)``; if the worker changed, say so and go on."""
    original = getattr(owner, name, None)
    if original is None:
        print(f"bench/probe.py: {owner!r} has no {name}: not timed", file=sys.stderr)
        return
    setattr(owner, name, wrapper(original))


def install() -> None:
    _wrap(pipeline, "decode_event", functools.partial(_timed, "decode"))
    _wrap(pipeline, "event_from_json", functools.partial(_timed, "decode"))
    _wrap(pipeline.PartitionEngine, "process", functools.partial(_timed, "engine"))
    _wrap(states.BufferedStates, "write", functools.partial(_timed, "store"))
    _wrap(pipeline.Monitor, "publish", functools.partial(_timed_async, "publish"))
    _wrap(states.BufferedStates, "__getitem__", functools.partial(_timed, "state_reads"))
    _wrap(pipeline.faust.Table, "__setitem__", functools.partial(_timed, "table_writes"))
    _wrap(pipeline.Monitor, "_until_acked", functools.partial(_timed_async, "acks"))
    _wrap(pipeline.Monitor, "handle_batch", _timed_handle)

    from aiokafka.producer.sender import Sender
    from faust.transport.consumer import Consumer

    _wrap(Sender, "_send_produce_req", _counted_send)
    _wrap(Consumer, "force_commit", _timed_commit)


def _timed_handle(handle):
    @functools.wraps(handle)
    async def timed_handle(self, events):
        started = clock()
        if _last_end:
            totals["between"] += started - _last_end[0]
        inner_stages = ("decode", "engine", "publish", "acks", "store")
        before = sum(totals[s] for s in inner_stages)
        try:
            return await handle(self, events)
        finally:
            end = clock()
            inner = sum(totals[s] for s in inner_stages) - before
            totals["rest"] += (end - started) - inner
            counts["records"] += len(events)
            counts["batches"] += 1
            _last_end[:] = [end]

    return timed_handle


def _timed_commit(commit):
    @functools.wraps(commit)
    async def timed_commit(self, *args, **kwargs):
        started = clock()
        try:
            return await commit(self, *args, **kwargs)
        finally:
            totals["commits"] += clock() - started
            counts["commits"] += 1

    return timed_commit


def _counted_send(send):
    async def counted_send(self, node_id, batches):
        counts["produce_requests"] += 1
        counts["produce_batches"] += len(batches)
        return await send(self, node_id, batches)

    return counted_send


def dump(path: str) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {
        "seconds": totals,
        **counts,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def main() -> int:
    install()
    probe = os.environ.get("STEPCARE_BENCH_PROBE")
    if probe:
        atexit.register(dump, probe)
    profile_path = os.environ.get("STEPCARE_BENCH_CPROFILE")
    if not profile_path:
        return cli.main(["worker"])
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(cli.main, ["worker"])
    finally:
        profiler.dump_stats(profile_path)


if __name__ == "__main__":
    sys.exit(main())
