"""The command line's files: inputs, JSONL lines, and the one writer of outputs, for every command.

Reading (``replay``, ``publish``, ``convert``, ``compare``, ``explain``, ``score``, the bridges;
event logs through :mod:`streams.formats.logs`):

* an input is read as a stream: memory does not grow with the file.
* JSONL lines end at ``\\n`` and nowhere else: a raw ``\\r``, U+2028, U+2029 or U+0085 inside a
  JSON string is part of its line. Lines are numbered from 1, blank lines included.
* a line that is not UTF-8, or not JSON, is a rejected record (its number and the reason); the
  other lines are read on.
* a damaged Avro container is a :class:`FileError` (one line, exit 2) for every command:
  nothing after the damage can be read, so no command reports part of it as if it were whole.

Writing (:func:`open_output`): a regular file (or a new path) is written to a temporary file in
the same directory, flushed to disk, and renamed over the target only when the command
succeeds, so a failed or interrupted run leaves the previous output as it was. ``-`` (stdout),
devices (``/dev/null``) and FIFOs are written directly. :func:`refuse_same_file` refuses an
output that is one of the inputs (same device and inode: hard links and symlinks count).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO, Any

import orjson

from streams.errors import StepcareError

DOCUMENT_LIMIT = 32 * 1024 * 1024
"""Bytes of a multi-line JSON document (score, fhir-import) read whole; past it, input is JSONL."""


class FileError(StepcareError):
    """An input that cannot be read or an output that cannot be written: one line, exit 2."""


# -- outputs ----------------------------------------------------------------------------------


def _stat(name: str, fd: int | None = None) -> os.stat_result | None:
    try:
        return os.fstat(fd) if fd is not None else os.stat(name)
    except (OSError, ValueError):
        return None


def same_file(a: str, b: str) -> bool:
    """Whether two names are one file (device and inode: links and symlinks count)."""
    first, second = _stat(a), _stat(b)
    return first is not None and second is not None and _same(first, second)


def _same(first: os.stat_result, second: os.stat_result) -> bool:
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def refuse_same_file(inputs: Iterable[str], outputs: Iterable[str | None]) -> None:
    """:class:`FileError` if an output is one of the inputs (``-`` as input: stdin's file)."""
    seen = []
    for name in inputs:
        found = _stat(name, _stdin_fd()) if name == "-" else _stat(name)
        if found is not None and stat.S_ISREG(found.st_mode):
            seen.append((name, found))
    written: dict[object, str] = {}
    for output in outputs:
        if not output or output == "-":
            continue
        target = _stat(output)
        if target is not None and not stat.S_ISREG(target.st_mode):
            continue  # /dev/null twice is fine
        key = os.path.realpath(output) if target is None else (target.st_dev, target.st_ino)
        if key in written:
            raise FileError(f"{written[key]} and {output} are the same file: one output each")
        written[key] = output
        if target is None:
            continue
        for name, found in seen:
            if _same(found, target):
                what = "stdin" if name == "-" else name
                raise FileError(
                    f"{output} is the same file as the input {what}: refusing to overwrite it"
                )


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class _TextSink:
    """Bytes written to a text stdout that has no binary buffer (a test's StringIO)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        self.stream.write(data.decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _stdout_binary() -> IO[bytes]:
    sys.stdout.flush()  # what was printed before comes first
    buffer = getattr(sys.stdout, "buffer", None)
    # _TextSink is no IO[bytes]: it has write and flush, all that a writer of an output calls
    return buffer if buffer is not None else _TextSink(sys.stdout)  # type: ignore[return-value]


@contextlib.contextmanager
def open_output(name: str) -> Iterator[IO[bytes]]:
    """A binary stream to write ``name`` (``-``: stdout), committed when the block succeeds.

    Any failure to write is a :class:`FileError` naming the file; if the block raises, a
    regular file is left as it was (a new one is not created).
    """
    if name == "-":
        out = _stdout_binary()
        try:
            yield out
            out.flush()
        except OSError as exc:
            raise stdout_error(exc) from None
        return
    found = _stat(name)
    if found is not None and not stat.S_ISREG(found.st_mode):  # a device, a FIFO: no rename
        try:
            with open(name, "wb") as direct:
                yield direct
        except OSError as exc:
            raise FileError(f"cannot write {name}: {exc.strerror}") from None
        return
    target = os.path.realpath(name)  # a symlink's target is replaced, not the link
    directory = os.path.dirname(target) or "."
    if found is not None and not os.access(target, os.W_OK):  # a rename would get around it
        raise FileError(f"cannot write {name}: {os.strerror(errno.EACCES)}")
    try:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.")
    except OSError as exc:
        raise FileError(f"cannot write {name}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), _mode(found))
            os.fsync(out.fileno())
        os.replace(temp, target)
    except OSError as exc:
        _remove(temp)
        raise FileError(f"cannot write {name}: {exc.strerror}") from None
    except BaseException:
        _remove(temp)
        raise
    _sync_directory(directory)


def write_output(name: str, data: bytes) -> None:
    """Write ``data`` to ``name`` (``-``: stdout) through :func:`open_output`."""
    with open_output(name) as out:
        out.write(data)


@contextlib.contextmanager
def open_text_output(name: str) -> Iterator[IO[str]]:
    """:func:`open_output` as UTF-8 text with ``\\n`` line ends (stdout: ``sys.stdout`` itself)."""
    if name == "-":
        try:
            yield sys.stdout
            sys.stdout.flush()
        except OSError as exc:
            raise stdout_error(exc) from None
        return
    import io

    with open_output(name) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
        try:
            yield text
            text.flush()
        finally:
            with contextlib.suppress(OSError, ValueError):  # an error is already on its way
                text.detach()  # open_output closes the file


def stdout_error(exc: OSError) -> OSError | FileError:
    """The one line for stdout that cannot be written (a full disk): a :class:`FileError`.

    A closed pipe (``stepcare ... | head``) stays a ``BrokenPipeError``, which ``stepcare``
    ends quietly, as a process ended by SIGPIPE. What is still buffered for stdout is dropped,
    so the interpreter's exit does not fail again on it with a second message.
    """
    with contextlib.suppress(Exception):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if exc.errno == errno.EPIPE:
        return exc
    return FileError(f"cannot write stdout: {exc.strerror or exc}")


def _mode(found: os.stat_result | None) -> int:
    if found is not None:
        return stat.S_IMODE(found.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _sync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- inputs -----------------------------------------------------------------------------------


def open_input(name: str) -> IO[bytes]:
    """``name`` opened for binary reading (``-``: stdin); :class:`FileError` if it cannot be."""
    if name == "-":
        return _stdin_binary()
    try:
        return open(name, "rb")
    except OSError as exc:
        raise FileError(f"cannot read {name}: {exc.strerror}") from None


def _stdin_binary() -> IO[bytes]:
    buffer: IO[bytes] | None = getattr(sys.stdin, "buffer", None)
    if buffer is None:  # a text stdin without a buffer (a test's StringIO)
        import io

        return io.BytesIO(sys.stdin.read().encode("utf-8", "surrogateescape"))
    return buffer


def numbered_lines(fo: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(number from 1, line with its ``\\n``) per line of a binary stream, split on ``\\n`` only."""
    return enumerate(fo, start=1)


def json_line(line: bytes | str) -> tuple[Any, str | None]:
    """(the JSON value of one JSONL line, None), or (None, the reason it has none)."""
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as exc:
        try:
            if isinstance(line, bytes):
                line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return None, f"not UTF-8 text (byte {bad.start + 1} of the line)"
        return None, f"not JSON: {exc.msg} (column {exc.colno})"


# -- one JSON document, or JSONL ----------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """The input was one JSON document: its value, its first line, and whether it is one line."""

    value: Any
    line: int
    one_line: bool


def document_or_lines(
    fo: IO[bytes], parse: Callable[[bytes], Any], limit: int = DOCUMENT_LIMIT
) -> Document | Iterator[tuple[int, bytes]]:
    """One JSON document (perhaps pretty-printed), or else the numbered lines of JSONL.

    Streams: only a document spanning several lines is held, up to ``limit`` bytes; longer
    input is JSONL. ``parse`` raises on text that is not a JSON document.
    """
    lines = numbered_lines(fo)
    held: list[tuple[int, bytes]] = []
    size = 0
    first: int | None = None
    for number, line in lines:
        held.append((number, line))
        size += len(line)
        if size > limit:
            return chain(held, lines)
        if not line.strip():
            continue
        if first is None:
            first = number
            try:
                value = parse(line)
            except Exception:  # the start of a multi-line document, or a bad line
                continue
            for later in lines:  # a whole value on its own line: one document if nothing follows
                held.append(later)
                if later[1].strip():
                    return chain(held, lines)
                if len(held) > 1024:  # blank lines are skipped anyway: hold none of them
                    held = [(n, text) for n, text in held if text.strip()]
            return Document(value, number, True)
    if first is None:
        return iter(held)
    try:
        return Document(parse(b"".join(line for _, line in held)), first, False)
    except Exception:
        return iter(held)
