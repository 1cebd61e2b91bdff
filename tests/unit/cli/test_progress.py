"""The progress line of long commands (``streams.cli.progress``), with a fake clock."""

from __future__ import annotations

import io

from streams.cli import publish, replay
from streams.cli.progress import Progress


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_on_a_terminal_redraws_one_line_a_few_times_a_second() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(publish.progress_text, stream=out, total=1000, tty=True, clock=clock)

    progress.update(10, 100)
    clock.now += 0.1
    progress.update(20, 200)
    assert out.getvalue() == ""  # too soon
    clock.now += 0.15
    progress.update(50, 250)
    assert out.getvalue() == "\rpublished 50 events, 200 events/s, 25% of the log\x1b[K"
    progress.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_progress_in_a_log_is_a_plain_line_every_ten_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(publish.progress_text, stream=out, total=None, tty=False, clock=clock)

    clock.now += 9
    progress.update(90, 0)
    clock.now += 1
    progress.update(100, 0)
    clock.now += 5
    progress.update(150, 0)
    progress.clear()
    assert out.getvalue() == "published 100 events, 10 events/s\n"


def test_the_replay_progress_counts_events_read() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(replay.progress_text, stream=out, tty=False, clock=clock)

    clock.now += 10
    progress.update(16_384)
    assert out.getvalue() == "... 16,384 events read (1,638/s)\n"
