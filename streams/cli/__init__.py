"""The ``stepcare`` command line (``main``); nothing imports this package."""

from streams.cli.main import main

__all__ = ["main"]
