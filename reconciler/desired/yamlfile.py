"""YAML files read safely and with line numbers: ``load_yaml`` and ``YamlLines``.

Pure. Duplicate keys, aliases past a limit and unknown tags are problems, not surprises; a
problem's line is found from the node path. Called by ``desired.domains`` and ``desired.hosts``.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any

import yaml
from pydantic import ValidationError

from reconciler import fastyaml
from reconciler.errors import Problem


class _Loader(yaml.CSafeLoader):
    """Safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_Loader)


def _node_line(
    root: yaml.Node | None,
    loc: Iterable[int | str],
    keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] | None = None,
) -> int | None:
    """Line of the YAML node at a pydantic error location (the deepest one that exists).

    ``keys`` caches each mapping's key index, so that many problems in one big mapping cost
    linear time, not quadratic.
    """
    keys = {} if keys is None else keys
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            index = keys.get(id(node))
            if index is None:
                index = {}
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        index.setdefault(key_node.value, (key_node, value_node))
                keys[id(node)] = index
            found = index.get(str(part))
            if found is None:
                return line
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


class YamlLines:
    """Line numbers of a domain file's YAML nodes, composed only when a message needs one."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._root: yaml.Node | None = None
        self._done = False
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def at(self, loc: Iterable[int | str]) -> int | None:
        if not self._done:
            try:
                self._root = _compose(self._text)
            except yaml.YAMLError:
                self._root = None
            self._done = True
        return _node_line(self._root, loc, self._keys)


def load_yaml(path: str, data: bytes) -> tuple[Any, list[Problem]]:
    """Safe-load YAML refusing duplicate keys; a syntax error becomes a problem with its line."""
    # The collector finds nothing to free in a freshly built document but costs ~30 % of the load.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text")]
    enabled = gc.isenabled()
    gc.disable()
    try:
        fast = fastyaml.load(text)  # the common shape, ~3x faster; None for anything else
        if fast is not None:
            return fast, []
        return yaml.load(text, Loader=_Loader), []  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(path, line, f"invalid YAML: {reason}")]
    finally:
        if enabled:
            gc.enable()


def validation_problems(path: str, lines: YamlLines, exc: ValidationError, limit: int) -> list[Problem]:
    """A model's validation errors as problems at their YAML lines (at most ``limit``, then a count)."""
    errors = exc.errors(include_url=False)
    problems: list[Problem] = []
    if len(errors) > limit:
        problems.append(Problem(path, None, f"{len(errors)} problems; only the first {limit} are listed"))
    for err in errors[:limit]:
        loc = err["loc"]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        problems.append(Problem(path, lines.at(loc), f"{'.'.join(str(p) for p in loc)}: {msg}"))
    return problems
