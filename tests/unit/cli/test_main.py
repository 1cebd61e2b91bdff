"""The ``stepcare`` parser: ``--version``, and every command's help fits in a screen."""

from __future__ import annotations

import argparse
import importlib.metadata

import pytest

from streams.cli import main
from streams.cli.main import COMMANDS, build_parser

SCREEN_LINES = 60


def test_version_prints_the_installed_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"stepcare {importlib.metadata.version('stepcare')}\n"


def test_version_without_an_installed_distribution_still_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("stepcare ") and "not installed" in out and out.count("\n") == 1


def _commands() -> list[list[str]]:
    """Every command, and every action of a command that has actions (demo run, broker start)."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*path, name])
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


def test_every_command_is_listed() -> None:
    assert {path[0] for path in _commands()} == set(COMMANDS)


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_the_help_of_every_command_fits_in_a_screen(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: stepcare {' '.join(command)}")
    assert len(out.splitlines()) < SCREEN_LINES
