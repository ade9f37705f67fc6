"""Property tests (hypothesis) for the stages that take untrusted input (issue 6).

- The inventory loader: any YAML (random documents, wrongly typed values for every
  known key, YAML-ish token soup, deeply nested, huge) and any bytes give either an
  Inventory or a ConfigError whose every problem is one printable line starting with
  "line N" or "top:", never another exception.
- Certificate analysis: mutated DER (bit flips, truncations, insertions, and fields
  edited then signed again) never raises out of assess, and its result renders as JSON.
- Rendering: any text becomes table output without control characters.

Bounded so the whole file runs in well under 30 seconds.
"""

from __future__ import annotations

import json
import re
import string
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from certwatch.config import alerts as alert_config
from certwatch.config import inventory as config
from certwatch.core.assess import Assessment, assess
from certwatch.core.vocabulary import State
from certwatch.core.verify import TrustStore
from certwatch.core.x509 import CertInfo
from certwatch.config import ConfigError, load_inventory, parse_inventory
from certwatch.core.inventory import Endpoint, Inventory
from certwatch.core.observation import Observation, ProbeError, Target
from certwatch.render.report import assessment_to_dict, render_table, safe_text
from tests.pki import (
    TBS_EXTENSIONS,
    TBS_ISSUER,
    TBS_SERIAL,
    TBS_SUBJECT,
    TBS_VALIDITY,
    make_intermediate,
    make_leaf,
    make_root,
    resign,
    tbs_fields,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)

BOUNDED = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example, HealthCheck.filter_too_much],
)
FEW = settings(BOUNDED, max_examples=25)

# --- the inventory loader ------------------------------------------------------------

PROBLEM_LINE = re.compile(r"(line \d+(, column \d+)?|top): \S")
MORE = re.compile(r"\.\.\. and \d+ more problems?")


def outcome(text: str) -> Inventory | ConfigError:
    """Loads `text`; an Inventory or a ConfigError, and any other exception fails."""
    try:
        return parse_inventory(text, source="prop.yaml", base=Path("/nonexistent-base"), strict=True)
    except ConfigError as exc:
        return exc


def assert_clear(result: Inventory | ConfigError) -> None:
    if isinstance(result, Inventory):
        return
    assert result.problems, "a ConfigError names at least one problem"
    problems = list(result.problems)
    if MORE.fullmatch(problems[-1]):  # the count of those not shown (over MAX_PROBLEMS)
        problems.pop()
    for problem in problems:
        assert PROBLEM_LINE.match(problem), problem
        assert problem.isprintable(), f"not one printable line: {problem!r}"
    str(result)  # the message an operator sees renders


scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**20, max_value=10**4000)
    | st.floats() | st.text(max_size=40) | st.binary(max_size=20)
    | st.sampled_from(["", " ", "5m", "1h", "99999999999d", "0s", "-1", "tls", "smtp", "https",
                       "ipv4", "all", "first", "a.example", "127.0.0.1", "::1", "[::1]:9795",
                       ":9795", ":99999", "https://[::1", "https://x:notaport", "smtp://",
                       "~", "~/x", "/dev/null", "/", "\x00", "a\nb", "\x1b[31m", "*.example"])
    | st.dates() | st.datetimes()
)
keys = st.text(max_size=12) | st.sampled_from(
    [*config._TOP_KEYS, *config._ENDPOINT_KEYS, *alert_config._ALERT_KEYS]) | st.integers() | st.booleans()
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def with_keys(names: tuple[str, ...], values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict]:
    """Mappings of some of the known `names` to any values (wrong types, mostly)."""
    return st.dictionaries(st.sampled_from(names), values, max_size=len(names))


inventories = st.fixed_dictionaries(
    {},
    optional={
        "defaults": with_keys(config._DEFAULT_KEYS, documents) | documents,
        "endpoints": st.lists(with_keys(config._ENDPOINT_KEYS, documents) | scalars, max_size=4)
        | documents,
        "max_concurrency": documents,
        "listen": documents,
        "demo": documents,
        "alerts": st.fixed_dictionaries({}, optional={
            "state_dir": documents, "external_url": documents, "probe_failures": documents,
            "repeat": with_keys(("warning", "critical"), documents) | documents,
            "retry": with_keys(("initial", "maximum", "give_up_after"), documents) | documents,
            "sinks": documents,
        }) | documents,
    },
)

YAML_TOKENS = [
    "\n", "\n", "  ", "- ", ": ", "? ", ", ", "{", "}", "[", "]", "&a ", "*a", "<<: ", "!!int ",
    "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!str ", "!!null ", "!!set ",
    "!!omap ", "!!python/object:os.system ", "!custom ", "2001-13-45", "2001-02-30 25:61:61",
    "0x", "0o9", "1e400", "-.inf", ".nan", "1_000", "0b102", "9" * 4400, "~", "null", "yes",
    "'", '"', "\\", "#", "|", ">", "%YAML 1.1\n", "%TAG ! tag:x\n", "---\n", "...\n", "\t",
    "endpoints", "defaults", "alerts", "host", "port", "url", "labels", "timeout", "interval",
    "a.example", "https://", "\x00", "\x1b", "\ufeff", "\ud800", "é",
]
token_soup = st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=5), max_size=60).map("".join)


@BOUNDED
@given(inventories)
def test_any_inventory_shaped_document_loads_or_gives_clear_errors(document: dict) -> None:
    assert_clear(outcome(yaml.safe_dump(document, allow_unicode=True)))


@BOUNDED
@given(documents)
def test_any_yaml_document_loads_or_gives_clear_errors(document: Any) -> None:
    assert_clear(outcome(yaml.safe_dump(document)))


@BOUNDED
@given(token_soup)
@example("a: 2001-13-45")
@example("endpoints: [{host: a.example, port: !!int x}]")
@example("!!timestamp yesterday")
@example("endpoints:\n- !!bool maybe")
@example("endpoints: [" + "9" * 5000 + "]")
@example("endpoints: [{url: 'https://[::1'}]")
@example("endpoints: [{host: a.example, protocol: [tls]}]")
@example("endpoints: [{host: a.example, timeout: " + "1" * 400 + "}]")
@example("endpoints: [{host: a.example, ca_file: " + "a" * 5000 + "}]")
@example('endpoints: [{host: a.example, "\\e[2J\\n": 1}]')
def test_yaml_token_soup_loads_or_gives_clear_errors(text: str) -> None:
    assert_clear(outcome(text))


@BOUNDED
@given(st.text(max_size=300))
def test_any_text_loads_or_gives_clear_errors(text: str) -> None:
    assert_clear(outcome(text))


@FEW
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-16")))
def test_any_bytes_in_a_file_load_or_give_clear_errors(tmp_path_factory: pytest.TempPathFactory,
                                                      data: bytes) -> None:
    path = tmp_path_factory.mktemp("bytes") / "inventory.yaml"
    path.write_bytes(data)
    try:
        result: Inventory | ConfigError = load_inventory(path, strict=True)
    except ConfigError as exc:
        result = exc
    assert_clear(result)


@pytest.mark.parametrize(("shape", "depth"), [
    ("flow lists", 10), ("flow lists", 1_000), ("flow lists", 100_000),
    ("flow mappings", 10), ("flow mappings", 1_000), ("flow mappings", 100_000),
    ("block mappings", 10), ("block mappings", 1_000),  # indented deeper is quadratic in size
])
def test_deeply_nested_yaml(shape: str, depth: int) -> None:
    if shape == "flow lists":
        text = "endpoints: " + "[" * depth + "]" * depth
    elif shape == "flow mappings":
        text = "endpoints: [" + "{a: " * depth + "1" + "}" * depth + "]"
    else:
        text = "endpoints:\n- " + "".join(f"{' ' * (2 + i)}k{i}:\n" for i in range(depth)).lstrip()
    assert_clear(outcome(text))


def test_huge_inventories() -> None:
    many = "endpoints:\n" + "".join(f"- host: h{i}.example\n  port: {1 + i % 65535}\n"
                                    for i in range(2_000))
    result = outcome(many)
    assert isinstance(result, Inventory) and len(result.endpoints) == 2_000
    long_value = outcome("endpoints:\n- host: " + "a" * 1_000_000 + "\n")
    assert isinstance(long_value, ConfigError)
    assert_clear(long_value)
    assert len(str(long_value)) < 2_000  # a long value is not repeated in full
    many_problems = outcome("endpoints:\n" + "- port: x\n" * 2_000)
    assert isinstance(many_problems, ConfigError) and "4000 problems" in str(many_problems)
    assert many_problems.problems[-1] == "... and 3950 more problems"  # 50 shown, the first
    assert len(str(many_problems)) < 10_000
    assert_clear(many_problems)


def test_alias_bombs_stay_cheap() -> None:
    """'Billion laughs': aliases share one object, and nothing here expands them."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    for tail in ("endpoints: *a8", "endpoints: [{host: *a8}]", "endpoints: [{labels: {x: *a8}}]",
                 "endpoints: [{name: *a8}]", "endpoints: [{url: *a8}]", "defaults: *a8"):
        assert_clear(outcome("\n".join([*lines, tail])))


# --- certificate analysis ----------------------------------------------------------------

ROOT = make_root("Property Root", not_before=NOW - 3650 * DAY, not_after=NOW + 3650 * DAY)
INTERMEDIATE = make_intermediate(ROOT, "Property Intermediate", not_before=NOW - 365 * DAY,
                                 not_after=NOW + 1000 * DAY)
LEAF = make_leaf(INTERMEDIATE, ["svc.test", "127.0.0.1"], not_before=NOW - 30 * DAY,
                 not_after=NOW + 60 * DAY)
TRUST = TrustStore.of([ROOT.cert])
GOOD = [LEAF.cert.public_bytes(Encoding.DER), INTERMEDIATE.cert.public_bytes(Encoding.DER)]


@st.composite
def mutated(draw: st.DrawFn, der: bytes) -> bytes:
    """`der` with a few random edits: bit flips, truncation, insertion, deletion."""
    data = bytearray(der)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        kind = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "byte"]))
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x81, 0x82, 0xFF]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@st.composite
def resigned(draw: st.DrawFn) -> bytes:
    """The leaf with one TBSCertificate field garbled, then validly signed again: the
    parser sees a well-signed certificate with nonsense inside."""
    fields = tbs_fields(LEAF.cert)
    index = draw(st.sampled_from([TBS_SERIAL, TBS_ISSUER, TBS_VALIDITY, TBS_SUBJECT,
                                  TBS_EXTENSIONS]))
    fields[index] = draw(mutated(fields[index]))
    return resign(LEAF, fields)


def observe(chain: tuple[bytes, ...], *, error: ProbeError | None = None,
            host: str = "svc.test") -> Observation:
    endpoint = Endpoint(name="svc", host=host, port=443, server_name=host)
    return Observation(Target(endpoint, "127.0.0.1"), NOW, 0.01, chain=chain, error=error)


def assert_assessable(observation: Observation) -> Assessment:
    result = assess(observation, NOW, TRUST)
    assert isinstance(result.state, State)
    assert result.reasons or result.state is State.OK
    json.dumps(assessment_to_dict(result))
    table = render_table([result])
    assert all(line.isprintable() for line in table.splitlines()), table
    return result


chains = st.lists(
    st.sampled_from(GOOD) | mutated(GOOD[0]) | mutated(GOOD[1]) | resigned()
    | st.binary(max_size=64),
    min_size=0, max_size=5,
).map(tuple)


@BOUNDED
@given(chains, st.sampled_from(["svc.test", "127.0.0.1", "other.test", "::1", "*.test", "a..b"]))
def test_mutated_chains_never_raise_out_of_assess(chain: tuple[bytes, ...], host: str) -> None:
    assert_assessable(observe(chain, host=host))


@BOUNDED
@given(mutated(GOOD[0]))
def test_a_mutated_leaf_is_judged_or_classified(leaf: bytes) -> None:
    result = assert_assessable(observe((leaf, GOOD[1])))
    if result.state is State.ERROR:
        assert result.reasons == ("malformed_certificate",)


@BOUNDED
@given(resigned())
def test_a_well_signed_leaf_with_garbled_fields_is_judged_or_classified(leaf: bytes) -> None:
    assert_assessable(observe((leaf, GOOD[1])))


@FEW
@given(chains, st.sampled_from(["handshake", "timeout", "reset"]))
def test_chains_read_before_a_failed_handshake(chain: tuple[bytes, ...], kind: str) -> None:
    error = ProbeError(kind, "handshake", "peer went away")
    result = assert_assessable(observe(chain, error=error))
    assert result.state is State.ERROR or "handshake_incomplete" in result.reasons


# --- rendering --------------------------------------------------------------------------

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80) | st.sampled_from(
    ["\x1b[2J\x1b]0;pwned\x07", "<script>alert(1)</script>", "a\r\nb", "\u202etxt.exe",
     "\ud800", "\x00", "\x9b31m", "\u2028\u2029", "\t"])


@BOUNDED
@given(any_text)
def test_safe_text_leaves_no_control_characters(text: str) -> None:
    shown = safe_text(text)
    assert shown.isprintable(), repr(shown)
    if text.isprintable():
        assert shown == text  # nothing printable is changed


def _info(subject: str, issuer: str, not_after: datetime) -> CertInfo:
    return CertInfo(
        position=0, subject=subject, issuer=issuer, common_name=subject, dns_names=(subject,),
        ip_addresses=(), serial=issuer, not_before=NOW - DAY, not_after=not_after,
        fingerprint_sha256="00" * 32, key_type=subject, key_bits=None,
        signature_algorithm=issuer, version=3, is_ca=False, self_issued=False)


@BOUNDED
@given(st.lists(st.tuples(any_text, any_text, any_text, any_text, st.sampled_from(list(State)),
                          st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 1, 1),
                                       timezones=st.just(timezone.utc))),
                min_size=1, max_size=4))
def test_tables_of_any_text_have_no_control_characters(rows: list[tuple]) -> None:
    assessments = []
    for name, subject, issuer, summary, state, not_after in rows:
        endpoint = Endpoint(name=name, host="h.example", port=443, server_name=None,
                            labels=(("team", summary),))
        observation = Observation(Target(endpoint, name or None), NOW, 0.01,
                                  error=ProbeError(summary, name, summary))
        info = _info(subject, issuer, not_after)
        assessments.append(Assessment(Target(endpoint, name or None), observation, NOW, state,
                                      (summary, name), summary, (info,), None, info))
    table = render_table(assessments)
    for line in table.splitlines():
        assert line.isprintable(), repr(line)
    colour = render_table(assessments, colour=True)
    stripped = re.sub(r"\033\[[0-9;]*m", "", colour)
    assert all(line.isprintable() for line in stripped.splitlines())
    json.dumps([assessment_to_dict(a) for a in assessments])


def test_printable_check_is_meaningful() -> None:
    """The property above would be empty if isprintable accepted what a terminal acts on."""
    assert not any(ch.isprintable() for ch in "\x1b\x07\x00\r\n\x9b\u202e\u2028\ud800")
    assert all(ch.isprintable() for ch in string.ascii_letters + "é日本 <>&\"'")
