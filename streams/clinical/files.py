"""Bounded reads of small local files: a policy, a secret, a certificate.

Here, at the bottom, because the core reads policy files; the settings and the pseudonymizer
read their secret files the same way.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_small_file(path: str | Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes.

    Raises OSError if it cannot be read, ValueError (with a message) if it is not a regular file
    (a FIFO or a device would block or never end) or is larger than ``limit``.
    """
    # O_NONBLOCK: opening a FIFO with no writer would wait forever.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit:,} bytes")
    return data
