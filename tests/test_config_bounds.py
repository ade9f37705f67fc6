"""No configuration, however built, costs more than its size to read and report (issue 17).

- YAML alias bombs ("billion laughs": anchors of lists or mappings, nine aliases a
  level, 9**9 leaves when expanded) in every field of the inventory, its sinks and the
  web configuration: each is read and reported in bounded time and memory, as nothing
  renders a value it has not bounded (`describe`, `suggest`);
- hypothesis builds random anchor and alias structures (lists, mappings, merge keys,
  mixed) and puts them in random fields;
- a long value in any field gives problems of bounded length, and a file of thousands
  of problems reports the first MAX_PROBLEMS and how many more.

Memory is measured with tracemalloc (the peak of Python allocations while reading and
rendering); time is bounded per document.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certwatch.config import ConfigError, parse_inventory
from certwatch.config import alerts as alerts_schema
from certwatch.config import inventory as inventory_schema
from certwatch.config import web as web_schema
from certwatch.config.kit import MAX_PROBLEM_LENGTH, MAX_PROBLEMS
from certwatch.config.sinks import KEYS as SINK_KEYS
from certwatch.config.web import parse_web_config

PEAK_BYTES = 20 * 1024 * 1024  # an expanded bomb would need gigabytes
SECONDS = 5.0
BASE = Path("/nonexistent-base")


def list_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["x-bomb:", f"  b0: &b0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def mapping_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["x-bomb:", "  b0: &b0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
    lines += ["  b%d: &b%d {%s}" % (i, i, ", ".join(f"k{j}: *b{i - 1}" for j in range(width)))
              for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMB = "*b8"


def inventory_fields() -> dict[str, str]:
    """Every field of the inventory (and its sinks), as YAML with BOMB as its value."""
    fields = {f"{key}": f"{key}: {BOMB}\n" for key in inventory_schema._TOP_KEYS}
    fields |= {f"defaults.{key}": f"defaults: {{{key}: {BOMB}}}\n"
               for key in inventory_schema._DEFAULT_KEYS}
    fields |= {f"endpoints[].{key}": f"endpoints: [{{host: a.example, {key}: {BOMB}}}]\n"
               for key in inventory_schema._ENDPOINT_KEYS}
    fields["endpoints[]"] = f"endpoints: [{BOMB}, {BOMB}]\n"
    fields["endpoints[].labels.x"] = f"endpoints: [{{host: a.example, labels: {{x: {BOMB}}}}}]\n"
    fields |= {f"alerts.{key}": f"alerts: {{state_dir: /tmp/cw, {key}: {BOMB}}}\n"
               for key in alerts_schema._ALERT_KEYS}
    for section in ("repeat", "retry"):
        for key in ("warning", "critical", "initial", "maximum", "give_up_after", "other"):
            fields[f"alerts.{section}.{key}"] = f"alerts: {{{section}: {{{key}: {BOMB}}}}}\n"
    fields["alerts.sinks[]"] = f"alerts: {{sinks: [{BOMB}]}}\n"
    for kind, keys in SINK_KEYS.items():
        for key in (*keys, "match.x"):
            value = f"{{x: {BOMB}}}" if key == "match.x" else BOMB
            key = "match" if key == "match.x" else key
            fields[f"alerts.sinks[{kind}].{key}"] = (
                f"alerts: {{sinks: [{{name: s, type: {kind}, {key}: {value}}}]}}\n")
    return fields


def web_fields() -> dict[str, str]:
    fields = {key: f"{key}: {BOMB}\n" for key in web_schema._TOP_KEYS}
    fields |= {f"tls_server_config.{key}":
               f"tls_server_config: {{cert_file: c.crt, key_file: c.key, {key}: {BOMB}}}\n"
               for key in (*web_schema._TLS_KEYS, *web_schema._UNSUPPORTED)}
    fields |= {f"http_server_config.{key}": f"http_server_config: {{{key}: {BOMB}}}\n"
               for key in web_schema._HTTP_KEYS}
    fields |= {f"http_server_config.headers.{name}":
               f"http_server_config: {{headers: {{{name}: {BOMB}}}}}\n"
               for name in (*web_schema.HEADERS, "X-Unknown")}
    fields["http_server_config.open_paths[]"] = f"http_server_config: {{open_paths: [{BOMB}]}}\n"
    fields["basic_auth_users.prometheus"] = f"basic_auth_users: {{prometheus: {BOMB}}}\n"
    return fields


def read_inventory(text: str) -> None:
    parse_inventory(text, source="bomb.yaml", base=BASE, environ={}, strict=True)


def read_web(text: str) -> None:
    parse_web_config(text, source="web.yml", base=BASE)


def bounded(read: Callable[[str], None], text: str) -> ConfigError | None:
    """Reads and renders `text`: the error (or None), within SECONDS and PEAK_BYTES."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        try:
            read(text)
            error = None
        except ConfigError as exc:
            error = exc
            rendered = str(exc)
            assert len(rendered) <= 200 + (MAX_PROBLEMS + 1) * (MAX_PROBLEM_LENGTH + 8)
            assert all(len(p) <= MAX_PROBLEM_LENGTH for p in exc.problems)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < SECONDS
    assert peak < PEAK_BYTES, f"{peak / 2**20:.1f} MiB to read and report it"
    return error


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bomb", [list_bomb(), mapping_bomb()], ids=["lists", "mappings"])
def test_an_alias_bomb_in_any_inventory_field_is_reported_cheaply(bomb: str) -> None:
    fields = inventory_fields()
    assert "endpoints[].protocol" in fields and "alerts.sinks[email].to" in fields
    for field, yaml_text in fields.items():
        error = bounded(read_inventory, bomb + yaml_text)
        assert error is not None, field  # a bomb is never a valid value


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bomb", [list_bomb(), mapping_bomb()], ids=["lists", "mappings"])
def test_an_alias_bomb_in_any_web_config_field_is_reported_cheaply(bomb: str) -> None:
    fields = web_fields()
    assert "tls_server_config.client_auth_type" in fields
    for field, yaml_text in fields.items():
        assert bounded(read_web, bomb + yaml_text) is not None, field


def test_the_fields_the_issue_found_say_what_is_wrong() -> None:
    """`protocol:` and `client_auth_type:` expanded the bomb for their "did you mean"."""
    error = bounded(read_inventory, list_bomb() + f"endpoints: [{{host: a.test, protocol: {BOMB}}}]\n")
    assert error is not None
    assert any("unknown protocol a list; known: tls" in p for p in error.problems)
    error = bounded(read_web, mapping_bomb() + "tls_server_config: {cert_file: c, key_file: k, "
                                              f"client_auth_type: {BOMB}}}\n")
    assert error is not None
    assert any("'client_auth_type' must be one of NoClientCert, VerifyClientCertIfGiven, "
               "RequireAndVerifyClientCert, not a mapping" in p for p in error.problems)


# --- random anchor and alias structures -----------------------------------------------


@st.composite
def alias_structures(draw: st.DrawFn) -> tuple[str, str]:
    """(anchors under `x-bomb:`, the alias of the top one): each level a list, a mapping
    or a mapping merging the level below (`<<:`), of `width` aliases of the level below."""
    levels = draw(st.integers(min_value=1, max_value=9))
    width = draw(st.integers(min_value=1, max_value=9))
    leaf = draw(st.sampled_from(["lol", "1", "null", "'" + "z" * 5000 + "'", "{a: b}", "[]",
                                 "2026-01-01", "!!binary aGVsbG8="]))
    lines = ["x-bomb:", f"  b0: &b0 [{', '.join([leaf] * width)}]"]
    for i in range(1, levels):
        kind = draw(st.sampled_from(["list", "mapping", "merge"]))
        below = f"*b{i - 1}"
        if kind == "list":
            body = f"[{', '.join([below] * width)}]"
        elif kind == "mapping":
            body = "{" + ", ".join(f"k{j}: {below}" for j in range(width)) + "}"
        else:  # a merge of the level below, when it is a mapping; otherwise a bad merge
            body = "{<<: " + below + ", " + ", ".join(f"m{i}_{j}: {below}" for j in range(width)) + "}"
        lines.append(f"  b{i}: &b{i} {body}")
    return "\n".join(lines) + "\n", f"*b{levels - 1}"


ALL_FIELDS = ([(read_inventory, text) for text in inventory_fields().values()]
              + [(read_web, text) for text in web_fields().values()])


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(structure=alias_structures(), field=st.sampled_from(ALL_FIELDS),
       as_key=st.booleans())
@pytest.mark.timeout(240)
def test_property_random_alias_structures_in_random_fields_stay_bounded(
        structure: tuple[str, str], field: tuple[Callable[[str], None], str],
        as_key: bool) -> None:
    anchors, alias = structure
    read, text = field
    if as_key:  # the structure as a mapping key, where YAML allows one ({? key: value})
        text = text.replace(BOMB, "{? " + alias + " : x}", 1)
    bounded(read, anchors + text.replace(BOMB, alias))


# --- long values and many problems ------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_long_value_in_any_field_gives_short_problems() -> None:
    long_text = "'" + "é\x1b" * 200_000 + "'"
    for field, text in inventory_fields().items():
        error = bounded(read_inventory, text.replace(BOMB, long_text))
        if error is not None:
            assert "\x1b" not in str(error), field
    for field, text in web_fields().items():
        bounded(read_web, text.replace(BOMB, long_text))


def test_thousands_of_problems_report_the_first_fifty_and_a_count() -> None:
    text = "endpoints:\n" + "".join(f"  - {{host: 'bad host {i}', port: x}}\n"
                                    for i in range(5000))
    error = bounded(read_inventory, text)
    assert error is not None
    assert str(error).startswith("bomb.yaml: 10000 problems:\n")
    assert len(error.problems) == MAX_PROBLEMS + 1
    assert error.problems[0].startswith("line 2: endpoint 1: ")
    assert error.problems[MAX_PROBLEMS - 1].startswith("line 26: endpoint 25: ")  # file order
    assert error.problems[-1] == f"... and {10000 - MAX_PROBLEMS} more problems"
    assert len(str(error)) < 20_000


def test_releasing_a_parsed_document_leaves_what_was_read_from_it_whole() -> None:
    """parse_* empty the parsed document as they free it (in pieces, for the event loop's
    sake): nothing validated out of it may be one of its containers."""
    from certwatch.config import build_inventory
    from certwatch.config.web import build_web_config
    from certwatch.config.yamlfile import load_yaml

    repo = Path(__file__).resolve().parents[1]
    for name in ("reference.yaml", "certwatch.yaml"):
        text = (repo / "config" / name).read_text()
        base = repo / "config"
        released = parse_inventory(text, source=name, base=base)
        assert released == build_inventory(load_yaml(text, name), name, base)
        assert released.endpoints or released.demo
    web = ("tls_server_config: {cert_file: certwatch.yaml, key_file: certwatch.yaml}\n"
           "basic_auth_users: {u: '$2b$04$" + "a" * 53 + "'}\n"
           "http_server_config: {headers: {X-Frame-Options: deny}, open_paths: [/healthz]}\n")
    base = repo / "config"
    assert parse_web_config(web, "w", base) == build_web_config(load_yaml(web, "w"), "w", base)


def test_releasing_the_yaml_nodes_leaves_nested_lists_whole() -> None:
    from certwatch.config.yamlfile import load_yaml

    assert load_yaml("a: [[1, 2], [3, [4, 5]]]\nb: &x [[6], {k: [7]}]\nc: *x\n", "t") == {
        "a": [[1, 2], [3, [4, 5]]], "b": [[6], {"k": [7]}], "c": [[6], {"k": [7]}]}
