"""Configuration files as YAML whose mappings and sequences remember their lines.

Every file certwatch reads as configuration (the inventory, the web configuration)
goes through :func:`load_yaml`, so every problem can name its line.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from certwatch.config.files import CONFIG_FILE, read_bounded
from certwatch.config.kit import ConfigError, line_of

__all__ = ["Mapping", "item_lines", "line_of", "load_file", "load_yaml", "parse", "read_text",
           "release"]

T = TypeVar("T")


class Mapping(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of itself and of each key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[Any, int] = {}


class _Built(yaml.nodes.Node):
    """A sequence item already turned into its Python value (see _LineLoader)."""

    id = "built"
    TAG = "tag:certwatch,2026:built"

    def __init__(self, value: Any, start_mark: Any) -> None:
        super().__init__(self.TAG, value, start_mark, start_mark)


# libyaml (C) reads the events when present: a 10,000-endpoint inventory parses several
# times faster. The node tree is composed by PyYAML's Python composer instead of
# libyaml's so that each sequence item is turned into its value as soon as it is
# composed and its nodes are freed: a whole tree of 10,000 endpoints is ~50 MB of
# nodes and marks, and the few megabytes of values built among them kept the memory
# of all of it from returning to the system (RSS +44 MB after loading, now +8 MB).
class _LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    compose_document = yaml.composer.Composer.compose_document
    compose_node = yaml.composer.Composer.compose_node
    compose_scalar_node = yaml.composer.Composer.compose_scalar_node
    compose_mapping_node = yaml.composer.Composer.compose_mapping_node
    get_single_node = yaml.composer.Composer.get_single_node

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.anchors: dict[str, yaml.Node] = {}

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:
        start = self.get_event()
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.SequenceNode, None, start.implicit)
        node = yaml.SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        while not self.check_event(yaml.SequenceEndEvent):
            item = self.compose_node(node, len(node.value))
            assert item is not None  # only an empty stream composes to None
            node.value.append(_Built(self.construct_document(item), item.start_mark))
        node.end_mark = self.get_event().end_mark
        return node

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        try:
            return self.construct_document(node)
        finally:
            _release_nodes(node)  # the values built live on; their nodes go, in pieces

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        mapping = Mapping(super().construct_mapping(node, deep=True))
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, _ in node.value:
            try:
                key = self.construct_object(key_node, deep=True)
                mapping.key_lines[key] = key_node.start_mark.line + 1
            except Exception:  # an unhashable key is reported by construct_mapping
                continue
        return mapping


class _Sequence(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line of each item."""

    item_lines: list[int]


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    sequence = _Sequence(loader.construct_sequence(node, deep=True))
    sequence.item_lines = [item.start_mark.line + 1 for item in node.value]
    return sequence


_LineLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping
)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_LineLoader.add_constructor(_Built.TAG, lambda loader, node: node.value)


def item_lines(sequence: Any) -> list[int]:
    """The YAML line of each item of a sequence (0 for each when unknown)."""
    return list(getattr(sequence, "item_lines", [0] * len(sequence)))


def load_yaml(text: str, source: str) -> Any:
    """YAML (mappings and lists remember their lines); any bad input is one ConfigError."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "top"
        reason = getattr(exc, "problem", None) or str(exc).partition("\n")[0]
        raise ConfigError(source, [f"{where}: not valid YAML: {reason}"]) from None
    except RecursionError:
        raise ConfigError(source, ["top: YAML nested too deeply"]) from None
    except Exception as exc:  # noqa: BLE001 - any bad input is one ConfigError
        # PyYAML's constructors raise plain exceptions for a value that only looks like
        # its tag or type: 2001-13-45, !!int x, an empty !!float, !!bool maybe, an
        # integer of 5,000 digits.
        raise ConfigError(source, [f"top: not valid YAML: a value cannot be read "
                                   f"({type(exc).__name__}: {exc})"]) from None


def _release_nodes(node: yaml.Node) -> None:
    """Empties a node tree one node at a time (see release: the nodes of a large file
    freed at once held the GIL for a tenth of a second)."""
    pending: list[Any] = [node]
    while pending:
        item = pending.pop()
        value = None if isinstance(item, _Built) else item.value  # a _Built's is the data's
        if isinstance(value, list):
            while value:
                child = value.pop()
                if isinstance(child, tuple):  # a mapping's (key node, value node)
                    pending.extend(child)
                else:
                    pending.append(child)


def release(document: Any) -> None:
    """Empties a parsed document one container at a time, so that it is freed in small
    pieces. Freed at once, the objects of a file of several megabytes take a tenth of a
    second and more to deallocate with the GIL held, and a daemon's event loop in another
    thread waits as long; between two pieces the interpreter lets it run. Only for a
    document nobody else holds: what was validated out of it is new values, not its
    containers."""
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            while item:
                pending.append(item.pop())
        elif isinstance(item, dict):
            while item:
                pending.append(item.popitem()[1])


def parse(text: str, source: str, build: Callable[[Any], T]) -> T:
    """`build` of the YAML document in `text`, which is then released (see release)."""
    document = load_yaml(text, source)
    try:
        return build(document)
    finally:
        release(document)


_read_config = partial(read_bounded, limit=CONFIG_FILE)


def read_text(path: Path, read: Callable[[Path], bytes] = _read_config) -> str:
    """A configuration file's text (a regular file within CONFIG_FILE's cap); unreadable,
    refused or non-UTF-8 is a ConfigError."""
    try:
        data = read(path)
    except OSError as exc:
        raise ConfigError(str(path), [f"top: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"top: not UTF-8 text (byte {exc.start})"]) from None


def load_file(path: Path, read: Callable[[Path], bytes] = _read_config) -> Any:
    """A configuration file, parsed."""
    return load_yaml(read_text(path, read), str(path))
