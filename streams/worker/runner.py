"""Runs the worker in this process (:func:`run`). The local RocksDB tables are dropped first
when they cannot be trusted (after an unclean stop, or ahead of the changelog), and a clean stop
is marked in the data dir."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path

import faust
from confluent_kafka import Consumer, KafkaException, TopicPartition
from faust.exceptions import ConsistencyError

from streams.kafka.client import error_text
from streams.kafka.settings import Settings
from streams.worker.states import TABLE

log = logging.getLogger("stepcare.worker")


class _Worker(faust.Worker):
    def _shutdown_loop(self) -> None:
        # Stopping on SIGTERM cancels the agents; faust can record that as the agent's crash
        # (seen with exactly_once), which would make a clean stop exit with status 1.
        if self._signal_stop_time and isinstance(self.crash_reason, asyncio.CancelledError):
            self.crash_reason = None
        super()._shutdown_loop()


# Libraries that log whole records at DEBUG (keys are patient ids; values are events, states
# and escalations): they stay at INFO whatever STEPCARE_LOG_LEVEL says, which sets the level of
# stepcare's own loggers only. No patient-level data ever reaches the worker's log.
QUIET_LIBRARIES = ("aiokafka", "faust", "mode", "kafka", "confluent_kafka", "rocksdict")


class ExpectedAtStart(logging.Filter):
    """On aiokafka's group coordinator logger: lowers to INFO the two messages it logs at a
    clean start, before the worker first joins its consumer group, for what is expected there
    and retried by aiokafka itself:

    - ``[ERROR] Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError``:
      the group's coordinator is still being set up (on a fresh broker, ``__consumer_offsets``
      is created on first use); aiokafka asks again after its backoff;
    - ``[WARNING] Marking the coordinator dead (node N)for group G.``: the first JoinGroup
      answered that the coordinator is not ready yet (``NOT_COORDINATOR`` or
      ``COORDINATOR_NOT_AVAILABLE``); aiokafka looks it up again and joins.

    Once ``Joined group`` is logged, both keep their level (after a join they mean a coordinator
    lost), as every other message of the logger always does."""

    LOGGER = "aiokafka.consumer.group_coordinator"

    def __init__(self) -> None:
        super().__init__()
        self.joined = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "Joined group '%s' (generation %s) with member_id %s":
            self.joined = True
        elif record.levelno > logging.INFO and not self.joined and self._expected(record):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True

    @staticmethod
    def _expected(record: logging.LogRecord) -> bool:
        from aiokafka.errors import GroupCoordinatorNotAvailableError

        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "Group Coordinator Request failed: %s":
            return len(args) == 1 and isinstance(args[0], GroupCoordinatorNotAvailableError)
        return record.msg == "Marking the coordinator dead (node %s)for group %s."


def demote_expected_messages() -> None:
    """Install :class:`ExpectedAtStart` on aiokafka's group coordinator logger (idempotent)."""
    logger = logging.getLogger(ExpectedAtStart.LOGGER)
    if not any(isinstance(f, ExpectedAtStart) for f in logger.filters):
        logger.addFilter(ExpectedAtStart())


CLEAN_STOP = "clean-stop"  # in the data dir while no worker runs on it after a clean stop


def tables_dir(data_dir: Path) -> Path:
    """Where faust keeps the worker's RocksDB tables: <datadir>/v<app version>/tables."""
    return data_dir / "v1" / "tables"


def forget_unclean_state(data_dir: Path) -> bool:
    """After a crash, drop the local RocksDB tables so the state comes from the changelog.

    RocksDB is written at once while the changelog records are still in the producer's buffer:
    a worker killed in between leaves local states the changelog never got. Restarted on them,
    it would ignore the redelivered events as duplicates and never write those states.
    """
    marker = data_dir / CLEAN_STOP
    tables = tables_dir(data_dir)
    dropped = tables.exists() and not marker.exists()
    if dropped:
        shutil.rmtree(tables)
        log.warning("the last worker on %s did not stop cleanly: its tables are recovered "
                    "from the changelog", data_dir)  # fmt: skip
    marker.unlink(missing_ok=True)
    return dropped


_TABLE_DB = re.compile(rf"{TABLE}-(\d+)\.db")


def forget_stale_tables(settings: Settings) -> bool:
    """Drop the local RocksDB tables if they remember more of the changelog than it holds.

    That is a broker whose storage was reset (or a changelog topic deleted and made again)
    while this data dir kept its tables: faust would stop the worker with a ConsistencyError
    ("persisted offset ... higher than the last offset in that topic"). The changelog is the
    reference: the tables are dropped and recovered from it, as after an unclean stop.
    """
    tables = tables_dir(settings.data_dir)
    persisted = {}
    for path in sorted(tables.glob(f"{TABLE}-*.db")) if tables.is_dir() else ():
        match = _TABLE_DB.fullmatch(path.name)
        offset = _persisted_offset(path) if match else None
        if offset is not None:
            persisted[int(match.group(1))] = offset
    if not persisted:
        return False
    changelog = f"{settings.app_id}-{TABLE}-changelog"
    try:
        ends = _end_offsets(settings, changelog, sorted(persisted))
    except KafkaException as exc:  # faust's own check still stops a worker on stale tables
        log.warning("changelog offsets not checked: %s", error_text(exc))
        return False
    stale = sorted(p for p, offset in persisted.items() if offset >= ends.get(p, 0))
    if not stale:
        return False
    shutil.rmtree(tables)
    log.warning("the local tables of %s remember changelog records the broker does not have "
                "(%s partition %d: offset %d, end %d; was the broker's storage reset?): they "
                "are dropped and recovered from the changelog", settings.data_dir, changelog,
                stale[0], persisted[stale[0]], ends.get(stale[0], 0))  # fmt: skip
    return True


def _persisted_offset(path: Path) -> int | None:
    """The changelog offset faust recorded in one partition's RocksDB (None if unknown)."""
    from faust.stores.rocksdb import RocksDBOptions, Store

    try:
        db = RocksDBOptions().open(path)
    except Exception as exc:  # locked by a running worker, or damaged: faust will say so
        log.warning("cannot read %s: %s", path, exc)
        return None
    try:
        value = db.get(Store.offset_key)
        return int(value) if value is not None else None
    except ValueError:
        return None
    finally:
        db.close()


def _end_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """The end offset of each partition of ``topic`` (none of a topic that does not exist)."""
    consumer = Consumer({**settings.confluent_config(), "group.id": f"{settings.app_id}-check",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
            if p in metadata.partitions
        }
    finally:
        consumer.close()


def run(app: faust.App, settings: Settings) -> int:
    """Run the worker in this process until SIGTERM/SIGINT; the exit status of the worker."""
    forget_unclean_state(settings.data_dir)
    if settings.store.startswith("rocksdb://"):
        forget_stale_tables(settings)
    quiet = {name: {"level": "INFO"} for name in QUIET_LIBRARIES}
    demote_expected_messages()
    worker = _Worker(
        app,
        loglevel=settings.log_level.upper(),
        quiet=True,
        logging_config={"merge": True, "loggers": quiet},
    )
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        status = int(exc.code or 0)
    else:
        status = 0
    crashed = [getattr(service, "crash_reason", None) for service in (worker, app)]
    if any(isinstance(reason, ConsistencyError) for reason in crashed):
        # Stale tables forget_stale_tables could not see (no answer from the broker then).
        shutil.rmtree(tables_dir(settings.data_dir), ignore_errors=True)
        log.error("the local tables remembered changelog records the broker does not have: "
                  "they are dropped; start the worker again to recover them from the "
                  "changelog")  # fmt: skip
    if status == 0:
        (settings.data_dir / CLEAN_STOP).touch()
    return status
