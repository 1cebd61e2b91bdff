"""Every benchmark in one command; the results table of ``docs/benchmarks.md`` is rewritten.

    .venv/bin/python bench/run_all.py                        # everything (~15 min on 2 cores)
    .venv/bin/python bench/run_all.py --only throughput,latency --events 10000
    .venv/bin/python bench/run_all.py --replay-events 1000000 --only replay
    .venv/bin/python bench/run_all.py --profile              # + py-spy of the worker

It is a command, never a test. Progress goes to stderr; the results go to ``docs/benchmarks.md``
between its ``bench:results`` markers (the prose around them is kept; scenarios not run this
time keep their previous results and date) and to ``bench/.data/last-results.json``.

Scenarios (``--only``/``--skip`` take these names):

* ``replay``: offline ``stepcare replay`` events/s (``bench/replay.py``'s seeded log, in-process
  and through the CLI; the CLI with ``--jobs 1`` and ``--jobs 2`` alternately, three rounds)
  and encoded state bytes per patient.
* ``throughput``: a seeded log of ``--events`` events (``bench/replay.py``'s cohort) is
  published to a 4-partition topic of a broker the benchmark starts (Kafka ``--kafka-version``,
  one KRaft node); then, for at-least-once and exactly-once: ``stepcare worker``
  (``STEPCARE_CLOCK=event``; events/s from its /metrics, first to last processed; a stage
  breakdown from ``bench/probe.py``), the raw confluent-kafka loop (``bench/raw_loop.py``) and
  the Quix Streams peer (``bench/quix_peer.py``, run with ``--quix-python``).
* ``framing``: the worker (at least once) on the same log in each wire framing, alternating,
  two rounds each: single-object, and a copy in registry framing read from (and escalations
  written in) the registry framing, with an Apicurio Registry the benchmark starts (issue 15:
  CPU per record within 10%).
* ``scaling``: the same log with 1 and 2 workers of one deployment (at least once).
* ``latency``: a worker per guarantee; ENROLLED events of new patients (each yields one
  escalation) published at ``--latency-rates`` events/s for ``--latency-seconds`` each, record
  timestamp = send time; escalations read with read_committed; latency = arrival - send time,
  matched by patient id.
* ``recovery``: ``--recovery-patients`` patients (ENROLLED, then a FACT-L baseline); their table
  changelog is written as the workers would write it (``--recovery-build direct``: the worker's
  ``Monitor.handle`` run in-process, checked against a real worker's changelog on a sample;
  ``worker``: two workers process the log, slow); then a new worker on an empty data dir:
  seconds from its start to /ready 200 and to faust's "Worker ready", then to its timer indexes
  being rebuilt (first event per partition); RocksDB bytes per patient (its data dir after it
  stops).

Every process it starts (broker JVM, workers, loops) is stopped before it exits, also on
Ctrl-C or SIGTERM; the broker dies with it even on SIGKILL.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import harness as h
import replay as offline
from confluent_kafka import Consumer, TopicPartition
from harness import progress

from streams.clinical.events import format_time
from streams.clinical.policy import resolve_policy
from streams.formats.avro import encode_event
from streams.formats.state import encode_state

ROOT = h.ROOT
DOC = ROOT / "docs" / "benchmarks.md"
LAST_RESULTS = h.DATA_DIR / "last-results.json"
BEGIN, END = "<!-- bench:results:begin -->", "<!-- bench:results:end -->"
SCENARIOS = ("replay", "throughput", "framing", "scaling", "latency", "recovery")
GUARANTEES = ("at_least_once", "exactly_once")

GOAL_RAW_SHARE = 0.5
GOAL_P99_ALO = 1.0
GOAL_P99_EOS = 5.0
GOAL_RECOVERY_S = 30.0
GOAL_LATENCY_RATES = (1000, 100)
GOAL_REPLAY_RUN_RATIO = 3.0  # `worker --replay` time vs offline replay time, same events
REPLAY_JOBS = 2  # offline replay: --jobs 1 against --jobs 2 (this machine's cores)


# -- the command ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--only", help=f"comma-separated scenarios: {', '.join(SCENARIOS)}")
    parser.add_argument("--skip", help="comma-separated scenarios not to run")
    parser.add_argument(
        "--replay-events",
        type=int,
        default=200_000,
        help="offline replay log size (default 200000; 1000000 as make bench)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="log size of the throughput and scaling runs (default 200000: as `worker --replay` "
        "of the offline replay's cohort)",
    )
    parser.add_argument(
        "--latency-rates",
        default="1000,100",
        help="events/s of the latency runs, in order (default 1000,100)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=15.0,
        help="seconds of publishing per latency rate (default 15)",
    )
    parser.add_argument("--recovery-patients", type=int, default=100_000)
    parser.add_argument(
        "--recovery-build",
        choices=("direct", "worker"),
        default="direct",
        help="direct (default): the benchmark writes the changelog the workers would write "
        "(their Monitor.handle run in-process; checked against a real worker's on a sample); "
        "worker: two workers process the whole log (~200k events at the workers' pace)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--kafka-version", default=os.environ.get("STEPCARE_KAFKA_VERSION", "4.4.0")
    )
    parser.add_argument(
        "--quix-python",
        type=Path,
        default=ROOT / ".bench-venv/bin/python",
        help="python of a venv with quixstreams (default .bench-venv)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the Quix Streams peer")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw confluent loop")
    parser.add_argument(
        "--loop-repeat",
        type=int,
        default=3,
        help="runs of the raw loop and the peer (short: the median is kept)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the worker (throughput runs, recovery) if py-spy is installed",
    )
    parser.add_argument(
        "--cprofile",
        action="store_true",
        help="cProfile the worker's event loop in the throughput runs (slows it down; "
        "pstats files in the kept run folder)",
    )
    parser.add_argument("--output", type=Path, default=DOC, help="default docs/benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite the doc")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, data)")
    parser.add_argument(
        "--rewrite",
        action="store_true",
        help="run nothing: render the doc again from the results it holds",
    )
    args = parser.parse_args(argv)  # fmt: skip
    chosen = set(SCENARIOS)
    if args.only:
        chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    if args.skip:
        chosen -= {s.strip() for s in args.skip.split(",")}
    unknown = chosen - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {sorted(unknown)[0]!r}; choose from {SCENARIOS}")
    args.scenarios = [s for s in SCENARIOS if s in chosen]
    args.rates = [float(r) for r in args.latency_rates.split(",") if r.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rewrite:
        merged = _stored(args.output)
        write_doc(args.output, render(merged), merged)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)  # stop everything as on Ctrl-C
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC)
    run_dir = h.DATA_DIR / f"run-{stamp:%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True, exist_ok=True)
    progress(f"scenarios: {', '.join(args.scenarios)}; run folder {run_dir}")
    results: dict[str, Any] = {}
    env = environment(args)
    env["loadavg_start"] = _loadavg()
    ok = False
    try:
        if "replay" in args.scenarios:
            results["replay"] = run_replay(args, run_dir)
        kafka = [s for s in args.scenarios if s != "replay"]
        if kafka:
            with h.Broker(run_dir / "kafka", args.kafka_version) as broker:
                bench = KafkaBench(args, broker, run_dir)
                if {"throughput", "framing", "scaling"} & set(kafka):
                    bench.publish_mixed_log()
                if "throughput" in kafka:
                    results["throughput"] = bench.throughput()
                if "framing" in kafka:
                    results["framing"] = bench.framing()
                if "scaling" in kafka:
                    results["scaling"] = bench.scaling()
                if "latency" in kafka:
                    results["latency"] = bench.latency()
                if "recovery" in kafka:
                    results["recovery"] = bench.recovery()
        ok = True
    finally:
        env["loadavg_end"] = _loadavg()
        env["minutes"] = round((time.monotonic() - started) / 60, 1)
        if results:
            measured = stamp.strftime("%Y-%m-%d %H:%M UTC")
            for value in results.values():
                value["measured"] = measured
                value["command"] = "bench/run_all.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv)  # fmt: skip
            save(results, env, args)
        if ok and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            progress(f"kept the run folder (logs): {run_dir}")
        left = _java_left(run_dir)
        if left:
            progress(f"WARNING: a broker JVM of this run is still alive: {left}")
    progress(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _loadavg() -> str:
    return " / ".join(Path("/proc/loadavg").read_text().split(" ", 3)[:3])


def _java_left(run_dir: Path) -> list[int]:
    from streams.devtools.cluster import broker_pids

    with contextlib.suppress(Exception):
        return broker_pids(run_dir / "kafka")
    return []


# -- environment ---------------------------------------------------------------------------------


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    import confluent_kafka

    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))}, {platform.system()} " \
                          f"{platform.release()}"  # fmt: skip
    memory = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    quix = quix_versions(args.quix_python)
    return {
        "cpu": offline.cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "virtualization": _virtualization(),
        "os": os_name,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "kafka": args.kafka_version,
        "faust": version("faust-streaming"),
        "aiokafka": version("aiokafka"),
        "confluent_kafka": f"{version('confluent-kafka')} "
        f"(librdkafka {confluent_kafka.libversion()[0]})",
        "rocksdict": version("rocksdict"),
        "quixstreams": quix,
    }


def _virtualization() -> str:
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        if " hypervisor" in text:
            return "virtual machine"
    return ""


def quix_versions(python: Path) -> str:
    if not python.exists():
        return "absent"
    code = ("import importlib.metadata as m; "
            "print(m.version('quixstreams'), m.version('confluent-kafka'))")  # fmt: skip
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return "absent"
    quix, confluent = done.stdout.split()
    return f"{quix} (its own venv: confluent-kafka {confluent})"


# -- (a) offline replay --------------------------------------------------------------------------


def run_replay(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    progress(f"replay: generating a log of about {args.replay_events:,} events")
    path = run_dir / "replay.jsonl"
    log = offline.generate(path, args.replay_events, None, args.seed)
    policy = resolve_policy(None)
    until = log.last_at + offline.UNTIL_AFTER_LAST
    run = offline.replay_file(path, policy, until)
    progress(f"replay: in-process {run.events / run.seconds:,.0f} events/s; now the CLI")
    cli = offline.replay_cli(path, until)
    progress(f"replay: --jobs 1 against --jobs {REPLAY_JOBS}, {offline.JOBS_ROUNDS} rounds")
    jobs = offline.replay_jobs(path, until, REPLAY_JOBS)
    everyone = offline.SizeStats.of([len(encode_state(s)) for s in run.states])
    monitored = offline.SizeStats.of([len(encode_state(s)) for s in run.states if not s.ended])
    path.unlink(missing_ok=True)
    return {
        "events": run.events,
        "patients": log.patients,
        "seed": args.seed,
        "in_process_rate": run.events / run.seconds,
        "in_process_seconds": run.seconds,
        "cli_rate": run.events / cli.seconds if cli.returncode == 0 else None,
        "cli_seconds": cli.seconds,
        "escalations": sum(run.summary.escalations.values()),
        "state_all": everyone.text(),
        "state_monitored": monitored.text(),
        "state_max": everyone.max,
        "jobs": REPLAY_JOBS,
        "jobs_ok": jobs.ok,
        "jobs_one_seconds": [r.seconds for r in jobs.one],
        "jobs_many_seconds": [r.seconds for r in jobs.many],
    }


# -- the Kafka scenarios -------------------------------------------------------------------------


class KafkaBench:
    def __init__(self, args: argparse.Namespace, broker: h.Broker, run_dir: Path) -> None:
        self.args = args
        self.broker = broker
        self.run_dir = run_dir
        self.log: h.EncodedLog | None = None
        self.topic = "bench.events"
        self.spy = _find_py_spy() if args.profile else None

    def broker_pid(self) -> int:
        return self.broker.cluster.nodes[0].pid or 0

    def publish_mixed_log(self) -> None:
        path = self.run_dir / "throughput.jsonl"
        generated = offline.generate(path, self.args.events, None, self.args.seed)
        self.log = h.encode_jsonl(path)
        path.unlink()
        self.broker.create_topic(self.topic)
        started = time.monotonic()
        h.publish(self.broker.bootstrap, self.topic, self.log.records)
        progress(
            f"published {len(self.log):,} events of {generated.patients:,} patients "
            f"(seed {self.args.seed}) to {self.topic} in {time.monotonic() - started:.1f} s"
        )

    # -- (b) and (f): worker, raw loop, Quix peer -------------------------------------------

    def throughput(self) -> dict[str, Any]:
        assert self.log is not None
        out: dict[str, Any] = {"events": len(self.log), "patients": self.log.patients}
        for guarantee in GUARANTEES:
            row: dict[str, Any] = {}
            # The stage probe wraps per-record functions (its own cost): only with --profile.
            row["worker"] = self.worker_throughput(guarantee, workers=1, probe=self.args.profile)
            repeat = self.args.loop_repeat
            if not self.args.no_raw:
                row["raw"] = self.loop_throughput("raw", guarantee, repeat=repeat)
                if guarantee == "at_least_once":
                    row["raw_ack_each"] = self.loop_throughput(
                        "raw", guarantee, ("--ack-each",), repeat=1
                    )
            if not self.args.no_peer:
                row["quix"] = self.loop_throughput("quix", guarantee, repeat=repeat)
            out[guarantee] = row
        return out

    def worker_throughput(
        self,
        guarantee: str,
        workers: int,
        probe: bool = False,
        topic: str | None = None,
        **extra: str,
    ) -> dict[str, Any]:
        assert self.log is not None
        app_id = f"bench-{workers}w-{guarantee.replace('_', '-')}-{uuid.uuid4().hex[:4]}"
        env = h.worker_env(self.broker.bootstrap, app_id, topic or self.topic, guarantee, **extra)
        profile = self.args.cprofile and workers == 1
        progress(f"worker x{workers}, {guarantee}: {len(self.log):,} events")
        with h.workers(workers, env, self.run_dir, app_id, probe=probe,
                       cprofile=profile) as group:  # fmt: skip
            for worker in group:
                worker.wait_ready()
            settled = _settled(group) if workers > 1 else None
            pids = {f"worker{i + 1}": w.proc.pid for i, w in enumerate(group)}
            meter = h.CpuMeter({**pids, "broker": self.broker_pid()})
            spy = self._spy(group[0], app_id) if self.spy and workers == 1 else None
            tp = h.measure_throughput(group, len(self.log), timeout=1800, settled=settled)
            cpu = meter.stop()
            profiled = self._spy_stop(spy)
            escalations = sum(int(w.metrics().get("stepcare_escalations_total", 0)) for w in group)
        result = {
            "rate": tp.rate, "events": tp.events, "seconds": tp.seconds,
            "cpu": cpu.cores, "others": cpu.others,
            "worker_cores": sum(v for k, v in cpu.cores.items() if k.startswith("worker")),
            "worker_cpu_seconds": sum(v for k, v in cpu.used.items() if k.startswith("worker")),
            "total": tp.total, "escalations": escalations,
        }  # fmt: skip
        if probe:
            stages = json.loads(group[0].probe.read_text())
            result["stages"] = stages
        if profiled:
            result["pyspy"] = profiled
        progress(f"  {tp.rate:,.0f} events/s ({tp.events:,} in {tp.seconds:.1f} s); "
                 f"cpu: {cpu.text()}")  # fmt: skip
        return result

    # -- (b') the two wire framings (issue 15) ----------------------------------------------

    def framing(self) -> dict[str, Any]:
        """The worker at least once on the same log in each framing, back to back: the
        single-object topic, and a copy of it in registry framing (registry from
        ``streams.devtools.registry``; the worker writes its escalations in registry framing)."""
        assert self.log is not None
        from streams.devtools.registry import Registry
        from streams.kafka.registry import framing_for
        from streams.kafka.settings import Settings

        registry = Registry(self.run_dir / "registry", h.free_port(),
                            cache_dir=Settings.from_env().cache_dir, die_with_parent=True,
                            report=progress)  # fmt: skip
        url = registry.start()
        try:
            topic = f"{self.topic}.registry"
            settings = Settings(wire_format="registry", schema_registry_url=url)
            header = framing_for(settings, events_topic=topic).event_header
            self.broker.create_topic(topic)
            h.publish(self.broker.bootstrap, topic,
                      [(k, header + v[10:], t) for k, v, t in self.log.records])  # fmt: skip
            out: dict[str, Any] = {"events": len(self.log)}
            for round_ in range(2):  # alternating, twice: the machine is shared
                for name, extra in (
                    ("single-object", {}),
                    ("registry", {"topic": topic, "STEPCARE_WIRE_FORMAT": "registry",
                                  "STEPCARE_SCHEMA_REGISTRY_URL": url}),
                ):  # fmt: skip
                    progress(f"framing {name}, round {round_ + 1}")
                    result = self.worker_throughput("at_least_once", 1, **extra)  # type: ignore[arg-type]
                    out.setdefault(name, []).append(result)
            return out
        finally:
            registry.stop()

    def _spy(self, worker: h.Worker, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """py-spy (100 Hz, every thread, idle excluded) on the worker until ``_spy_stop``."""
        out = self.run_dir / f"{name}.pyspy.txt"
        progress(f"  py-spy -> {out}")
        proc = subprocess.Popen(
            [self.spy, "record", "--pid", str(worker.proc.pid), "--rate", "100",
             "--format", "raw", "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return proc, out

    def _spy_stop(self, spy: tuple[subprocess.Popen[bytes], Path] | None) -> dict[str, Any] | None:
        if spy is None:
            return None
        proc, out = spy
        proc.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not out.exists():
            progress("  py-spy wrote nothing (ptrace not permitted?)")
            return None
        return h.summarize_py_spy(out)

    def loop_throughput(
        self, kind: str, guarantee: str, extra: tuple[str, ...] = (), repeat: int = 1
    ) -> dict[str, Any]:
        """The loop ``repeat`` times (each on its own group and output topic): the median run,
        with every run's rate."""
        runs = [self.loop_once(kind, guarantee, extra) for _ in range(repeat)]
        if any("skipped" in r for r in runs):
            return runs[0]
        runs.sort(key=lambda r: r["rate"])
        median = dict(runs[len(runs) // 2])
        median["runs"] = [r["rate"] for r in runs]
        return median

    def loop_once(self, kind: str, guarantee: str, extra: tuple[str, ...]) -> dict[str, Any]:
        assert self.log is not None
        output = f"bench.{kind}.{guarantee}.{uuid.uuid4().hex[:4]}.escalations"
        self.broker.create_topic(output)
        common = [
            "--bootstrap",
            self.broker.bootstrap,
            "--input",
            self.topic,
            "--output",
            output,
            "--events",
            str(len(self.log)),
            "--guarantee",
            guarantee,
        ]
        if kind == "raw":
            command = [sys.executable, str(ROOT / "bench" / "raw_loop.py"), *common, *extra]
        else:
            if not self.args.quix_python.exists():
                progress(f"  no Quix venv at {self.args.quix_python}: peer skipped")
                return {"skipped": f"no {self.args.quix_python}"}
            state = self.run_dir / f"quix-{guarantee}"
            command = [str(self.args.quix_python), str(ROOT / "bench" / "quix_peer.py"),
                       *common, "--state-dir", str(state)]  # fmt: skip
        progress(f"{kind} loop{' ' + ' '.join(extra) if extra else ''}, {guarantee}: "
                 f"{len(self.log):,} events")  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "started": its first record arrived
            meter = h.CpuMeter({kind: proc.pid, "broker": self.broker_pid()})
            last = line
            for line in proc.stdout:
                last = line
                if line.startswith(b"{"):
                    cpu = meter.stop()  # before it exits: its /proc entry is read
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0 or not last.startswith(b"{"):
            raise RuntimeError(f"{kind} loop failed with exit status {proc.returncode}")
        answer = json.loads(last)
        seconds = answer["end"] - answer["first"]
        rate = answer["events"] / seconds
        cpu.cores[kind] = answer["cpu_seconds"] / seconds  # its own count, first to last record
        progress(f"  {rate:,.0f} events/s ({answer['events']:,} in {seconds:.1f} s, "
                 f"{answer['escalations']:,} escalations); cpu: {cpu.text()}")  # fmt: skip
        return {"rate": rate, "events": answer["events"], "seconds": seconds,
                "escalations": answer["escalations"], "cpu": cpu.cores, "others": cpu.others,
                "process_cpu_seconds": answer.get("cpu_seconds")}  # fmt: skip

    # -- (e) 1 vs 2 workers ------------------------------------------------------------------

    def scaling(self) -> dict[str, Any]:
        """1 then 2 workers, back to back (the machine's other load changes over minutes)."""
        one = self.worker_throughput("at_least_once", workers=1)
        two = self.worker_throughput("at_least_once", workers=2)
        return {"events": len(self.log or ()), "one": one, "two": two,
                "speedup": two["rate"] / one["rate"] if one["rate"] else None}  # fmt: skip

    # -- (c) latency -------------------------------------------------------------------------

    def latency(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.args.latency_seconds}
        for guarantee in GUARANTEES:
            app_id = f"bench-latency-{guarantee.replace('_', '-')}-{uuid.uuid4().hex[:4]}"
            topic = f"{app_id}.events"
            escalations = f"{app_id}.escalations"
            self.broker.create_topic(topic)
            self.broker.create_topic(escalations)
            env = h.worker_env(self.broker.bootstrap, app_id, topic, guarantee)
            runs = []
            with h.workers(1, env, self.run_dir, app_id) as group:
                group[0].wait_ready()
                for n, rate in enumerate(self.args.rates):
                    progress(f"latency, {guarantee}: {rate:,.0f} events/s for "
                             f"{self.args.latency_seconds:.0f} s")  # fmt: skip
                    meter = h.CpuMeter({"worker": group[0].proc.pid,
                                        "broker": self.broker_pid()})  # fmt: skip
                    run = paced_latency(self.broker.bootstrap, topic, escalations, rate,
                                        self.args.latency_seconds, prefix=f"l{n}")  # fmt: skip
                    cpu = meter.stop()
                    run.update({"cpu": cpu.cores, "others": cpu.others})
                    progress(
                        f"  p50 {run['p50']:.3f} s, p99 {run['p99']:.3f} s, max "
                        f"{run['max']:.3f} s; sent {run['sent_rate']:,.0f}/s; worker kept up "
                        f"at {run['processed_rate']:,.0f}/s; cpu: {cpu.text()}"
                    )
                    runs.append(run)
            out[guarantee] = runs
        return out

    # -- (d) recovery ------------------------------------------------------------------------

    def recovery(self) -> dict[str, Any]:
        patients = self.args.recovery_patients
        progress(f"recovery: a log of {patients:,} patients (ENROLLED + FACT-L baseline)")
        log = h.enrollment_log(patients, self.args.seed, offline.STUDY_START)
        app_id = f"bench-recovery-{uuid.uuid4().hex[:4]}"
        topic = f"{app_id}.events"
        self.broker.create_topic(topic)
        partitions = h.publish(self.broker.bootstrap, topic, log.records)
        env = h.worker_env(self.broker.bootstrap, app_id, topic, "at_least_once")
        build: dict[str, Any] = {"mode": self.args.recovery_build}
        if self.args.recovery_build == "worker":
            progress(f"recovery: building the table with 2 workers ({len(log):,} events)")
            with h.workers(2, env, self.run_dir, f"{app_id}-build") as group:
                for worker in group:
                    worker.wait_ready()
                meter = h.CpuMeter({"worker1": group[0].proc.pid,
                                    "worker2": group[1].proc.pid,
                                    "broker": self.broker_pid()})  # fmt: skip
                tp = h.measure_throughput(group, len(log), 7200, settled=_settled(group))
                cpu = meter.stop()
                progress(f"  built at {tp.rate:,.0f} events/s; cpu: {cpu.text()}")
            build.update({"rate": tp.rate, "cpu": cpu_dict(cpu)})
        else:
            build["check"] = self.check_changelog()
            progress(f"recovery: writing the changelog the workers would write "
                     f"({len(log):,} events through the engine)")  # fmt: skip
            started = time.monotonic()
            h.write_changelog(self.broker, app_id, topic, h.worker_changelog(log, partitions))
            build["seconds"] = time.monotonic() - started
        changelog = f"{app_id}-patients-changelog"
        records = topic_records(self.broker.bootstrap, changelog)
        progress(f"recovery: {records:,} changelog records; a new worker on an empty data dir")
        data_dir = self.run_dir / f"{app_id}-fresh.data"
        fresh = h.Worker(env, data_dir, self.run_dir / f"{app_id}-fresh.log")
        with fresh:
            meter = h.CpuMeter({"worker": fresh.proc.pid, "broker": self.broker_pid()})
            spy = None
            if self.spy:
                time.sleep(0.5)  # the interpreter is up: py-spy can attach
                spy = self._spy(fresh, f"{app_id}-fresh")
            ready = fresh.wait_ready(timeout=1800)
            cpu = meter.stop()
            profiled = self._spy_stop(spy)
            logged = fresh.log_ready_after()
            reading = (fresh.log_after("Restoring state from changelog topics"),
                       fresh.log_after("Done reading from changelog topics"))  # fmt: skip
            progress(
                f"  /ready 200 after {ready:.1f} s (faust: Worker ready after "
                f"{logged if logged is None else round(logged, 1)} s); cpu: {cpu.text()}"
            )
            tick_at = log.records[-1][2] + 60_000
            send_ticks(self.broker.bootstrap, topic, tick_at)
            loaded = wait_for(lambda: fresh.metrics().get("stepcare_patients", 0) >= patients,
                              timeout=600)  # fmt: skip
            first_event = time.time() - fresh.started
            census = int(fresh.metrics().get("stepcare_patients", 0))
            rebuilt = index_rebuild_seconds(fresh.log)
            progress(f"  all {census:,} patients indexed after {first_event:.1f} s "
                     f"(timer index rebuilt in {rebuilt:.2f} s)")  # fmt: skip
        disk = h.du_blocks(data_dir)
        apparent = h.du(data_dir)
        return {
            "patients": patients, "events": len(log), "changelog_records": records,
            "build": build, "ready_seconds": ready, "worker_ready_seconds": logged,
            "read_started": reading[0], "read_done": reading[1],
            "indexed_seconds": first_event if loaded else None, "index_rebuild_seconds": rebuilt,
            "census": census, "recovery_cpu": cpu.cores, "recovery_others": cpu.others,
            "disk_bytes": disk, "apparent_bytes": apparent,
            "bytes_per_patient": disk / patients, "apparent_per_patient": apparent / patients,
            **({"pyspy": profiled} if profiled else {}),
        }  # fmt: skip

    def check_changelog(self, patients: int = 500) -> dict[str, Any]:
        """Does the changelog written for the recovery run equal a worker's? A worker processes
        a sample log; its changelog, compacted, is compared partition by partition with ours."""
        log = h.enrollment_log(patients, self.args.seed + 1, offline.STUDY_START, prefix="c")
        app_id = f"bench-check-{uuid.uuid4().hex[:4]}"
        topic = f"{app_id}.events"
        self.broker.create_topic(topic)
        partitions = h.publish(self.broker.bootstrap, topic, log.records)
        env = h.worker_env(self.broker.bootstrap, app_id, topic, "at_least_once")
        progress(f"recovery: checking the written changelog against a worker's "
                 f"({patients} patients)")  # fmt: skip
        with h.workers(1, env, self.run_dir, app_id) as group:
            group[0].wait_ready()
            h.measure_throughput(group, len(log), 600)
        theirs = h.read_changelog(self.broker.bootstrap, f"{app_id}-patients-changelog")
        ours = h.worker_changelog(log, partitions)
        # The last record of each key per partition: what compaction keeps and recovery reads
        # (how many records a patient got depends on the worker's batches, timing-dependent).
        equal = _compacted(theirs) == _compacted(ours)
        records = sum(len(v) for v in theirs.values())
        progress(
            f"  {records:,} changelog records; "
            f"{'equal' if equal else 'DIFFERENT'} to the ones written for recovery"
        )
        if not equal:
            raise RuntimeError("the changelog written by the benchmark differs from a worker's")
        return {"patients": patients, "records": records, "equal": equal}


def _compacted(changelog: dict[int, list[tuple[bytes, bytes]]]) -> dict[int, dict[bytes, bytes]]:
    return {partition: dict(records) for partition, records in changelog.items()}


def cpu_dict(cpu: h.CpuWindow) -> dict[str, Any]:
    return {"cores": cpu.cores, "others": cpu.others}


def _find_py_spy() -> str | None:
    for candidate in (shutil.which("py-spy"), str(ROOT / ".bench-venv" / "bin" / "py-spy")):
        if candidate and Path(candidate).exists():
            return candidate
    progress("py-spy not found (.bench-venv/bin/pip install py-spy): no py-spy profile")
    return None


def _settled(group: list[h.Worker]) -> Callable[[], bool]:
    """True once every worker of the group owns partitions and is ready (after the rebalance)."""
    share = h.PARTITIONS // len(group)

    def check() -> bool:
        return all(len(h.ready_partitions(w.port) or ()) >= share for w in group)

    return check


def wait_for(condition: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return True
        time.sleep(every)
    return False


def topic_records(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            total += high - low
        return total
    finally:
        consumer.close()


def send_ticks(bootstrap: str, topic: str, at_ms: int) -> None:
    """A CLOCK_TICK on every partition: each partition's engine is then loaded (index rebuilt)."""
    value = encode_event({"event_id": "", "patient_id": "", "occurred_at": format_time(at_ms),
                          "type": "CLOCK_TICK"})  # fmt: skip
    out = h.producer(bootstrap)
    for partition in range(h.PARTITIONS):
        out.produce(topic, key=b"", value=value, partition=partition, timestamp=at_ms)
    out.flush(30)


def index_rebuild_seconds(log: Path) -> float:
    """The sum of "timer index rebuilt in X s" over the partitions in a worker's log."""
    found = re.findall(r"timer index rebuilt in ([\d.]+) s", log.read_text(errors="replace"))
    return sum(float(x) for x in found)


# -- (c) the paced publisher and the escalation reader -------------------------------------------


def paced_latency(
    bootstrap: str, topic: str, escalations: str, rate: float, seconds: float, prefix: str
) -> dict[str, Any]:
    """Publish ENROLLED events of new patients at ``rate``/s for ``seconds``; each one's
    escalation is read back (read_committed); latency = arrival - send (record timestamp)."""
    count = max(1, int(rate * seconds))
    run_id = uuid.uuid4().hex[:6]
    ids = [f"{prefix}{run_id}-{i:07d}" for i in range(count)]
    start_ms = int(time.time() * 1000)
    values = [encode_event(h.enrolled_event(pid, start_ms + int(i * 1000 / rate), f"{pid}-e"))
              for i, pid in enumerate(ids)]  # fmt: skip
    sent: dict[bytes, float] = {}
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"latency-{run_id}",
        "enable.auto.commit": False, "isolation.level": "read_committed",
        "fetch.wait.max.ms": 10, "auto.offset.reset": "latest",
    })  # fmt: skip
    metadata = consumer.list_topics(escalations, timeout=30).topics[escalations]
    ends = []
    for partition in sorted(metadata.partitions):
        _, high = consumer.get_watermark_offsets(TopicPartition(escalations, partition), 30)
        ends.append(TopicPartition(escalations, partition, high))
    consumer.assign(ends)  # only what is published from now on
    producer = h.producer(bootstrap, **{"linger.ms": 0})
    times: list[float] = []

    def publish() -> None:
        begin = time.time() + 0.2
        for i, (pid, value) in enumerate(zip(ids, values, strict=True)):
            delay = begin + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            key = pid.encode()
            sent[key] = now
            producer.produce(topic, key=key, value=value, timestamp=int(now * 1000))
            producer.poll(0)
            times.append(now)
        producer.flush(60)

    publisher = threading.Thread(target=publish, name="paced-publisher", daemon=True)
    arrivals: dict[bytes, float] = {}
    publisher.start()
    deadline = time.monotonic() + seconds + max(120.0, count / 50)
    try:
        while len(arrivals) < count and time.monotonic() < deadline:
            batch = consumer.consume(1000, 0.05)
            now = time.time()
            for msg in batch:
                if msg.error() is None:
                    arrivals.setdefault(msg.key(), now)
    finally:
        publisher.join(60)
        consumer.close()
    latencies = sorted(arrivals[k] - sent[k] for k in arrivals if k in sent)
    if not latencies:
        raise RuntimeError("no escalation came back in the latency run")
    last_arrival = max(arrivals.values())
    return {
        "rate": rate, "events": count, "received": len(latencies),
        "sent_rate": (count - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0,
        "processed_rate": len(latencies) / (last_arrival - times[0]),
        "p50": _rank(latencies, 0.50), "p99": _rank(latencies, 0.99),
        "max": latencies[-1], "mean": statistics.fmean(latencies),
        "drained_after": last_arrival - times[-1],
    }  # fmt: skip


def _rank(ordered: list[float], q: float) -> float:
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- results and the document --------------------------------------------------------------------


def save(results: dict[str, Any], env: dict[str, Any], args: argparse.Namespace) -> None:
    doc = args.output
    merged = _stored(doc)
    scenarios = merged.setdefault("scenarios", {})
    for name, value in results.items():
        scenarios[name] = value
    merged["env"] = env
    h.DATA_DIR.mkdir(parents=True, exist_ok=True)
    LAST_RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
    block = render(merged)
    if args.no_write:
        print(block)
        return
    write_doc(doc, block, merged)
    progress(f"wrote {doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc}")


def _stored(doc: Path) -> dict[str, Any]:
    """The results a previous run left in the doc (its ``bench:json`` comment), or {}."""
    if doc.exists():
        match = re.search(r"<!-- bench:json (.*?) -->", doc.read_text(), re.S)
        if match:
            return json.loads(match[1])
    return {}


def write_doc(doc: Path, block: str, merged: dict[str, Any]) -> None:
    payload = json.dumps(merged, separators=(",", ":")).replace("--", "-\\u002d")
    generated = f"{BEGIN}\n{block}\n<!-- bench:json {payload} -->\n{END}"
    if doc.exists() and BEGIN in doc.read_text():
        text = doc.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        doc.write_text(head + generated + tail)
    else:
        doc.write_text(f"# Benchmarks\n\n`make bench` (`bench/run_all.py`).\n\n{generated}\n")


def _f(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _status(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**not met**")


def render(merged: dict[str, Any]) -> str:
    s = merged["scenarios"]
    lines: list[str] = []
    add = lines.append
    env = merged["env"]
    add("## Results (generated by `bench/run_all.py`)\n")
    add(
        f"- **Machine**: {env['cpu']}, {env['cores']} cores"
        f"{' (' + env['virtualization'] + ')' if env.get('virtualization') else ''}, "
        f"{env['memory_gib']} GiB RAM; {env['os']}"
    )
    add(
        f"- **Software**: Python {env['python']}; Kafka {env['kafka']} (one KRaft node started "
        f"by the benchmark, 512 MB heap, on the same machine); faust-streaming {env['faust']}, "
        f"aiokafka {env['aiokafka']}, confluent-kafka {env['confluent_kafka']}, rocksdict "
        f"{env['rocksdict']}; peer: quixstreams {env['quixstreams']}"
    )
    add(
        f"- **Last run**: {_last_measured(s)}, {env.get('minutes', '?')} min; load average "
        f"(1 / 5 / 15 min) {env.get('loadavg_start')} at the start, "
        f"{env.get('loadavg_end')} at the end "
        "(the machine is shared: see *other processes* below)\n"
    )
    add(goals_table(s))
    if "replay" in s:
        add(replay_section(s["replay"]))
    if "throughput" in s:
        add(throughput_section(s["throughput"]))
    if "framing" in s:
        add(framing_section(s["framing"]))
    if "scaling" in s:
        add(scaling_section(s["scaling"]))
    if "latency" in s:
        add(latency_section(s["latency"]))
    if "recovery" in s:
        add(recovery_section(s["recovery"]))
    return "\n".join(lines)


def _last_measured(s: dict[str, Any]) -> str:
    return max((v.get("measured", "") for v in s.values()), default="?")


def goals_table(s: dict[str, Any]) -> str:
    rows = []
    tp = s.get("throughput")
    if tp:
        for guarantee in GUARANTEES:
            row = tp.get(guarantee, {})
            worker = row.get("worker", {}).get("rate")
            raw = row.get("raw", {}).get("rate")
            quix = row.get("quix", {}).get("rate")
            label = "at least once" if guarantee == "at_least_once" else "exactly once"
            cpu = {k: _cpu_ms(row.get(k)) for k in ("worker", "raw", "quix")}
            if worker and raw:
                share = worker / raw
                goal = f"≥ {GOAL_RAW_SHARE:.0%} of raw" if guarantee == "at_least_once" else "—"
                met = share >= GOAL_RAW_SHARE if guarantee == "at_least_once" else None
                per_cpu = (
                    (
                        f"; per CPU: {cpu['raw'] / cpu['worker']:.1%} ({cpu['worker']:.2f} "
                        f"vs {cpu['raw']:.2f} ms/event)"
                    )
                    if cpu["worker"] and cpu["raw"]
                    else ""
                )
                rows.append((f"Worker vs raw loop, {label}",
                             f"{share:.1%} ({_f(worker)} vs {_f(raw)} events/s{per_cpu})", goal,
                             _status(met)))  # fmt: skip
            if worker and quix:
                per_cpu = (
                    (
                        f"; per CPU: {cpu['quix'] / cpu['worker']:.2f}x ({cpu['worker']:.2f} "
                        f"vs {cpu['quix']:.2f} ms/event)"
                    )
                    if cpu["worker"] and cpu["quix"]
                    else ""
                )
                cheaper = (
                    cpu["worker"] is not None
                    and cpu["quix"] is not None
                    and (cpu["worker"] <= cpu["quix"])
                )
                rows.append((f"Worker vs Quix Streams peer, {label}",
                             f"{worker / quix:.2f}x ({_f(worker)} vs {_f(quix)} events/s"
                             f"{per_cpu})", "≥ 1x events/s and ≤ its CPU per event",
                             _status(worker >= quix and cheaper)))  # fmt: skip
        replayed = tp.get("at_least_once", {}).get("worker", {})
        offline = (s.get("replay") or {}).get("cli_rate")  # `stepcare replay`, end to end
        if replayed.get("rate") and offline:
            # The throughput run is `worker --replay` in all but name: the replay cohort from
            # the start of its topic, a new consumer group, the event clock.
            events = replayed["events"]
            ratio = (events / replayed["rate"]) / (events / offline)
            rows.append((f"`worker --replay` of {events:,} events vs offline replay",
                         f"{ratio:.1f}x the time ({events / replayed['rate']:.1f} s vs "
                         f"{events / offline:.1f} s)", f"≤ {GOAL_REPLAY_RUN_RATIO:g}x",
                         _status(ratio <= GOAL_REPLAY_RUN_RATIO)))  # fmt: skip
    lat = s.get("latency")
    if lat:
        for guarantee, limit in (("at_least_once", GOAL_P99_ALO), ("exactly_once", GOAL_P99_EOS)):
            for run in lat.get(guarantee, []):
                if run["rate"] in GOAL_LATENCY_RATES:
                    label = "at least once" if guarantee == "at_least_once" else "exactly once"
                    rows.append((f"p99 latency at {run['rate']:,.0f} events/s, {label}",
                                 f"{run['p99']:.2f} s (p50 {run['p50']:.2f} s)",
                                 f"≤ {limit:g} s", _status(run["p99"] <= limit)))  # fmt: skip
    rec = s.get("recovery")
    if rec:
        rows.append((f"Recovery of {rec['patients']:,} patients (new worker, empty data dir)",
                     f"{rec['ready_seconds']:.1f} s to /ready",
                     f"≤ {GOAL_RECOVERY_S:g} s",
                     _status(rec["ready_seconds"] <= GOAL_RECOVERY_S)))  # fmt: skip
    rep = s.get("replay")
    if rep:
        rows = _replay_goals(rep) + rows
    out = ["### Goals\n", "| Goal | Measured | Target | Status |", "|---|---|---|---|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _cpu_ms(r: dict[str, Any] | None) -> float | None:
    """CPU ms per event of a throughput row (the pipeline's own process)."""
    if not r or "rate" not in r:
        return None
    if "worker_cpu_seconds" in r:
        return r["worker_cpu_seconds"] / r["total"] * 1000
    if r.get("process_cpu_seconds"):
        return r["process_cpu_seconds"] / r["events"] * 1000
    return None


def _replay_goals(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    goal = offline.GOAL_EVENTS_PER_SECOND
    rows = [(f"Offline replay, one core (in-process; CLI {_f(r['cli_rate'])} events/s)",
             f"{_f(r['in_process_rate'])} events/s", f"≥ {goal:,} events/s",
             _status(r["in_process_rate"] >= goal))]  # fmt: skip
    if r.get("jobs_ok") and r.get("jobs_many_seconds"):
        one, many = min(r["jobs_one_seconds"]), min(r["jobs_many_seconds"])
        target = offline.GOAL_JOBS_SPEEDUP
        rows.append((f"`replay --jobs {r['jobs']}` over `--jobs 1` (CLI, best of each)",
                     f"{one / many:.2f}x ({_f(r['events'] / one)} events/s with one job, "
                     f"{_f(r['events'] / many)} with {r['jobs']})", f"≥ {target:g}x",
                     _status(one / many >= target)))  # fmt: skip
    return rows


def _replay_jobs_rows(r: dict[str, Any]) -> list[str]:
    if "jobs_one_seconds" not in r:
        return []
    if not r.get("jobs_ok"):
        return [f"| `stepcare replay --jobs {r['jobs']}` | failed |"]
    rows = []
    for label, seconds in (("1", r["jobs_one_seconds"]), (str(r["jobs"]), r["jobs_many_seconds"])):
        rates = ", ".join(f"{_f(r['events'] / x)}" for x in seconds)
        rows.append(f"| `stepcare replay --jobs {label}` CLI, each round | {rates} events/s "
                    f"({', '.join(f'{x:.1f}' for x in seconds)} s) |")  # fmt: skip
    return rows


def replay_section(r: dict[str, Any]) -> str:
    return "\n".join([
        f"### (a) Offline replay ({r['measured']})\n",
        f"`bench/replay.py`'s seeded cohort (seed {r['seed']}): {r['events']:,} events, "
        f"{r['patients']:,} patients, {r['escalations']:,} escalations; one core (the "
        "`--jobs` rows: that many processes, alternating rounds on a shared machine).\n",
        "| Measure | Value |", "|---|---|",
        f"| In-process `streams.analysis.replay.replay` | {_f(r['in_process_rate'])} events/s "
        f"({r['in_process_seconds']:.1f} s) |",
        f"| `stepcare replay` CLI end to end | {_f(r['cli_rate'])} events/s "
        f"({r['cli_seconds']:.1f} s, start-up included) |",
        *_replay_jobs_rows(r),
        f"| State bytes per patient, all | {r['state_all']} |",
        f"| State bytes per patient, monitored | {r['state_monitored']} |",
        "",
    ])  # fmt: skip


def _cores(cpu: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in cpu.items() if k.startswith(prefix))


def framing_section(f: dict[str, Any]) -> str:
    """The worker in each wire framing (issue 15: the registry framing within 10%)."""
    out = [
        f"### (b') The two wire framings ({f['measured']})\n",
        f"The worker, at least once, on the throughput log ({f['events']:,} events) in each "
        "framing, alternating, two rounds each: the single-object topic, and a copy of it in "
        "registry framing (Apicurio Registry on loopback; the worker writes its escalations in "
        "registry framing too). CPU per record: the worker's CPU seconds over the events. "
        "`bench/framing.py` measures the codec work alone.\n",
        "| Framing | events/s (each round) | CPU per record (each round) | escalations |",
        "|---|---|---|---|",
    ]
    best: dict[str, float] = {}
    for name in ("single-object", "registry"):
        runs = f.get(name, [])
        rates = [r["rate"] for r in runs]
        cpu = [r["worker_cpu_seconds"] / max(1, r["events"]) * 1e3 for r in runs]
        best[name] = min(cpu) if cpu else 0.0
        sent = " / ".join(_f(r["escalations"]) for r in runs)
        out.append(f"| {name} | {' / '.join(_f(x) for x in rates)} | "
                   f"{' / '.join(f'{x:.3f} ms' for x in cpu)} | {sent} |")  # fmt: skip
    if best.get("single-object"):
        ratio = best["registry"] / best["single-object"]
        out.append(f"\nRegistry over single-object, best CPU per record of each: **{ratio:.2f}x** "
                   f"(goal ≤ 1.10x: {'met' if ratio <= 1.10 else 'not met'}).\n")  # fmt: skip
    return "\n".join(out)


def throughput_section(t: dict[str, Any]) -> str:
    out = [
        f"### (b, f) Throughput through the broker ({t['measured']})\n",
        f"{t['events']:,} events of {t['patients']:,} patients (`bench/replay.py`'s cohort, "
        "every event type, ~2% duplicates) pre-published to a 4-partition topic; each pipeline "
        "reads it from the start with its own consumer group. Events/s from the first record "
        "processed to the last (start-up and recovery excluded); the loops are short, so each "
        "ran several times: the median, with every run's rate in brackets. CPU: average cores "
        "used during the measurement by the pipeline's process, the broker, and every other "
        "process on the machine (not ours). The peer publishes fewer escalations: it has no "
        "partition clock, so no overdue timers fire.\n",
        "| Pipeline | Guarantee | Events/s | Seconds | ÷ raw | Escalations | CPU: pipeline "
        "/ broker / other processes | Pipeline CPU ms per event |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"worker": "`stepcare worker` (faust)", "raw": "raw confluent-kafka loop",
             "raw_ack_each": "raw loop, acks awaited per record (the worker's order)",
             "quix": "Quix Streams peer"}  # fmt: skip
    for guarantee in GUARANTEES:
        row = t.get(guarantee, {})
        raw = row.get("raw", {}).get("rate")
        for kind in ("worker", "raw", "raw_ack_each", "quix"):
            r = row.get(kind)
            if not r or "rate" not in r:
                continue
            if kind == "worker":  # its CPU while measured, every event it processed
                cores = r["worker_cpu_seconds"] / r["seconds"]
            else:  # the loop's own count, first record to last
                cores = r["process_cpu_seconds"] / r["seconds"]
            ms = _cpu_ms(r) or 0.0
            ratio = f"{r['rate'] / raw:.1%}" if raw else "—"
            escalations = _f(r.get("escalations"))
            runs = r.get("runs") or []
            spread = f" ({' / '.join(_f(x) for x in runs)})" if len(runs) > 1 else ""
            out.append(
                f"| {names[kind]} | {guarantee.replace('_', ' ')} | {_f(r['rate'])}{spread} | "
                f"{r['seconds']:.1f} | {ratio} | {escalations} | {cores:.2f} / "
                f"{r['cpu'].get('broker', 0):.2f} / {r['others']:.2f} | {ms:.2f} |"
            )
    out.append("")
    stages = {g: t.get(g, {}).get("worker", {}).get("stages") for g in GUARANTEES}
    if any(stages.values()):
        out.append(stage_table(stages))
    spied = {g.replace("_", " "): t.get(g, {}).get("worker", {}).get("pyspy") for g in GUARANTEES}
    if any(spied.values()):
        out.append(pyspy_table(spied, "the worker during the throughput runs"))
    return "\n".join(out)


def pyspy_table(profiles: dict[str, Any], during: str) -> str:
    """Shares of py-spy samples by category (innermost frame), per profile."""
    profiles = {k: v for k, v in profiles.items() if v}
    names: list[str] = []
    for data in profiles.values():
        names += [name for name, _ in data["categories"] if name not in names]
    out = [f"Where {during} spends its samples (py-spy, 100 Hz, every thread, idle threads "
           "excluded; a C call counts in its Python caller):\n",
           "| Innermost frame | " + " | ".join(profiles) + " |",
           "|---|" + "---|" * len(profiles)]  # fmt: skip
    for name in names:
        cells = [f"{dict(data['categories']).get(name, 0):.0%}" for data in profiles.values()]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{data['in_handle']:.0%}" for data in profiles.values()]
    out.append("| *inside `Monitor.handle` (with what it calls)* | " + " | ".join(cells) + " |")
    cells = [f"{data['samples']:,}" for data in profiles.values()]
    out.append("| *samples* | " + " | ".join(cells) + " |")
    out.append("")
    for label, data in profiles.items():
        top = "; ".join(f"`{name}` {share:.0%}" for name, share in data["top"][:8])
        out.append(f"Top functions by own samples, {label}: {top}.\n")
    return "\n".join(out)


STAGE_NAMES = {
    "decode": "decode + validate (Avro SOE, `event_from_json`)",
    "engine": "engine (`PartitionEngine.process`, incl. state reads)",
    "publish": "publish escalations (encode, send)",
    "acks": "wait for the batch's acks (once per batch)",
    "store": "write changed states once per batch (`encode_state`, RocksDB, changelog send)",
    "rest": "rest of `handle_batch` (key checks, census, counters, acks to faust)",
    "between": "between batches (faust fetch, `take_batches` linger, commits, idle)",
}


def stage_table(stages: dict[str, Any]) -> str:
    out = ["Where the worker's wall time goes (`bench/probe.py`, per record, ms):\n",
           "| Stage | " + " | ".join(g.replace("_", " ") for g in stages if stages[g]) + " |",
           "|---|" + "---|" * sum(1 for g in stages if stages[g])]  # fmt: skip
    for stage, label in STAGE_NAMES.items():
        cells = []
        for data in stages.values():
            if not data:
                continue
            seconds = data["seconds"]
            total = sum(seconds.get(k, 0.0) for k in STAGE_NAMES) or 1.0
            per = seconds.get(stage, 0.0) / max(1, data["records"]) * 1000
            cells.append(f"{per:.2f} ({seconds.get(stage, 0.0) / total:.0%})")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = []
    for data in stages.values():
        if data:
            batches = data.get("escalation_batches") or 1
            cells.append(f"{data['seconds']['publish'] / batches * 1000:.2f} ms x "
                         f"{data['escalation_batches']:,}")  # fmt: skip
    out.append(
        "| per record with escalations: publish time x records | " + " | ".join(cells) + " |"
    )
    cells = []
    for data in stages.values():
        if data:
            commits = data.get("counts_commits", data.get("commits", 0))
            seconds = data["seconds"].get("commits", 0.0)
            cells.append(f"{seconds:.1f} s in {commits:,} commits "
                         f"({seconds / commits * 1000 if commits else 0:.0f} ms each)")  # fmt: skip
    out.append("| faust offset commits (beside the agent: overlaps the stages) | "
               + " | ".join(cells) + " |")  # fmt: skip
    cells = []
    for data in stages.values():
        if data:
            requests = data.get("produce_requests", 0)
            cells.append(f"{requests / max(1, data['records']):.2f} ({requests:,})")
    out.append("| aiokafka produce requests per record (total) | " + " | ".join(cells) + " |")
    cells = []
    for data in stages.values():
        if data:
            cells.append(f"{data['cpu_seconds'] / max(1, data['records']) * 1000:.2f}")
    out.append("| worker CPU ms per record (whole process, start-up included) | "
               + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def scaling_section(r: dict[str, Any]) -> str:
    one, two = r["one"], r["two"]
    return "\n".join([
        f"### (e) 1 vs 2 workers on 4 partitions, at least once ({r['measured']})\n",
        f"The same {r['events']:,}-event log, 1 worker then 2 workers of one deployment, back "
        "to back; with 2 workers the clock starts once both own their 2 partitions (after the "
        "rebalance). Two cores hold the broker, the workers and the other processes: compare "
        "the CPU columns before reading the ratio.\n",
        "| Workers | Events/s | CPU: workers / broker / other processes |", "|---|---|---|",
        f"| 1 | {_f(one['rate'])} | {one.get('worker_cores', 0):.2f} / "
        f"{one['cpu'].get('broker', 0):.2f} / {one['others']:.2f} |",
        f"| 2 | {_f(two['rate'])} ({r['speedup']:.2f}x) | {two.get('worker_cores', 0):.2f} / "
        f"{two['cpu'].get('broker', 0):.2f} / {two['others']:.2f} |",
        "",
    ])  # fmt: skip


def latency_section(r: dict[str, Any]) -> str:
    out = [
        f"### (c) End-to-end latency ({r['measured']})\n",
        f"ENROLLED events of new patients (one escalation each) published for "
        f"{r['seconds']:g} s per rate, record timestamp = send time; escalations read with "
        "`read_committed`; latency = arrival - send, matched by patient id. *Kept up at*: "
        "escalations received ÷ time from the first send to the last arrival.\n",
        "| Guarantee | Target rate | Sent at | Events | p50 | p99 | max | Kept up at | Last "
        "arrival after last send | CPU: worker / broker / other processes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for guarantee in GUARANTEES:
        for run in r.get(guarantee, []):
            out.append(
                f"| {guarantee.replace('_', ' ')} | {_f(run['rate'])}/s | "
                f"{_f(run['sent_rate'])}/s | {run['received']:,} of {run['events']:,} | "
                f"{run['p50']:.3f} s | {run['p99']:.3f} s | {run['max']:.3f} s | "
                f"{_f(run['processed_rate'])}/s | {run['drained_after']:.1f} s | "
                f"{run['cpu'].get('worker', 0):.2f} / {run['cpu'].get('broker', 0):.2f} / "
                f"{run['others']:.2f} |"
            )
    return "\n".join(out) + "\n"


def _reading_row(r: dict[str, Any]) -> str:
    start, done = r.get("read_started"), r.get("read_done")
    if start is None or done is None:
        return "| Reading the changelog (faust's log) | n/a |"
    seconds = done - start
    return (
        f'| of which reading the changelog (faust: "Restoring state" to "Done reading") | '
        f"{seconds:.1f} s, from {start:.1f} s: {r['changelog_records'] / seconds:,.0f} "
        "records/s |"
    )


def recovery_section(r: dict[str, Any]) -> str:
    build = r["build"]
    logged = r.get("worker_ready_seconds")
    if build["mode"] == "worker":
        how = (
            f"processed by two workers (at least once) at {_f(build['rate'])} events/s (CPU: "
            f"workers {_cores(build['cpu']['cores'], 'worker'):.2f}, broker "
            f"{build['cpu']['cores'].get('broker', 0):.2f}, other processes "
            f"{build['cpu']['others']:.2f}); both stopped"
        )
    else:
        check = build["check"]
        how = (
            "run by the benchmark through the worker's own `Monitor.handle` (in-process, a table "
            "that records its writes, topics that acknowledge at once), whose table writes it "
            "wrote to the changelog as faust would (checked equal, partition by partition, to "
            f"a real worker's changelog for a {check['patients']}-patient sample: "
            f"{check['records']:,} records), committing the input offsets "
            "(`--recovery-build worker` has two workers process the log instead)"
        )
    return "\n".join([
        f"### (d) Changelog recovery ({r['measured']})\n",
        f"{r['patients']:,} patients (ENROLLED, then a FACT-L baseline 30 min later: "
        f"{r['events']:,} events) {how}; {r['changelog_records']:,} records in the changelog. "
        "Then a new worker on an empty data dir.\n",
        "| Measure | Value |", "|---|---|",
        f"| Start to `/ready` 200 (changelog read into RocksDB) | {r['ready_seconds']:.1f} s |",
        f"| Start to faust's \"Worker ready\" | "
        f"{'n/a' if logged is None else f'{logged:.1f} s'} |",
        _reading_row(r),
        f"| Start to every patient indexed (first event per partition; index rebuild "
        f"{r['index_rebuild_seconds']:.2f} s) | {_f(r['indexed_seconds'], 1)} s |",
        f"| CPU while recovering: worker / broker / other processes | "
        f"{r['recovery_cpu'].get('worker', 0):.2f} / {r['recovery_cpu'].get('broker', 0):.2f} "
        f"/ {r['recovery_others']:.2f} |",
        f"| RocksDB on disk after stop (du, blocks) | {r['disk_bytes'] / 1e6:,.1f} MB = "
        f"{r['bytes_per_patient']:,.0f} B per patient |",
        f"| RocksDB apparent size (du -b) | {r['apparent_bytes'] / 1e6:,.1f} MB = "
        f"{r['apparent_per_patient']:,.0f} B per patient |",
        f"| Patients in the recovered worker's census | {r['census']:,} |",
        "",
        pyspy_table({"recovery": r["pyspy"]}, "the new worker from its start to /ready")
        if r.get("pyspy") else "",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
