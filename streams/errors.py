"""The errors stepcare reports to its user: one root, so no module imports the CLI for them.

Every error that means "this input, file, setting or broker is wrong" derives from
``StepcareError``; the CLI prints it as one line and exits 2 (``streams.cli``). The pure clinical
core (``streams.clinical``) imports nothing of the project, so its three errors (``ScoringError``,
``EventError``, ``PolicyError``) are plain ``ValueError`` subclasses; they are listed in
``streams.clinical.INPUT_ERRORS`` and the CLI catches them beside this root.

This module imports nothing: every layer may import it.
"""

from __future__ import annotations


class StepcareError(Exception):
    """Bad input or a wrong setting, reported as one line (never a traceback)."""


class UsageError(StepcareError):
    """Bad input from the user on the command line: reported as one line, exit status 2."""


class AdapterError(StepcareError, ValueError):
    """Input a hospital adapter refuses. ``reason`` is a short fixed code (a dead-letter header
    and a metric label, e.g. ``fhir-status-amended``); ``detail`` says precisely what is wrong
    and never quotes a patient identifier."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
