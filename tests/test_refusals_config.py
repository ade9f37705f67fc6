"""The configuration of the refusal checks: `revocation:` in defaults and endpoints,
`ct_log_list:` (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certwatch.config import ConfigError, parse_inventory
from certwatch.core.inventory import RevocationSettings


def test_staple_and_crl_are_on_by_default_and_aia_ocsp_off() -> None:
    (endpoint,) = parse_inventory("endpoints: [example.com]").endpoints
    assert endpoint.revocation == RevocationSettings(staple=True, crl=True, ocsp=False, timeout=5.0)


def test_defaults_and_endpoints_turn_them_on_and_off() -> None:
    inventory = parse_inventory("""
defaults:
  revocation: {ocsp: true, timeout: 2s}
endpoints:
  - host: a.example
  - host: b.example
    revocation: false
  - host: c.example
    revocation: {crl: false}
  - host: d.example
    revocation: true
""")
    a, b, c, d = (e.revocation for e in inventory.endpoints)
    assert a == RevocationSettings(True, True, True, 2.0)
    assert b == RevocationSettings(False, False, False, 2.0)
    assert c == RevocationSettings(True, False, True, 2.0)  # the rest inherited from defaults
    assert d == RevocationSettings(True, True, True, 2.0)


def test_bad_revocation_settings_are_named_with_their_line() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_inventory("""
endpoints:
  - host: a.example
    revocation: {stapel: true, timeout: 1h}
  - host: b.example
    revocation: sometimes
""", strict=True)
    text = str(raised.value)
    assert "line 4: endpoint 1.revocation: unknown key 'stapel' (did you mean 'staple'?)" in text
    assert "'timeout' must be a duration" in text
    assert "line 6: endpoint 2: 'revocation' must be true, false or a mapping" in text


def test_ct_log_list_reads_chromes_format(tmp_path: Path) -> None:
    log_list = tmp_path / "log_list.json"
    log_list.write_text(json.dumps({"version": "1.2", "log_list_timestamp": "2026-11-30T00:00:00Z",
                                    "operators": [{"name": "Op", "logs": [{
                                        "description": "a log", "log_id": "AAAA",
                                        "state": {"usable": {"timestamp": "2025-01-01T00:00:00Z"}}}]}]}))
    inventory = parse_inventory(f"endpoints: [example.com]\nct_log_list: {log_list}\n")
    assert inventory.ct_log_list is not None and inventory.ct_log_list.version == "1.2"
    (log,) = inventory.ct_log_list.logs.values()
    assert (log.operator, log.state) == ("Op", "usable")
    log_list.write_text("[]")
    with pytest.raises(ConfigError) as raised:
        parse_inventory(f"endpoints: [example.com]\nct_log_list: {log_list}\n")
    assert "line 2: 'ct_log_list': not a CT log list" in str(raised.value)
