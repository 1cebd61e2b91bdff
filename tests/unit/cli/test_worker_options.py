"""`stepcare worker` options checked before anything is made: --until-caught-up, --web-port."""

from __future__ import annotations

import pytest

from streams.cli import main
from streams.cli.worker import progress_text


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--until-caught-up"], "--until-caught-up needs --replay RUN"),
        (["--replay", "r1", "--web-port", "x"], "--web-port must be a port number"),
        (["--web-port", "65536"], "--web-port must be a port number"),
        (["--web-port", "-1"], "--web-port must be a port number"),
    ],
)
def test_bad_worker_options_exit_2_with_one_line(
    args: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["worker", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"stepcare: {reason}") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("done", "rate", "share", "text"),
    [
        (0, 0.0, 0.0, "replay   0.0% 0/200,000 records (0/s, ETA ?)"),
        (50_000, 2_500.0, 0.25, "replay  25.0% 50,000/200,000 records (2,500/s, ETA 1:00)"),
        (1_000, 0.25, 0.005, "replay   0.5% 1,000/200,000 records (0/s, ETA 221:06:40)"),
        (200_000, 3_000.0, 1.0, "replay 100.0% 200,000/200,000 records (3,000/s, ETA 0:00)"),
    ],
)
def test_the_progress_line_says_records_done_of_total_rate_and_time_left(
    done: int, rate: float, share: float, text: str
) -> None:
    assert progress_text(200_000, done, rate, share) == text
