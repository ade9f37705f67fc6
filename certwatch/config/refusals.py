"""The configuration of the refusal checks: revocation settings, and the root-program
data the lints judge against, read and validated into values.

`revocation:` (in `defaults:` or an endpoint) is `false` (every check off), `true`, or
a mapping of `staple`, `crl`, `ocsp` (booleans) and `timeout` (a duration), each
inherited from `defaults:` when not given (:func:`read_revocation`).

Two files ship with certwatch (in certwatch/data/, each saying where it comes from):

- ``distrust.yaml``: the root programs' distrust cutoffs, one row each with its source
  and date. An inventory adds rows of its own under ``distrust:``, read by the same
  :func:`read_distrust_rules`, so a shipped row and a user's are checked alike.
- ``ct_log_list.json``: the CT logs that matter to certificates valid now, in the format
  of Chrome's log list (v3). Refresh it by replacing the file with Chrome's own
  ``log_list.json``, or point an inventory's ``ct_log_list:`` at a fresher copy.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from datetime import date, datetime, time, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from certwatch.config.kit import ConfigError, Problems, Reader, describe
from certwatch.config.yamlfile import item_lines, load_yaml
from certwatch.core.ctpolicy import CTLog, CTLogList
from certwatch.core.inventory import RevocationSettings
from certwatch.core.refusals import Policy
from certwatch.core.rootprograms import DistrustRule

__all__ = ["load_ct_log_list", "policy_for", "read_ct_log_list", "read_distrust_rules",
           "read_revocation", "shipped_distrust", "shipped_log_list", "shipped_policy"]

_RULE_KEYS = ("program", "ca", "roots", "after", "measure", "source", "announced")
MEASURES = ("sct", "not_before")
_HEX = frozenset("0123456789abcdef")


_REVOCATION_KEYS = ("staple", "crl", "ocsp", "timeout")


def read_revocation(read: Reader, fallback: RevocationSettings) -> RevocationSettings:
    """The `revocation:` of a mapping (defaults or an endpoint), over `fallback`."""
    raw = read.mapping.get("revocation")
    if raw is None:
        return fallback
    if isinstance(raw, bool):
        return (RevocationSettings(staple=True, crl=True, ocsp=fallback.ocsp,
                                   timeout=fallback.timeout) if raw
                else RevocationSettings(False, False, False, fallback.timeout))
    if not isinstance(raw, dict):
        read.problem("revocation", "'revocation' must be true, false or a mapping of staple, "
                                   f"crl, ocsp and timeout, not {describe(raw)}")
        return fallback
    inner = Reader(raw, f"{read.where + '.' if read.where else ''}revocation", read.problems,
                   read.base)
    inner.unknown_keys(_REVOCATION_KEYS)
    return RevocationSettings(
        staple=inner.boolean("staple", fallback.staple),
        crl=inner.boolean("crl", fallback.crl),
        ocsp=inner.boolean("ocsp", fallback.ocsp),
        timeout=inner.duration("timeout", fallback.timeout, minimum=0.1, maximum=120.0),
    )


def read_ct_log_list(read: Reader) -> CTLogList | None:
    """The top-level `ct_log_list:` file (Chrome's log_list.json), if given."""
    path = read.path("ct_log_list", None)
    if path is None:
        return None
    try:
        return load_ct_log_list(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        read.problem("ct_log_list", f"'ct_log_list': cannot read {path}: {exc}")
    except ConfigError as exc:
        read.problem("ct_log_list", f"'ct_log_list': {'; '.join(exc.problems)}")
    return None


def _moment(read: Reader, key: str) -> datetime | None:
    value = read.mapping.get(key)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, date):  # a date alone: its last second, as cutoffs are written
        return datetime.combine(value, time(23, 59, 59), timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    read.problem(key, f"'{key}' must be a date or an RFC 3339 time such as "
                      f"2024-11-11T23:59:59Z, not {describe(value)}")
    return None


def _fingerprints(read: Reader) -> frozenset[str]:
    raw = read.mapping.get("roots")
    if not isinstance(raw, list) or not raw:
        read.problem("roots", "'roots' must be a list of SHA-256 fingerprints (hex)")
        return frozenset()
    found = set()
    for item in raw:
        text = item.replace(":", "").lower() if isinstance(item, str) else ""
        if len(text) != 64 or not set(text) <= _HEX:
            read.problem("roots", f"not a SHA-256 fingerprint: {describe(item)}")
            continue
        found.add(text)
    return frozenset(found)


def read_distrust_rules(raw: Any, where: str, problems: Problems,
                        base: Path) -> tuple[DistrustRule, ...]:
    """A list of distrust rows (the shipped file's or an inventory's `distrust:`)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.add(0, where, f"must be a list of rules, not {describe(raw)}")
        return ()
    rules = []
    for index, (item, line) in enumerate(zip(raw, item_lines(raw))):
        label = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.add(line, label, f"must be a mapping, not {describe(item)}")
            continue
        read = Reader(item, label, problems, base)
        read.unknown_keys(_RULE_KEYS)
        program, ca = read.string("program", required=True), read.string("ca", required=True)
        source = read.string("source", required=True)
        roots, after = _fingerprints(read), _moment(read, "after")
        measure = read.choice("measure", "not_before", MEASURES)
        announced = read.mapping.get("announced", "")
        if read.failed or program is None or ca is None or source is None or after is None:
            continue
        rules.append(DistrustRule(program, ca, roots, after, measure, source, str(announced)))
    return tuple(rules)


@functools.cache
def shipped_distrust() -> tuple[DistrustRule, ...]:
    """certwatch/data/distrust.yaml (read once: it is part of the package)."""
    text = resources.files("certwatch").joinpath("data", "distrust.yaml").read_text("utf-8")
    source = "certwatch/data/distrust.yaml"
    document = load_yaml(text, source)
    problems = Problems()
    rules = read_distrust_rules(document.get("rules") if isinstance(document, dict) else None,
                                "rules", problems, Path("."))
    problems.raise_for(source)
    return rules


def load_ct_log_list(text: str, source: str) -> CTLogList:
    """A log list in Chrome's v3 format (operators -> logs and tiled_logs)."""
    try:
        document = json.loads(text)
        logs: dict[bytes, CTLog] = {}
        for operator in document["operators"]:
            for entry in [*operator.get("logs", ()), *operator.get("tiled_logs", ())]:
                log_id = base64.b64decode(entry["log_id"], validate=True)
                state, detail = next(iter((entry.get("state") or {}).items()), ("pending", {}))
                since = _timestamp(detail.get("timestamp")) if isinstance(detail, dict) else None
                logs[log_id] = CTLog(log_id, str(operator["name"]),
                                     str(entry.get("description", "")), str(state), since)
        return CTLogList(logs, str(document.get("version", "")),
                         _timestamp(document.get("log_list_timestamp")), source)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ConfigError(source, [f"not a CT log list in Chrome's v3 format: {exc}"]) from None


def _timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@functools.cache
def shipped_log_list() -> CTLogList:
    text = resources.files("certwatch").joinpath("data", "ct_log_list.json").read_text("utf-8")
    return load_ct_log_list(text, "certwatch/data/ct_log_list.json")


def shipped_policy() -> Policy:
    return Policy(shipped_log_list(), shipped_distrust())


def policy_for(extra_rules: tuple[DistrustRule, ...] = (), log_list: CTLogList | None = None
               ) -> Policy:
    """The shipped policy, with an inventory's own distrust rows and log list."""
    return Policy(log_list or shipped_log_list(), shipped_distrust() + extra_rules)

