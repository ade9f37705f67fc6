"""The files source: certificates in PEM, DER and PKCS#12 files, directories and globs.

Each certificate found is a target whose location is "<path>#<position>" (its place in
the file, counted from 0), so a renewed certificate in the same place is the same
target. Its observation is the certificate followed by its issuers from the same file
(:func:`~certwatch.core.atrest.issuer_path`); a private key in the file (or the entry's
`key_file`) is compared with the file's first certificate.

A file that cannot be used costs only itself; its error names its path:
    unreadable         missing, no permission, a symlink loop, not a regular file (a
                       device or a pipe), larger than MAX_FILE_BYTES
    not_a_certificate  read, but neither PEM with a certificate, nor DER, nor PKCS#12
    bad_password       PKCS#12 that the configured password does not open
A file that read well before and fails now keeps its certificates reported beside the
error, as a failed handshake does.

Reading is bounded: every file by size (read through :func:`read_bounded`), every entry
by the number of files and certificates, and the whole read by the entry's `timeout`.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import logging
import os
import stat
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

from certwatch.core.atrest import issuer_path, key_check
from certwatch.core.inventory import Endpoint
from certwatch.core.observation import KeyCheck, Observation, ProbeError, Target
from certwatch.core.selections import CERTIFICATE_SUFFIXES, FileSelection
from certwatch.core.vocabulary import ErrorKind, Phase, Reason
from certwatch.core.x509 import pem_certificates
from certwatch.sources import Listener, SourceHealth

__all__ = ["DecodeError", "FileReadError", "FileSource", "decode", "expand", "read_bounded"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 4 * 1024 * 1024  # a certificate file; the largest CA bundles are ~300 KB
MAX_FILES = 1000  # files one entry may name through its directories and globs
MAX_CERTIFICATES = 1000  # certificates read from one file
FOLLOW_POLL = 5.0  # seconds between looks at the followed files, as for the inventory


class FileReadError(Exception):
    """A file that cannot be read, in words that name why."""


def read_bounded(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes.

    (The configuration kit is getting a bounded read of its own; this one is meant to
    give way to it.) A device, a pipe or a directory is refused before it is opened
    (opening some devices has effects) and again after (the name may have changed
    hands); a pipe is opened without blocking; reading stops after `limit` + 1 bytes.
    """
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise FileReadError("not a regular file (a device, a pipe, a socket or a directory)")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    except FileReadError:
        raise
    except OSError as exc:
        raise FileReadError(_os_reason(exc)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileReadError("not a regular file (a device, a pipe, a socket or a directory)")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileReadError(f"larger than {limit} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise FileReadError(_os_reason(exc)) from None
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return exc.strerror or type(exc).__name__


def expand(patterns: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The files the patterns name (at most MAX_FILES, each once, in a stable order),
    and (pattern, why) for each pattern that names none."""
    found: dict[str, None] = {}
    empty: list[tuple[str, str]] = []
    for pattern in patterns:
        before = len(found)
        if glob.has_magic(pattern):
            for match in sorted(_bounded(glob.iglob(pattern), MAX_FILES)):
                if not os.path.isdir(match):
                    found.setdefault(match)
            why = "no file matches"
        elif os.path.isdir(pattern):
            try:
                with os.scandir(pattern) as entries:
                    names = sorted(e.path for e in _bounded(entries, MAX_FILES * 4)
                                   if e.name.lower().endswith(CERTIFICATE_SUFFIXES))
            except OSError as exc:
                empty.append((pattern, f"directory cannot be read: {_os_reason(exc)}"))
                continue
            for name in names:
                found.setdefault(name)
            why = f"no {'/'.join(CERTIFICATE_SUFFIXES)} file in the directory"
        else:
            found.setdefault(pattern)
            why = ""
        if len(found) == before and why:
            empty.append((pattern, why))
    return list(found)[:MAX_FILES], empty


T = TypeVar("T")


def _bounded(items: Iterable[T], limit: int) -> list[T]:
    """At most `limit` of `items`, taken lazily (a huge directory is not read whole)."""
    return list(itertools.islice(items, limit))


# --- decoding ---------------------------------------------------------------------------

_PEM_KEY = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
            b"-----BEGIN EC PRIVATE KEY-----")


class _Decoded:
    def __init__(self, certs: list[x509.Certificate], key: PrivateKeyTypes | None) -> None:
        self.certs, self.key = certs, key


def decode(data: bytes, path: str, password: str | None) -> _Decoded:
    """Certificates (and a private key) of one file; raises DecodeError (its kind is
    not_a_certificate or bad_password) when there is none to read."""
    if b"-----BEGIN" in data:
        certs, problems = pem_certificates(data)
        if not certs:
            raise DecodeError(ErrorKind.NOT_A_CERTIFICATE, problems[0] if problems
                               else "PEM without a certificate")
        key = None
        if any(marker in data for marker in _PEM_KEY):
            try:
                key = load_pem_private_key(_first_key_block(data), None)
            except Exception:  # noqa: BLE001 - checked as unreadable below
                key = None
        return _Decoded(certs[:MAX_CERTIFICATES], key)
    pkcs12_first = path.lower().endswith((".p12", ".pfx"))
    if not pkcs12_first:
        try:
            return _Decoded([x509.load_der_x509_certificate(data)], None)
        except ValueError:
            pass
    return _pkcs12(data, password, pkcs12_first)


class DecodeError(Exception):
    """Bytes that hold no usable certificate; `kind` is the ErrorKind to report."""

    def __init__(self, kind: ErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def _first_key_block(data: bytes) -> bytes:
    start = min(i for i in (data.find(m) for m in _PEM_KEY) if i >= 0)
    end = data.find(b"-----END", start)
    end = data.find(b"-----", end + 8) + 5
    return data[start:end]


def _pkcs12(data: bytes, password: str | None, expected: bool) -> _Decoded:
    tries = [password.encode()] if password is not None else [None, b""]
    error = ""
    for secret in tries:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
        except ValueError as exc:
            error = str(exc)
            continue
        certs = ([cert] if cert is not None else []) + list(extra)
        if not certs:
            raise DecodeError(ErrorKind.NOT_A_CERTIFICATE, "PKCS#12 without a certificate")
        return _Decoded(certs[:MAX_CERTIFICATES], key)
    if "password" in error.lower() or "mac" in error.lower():
        told = "the configured password" if password is not None else "no password"
        raise DecodeError(ErrorKind.BAD_PASSWORD, f"PKCS#12 that {told} does not open")
    what = "PKCS#12 that cannot be read" if expected else "neither PEM, DER nor PKCS#12"
    raise DecodeError(ErrorKind.NOT_A_CERTIFICATE, what)


def _key_file(path: Path) -> PrivateKeyTypes | KeyCheck:
    where = str(path)
    try:
        data = read_bounded(where)
    except FileReadError as exc:
        return KeyCheck(where, Reason.KEY_UNREADABLE, f"the key file {where} cannot be read: {exc}")
    try:
        if b"-----BEGIN" in data:
            return load_pem_private_key(data, None)
        return load_der_private_key(data, None)
    except (ValueError, TypeError) as exc:
        return KeyCheck(where, Reason.KEY_UNREADABLE, f"the key file {where} cannot be decoded: {exc}")


# --- the source ---------------------------------------------------------------------------


class FileSource:
    """Reads the files of `files:` entries; follows them for changes in the daemon."""

    def __init__(self, poll: float = FOLLOW_POLL) -> None:
        self._poll = poll
        self._known: dict[tuple[str, str], int] = {}  # (entry, file) -> certificates last read
        self._failing: dict[str, str] = {}  # entry -> why its latest read had a bad file
        self._last_success: datetime | None = None
        self._followed: dict[str, Endpoint] = {}
        self._signatures: dict[str, object] = {}
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None

    async def observe(self, endpoint: Endpoint) -> tuple[Observation, ...]:
        started_at, start = datetime.now(timezone.utc), time.monotonic()
        try:
            async with asyncio.timeout(endpoint.timeout):
                observations = await asyncio.to_thread(self._read_entry, endpoint, started_at)
        except TimeoutError:
            error = ProbeError(ErrorKind.TIMEOUT, Phase.READ,
                               f"reading the files took longer than {endpoint.timeout:g}s")
            observations = (Observation(Target(endpoint, None), started_at,
                                        time.monotonic() - start, error=error),)
        except Exception as exc:  # noqa: BLE001 - a bug: a value, as the wire does
            error = ProbeError(ErrorKind.INTERNAL, Phase.READ, f"{type(exc).__name__}: {exc}")
            observations = (Observation(Target(endpoint, None), started_at,
                                        time.monotonic() - start, error=error),)
        self._record(endpoint.name, observations)
        return observations

    def _read_entry(self, endpoint: Endpoint, started_at: datetime) -> tuple[Observation, ...]:
        selection = endpoint.selection
        assert isinstance(selection, FileSelection)
        # What the files look like as they are read: following compares with this.
        self._signatures[endpoint.name] = _signature(endpoint)
        paths, empty = expand(selection.patterns)
        observations: list[Observation] = []
        for pattern, why in empty:
            observations.append(Observation(
                Target(endpoint, None, pattern), started_at, 0.0,
                error=ProbeError(ErrorKind.UNREADABLE, Phase.READ, f"{pattern}: {why}")))
        for path in paths:
            observations.extend(self._read_file(endpoint, selection, path, started_at))
        return tuple(observations)

    def _read_file(self, endpoint: Endpoint, selection: FileSelection, path: str,
                   started_at: datetime) -> list[Observation]:
        start = time.monotonic()
        try:
            decoded = decode(read_bounded(path), path, selection.password)
        except FileReadError as exc:
            return self._failed(endpoint, path, started_at, start,
                                ProbeError(ErrorKind.UNREADABLE, Phase.READ, f"{path}: {exc}"))
        except DecodeError as exc:
            return self._failed(endpoint, path, started_at, start,
                                ProbeError(exc.kind, Phase.DECODE, f"{path}: {exc}"))
        certs = decoded.certs
        ders = [cert.public_bytes(Encoding.DER) for cert in certs]
        keys: KeyCheck | None = None
        key: PrivateKeyTypes | KeyCheck | None = decoded.key
        where = path
        if selection.key_file is not None:
            key, where = _key_file(selection.key_file), str(selection.key_file)
        if isinstance(key, KeyCheck):
            keys = key
        elif key is not None:
            keys = key_check(certs[0], key, where)
        self._known[(endpoint.name, path)] = len(certs)
        duration = time.monotonic() - start
        return [Observation(Target(endpoint, None, f"{path}#{index}"), started_at, duration,
                            chain=tuple(ders[i] for i in issuer_path(index, certs)),
                            key_check=keys if index == 0 else None)
                for index in range(len(certs))]

    def _failed(self, endpoint: Endpoint, path: str, started_at: datetime, start: float,
                error: ProbeError) -> list[Observation]:
        """One failed observation for each certificate the file held when it last read
        well (so they are carried beside the error), else one for the file."""
        known = self._known.get((endpoint.name, path), 0)
        locations = [f"{path}#{i}" for i in range(known)] or [path]
        duration = time.monotonic() - start
        return [Observation(Target(endpoint, None, where), started_at, duration, error=error)
                for where in locations]

    def _record(self, name: str, observations: Sequence[Observation]) -> None:
        bad = [str(o.error) for o in observations if o.error is not None]
        if bad:
            self._failing[name] = bad[0]
        else:
            self._failing.pop(name, None)
            if not self._failing:
                self._last_success = datetime.now(timezone.utc)

    # --- following, in the daemon ------------------------------------------------------

    def health(self) -> SourceHealth:
        first = next(iter(sorted(self._failing.items())), None)
        return SourceHealth(first is None, self._last_success,
                            f"{first[0]}: {first[1]}" if first else "")

    def discovered(self) -> tuple[Endpoint, ...]:
        return ()

    def follow(self, endpoints: Sequence[Endpoint], listener: Listener) -> None:
        self._followed = {e.name: e for e in endpoints}
        self._listener = listener
        self._failing = {k: v for k, v in self._failing.items() if k in self._followed}
        self._signatures = {k: v for k, v in self._signatures.items() if k in self._followed}
        if self._task is None and self._followed:
            self._task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        """Looks at the followed files every `poll` seconds: a changed, new or vanished
        file probes its entry at once (as an edited inventory is reloaded)."""
        while True:
            await asyncio.sleep(self._poll)
            for name, endpoint in list(self._followed.items()):
                try:
                    signature = await asyncio.to_thread(_signature, endpoint)
                except Exception:  # noqa: BLE001 - looked at again next time
                    log.exception("cannot look at the files of %s", name)
                    continue
                if name not in self._followed:
                    continue
                previous = self._signatures.get(name)
                self._signatures[name] = signature
                if previous is not None and previous != signature and self._listener:
                    log.info("files changed", extra={"endpoint": name})
                    self._listener.changed(name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _signature(endpoint: Endpoint) -> object:
    """What changes when any file of the entry does: (path, mtime, size, inode) of each
    (through symlinks, so a swapped Kubernetes secret mount shows), and the set itself."""
    selection = endpoint.selection
    assert isinstance(selection, FileSelection)
    paths, _ = expand(selection.patterns)
    if selection.key_file is not None:
        paths.append(str(selection.key_file))
    marks = []
    for path in paths:
        try:
            st = os.stat(path)
            marks.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError as exc:
            marks.append((path, exc.errno or 0, 0, 0))
    return tuple(marks)
