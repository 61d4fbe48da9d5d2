"""Safe YAML loading that remembers where every value came from.

PyYAML's ``safe_load`` throws away positions and silently accepts duplicate
keys. Workspace-as-code needs both: every error names the file, line and
column of the offending node. This module composes the YAML node graph with a
``SafeLoader`` and builds plain JSON-compatible Python values from it while
recording a :class:`SourceMap` (path -> marks).

It also defines :class:`SpecError`, the one exception type of the workspace
loader (re-exported by :mod:`flowlink.workspaces.spec`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from flowlink.jsonsafe import text_problem

__all__ = [
    "Mark",
    "NodeMarks",
    "Path",
    "SourceMap",
    "SpecError",
    "dump_yaml",
    "format_path",
    "load_yaml",
    "to_plain",
]

#: A location inside a loaded document: mapping keys and list indexes.
Path = tuple[str | int, ...]

MAX_DEPTH = 100
"""Deepest nesting of mappings and lists accepted in a YAML file."""


class SpecError(Exception):
    """A workspace-as-code error.

    ``str()`` is ``'FILE:LINE:COL: FIELD: message'`` (parts omitted when unknown).
    """

    file: str | None
    line: int | None
    column: int | None
    field: str | None
    message: str

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        location = ":".join(
            str(part) for part in (self.file, self.line, self.column) if part is not None
        )
        parts = [p for p in (location, self.field) if p]
        parts.append(self.message)
        return ": ".join(parts)

    def __repr__(self) -> str:
        return f"SpecError({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_spec_error, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON: ``{"file", "line", "column", "field", "message"}``."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }


def _rebuild_spec_error(data: dict[str, Any]) -> SpecError:
    return SpecError(
        data["message"],
        file=data["file"],
        line=data["line"],
        column=data["column"],
        field=data["field"],
    )


@dataclass(frozen=True, order=True)
class Mark:
    """A 1-based line and column in a source file."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> Mark | None:
        """Convert a 0-based PyYAML mark."""
        if mark is None:
            return None
        return cls(mark.line + 1, mark.column + 1)


@dataclass(frozen=True)
class NodeMarks:
    """Where a value starts, and where the key naming it starts (mapping values only)."""

    value: Mark
    key: Mark | None = None

    @property
    def best(self) -> Mark:
        """The key's mark when there is one (the line a reader looks for), else the value's."""
        return self.key or self.value


def format_path(path: Iterable[str | int], root: str = "") -> str:
    """Render a path as ``a.b[0].c`` (``root`` is prefixed when given)."""
    out = root
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


class SourceMap:
    """Marks of every value of a loaded document, by path."""

    def __init__(self, file: str | None) -> None:
        self.file = file
        self._marks: dict[Path, NodeMarks] = {}

    def __contains__(self, path: object) -> bool:
        return path in self._marks

    def set(self, path: Path, marks: NodeMarks) -> None:
        """Record the marks of ``path``."""
        self._marks[path] = marks

    def get(self, path: Iterable[str | int]) -> NodeMarks | None:
        """Marks of ``path`` or of its nearest recorded ancestor."""
        p = tuple(path)
        while True:
            found = self._marks.get(p)
            if found is not None or not p:
                return found
            p = p[:-1]

    def value_mark(self, path: Iterable[str | int]) -> Mark | None:
        """Where the value at ``path`` (or its nearest ancestor) starts."""
        found = self.get(path)
        return found.value if found else None

    def key_mark(self, path: Iterable[str | int]) -> Mark | None:
        """Where the key naming ``path`` starts (falls back to the value's mark)."""
        found = self.get(path)
        return found.best if found else None

    def error(
        self,
        path: Iterable[str | int],
        message: str,
        *,
        at_key: bool = False,
        field: str | None = None,
        mark: Mark | None = None,
    ) -> SpecError:
        """A :class:`SpecError` located at ``path`` (its key when ``at_key``)."""
        p = tuple(path)
        if mark is None:
            mark = self.key_mark(p) if at_key else self.value_mark(p)
        return SpecError(
            message,
            file=self.file,
            line=mark.line if mark else None,
            column=mark.column if mark else None,
            field=field if field is not None else (format_path(p) or None),
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates and ``=`` as strings (JSON has no dates)."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = frozenset(
    {
        _STR,
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
    }
)
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    return type(value).__name__


SECRET_TAG = "!secret"


@dataclass(frozen=True)
class SecretValue:
    """A value written ``!secret ...`` (settings.yml only): a secret setting; None = not given."""

    value: str | None


class _Builder:
    """Builds plain values from composed nodes, checking what safe_load does not."""

    def __init__(self, loader: _Loader, smap: SourceMap, *, secrets: bool = False) -> None:
        self.loader = loader
        self.smap = smap
        self.secrets = secrets
        self.built = 0
        self.unique: set[int] = set()
        self.active: set[int] = set()

    def fail(self, node: Node, message: str, path: Path) -> SpecError:
        mark = Mark.of(node.start_mark)
        return self.smap.error(path, message, mark=mark)

    def build(self, node: Node, path: Path, key_mark: Mark | None, depth: int) -> Any:
        self.built += 1
        self.unique.add(id(node))
        # Aliases can expand a small document into a huge one ("billion laughs").
        if self.built > 10 * len(self.unique) + 10_000:
            raise self.fail(node, "too many YAML alias expansions", path)
        if depth > MAX_DEPTH:
            raise self.fail(node, f"nested more than {MAX_DEPTH} levels deep", path)
        value_mark = Mark.of(node.start_mark) or Mark(1, 1)
        if isinstance(node, ScalarNode):
            value = self.scalar(node, path)
        elif id(node) in self.active:
            raise self.fail(node, "recursive YAML alias", path)
        else:
            self.active.add(id(node))
            try:
                if isinstance(node, MappingNode):
                    value = self.mapping(node, path, depth)
                elif isinstance(node, SequenceNode):
                    value = self.sequence(node, path, depth)
                else:  # pragma: no cover - PyYAML only has three node kinds
                    raise self.fail(node, "unsupported YAML node", path)
            finally:
                self.active.discard(id(node))
        self.smap.set(path, NodeMarks(value_mark, key_mark))
        return value

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        if node.tag == SECRET_TAG and self.secrets and len(path) == 1:
            return SecretValue(node.value if node.value != "" else None)
        if node.tag == SECRET_TAG and self.secrets:
            raise self.fail(
                node, "!secret marks a whole setting: write 'name: !secret value'", path
            )
        if node.tag not in _SCALAR_TAGS:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r}", path)
        try:
            value = self.loader.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            raise self.fail(node, f"invalid YAML value: {exc.problem}", path) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(node, f"{value!r} is not a valid JSON number", path)
        if isinstance(value, str):
            # "\ud800" or "\0" escapes: text the store cannot hold (see flowlink.jsonsafe)
            problem = text_problem(value)
            if problem is not None:
                raise self.fail(node, problem, path)
        return value

    def key(self, node: Node, path: Path) -> str:
        if not isinstance(node, ScalarNode):
            raise self.fail(node, "mapping keys must be strings, not collections", path)
        value = self.scalar(node, path)
        if not isinstance(value, str):
            raise self.fail(
                node,
                f"mapping keys must be strings, got {_describe(value)} "
                f"(write it in quotes: '{node.value}')",
                path,
            )
        return value

    def mapping(self, node: MappingNode, path: Path, depth: int) -> dict[str, Any]:
        if node.tag != _MAP:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r}", path)
        seen: dict[str, Mark | None] = {}
        explicit: list[tuple[str, Node, Node]] = []
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merges.append(value_node)
                continue
            key = self.key(key_node, path)
            if key in seen:
                first = seen[key]
                where = f" (first defined on line {first.line})" if first else ""
                raise self.fail(key_node, f"duplicate key {key!r}{where}", (*path, key))
            seen[key] = Mark.of(key_node.start_mark)
            explicit.append((key, key_node, value_node))
        result: dict[str, Any] = {}
        for merge in merges:
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    raise self.fail(source, "a YAML merge (<<) needs a mapping", path)
                merged = self.build(source, path, None, depth + 1)
                for key, value in merged.items():
                    result.setdefault(key, value)
        for key, key_node, value_node in explicit:
            result[key] = self.build(
                value_node, (*path, key), Mark.of(key_node.start_mark), depth + 1
            )
        return result

    def sequence(self, node: SequenceNode, path: Path, depth: int) -> list[Any]:
        if node.tag != _SEQ:
            raise self.fail(node, f"unsupported YAML tag {node.tag!r}", path)
        return [
            self.build(item, (*path, index), None, depth + 1)
            for index, item in enumerate(node.value)
        ]


def _line_col(text: str, position: int) -> Mark:
    before = text[:position]
    line = before.count("\n") + 1
    column = position - (before.rfind("\n") + 1) + 1
    return Mark(line, column)


def _syntax_error(exc: yaml.YAMLError, text: str, file: str | None) -> SpecError:
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "invalid YAML"
        message = f"invalid YAML: {problem}"
        context_mark = Mark.of(exc.context_mark)
        if exc.problem and exc.context:
            where = f" on line {context_mark.line}" if context_mark else ""
            message += f" ({exc.context}{where})"
        mark = Mark.of(exc.problem_mark) or context_mark
    elif isinstance(exc, yaml.reader.ReaderError):
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else repr(char)
        message = f"invalid YAML: unacceptable character {shown}: {exc.reason}"
        mark = _line_col(text, exc.position)
    else:
        message = f"invalid YAML: {exc}"
        mark = None
    return SpecError(
        message,
        file=file,
        line=mark.line if mark else None,
        column=mark.column if mark else None,
    )


def load_yaml(text: str, file: str | None, *, secrets: bool = False) -> tuple[Any, SourceMap]:
    """Parse one YAML document safely into plain JSON-compatible values and their marks.

    Rejects what ``yaml.safe_load`` lets through unnoticed: duplicate keys,
    non-string keys, non-JSON values (dates stay strings), recursive aliases
    and alias bombs. An empty document loads as ``None``. Raises
    :class:`SpecError` naming ``file``, line and column. With ``secrets``, a top-level value
    tagged ``!secret`` loads as a :class:`SecretValue` (the text as written).
    """
    smap = SourceMap(file)
    if not isinstance(text, str):
        raise SpecError(f"expected text, got {type(text).__name__}", file=file)
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, smap
        return _Builder(loader, smap, secrets=secrets).build(node, (), None, 0), smap
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, text, file) from None
    except RecursionError:
        raise SpecError(
            f"invalid YAML: nested more than {MAX_DEPTH} levels deep", file=file
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def to_plain(value: Any) -> Any:
    """Deep-copy ``value`` into plain dicts and lists (for dumping and comparing)."""
    if isinstance(value, SecretValue):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as ``|`` blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data.rstrip("\n") else None
    return dumper.represent_scalar(_STR, data, style=style)


def _represent_secret(dumper: yaml.SafeDumper, data: SecretValue) -> yaml.ScalarNode:
    return dumper.represent_scalar(SECRET_TAG, data.value or "")


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(SecretValue, _represent_secret)


def dump_yaml(value: Any) -> str:
    """Dump plain values as block-style YAML that :func:`load_yaml` reads back equal."""
    text: str = yaml.dump(
        to_plain(value),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return text
