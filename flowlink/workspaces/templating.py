"""``{{config.X}}`` templating of a workspace's config.

Any string inside ``config.value`` that contains ``{{`` is a Jinja2 template
rendered in a sandbox that can reach nothing but ``config`` (the config
itself, with environment overrides). Strings without ``{{`` are never touched.

Safety model, in layers:

* a static check of the template's syntax tree: only ``{{ ... }}`` output (no
  ``{% ... %}`` statements), no calls, no names other than ``config``, no
  dunder attributes, only a short list of harmless filters, bounded size;
* ``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined``, no globals
  (no ``range``), calls refused, ``*``, ``**`` and ``%`` checked so they cannot
  build huge values;
* every rendered value is capped at :data:`MAX_RENDERED_CHARS`.

References may chain (``A`` uses ``B`` which uses ``C``): templates are
rendered in dependency order and a cycle is an error naming its keys.
"""

from __future__ import annotations

import base64
import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import SandboxedEnvironment

from .page_templates import check_binop, is_number
from .yamlsource import Path, SourceMap, SpecError, format_path, load_yaml, to_plain

__all__ = [
    "ENV_PREFIX",
    "MAX_RENDERED_CHARS",
    "MAX_TEMPLATE_NODES",
    "TemplateProblem",
    "check_template",
    "env_overrides",
    "is_template",
    "render_config",
    "render_over",
]

ENV_PREFIX = "WORKSPACE_CONFIG_"
"""Environment variables ``WORKSPACE_CONFIG_<slug>_<KEY>`` supply ``config.KEY``."""

MAX_TEMPLATE_NODES = 256
"""Largest template accepted, counted in syntax-tree nodes."""

MAX_RENDERED_CHARS = 256 * 1024
"""Longest string a template may produce (or turn a mapping/list into)."""

ALLOWED_FILTERS: frozenset[str] = frozenset(
    {
        "abs",
        "b64decode",
        "b64encode",
        "capitalize",
        "count",
        "d",
        "default",
        "first",
        "float",
        "int",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "max",
        "min",
        "reverse",
        "round",
        "sort",
        "string",
        "sum",
        "title",
        "tojson",
        "trim",
        "unique",
        "upper",
        "urlencode",
        "wordcount",
    }
)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_template(value: str) -> bool:
    """True when ``value`` is rendered as a template (it contains ``{{``)."""
    return "{{" in value


def config_ref(path: Path) -> str:
    """``("headers", "apiKey")`` -> ``config.headers.apiKey`` (as written in a template)."""
    out = "config"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.fullmatch(part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


class TemplateProblem(ValueError):
    """A template that cannot be compiled; ``lineno`` is 1-based within the template."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


# --------------------------------------------------------------------------- views


class _DictView(Mapping[str, Any]):
    """A config mapping as templates see it: keys only, values rendered on demand."""

    def __init__(self, resolver: _Resolver, path: Path, raw: dict[str, Any]) -> None:
        self._resolver = resolver
        self._path = path
        self._raw = raw

    def lookup(self, key: Any) -> Any:
        if isinstance(key, str) and key in self._raw:
            return self._resolver.resolve((*self._path, key), self._raw[key])
        hint = f"{config_ref((*self._path, str(key)))} is not defined"
        close = difflib.get_close_matches(str(key), [str(k) for k in self._raw], n=1)
        if close:
            hint += f" (did you mean {config_ref((*self._path, close[0]))}?)"
        return _ENV.undefined(hint=hint, obj=self, name=str(key))

    def __getitem__(self, key: str) -> Any:
        if key not in self._raw:
            raise KeyError(key)
        return self.lookup(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def materialize(self) -> Any:
        return self._resolver.materialize(self._path, self._raw)

    def __str__(self) -> str:
        return _bounded(str(self.materialize()), self._path)

    __repr__ = __str__


class _ListView(Sequence[Any]):
    """A config list as templates see it."""

    def __init__(self, resolver: _Resolver, path: Path, raw: list[Any]) -> None:
        self._resolver = resolver
        self._path = path
        self._raw = raw

    def lookup(self, index: Any) -> Any:
        if isinstance(index, int) and not isinstance(index, bool):
            if -len(self._raw) <= index < len(self._raw):
                real = index % len(self._raw)
                return self._resolver.resolve((*self._path, real), self._raw[real])
            hint = (
                f"{config_ref((*self._path, index))} is not defined "
                f"(the list has {len(self._raw)} items)"
            )
        else:
            hint = f"{config_ref(self._path)} is a list; {index!r} is not an index"
        return _ENV.undefined(hint=hint, obj=self, name=str(index))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.lookup(i) for i in range(len(self._raw))[index]]
        if not isinstance(index, int) or not -len(self._raw) <= index < len(self._raw):
            raise IndexError(index)
        return self.lookup(index)

    def __len__(self) -> int:
        return len(self._raw)

    def materialize(self) -> Any:
        return self._resolver.materialize(self._path, self._raw)

    def __str__(self) -> str:
        return _bounded(str(self.materialize()), self._path)

    __repr__ = __str__


def _bounded(text: str, path: Path) -> str:
    if len(text) > MAX_RENDERED_CHARS:
        raise SecurityError(
            f"{config_ref(path)} would produce more than {MAX_RENDERED_CHARS} characters"
        )
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, _DictView | _ListView):
        return value.materialize()
    if isinstance(value, Undefined):
        str(value)  # StrictUndefined raises with its hint
    return value


# --------------------------------------------------------------------------- environment


class _ConfigEnvironment(SandboxedEnvironment):
    """The sandbox config templates run in."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``a.b``: config keys only; values (strings, numbers) expose nothing."""
        if isinstance(obj, _DictView | _ListView):
            return obj.lookup(attribute)
        return self._no_field(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """``a[b]``: config keys, and indexes or slices of strings."""
        if isinstance(obj, _DictView | _ListView) and not isinstance(argument, slice):
            return obj.lookup(argument)
        if isinstance(obj, _DictView | _ListView | str) and (
            isinstance(argument, slice)
            or (isinstance(argument, int) and not isinstance(argument, bool))
        ):
            return super().getitem(obj, argument)
        return self._no_field(obj, argument)

    def _no_field(self, obj: Any, name: Any) -> Undefined:
        if isinstance(obj, Undefined):
            str(obj)  # StrictUndefined raises with the original hint
        kind = "null" if obj is None else type(obj).__name__
        return self.undefined(hint=f"a {kind} value has no field {name!r}", obj=obj, name=str(name))

    def call(
        __self,
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> NoReturn:
        raise SecurityError("function and method calls are not allowed in config templates")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and not (is_number(left) and is_number(right)):
            raise SecurityError("% string formatting is not allowed in config templates")
        check_binop(operator, left, right, MAX_RENDERED_CHARS)
        return super().call_binop(context, operator, left, right)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(_plain(value), ensure_ascii=False, indent=indent)


def _b64encode(value: Any) -> str:
    return base64.b64encode(str(_plain(value)).encode("utf-8")).decode("ascii")


def _b64decode(value: Any) -> str:
    return base64.b64decode(str(_plain(value)).encode("utf-8")).decode("utf-8")


def _make_env() -> _ConfigEnvironment:
    env = _ConfigEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.globals.clear()
    filters = {name: f for name, f in env.filters.items() if name in ALLOWED_FILTERS}
    filters.update(tojson=_tojson, b64encode=_b64encode, b64decode=_b64decode)
    env.filters = filters
    return env


_ENV = _make_env()


# --------------------------------------------------------------------------- compiling


@dataclass(frozen=True)
class _Compiled:
    template: Template
    refs: tuple[Path, ...]  # constant config paths the template reads
    dynamic: bool  # it also reads config through computed keys
    carriage: str | None = None  # stands for "\r" in the template text (see _compile)

    def render(self, config: Any) -> str:
        text = self.template.render(config=config)
        return text if self.carriage is None else text.replace(self.carriage, "\r")


def _chain(node: nodes.Node) -> Path | None:
    """The constant path of ``config.a["b"][0]``, or None when it is something else."""
    if isinstance(node, nodes.Name):
        return () if node.name == "config" else None
    if isinstance(node, nodes.Getattr):
        base = _chain(node.node)
        return None if base is None else (*base, node.attr)
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        key = node.arg.value
        if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
            base = _chain(node.node)
            return None if base is None else (*base, key)
    return None


def _references(tree: nodes.Template) -> tuple[tuple[Path, ...], bool]:
    refs: list[Path] = []
    dynamic = False

    def visit(node: nodes.Node) -> None:
        nonlocal dynamic
        path = _chain(node)
        if path is not None:
            refs.append(path)
            return
        if isinstance(node, nodes.Getitem) and _chain(node.node) is not None:
            dynamic = True  # config[<expression>]: resolved lazily at render time
            visit(node.arg)
            return
        for child in node.iter_child_nodes():
            visit(child)

    visit(tree)
    return tuple(refs), dynamic


def _check_tree(tree: nodes.Template) -> None:
    for statement in tree.body:
        if not isinstance(statement, nodes.Output):
            raise TemplateProblem(
                "only {{ ... }} expressions are allowed in config templates, "
                "not {% ... %} statements",
                statement.lineno,
            )
    count = 0
    for node in tree.find_all(nodes.Node):
        count += 1
        if isinstance(node, nodes.Call):
            raise TemplateProblem(
                "function and method calls are not allowed in config templates", node.lineno
            )
        if isinstance(node, nodes.Name) and node.name != "config":
            raise TemplateProblem(
                f"unknown name {node.name!r}: config templates can only use config",
                node.lineno,
            )
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            hint = ""
            if _chain(node.node) is not None:
                hint = f" (write [{node.attr!r}] for a config key that starts with '_')"
            raise TemplateProblem(
                f"attribute {node.attr!r} is not allowed in config templates{hint}", node.lineno
            )
        if isinstance(node, nodes.Filter) and node.name not in ALLOWED_FILTERS:
            raise TemplateProblem(
                f"filter {node.name!r} is not allowed in config templates "
                f"(allowed: {', '.join(sorted(ALLOWED_FILTERS))})",
                node.lineno,
            )
    if count > MAX_TEMPLATE_NODES:
        raise TemplateProblem(f"template too complex (more than {MAX_TEMPLATE_NODES} parts)")


def _carriage_stand_in(source: str) -> str | None:
    """A private-use character absent from ``source``, to protect its ``\r`` from Jinja2."""
    return next((chr(c) for c in range(0xE000, 0xF900) if chr(c) not in source), None)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> _Compiled:
    # Jinja2 turns every "\r\n" and "\r" of a template into "\n"; config text
    # around expressions must come out unchanged, so "\r" travels as a stand-in.
    if "\r" in source:
        carriage = _carriage_stand_in(source)
        if carriage is not None:
            try:
                compiled = _compile_exact(source.replace("\r", carriage))
            except TemplateProblem:
                pass  # a "\r" inside {{ ... }}: compile as is (below)
            else:
                return _Compiled(compiled.template, compiled.refs, compiled.dynamic, carriage)
    return _compile_exact(source)


def _compile_exact(source: str) -> _Compiled:
    try:
        tree = _ENV.parse(source)
        _check_tree(tree)
        refs, dynamic = _references(tree)
        template = _ENV.from_string(tree)
    except TemplateProblem:
        raise
    except TemplateError as exc:
        lineno = getattr(exc, "lineno", None) or 1
        raise TemplateProblem(f"invalid template: {exc.message or exc}", lineno) from None
    except RecursionError:
        raise TemplateProblem("template nested too deeply") from None
    except Exception as exc:  # pragma: no cover - Jinja2 should only raise TemplateError
        raise TemplateProblem(f"invalid template: {exc}") from None
    return _Compiled(template, refs, dynamic)


def check_template(source: str) -> None:
    """Raise :class:`TemplateProblem` unless ``source`` is a valid, allowed config template."""
    _compile(source)


# --------------------------------------------------------------------------- rendering


class _Resolver:
    """Renders the templates of one config, each once, in dependency order."""

    def __init__(
        self, root: dict[str, Any], literal: set[Path], file: str, smap: SourceMap | None
    ) -> None:
        self.root = root
        self.literal = literal
        self.file = file
        self.smap = smap
        self.rendered: dict[Path, str] = {}
        self.in_progress: list[Path] = []
        self.root_view = _DictView(self, (), root)

    # -- errors

    def error(self, path: Path, message: str) -> SpecError:
        full = ("config", "value", *path)
        mark = self.smap.value_mark(full) if self.smap is not None and full in self.smap else None
        return SpecError(
            message,
            file=self.file,
            line=mark.line if mark else None,
            column=mark.column if mark else None,
            field=format_path(full),
        )

    def cycle(self, chain: list[Path]) -> NoReturn:
        names = " -> ".join(config_ref(p) for p in chain)
        raise self.error(chain[0], f"templates reference each other in a cycle: {names}")

    # -- templates

    def templates(self) -> dict[Path, str]:
        found: dict[Path, str] = {}

        def walk(path: Path, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk((*path, key), item)
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    walk((*path, index), item)
            elif isinstance(value, str) and path not in self.literal and is_template(value):
                found[path] = value

        walk((), self.root)
        return found

    def compiled(self, path: Path, source: str) -> _Compiled:
        try:
            return _compile(source)
        except TemplateProblem as exc:
            raise self.error(path, exc.message) from None

    def render_all(self) -> None:
        """Render every template, dependencies first; a cycle is an error."""
        templates = self.templates()
        under: dict[Path, list[Path]] = {}
        for path in templates:
            for size in range(len(path) + 1):
                under.setdefault(path[:size], []).append(path)
        deps: dict[Path, list[Path]] = {}
        for path, source in templates.items():
            found: dict[Path, None] = {}
            for ref in self.compiled(path, source).refs:
                for target in under.get(ref, ()):
                    found[target] = None
                for size in range(len(ref)):
                    if ref[:size] in templates:
                        found[ref[:size]] = None
            deps[path] = list(found)
        state: dict[Path, int] = {}  # 1 = on the stack, 2 = done
        for start in templates:
            if start in state:
                continue
            state[start] = 1
            stack: list[tuple[Path, Iterator[Path]]] = [(start, iter(deps[start]))]
            while stack:
                path, pending = stack[-1]
                dep: Path | None = next(pending, None)
                if dep is None:
                    stack.pop()
                    state[path] = 2
                    self.render(path, templates[path])
                elif state.get(dep) == 1:
                    on_stack = [p for p, _ in stack]
                    self.cycle([*on_stack[on_stack.index(dep) :], dep])
                elif dep not in state:
                    state[dep] = 1
                    stack.append((dep, iter(deps[dep])))

    def render(self, path: Path, source: str) -> str:
        if path in self.rendered:
            return self.rendered[path]
        if path in self.in_progress:
            self.cycle([*self.in_progress[self.in_progress.index(path) :], path])
        compiled = self.compiled(path, source)
        self.in_progress.append(path)
        try:
            text = compiled.render(self.root_view)
            text = _bounded(text, path)
        except SpecError:
            raise
        except UndefinedError as exc:
            raise self.error(path, str(exc.message or exc)) from None
        except SecurityError as exc:
            raise self.error(path, f"not allowed: {exc}") from None
        except RecursionError:
            raise self.error(path, "templates reference each other too deeply") from None
        except Exception as exc:
            raise self.error(path, f"template failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.in_progress.pop()
        self.rendered[path] = text
        return text

    def resolve(self, path: Path, raw: Any) -> Any:
        """The value templates see at ``path``."""
        if isinstance(raw, dict):
            return _DictView(self, path, raw)
        if isinstance(raw, list):
            return _ListView(self, path, raw)
        if isinstance(raw, str) and path not in self.literal and is_template(raw):
            return self.render(path, raw)
        return raw

    def materialize(self, path: Path, raw: Any) -> Any:
        """Plain value at ``path`` with every template rendered."""
        if isinstance(raw, dict):
            return {key: self.materialize((*path, key), item) for key, item in raw.items()}
        if isinstance(raw, list):
            return [self.materialize((*path, index), item) for index, item in enumerate(raw)]
        if isinstance(raw, str) and path not in self.literal and is_template(raw):
            return self.render(path, raw)
        return raw


def env_overrides(slug: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Config keys supplied by ``WORKSPACE_CONFIG_<slug>_<KEY>`` variables, sorted by key."""
    prefix = f"{ENV_PREFIX}{slug}_"
    found = {
        name[len(prefix) :]: value
        for name, value in environ.items()
        if name.startswith(prefix) and len(name) > len(prefix)
    }
    return dict(sorted(found.items()))


def render_config(
    slug: str,
    value: Mapping[str, Any],
    environ: Mapping[str, str],
    *,
    file: str = "workspace.yml",
    source_text: str | None = None,
) -> dict[str, Any]:
    """Render ``{{config.X}}`` templates in a workspace's ``config.value``.

    ``value`` is the raw config (``WorkspaceSpec.config_value``); it is not
    modified. Keys supplied by ``WORKSPACE_CONFIG_<slug>_<KEY>`` variables in
    ``environ`` are added when ``value`` does not define them (as literal
    strings, never templates). Returns a new plain dict. Raises
    :class:`SpecError` naming ``file`` (and, when ``source_text`` of the
    workspace.yml is given, the line) for an undefined reference, a cycle, an
    invalid or disallowed template.
    """
    if not isinstance(value, Mapping):
        raise SpecError(
            f"expected a mapping, got {type(value).__name__}", file=file, field="config.value"
        )
    root: dict[str, Any] = to_plain(value)
    literal: set[Path] = set()
    for key, env_value in env_overrides(slug, environ).items():
        if key not in root:
            root[key] = env_value
            literal.add((key,))
    smap: SourceMap | None = None
    if source_text is not None:
        try:
            smap = load_yaml(source_text, file)[1]
        except SpecError:
            smap = None
    resolver = _Resolver(root, literal, file, smap)
    resolver.render_all()
    rendered: dict[str, Any] = resolver.materialize((), root)
    return rendered


def render_over(
    value: Mapping[str, Any], base: Mapping[str, Any], *, file: str, field: str
) -> dict[str, Any]:
    """Render ``{{config.X}}`` templates in ``value`` where ``config`` is ``base`` + ``value``.

    ``base`` (an already rendered config, e.g. the host workspace's) is used literally;
    keys of ``value`` win. Returns the rendered keys of ``value`` only. Errors are
    :class:`SpecError` naming ``file`` and ``field``.
    """
    root: dict[str, Any] = to_plain(base)
    own = to_plain(value)
    root.update(own)
    literal: set[Path] = {(key,) for key in root if key not in own}
    resolver = _Resolver(root, literal, file, None)
    try:
        resolver.render_all()
        rendered: dict[str, Any] = resolver.materialize((), root)
    except SpecError as error:
        raise SpecError(error.message, file=file, field=field) from None
    return {key: rendered[key] for key in own}
