"""Micro-benchmark of ``streams.clinical.events.parse_time``, the offline replay's per-line time
parser.

Run it from the project root (a command, never a test)::

    .venv/bin/python bench/parse_time.py                  # this tree
    .venv/bin/python bench/parse_time.py --against 031424e  # and streams/clinical/events.py of a
    commit

It times 10,000 seeded stamps of each common shape (whole seconds and milliseconds, UTC),
best of 9 repeats, alternating this tree and the other commit so that both see the same load.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from streams.clinical.events import format_time, parse_time


def _parser_of(rev: str) -> Callable[[object], int]:
    source = subprocess.run(
        ["git", "show", f"{rev}:streams/clinical/events.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "events_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("events_at_rev", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["events_at_rev"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.parse_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--against", metavar="REV", help="also time streams/clinical/events.py of REV"
    )
    args = parser.parse_args()
    rnd = random.Random(7)
    start = 1_704_067_200_000  # 2024-01-01
    shapes = {
        "whole seconds, Z": [format_time(start + rnd.randrange(730 * 86400) * 1000)
                             for _ in range(10_000)],
        "milliseconds, Z": [format_time(start + rnd.randrange(730 * 86_400_000) | 1)
                            for _ in range(10_000)],
    }  # fmt: skip
    parsers = {"this tree": parse_time}
    if args.against:
        parsers[args.against] = _parser_of(args.against)
    for shape, stamps in shapes.items():
        for parse in parsers.values():
            assert [parse(s) for s in stamps] == [parse_time(s) for s in stamps]
        best = dict.fromkeys(parsers, float("inf"))
        for _ in range(9):
            for name, parse in parsers.items():
                seconds = timeit.timeit(lambda p=parse, ss=stamps: [p(s) for s in ss], number=5)
                best[name] = min(best[name], seconds / (5 * len(stamps)))
        for name, seconds in best.items():
            print(f"{shape:17} {name:10} {seconds * 1e9:6.0f} ns/stamp")


if __name__ == "__main__":
    main()
