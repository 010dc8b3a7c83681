"""Reading YAML and JSON that may be hostile: size, encoding, nesting and alias limits, one-line errors.

params.yaml, inventory.json and the configs of a fetched snapshot come from outside: a clone,
a download, a colleague's edit. Each is read here with a byte limit, decoded as strict UTF-8,
parsed with a nesting limit, and (YAML) with aliases counted as if expanded, so an alias bomb
("billion laughs") is refused after one linear pass instead of exhausting memory. Every
failure is one line naming the file, where in it, what is wrong, and what to do.

This module knows file formats and limits; it knows nothing about what the documents mean.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from harmonia.errors import FileFormatError

# params.yaml is a few KB. PyYAML parses about 130 KB/s in pure Python on a 2-core AMD EPYC
# (yaml.safe_load takes as long), so 256 KiB bounds a load at about 2 s.
MAX_YAML_BYTES = 256 << 10
MAX_JSON_BYTES = 16 << 20
MAX_DEPTH = 64  # nesting of collections; Harmonia's own files need fewer than 10 levels
MAX_YAML_VALUES = 200_000  # collections and scalars, counting every alias as a full copy

Source = str | bytes | os.PathLike[str]


def load_yaml(
    source: Source,
    what: str,
    *,
    max_bytes: int = MAX_YAML_BYTES,
    max_depth: int = MAX_DEPTH,
    max_values: int = MAX_YAML_VALUES,
    error: type[Exception] = FileFormatError,
    fix: str | None = None,
) -> Any:
    """Parse one YAML document safely (plain data only, like ``yaml.safe_load``).

    Args:
        source: a path (``Path`` or ``os.PathLike``), or the document itself as ``str``/``bytes``.
        what: how messages name the document, e.g. ``"params.yaml"``.
        max_bytes: refuse a larger document.
        max_depth: refuse collections nested deeper than this.
        max_values: refuse a document whose values, with every alias counted as a full copy
            of what it points to, number more than this (alias bombs); aliases themselves,
            anchors and merge keys (``<<: *defaults``) are fine.
        error: the exception class to raise (e.g. ``ParamsError``).
        fix: what to do, ending each message; by default a fix that suits the problem.

    Returns:
        The document's data; an empty document is None.

    Example:
        >>> load_yaml("a: &x [1, 2]\\nb: *x\\n", "demo.yaml")
        {'a': [1, 2], 'b': [1, 2]}
        >>> load_yaml("a: [1\\n", "demo.yaml")
        Traceback (most recent call last):
        ...
        harmonia.errors.FileFormatError: demo.yaml line 2, column 1: expected ',' or ']', but got '<stream end>'. Fix the file.
    """
    text = _text(source, what, max_bytes, error, fix)
    loader = None
    try:
        loader = _LimitedLoader(text, what, max_depth, error, fix)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, what, max_values, error, fix)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "not valid YAML"
        if exc.context and problem.startswith("but "):
            problem = f"{exc.context} {problem}"
        raise error(f"{_where(what, mark)}: {_one_line(problem)}. {fix or 'Fix the file.'}") from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise error(
            f"{what}: character #x{code:04x} at offset {exc.position} is not allowed in YAML "
            f"({exc.reason}). {fix or 'Remove it from the file.'}"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_json(
    source: Source,
    what: str,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_DEPTH,
    error: type[Exception] = FileFormatError,
    fix: str | None = None,
) -> Any:
    """Parse a JSON document safely: byte limit, strict UTF-8, nesting limit, one-line errors.

    Args: as :func:`load_yaml` (JSON has no aliases).

    Example:
        >>> load_json('{"a": [1, 2]}', "demo.json")
        {'a': [1, 2]}
        >>> load_json('{"a": }', "demo.json")
        Traceback (most recent call last):
        ...
        harmonia.errors.FileFormatError: demo.json line 1, column 7: Expecting value. Fix the file.
    """
    text = _text(source, what, max_bytes, error, fix)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} line {exc.lineno}, column {exc.colno}: {exc.msg}. {fix or 'Fix the file.'}"
        ) from None
    except RecursionError:
        raise _too_deep(what, max_depth, error, fix) from None
    if _depth(data) > max_depth:
        raise _too_deep(what, max_depth, error, fix)
    return data


def _text(source: Source, what: str, max_bytes: int, error: type[Exception], fix: str | None) -> str:
    """The document as text: at most ``max_bytes`` bytes, strict UTF-8, a leading BOM dropped."""
    if isinstance(source, str):
        data = source.encode("utf-8", "surrogatepass")
    elif isinstance(source, bytes):
        data = source
    else:
        with open(source, "rb") as f:
            data = f.read(max_bytes + 1)  # never more, whatever the file claims to be
    if len(data) > max_bytes:
        size = os.stat(source).st_size if isinstance(source, os.PathLike) else len(data)
        shown = f"{size:,} bytes" if size > max_bytes else f"more than {max_bytes:,} bytes"
        raise error(
            f"{what} is {shown}, over the {max_bytes:,}-byte limit for this file. "
            + (fix or "Check that it is the right file, or make it smaller.")
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}). "
            + (fix or "Save it as UTF-8.")
        ) from None
    return text.removeprefix("\ufeff")


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses collections nested deeper than ``max_depth``.

    Flow collections (``[[[[...``) are counted by the scanner, as it meets each bracket:
    PyYAML's scanner does work proportional to the open brackets for every token, so a
    megabyte of brackets would otherwise take minutes. Block collections are counted as
    they are composed, before PyYAML recurses into them.
    """

    def __init__(self, text: str, what: str, max_depth: int, error: type[Exception], fix: str | None):
        super().__init__(text)
        self._what, self._max_depth, self._error, self._fix = what, max_depth, error, fix
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        if self.flow_level >= self._max_depth:
            self._refuse_depth(self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        opens = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        self._depth += opens
        try:
            if self._depth > self._max_depth:
                self._refuse_depth(self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= opens

    def _refuse_depth(self, mark: yaml.Mark) -> None:
        raise self._error(
            f"{_where(self._what, mark)}: collections nested more than {self._max_depth} levels deep. "
            + (self._fix or "Flatten the file.")
        )


def _check_expansion(root: Node, what: str, max_values: int, error: type[Exception], fix: str | None) -> None:
    """Refuse a node graph whose alias-expanded size passes ``max_values`` or that contains itself.

    One pass over the composed nodes, each node's expanded size computed once (an alias is a
    second reference to the same node), so a bomb costs time linear in its text.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            total = 1 + sum(size[id(child)] for child in _children(node))
            if total > max_values:
                raise error(
                    f"{_where(what, node.start_mark)}: more than {max_values:,} values, counting each alias "
                    f"as a full copy (an alias bomb?). {fix or 'Use fewer aliases or a smaller file.'}"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise error(
                f"{_where(what, node.start_mark)}: an alias refers to a collection that contains it. "
                + (fix or "Remove the recursive alias.")
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _depth(data: Any) -> int:
    """How deeply lists and dicts nest in parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            stack.extend(
                (child, level + 1) for child in (value.values() if isinstance(value, dict) else value)
            )
    return deepest


def _too_deep(what: str, max_depth: int, error: type[Exception], fix: str | None) -> Exception:
    return error(
        f"{what}: collections nested more than {max_depth} levels deep. {fix or 'Flatten the file.'}"
    )


def _where(what: str, mark: yaml.Mark | None) -> str:
    return what if mark is None else f"{what} line {mark.line + 1}, column {mark.column + 1}"


def _one_line(text: str) -> str:
    return " ".join(text.split()).rstrip(".")
