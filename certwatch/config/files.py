"""Reading the files certwatch is given: regular files only, and never more than a cap.

Every file certwatch reads goes through :func:`read_bounded`, or through
:func:`check_file` just before OpenSSL opens it by name: the inventory, the web
configuration, secret `*_file`s, certificates, keys and CA bundles. A device
(/dev/zero), a FIFO, a directory, a socket or a symlink loop is refused with what it is,
and a file larger than its cap is refused with the cap named, without reading more than
the cap: an inventory swapped for /dev/zero costs one clear error, not the machine's
memory. A FIFO is opened without blocking, so nobody has to write to it for certwatch
to refuse it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONFIG_FILE", "FileRefused", "Limit", "PEM_FILE", "SECRET_FILE", "check_file",
           "read_bounded"]

_KIB = 1024
_MIB = 1024 * _KIB
_CHUNK = _MIB  # bytes per read() while reading a file


@dataclass(frozen=True, slots=True)
class Limit:
    """How large one kind of file may be."""

    size: int  # bytes
    what: str  # "a configuration file": named in the refusal

    def __str__(self) -> str:
        for unit, name in ((_MIB, "MiB"), (_KIB, "KiB")):
            if self.size >= unit and self.size % unit == 0:
                return f"the {self.size // unit} {name} limit for {self.what}"
        return f"the {self.size}-byte limit for {self.what}"


# An inventory of 10,000 endpoints is about 1 MiB; 16 MiB leaves room and bounds the
# parse (about 10 s of a core for the largest file).
CONFIG_FILE = Limit(16 * _MIB, "a configuration file")
# The operating system's whole CA bundle is about 0.2 MiB.
PEM_FILE = Limit(16 * _MIB, "a certificate, key or CA file")
# A URL, a routing key, a password: one line.
SECRET_FILE = Limit(64 * _KIB, "a secret file")


class FileRefused(OSError):
    """A file certwatch does not read; str() says why ("not a regular file (a FIFO)")."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def _refusal(status: os.stat_result, limit: Limit) -> FileRefused | None:
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "of an unknown kind")
        return FileRefused(f"not a regular file ({kind})")
    if status.st_size > limit.size:
        return FileRefused(f"larger than {limit}")
    return None


def _loop(exc: OSError) -> OSError:
    return FileRefused("a symlink loop") if exc.errno == errno.ELOOP else exc


def check_file(path: Path, limit: Limit) -> None:
    """Raises FileRefused (or the OSError of looking it up) unless `path` is a regular
    file within `limit`; for files that a library opens by name (OpenSSL)."""
    try:
        status = os.stat(path)
    except OSError as exc:
        raise _loop(exc) from None
    refusal = _refusal(status, limit)
    if refusal is not None:
        raise refusal


def read_bounded(path: Path, limit: Limit) -> bytes:
    """The bytes of a regular file of at most `limit`; FileRefused or OSError otherwise.

    The size is checked on the open file, and the read stops one byte past the cap, so a
    file that grows while it is read (or that lies about its size, as /proc files do) is
    refused too."""
    check_file(path, limit)  # a socket cannot even be opened, so it is named first
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _loop(exc) from None
    try:
        refusal = _refusal(os.fstat(fd), limit)
        if refusal is not None:
            raise refusal
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, limit.size + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit.size:
                raise FileRefused(f"larger than {limit}")
        return b"".join(chunks)
    finally:
        os.close(fd)
