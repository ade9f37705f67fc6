"""Logging set-up, done once by the CLI: JSON lines in a container, text on a terminal.

Modules only call `logging.getLogger(__name__)`; structured fields go in `extra=`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

__all__ = ["configure_logging"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; json.dumps escapes every control character, so peer
    strings cannot forge a log line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal; non-printable characters are shown escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in text)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """fmt: "json", "text", or "auto" (text when stderr is a terminal)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # Neither format writes where a call was made from, nor its thread or process: not
    # looking them up (the logging HOWTO's "Optimization") takes a third off each line,
    # ~10 us, paid once a target in a first sweep (its "state new -> ok").
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every job run at INFO; that is noise at our scale.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request's full URL at INFO, and a webhook URL is a credential
    # (Slack's, for one): its own lines are kept out at any level.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
