"""The configuration kit: one way to read typed values out of a parsed file.

Every configuration certwatch reads (the inventory, the alert sinks, the web
configuration) is validated with these pieces, so they all speak alike:

- :class:`Problems` gathers every problem instead of stopping at the first, each with
  its line and the entry it belongs to, in file order;
- :class:`Reader` reads one mapping's values (numbers, durations, booleans, choices,
  paths, strings, secrets from `*_env`/`*_file`, URLs), recording problems;
- one duration grammar (:func:`parse_duration`), one "did you mean" (:func:`suggest`),
  one safe rendering of a bad value (:func:`describe`);
- :class:`ConfigError` carries every problem of one or several files.

Nothing here opens a socket; secret files are read when asked for.
"""

from __future__ import annotations

import difflib
import heapq
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from certwatch.config.files import PEM_FILE, SECRET_FILE, FileRefused, check_file, read_bounded

__all__ = [
    "ConfigError",
    "Problems",
    "Reader",
    "describe",
    "read_choices",
    "format_seconds",
    "line_of",
    "parse_duration",
    "split_http_url",
    "suggest",
]


# What one error shows: a file of a million bad entries must not become a log line, a
# page and a /readyz body of megabytes. The rest is counted ("and N more problems").
MAX_PROBLEMS = 50
MAX_PROBLEM_LENGTH = 300  # characters of one problem line


def _printable(text: str) -> str:
    # A key or value from the file may hold newlines or terminal escape sequences,
    # which an operator's terminal must not act on.
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1]
                   for ch in text[:MAX_PROBLEM_LENGTH + 1])
    return text if len(text) <= MAX_PROBLEM_LENGTH else text[:MAX_PROBLEM_LENGTH - 3] + "..."


def _shown(problems: Sequence[str], omitted: int) -> tuple[str, ...]:
    """At most MAX_PROBLEMS lines, the last of them saying how many were left out."""
    more = omitted + max(0, len(problems) - MAX_PROBLEMS)
    shown = tuple(_printable(p) for p in problems[:MAX_PROBLEMS])
    return shown + ((f"... and {more} more problem{'s' if more != 1 else ''}",) if more else ())


class ConfigError(ValueError):
    """A configuration cannot be used; `problems` lists every reason, one line each.

    One error may cover several files (`parts`: (source, problems) for each), so that
    the inventory, its sinks and the web configuration are all reported in one pass.
    Each file shows at most MAX_PROBLEMS problems (`omitted` more were found), each cut
    to MAX_PROBLEM_LENGTH characters.
    """

    def __init__(self, source: str, problems: Sequence[str], *, omitted: int = 0) -> None:
        self.parts: tuple[tuple[str, tuple[str, ...]], ...] = (
            (source, _shown(problems, omitted)),)
        self.counts: tuple[int, ...] = (len(problems) + omitted,)
        super().__init__(self._text())

    @classmethod
    def combine(cls, errors: Iterable[ConfigError]) -> ConfigError:
        errors = list(errors)
        combined = cls.__new__(cls)
        combined.parts = tuple(part for error in errors for part in error.parts)
        combined.counts = tuple(count for error in errors for count in error.counts)
        ValueError.__init__(combined, combined._text())
        return combined

    @property
    def source(self) -> str:
        return self.parts[0][0]

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(problem for _, problems in self.parts for problem in problems)

    def _text(self) -> str:
        blocks = []
        for (source, problems), total in zip(self.parts, self.counts):
            count = f"{total} problem{'s' if total != 1 else ''}"
            blocks.append(f"{source}: {count}:\n" + "\n".join(f"  - {p}" for p in problems))
        return "\n".join(blocks)


class Problems:
    """Collects problems, each with its line and the entry it belongs to.

    Only the first MAX_PROBLEMS in file order are kept (the others are counted), so a
    file of a million bad entries costs no more memory than one of fifty."""

    def __init__(self) -> None:
        # A max-heap by (line, order), negated: the problem furthest down the file is the
        # one dropped when a nearer one comes.
        self._kept: list[tuple[int, int, str]] = []
        self._count = 0

    def add(self, line: int, where: str, message: str) -> None:
        place = f"line {line}" if line else "top"
        text = f"{place}: {where}: {message}" if where else f"{place}: {message}"
        self._keep(line, _printable(text))

    def _keep(self, line: int, text: str) -> None:
        self._count += 1
        item = (-line, -self._count, text)
        if len(self._kept) < MAX_PROBLEMS:
            heapq.heappush(self._kept, item)
        elif item > self._kept[0]:
            heapq.heapreplace(self._kept, item)

    @property
    def items(self) -> list[str]:
        """In file order, so a reader can walk down the file fixing them."""
        return [text for _, _, text in sorted(self._kept, reverse=True)]

    def __len__(self) -> int:
        return self._count

    def extend(self, other: Problems) -> None:
        """Takes in another collection's problems (kept in file order with these)."""
        for neg_line, _, text in sorted(other._kept, reverse=True):
            self._keep(-neg_line, text)
        self._count += len(other) - len(other._kept)  # what it did not keep stays counted

    def raise_for(self, source: str) -> None:
        if self._count:
            raise ConfigError(source, self.items, omitted=self._count - len(self._kept))


# --- values in messages ------------------------------------------------------------------


def describe(value: Any) -> str:
    """A short, safe description of a wrong value for an error message."""
    if value is None:
        return "empty"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    try:
        text = repr(value)
    except ValueError:  # an integer of more digits than Python converts (4,300)
        return "a very long integer"
    text = text[:60] + ("..." if len(text) > 60 else "")
    return text if isinstance(value, str) else f"{type(value).__name__} {text}"


def suggest(value: Any, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest choice, or "". Only a short string is
    compared: anything else cannot be a misspelling, and must not be rendered whole."""
    if not isinstance(value, str) or len(value) > 100:
        return ""
    hint = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{hint[0]}'?)" if hint else ""


# --- durations ------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float | None:
    """Seconds, from a number or a string such as "250ms", "90s", "5m", "1h", "1d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float: no duration
        return None


def format_seconds(seconds: float) -> str:
    """A duration as the grammar writes it: 1s, 30d, 50ms, 90s."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds * 1000:g}ms"


def split_http_url(value: str) -> SplitResult | None:
    """The parts of an http:// or https:// URL with a host (and a valid port, if any)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    return parts if parts.scheme in ("http", "https") and parts.hostname else None


# --- reading one mapping -------------------------------------------------------------------

_FRACTION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+)\s*)?$")  # 0.25, 1/3
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def line_of(mapping: Any, key: Any = None) -> int:
    """The line a parsed mapping, or one of its keys, stands on (0 when unknown: a
    document not read from a file)."""
    key_lines = getattr(mapping, "key_lines", None)
    if key_lines is None:
        return 0
    return int(key_lines.get(key, mapping.line) if key is not None else mapping.line)


class Reader:
    """Reads typed values out of one mapping, recording problems instead of raising.

    `where` names the entry in messages ("endpoint 3 'shop'", "alerts.sinks[0]");
    relative paths are relative to `base`; secrets are looked up in `environ`.
    """

    def __init__(self, mapping: Mapping[Any, Any], where: str, problems: Problems, base: Path,
                 environ: Mapping[str, str] | None = None) -> None:
        self.mapping, self.where, self.problems, self.base = mapping, where, problems, base
        self.environ = environ if environ is not None else {}
        self._before = len(problems)

    @property
    def failed(self) -> bool:
        """Whether any problem was recorded since this reader was made."""
        return len(self.problems) > self._before

    def line(self, key: Any = None) -> int:
        return line_of(self.mapping, key)

    def problem(self, key: Any, message: str) -> None:
        self.problems.add(self.line(key), self.where, message)

    def unknown_keys(self, allowed: Sequence[str], *, skip: Sequence[str] = (),
                     kind: str = "") -> None:
        """Reports keys not in `allowed`, suggesting the closest; `skip` keys are the
        caller's to report (with a reason of their own). `kind` ends the message:
        "unknown key 'x' for a webhook sink"."""
        for key in self.mapping:
            if key in allowed or key in skip:
                continue
            hint = suggest(key, allowed)
            known = "" if hint else f"; known keys: {', '.join(allowed)}"
            self.problem(key, f"unknown key {describe(key)}{kind}{hint}{known}")

    def number(self, key: str, fallback: float, *, minimum: float, maximum: float) -> float:
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(key, f"'{key}' must be a number, not {describe(value)}")
            return fallback
        if not minimum <= value <= maximum:
            try:
                shown = f"{value:g}"
            except OverflowError:  # an integer too large for a float
                shown = describe(value)
            self.problem(key, f"'{key}' must be between {minimum:g} and {maximum:g}, not {shown}")
            return fallback
        return float(value)

    def duration(self, key: str, fallback: float, *, minimum: float = 1.0,
                 maximum: float = 30 * 86400.0) -> float:
        """Seconds, written as a number or as "250ms", "90s", "5m", "1h", "1d"."""
        if key not in self.mapping:
            return fallback
        seconds = parse_duration(self.mapping[key])
        if seconds is None or not minimum <= seconds <= maximum:
            self.problem(key, f"'{key}' must be a duration such as 300, \"90s\", \"5m\" or "
                              f"\"1h\" between {format_seconds(minimum)} and "
                              f"{format_seconds(maximum)}, not {describe(self.mapping[key])}")
            return fallback
        return seconds

    def boolean(self, key: str, fallback: bool) -> bool:
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        if not isinstance(value, bool):
            self.problem(key, f"'{key}' must be true or false, not {describe(value)}")
            return fallback
        return value

    def choice(self, key: str, fallback: str, choices: Sequence[str]) -> str:
        if key not in self.mapping:
            return fallback
        value = self.mapping[key]
        if not isinstance(value, str) or value not in choices:
            self.problem(key, f"'{key}' must be one of {', '.join(choices)}, "
                              f"not {describe(value)}{suggest(value, choices)}")
            return fallback
        return value

    def string(self, key: str, *, required: bool = False) -> str | None:
        """A non-empty single-line string (surrounding spaces dropped)."""
        value = self.mapping.get(key)
        if value is None:
            if required:
                self.problem(None, f"'{key}' is required")
            return None
        if not isinstance(value, str) or not value.strip() or _CONTROL.search(value):
            self.problem(key, f"'{key}' must be a non-empty single-line string, "
                              f"not {describe(value)}")
            return None
        return value.strip()

    def url(self, key: str, fallback: str | None) -> str | None:
        """An http(s) URL with a host and no credentials in it."""
        if key not in self.mapping or self.mapping[key] is None:
            return fallback
        value = self.string(key)
        parts = split_http_url(value) if value is not None else None
        if value is None or parts is None:
            self.problem(key, f"'{key}' must be an http:// or https:// URL, "
                              f"not {describe(self.mapping[key])}")
        elif parts.username or parts.password:
            self.problem(key, f"'{key}' must not hold credentials")
        else:
            return value
        return fallback

    def fraction(self, key: str, fallback: float) -> float:
        """A share of a whole, above 0 and at most 1: a number, or a string such as "1/3"."""
        raw = self.mapping.get(key)
        if not isinstance(raw, str):
            return self.number(key, fallback, minimum=0.001, maximum=1)
        match = _FRACTION.match(raw)
        share = float(match.group(1)) / float(match.group(2) or 1) if match and float(
            match.group(2) or 1) else 0.0
        if 0 < share <= 1:
            return share
        self.problem(key, f"'{key}' must be a fraction above 0 and at most 1, such as 0.25 "
                          f"or \"1/3\", not {describe(raw)}")
        return fallback

    def resolve(self, value: str) -> Path:
        path = Path(os.path.expanduser(value))
        return path if path.is_absolute() else self.base / path

    def path(self, key: str, fallback: Path | None) -> Path | None:
        """A readable certificate, key or CA file's path (a regular file, within its cap)."""
        if key not in self.mapping or self.mapping[key] is None:
            return fallback
        value = self.mapping[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"'{key}' must be a file path, not {describe(value)}")
            return fallback
        path = self.resolve(value)
        try:
            check_file(path, PEM_FILE)
        except FileNotFoundError:
            self.problem(key, f"'{key}': file not found: {path}")
            return fallback
        except OSError as exc:  # a FIFO, a device, a name too long ...
            self._unreadable(key, path, exc)
            return fallback
        if not os.access(path, os.R_OK):
            self.problem(key, f"'{key}': file not readable: {path}")
            return fallback
        return path

    def secret(self, stem: str, *, required: bool, what: str) -> str | None:
        """The value of `<stem>_env` or `<stem>_file`. Messages name the variable or the
        file, never what it holds."""
        env_key, file_key = f"{stem}_env", f"{stem}_file"
        given = [k for k in (env_key, file_key) if self.mapping.get(k) is not None]
        if len(given) > 1:
            self.problem(file_key, f"give either '{env_key}' or '{file_key}', not both")
            return None
        if not given:
            if required:
                self.problem(None, f"{what} is a secret: set '{env_key}' (an environment "
                                   f"variable's name) or '{file_key}'")
            return None
        key = given[0]
        ref = self.mapping[key]
        if not isinstance(ref, str) or not ref.strip():
            self.problem(key, f"'{key}' must be a non-empty string, not {describe(ref)}")
            return None
        value = self._env_secret(key, ref) if key == env_key else self._file_secret(key, ref)
        return value

    def _env_secret(self, key: str, name: str) -> str | None:
        if not _ENV_NAME.match(name):
            self.problem(key, f"'{key}' must name an environment variable, not {describe(name)}")
            return None
        value = self.environ.get(name)
        if value is None:
            self.problem(key, f"'{key}': environment variable {name} is not set")
            return None
        return self._one_line(key, value, f"environment variable {name}")

    def _file_secret(self, key: str, ref: str) -> str | None:
        path = self.resolve(ref)
        try:
            value = read_bounded(path, SECRET_FILE).decode("utf-8")
        except UnicodeDecodeError:
            self.problem(key, f"'{key}': {path} is not UTF-8 text")
            return None
        except OSError as exc:
            self._unreadable(key, path, exc)
            return None
        return self._one_line(key, value, str(path))

    def _unreadable(self, key: str, path: Path, exc: OSError) -> None:
        """Names the file and why it cannot be read, never anything it holds."""
        reason = str(exc) if isinstance(exc, FileRefused) else exc.strerror or type(exc).__name__
        self.problem(key, f"'{key}': cannot read {path}: {reason}")

    def _one_line(self, key: str, value: str, source: str) -> str | None:
        value = value.strip()
        if not value:
            self.problem(key, f"'{key}': {source} is empty")
            return None
        if _CONTROL.search(value):
            self.problem(key, f"'{key}': {source} must hold one line")
            return None
        return value


def read_choices(read: Reader, key: str, choices: Sequence[str]) -> frozenset[str]:
    """`key`: a list of some of `choices` (or "all" of them, or one of them alone)."""
    value = read.mapping.get(key)
    if value is None or value == "all":
        return frozenset(choices if value == "all" else ())
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        read.problem(key, f"'{key}' must be a list of {', '.join(choices)} (or all), "
                          f"not {describe(value)}")
        return frozenset()
    for wrong in (v for v in values if v not in choices):
        read.problem(key, f"'{key}': {describe(wrong)} is not one of {', '.join(choices)}"
                          f"{suggest(wrong, choices)}")
    return frozenset(v for v in values if v in choices)
