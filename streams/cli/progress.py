"""What a command tells the user on stderr while it runs: a progress line, and report lines."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

TTY_PROGRESS_EVERY = 0.25  # seconds between redraws of the progress line on a terminal
PLAIN_PROGRESS_EVERY = 10.0  # seconds between progress lines in a log file or a pipe

# (count so far, count per second, share of the input done or None) -> the progress text
ProgressText = Callable[[int, float, float | None], str]


class Progress:
    """Progress of a long run on stderr: a redrawn line on a terminal, a plain line every 10 s
    otherwise (a log file, a pipe).

    ``update(count, position)`` is called as often as the run likes and draws at most at that
    pace; ``position`` out of ``total`` (bytes of the input, say) gives the share done.
    ``clear()`` erases the line (terminal only) before anything else is written to stderr.
    """

    def __init__(
        self,
        text: ProgressText,
        *,
        stream: IO[str] | None = None,
        total: int | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.text = text
        self.stream = sys.stderr if stream is None else stream
        self.total = total or None
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = TTY_PROGRESS_EVERY if self.tty else PLAIN_PROGRESS_EVERY
        self.clock = clock
        self.started = clock()
        self.next = self.started + self.every
        self.drawn = False

    def update(self, count: int, position: int | None = None) -> None:
        now = self.clock()
        if now < self.next:
            return
        self.next = now + self.every
        rate = count / (now - self.started) if now > self.started else 0.0
        share = position / self.total if self.total and position is not None else None
        text = self.text(count, rate, share)
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the progress line (terminal only) before the summary is written."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def report(message: str) -> None:
    """One line on stderr, flushed at once."""
    print(message, file=sys.stderr, flush=True)
