"""aiokafka's expected, retried messages of a clean start are lowered to INFO before the first
join of the group, and only those (streams/worker/runner.py ``ExpectedAtStart``)."""

from __future__ import annotations

import logging

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError, RequestTimedOutError

from streams.worker.runner import ExpectedAtStart, demote_expected_messages

COORDINATOR = "Group Coordinator Request failed: %s"
DEAD = "Marking the coordinator dead (node %s)for group %s."
JOINED = "Joined group '%s' (generation %s) with member_id %s"


def record(level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(ExpectedAtStart.LOGGER, level, "f.py", 1, msg, args, None)


def levels(records: list[logging.LogRecord]) -> list[str]:
    expected = ExpectedAtStart()
    for one in records:
        assert expected.filter(one) is True  # never dropped
    return [one.levelname for one in records]


def test_the_two_start_messages_are_info_until_the_group_is_joined_then_keep_their_level() -> None:
    start = [
        record(logging.ERROR, COORDINATOR, GroupCoordinatorNotAvailableError()),
        record(logging.WARNING, DEAD, 1, "stepcare"),
        record(logging.INFO, JOINED, "stepcare", 1, "m"),
        record(logging.ERROR, COORDINATOR, GroupCoordinatorNotAvailableError()),
        record(logging.WARNING, DEAD, 1, "stepcare"),
    ]
    assert levels(start) == ["INFO", "INFO", "INFO", "ERROR", "WARNING"]


@pytest.mark.parametrize(
    "other",
    [
        record(logging.ERROR, COORDINATOR, RequestTimedOutError()),  # another error
        record(logging.ERROR, "Heartbeat session expired - marking coordinator dead"),
        record(logging.WARNING, "Heartbeat failed for group %s", "stepcare"),
    ],
)
def test_every_other_message_keeps_its_level(other: logging.LogRecord) -> None:
    level = other.levelname
    assert levels([other]) == [level]


def test_the_filter_is_installed_once() -> None:
    logger = logging.getLogger(ExpectedAtStart.LOGGER)
    demote_expected_messages()
    demote_expected_messages()
    assert sum(isinstance(f, ExpectedAtStart) for f in logger.filters) == 1
