"""Tests for {{config.X}} rendering (flowlink.workspaces.templating)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlink.workspaces import templating
from flowlink.workspaces.spec import SpecError, parse_spec
from flowlink.workspaces.templating import (
    MAX_RENDERED_CHARS,
    env_overrides,
    is_template,
    render_config,
)

from .test_spec import WORKSPACE_EXAMPLE


def render(
    value: dict[str, Any], environ: dict[str, str] | None = None, slug: str = "test"
) -> dict[str, Any]:
    return render_config(slug, value, environ or {})


def render_error(value: dict[str, Any], environ: dict[str, str] | None = None) -> SpecError:
    with pytest.raises(SpecError) as info:
        render(value, environ)
    return info.value


def test_design_example() -> None:
    spec = parse_spec(WORKSPACE_EXAMPLE)
    assert render_config(spec.slug, spec.config_value, {}) == {
        "API_URL": "https://api.example.com",
        "LOGIN_URL": "https://api.example.com/login",
        "headers": {"apiKey": "someAPIKey"},
    }
    assert spec.config_value["LOGIN_URL"] == "{{config.API_URL}}/login"  # input untouched


def test_nested_references_and_nested_templates() -> None:
    value = {
        "headers": {"apiKey": "k-1", "auth": "Key {{ config.headers.apiKey }}"},
        "urls": ["{{config.base}}/a", {"deep": "{{ config['base'] }}/b"}],
        "base": "https://x",
        "copy": "{{ config.urls[1].deep }}",
        "dashed-key": "d",
        "uses_dashed": "{{ config['dashed-key'] }}",
    }
    assert render(value) == {
        "headers": {"apiKey": "k-1", "auth": "Key k-1"},
        "urls": ["https://x/a", {"deep": "https://x/b"}],
        "base": "https://x",
        "copy": "https://x/b",
        "dashed-key": "d",
        "uses_dashed": "d",
    }


@pytest.mark.parametrize(
    "order",
    [("A", "B", "C"), ("C", "B", "A"), ("B", "A", "C"), ("C", "A", "B")],
)
def test_chains_resolve_in_dependency_order(order: tuple[str, ...]) -> None:
    raw = {"A": "{{config.B}}-a", "B": "{{config.C}}-b", "C": "c"}
    value = {key: raw[key] for key in order}
    out = render(value)
    assert out == {**value, "A": "c-b-a", "B": "c-b", "C": "c"}
    assert list(out) == list(order)  # key order kept


def test_long_chain_does_not_recurse_deeply() -> None:
    n = 2000
    value = {f"K{i}": f"{{{{config.K{i + 1}}}}}" for i in range(n)}
    value[f"K{n}"] = "end"
    out = render(value)
    assert out["K0"] == "end" and out[f"K{n - 1}"] == "end"


def test_reference_to_a_mapping_with_templates() -> None:
    value = {"h": {"a": "{{config.x}}", "b": 2}, "x": "1", "j": "{{ config.h | tojson }}"}
    assert render(value)["j"] == '{"a": "1", "b": 2}'


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"A": "{{config.A}}"}, "config.A -> config.A"),
        ({"A": "{{config.B}}", "B": "{{config.A}}"}, "config.A -> config.B -> config.A"),
        (
            {"A": "{{config.B}}", "B": "{{config.C}}", "C": "x{{config.A}}"},
            "config.A -> config.B -> config.C -> config.A",
        ),
        ({"h": {"a": "{{config.h}}"}}, "config.h.a -> config.h.a"),
        ({"A": "{{ config | tojson }}"}, "cycle"),
        (
            {"K": "B", "A": "{{ config[config.K] }}", "B": "{{ config.A }}"},
            "config.A -> config.B -> config.A",
        ),
    ],
)
def test_cycles_are_errors_naming_the_keys(value: dict[str, Any], fragment: str) -> None:
    error = render_error(value)
    assert "cycle" in error.message
    assert fragment in error.message
    assert error.file == "workspace.yml"


def test_missing_key_names_key_and_file() -> None:
    error = render_error({"LOGIN_URL": "{{config.MISSING}}/login"})
    assert error.file == "workspace.yml"
    assert error.field == "config.value.LOGIN_URL"
    assert "config.MISSING" in error.message
    assert str(error) == "workspace.yml: config.value.LOGIN_URL: config.MISSING is not defined"


def test_missing_nested_key_and_suggestion() -> None:
    error = render_error({"headers": {"apiKey": "k"}, "x": "{{ config.headers.apikey }}"})
    assert "config.headers.apikey is not defined" in error.message
    assert "did you mean config.headers.apiKey?" in error.message
    error = render_error({"l": [1], "x": "{{ config.l[3] }}"})
    assert "config.l[3] is not defined" in error.message


def test_missing_key_with_line_from_source_text() -> None:
    text = "name: x\nslug: test\nconfig:\n  value:\n    A: 1\n    B: '{{ config.NOPE }}'\n"
    spec = parse_spec(text)
    with pytest.raises(SpecError) as info:
        render_config(spec.slug, spec.config_value, {}, source_text=spec.source_text)
    assert str(info.value) == "workspace.yml:6:8: config.value.B: config.NOPE is not defined"


def test_file_name_is_used() -> None:
    with pytest.raises(SpecError) as info:
        render_config("s", {"A": "{{config.B}}"}, {}, file="apps/x/workspace.yml")
    assert info.value.file == "apps/x/workspace.yml"


def test_default_filter_handles_missing_keys() -> None:
    assert render({"port": "{{ config.PORT | default('8080') }}"}) == {"port": "8080"}
    out = render(
        {"port": "{{ config.PORT | default('8080') }}"}, {"WORKSPACE_CONFIG_test_PORT": "9"}
    )
    assert out["port"] == "9"


def test_non_template_strings_are_kept_verbatim() -> None:
    value = {
        "json": '{"a": {"b": 1}}',
        "braces": "{ config.A }",
        "percent": "{% not a template %}",
        "comment": "{# nor this #}",
        "close": "}} only",
        "nested": {"list": ["{config}", "%s", "${HOME}"]},
    }
    assert render(value) == value


def test_single_expression_renders_to_string() -> None:
    out = render(
        {
            "port": 8080,
            "p": "{{ config.port }}",
            "flag": True,
            "f": "{{config.flag}}",
            "n": None,
            "nn": "{{config.n}}",
        }
    )
    assert out["p"] == "8080" and isinstance(out["p"], str)
    assert out["f"] == "True"
    assert out["nn"] == "None"
    assert out["port"] == 8080


def test_whitespace_and_newlines_are_kept() -> None:
    out = render({"a": "x", "t": "  {{ config.a }}\n\nline\n", "crlf": "a\r\n{{ config.a }}\rb\n"})
    assert out["t"] == "  x\n\nline\n"
    assert out["crlf"] == "a\r\nx\rb\n"


def test_literal_braces_inside_templates() -> None:
    out = render({"a": "x", "t": "{{ '{{' }}{{ config.a }}{% raw %}{{keep}}{% endraw %}"})
    assert out["t"] == "{{x{{keep}}"


def test_filters() -> None:
    value = {
        "u": "user",
        "p": "pa ss",
        "basic": "{{ (config.u ~ ':' ~ config.p) | b64encode }}",
        "up": "{{ config.u | upper }}",
        "q": "{{ config.p | urlencode }}",
        "l": [3, 1, 2],
        "joined": "{{ config.l | sort | join(',') }}",
        "count": "{{ config.l | length }}",
        "math": "{{ config.l[0] * 2 + 1 }}",
    }
    out = render(value)
    assert out["basic"] == "dXNlcjpwYSBzcw=="
    assert out["up"] == "USER"
    assert out["q"] == "pa%20ss"
    assert out["joined"] == "1,2,3"
    assert out["count"] == "3"
    assert out["math"] == "7"


# --------------------------------------------------------------------------- environment


def test_env_overrides_add_missing_keys_only() -> None:
    environ = {
        "WORKSPACE_CONFIG_test_API_URL": "https://from-env",
        "WORKSPACE_CONFIG_test_TOKEN": "t0k",
        "WORKSPACE_CONFIG_other_TOKEN": "not mine",
        "WORKSPACE_CONFIG_test-2_TOKEN": "not mine either",
        "WORKSPACE_CONFIG_test_": "empty key ignored",
        "PATH": "/bin",
    }
    value = {"API_URL": "https://from-yml", "LOGIN": "{{ config.API_URL }}/{{ config.TOKEN }}"}
    assert render(value, environ) == {
        "API_URL": "https://from-yml",  # yml takes precedence
        "LOGIN": "https://from-yml/t0k",  # env values can be referenced
        "TOKEN": "t0k",
    }


def test_env_overrides_with_dashed_slug() -> None:
    environ = {"WORKSPACE_CONFIG_my-ws_KEY": "v", "WORKSPACE_CONFIG_my_KEY": "no"}
    assert render_config("my-ws", {}, environ) == {"KEY": "v"}
    assert env_overrides("my-ws", environ) == {"KEY": "v"}


def test_env_values_are_literal_strings() -> None:
    environ = {"WORKSPACE_CONFIG_test_SECRET": "p{{w}}d", "WORKSPACE_CONFIG_test_N": "5"}
    out = render({"use": "{{ config.SECRET }}"}, environ)
    assert out == {"use": "p{{w}}d", "N": "5", "SECRET": "p{{w}}d"}


def test_design_example_env_override() -> None:
    spec = parse_spec(WORKSPACE_EXAMPLE)
    out = render_config(
        "test", spec.config_value, {"WORKSPACE_CONFIG_test_API_URL": "https://other"}
    )
    assert out["API_URL"] == "https://api.example.com"
    text = WORKSPACE_EXAMPLE.replace("    API_URL: https://api.example.com\n", "")
    spec = parse_spec(text)
    out = render_config(
        "test", spec.config_value, {"WORKSPACE_CONFIG_test_API_URL": "https://other"}
    )
    assert out["LOGIN_URL"] == "https://other/login"


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("{{ ''.__class__ }}", "'__class__' is not allowed"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "not allowed"),
        ("{{ config.A['__class__'] }}", "has no field '__class__'"),
        ("{{ config.A.upper }}", "has no field 'upper'"),
        ("{{ config.A.upper() }}", "calls are not allowed"),
        ("{{ range(10) }}", "calls are not allowed"),
        ("{{ range }}", "unknown name 'range'"),
        ("{{ lipsum }}", "unknown name 'lipsum'"),
        ("{{ self }}", "unknown name 'self'"),
        ("{{ os }}", "unknown name 'os'"),
        ("{% for i in config.L %}{{ i }}{% endfor %}", "not {% ... %} statements"),
        ("{% set x = 1 %}{{ x }}", "statements"),
        ("{{ config.A | attr('__class__') }}", "filter 'attr' is not allowed"),
        ("{{ config.A | center(1000000000) }}", "filter 'center' is not allowed"),
        ("{{ config.A | format(1) }}", "not allowed"),
        ("{{ 'a' * 1000000000 }}", "repetition too large"),
        ("{{ [1] * 1000000000 }}", "repetition too large"),
        ("{{ 9 ** (9 ** 9) }}", "too large"),
        ("{{ 10 ** 5000 }}", "too large"),
        ("{{ '%999999999s' % 1 }}", "% string formatting"),
        ("{{ config._private }}", "attribute '_private' is not allowed"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ config.A + 1 }}", "TypeError"),
        ("{{ config.A", "invalid template"),
        ("{{ " + " ~ ".join(["config.A"] * 300) + " }}", "too complex"),
    ],
)
def test_sandbox_fails_cleanly(template: str, fragment: str) -> None:
    error = render_error({"A": "a", "L": [1], "T": template})
    assert error.field == "config.value.T"
    assert fragment in error.message, error.message


def test_rendered_size_is_bounded() -> None:
    big = "x" * (MAX_RENDERED_CHARS // 2 + 1)
    error = render_error({"A": big, "T": "{{ config.A ~ config.A }}"})
    assert "more than" in error.message
    chain = {"A": "x" * 1000}
    for i in range(1, 12):  # each level doubles: 2 KB ... 2 MB
        chain[f"A{i}"] = (
            f"{{{{ config.A{i - 1 if i > 1 else ''} ~ config.A{i - 1 if i > 1 else ''} }}}}"
        )
    assert "more than" in render_error(chain).message


def test_template_errors_are_reported_by_parse_spec_too() -> None:
    text = "name: x\nslug: ab\nconfig:\n  value:\n    A: '{{ range(3) }}'\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert str(info.value).startswith(
        "workspace.yml:5:8: config.value.A: function and method calls"
    )


def test_many_templates_compile_once_each_and_plain_values_never() -> None:
    # The work, counted rather than timed: each distinct template is compiled once (and
    # kept for the next apply), a value without a template is not compiled at all.
    value: dict[str, Any] = {"base": "https://x"}
    for i in range(3000):
        value[f"k{i}"] = "{{ config.base }}/" + str(i)
        value[f"n{i}"] = {"plain": "value {not a template}", "n": i}
    templating._compile.cache_clear()
    out = render(value)
    assert out["k2999"] == "https://x/2999"
    assert templating._compile.cache_info().misses == 3000
    render(value)
    assert templating._compile.cache_info().misses == 3000


def test_is_template() -> None:
    assert is_template("{{config.A}}")
    assert not is_template("{config.A}")
    assert not is_template("{% if %}")


def test_rejects_non_mapping() -> None:
    with pytest.raises(SpecError):
        render_config("s", [1, 2], {})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- properties

SAFE_TEXT = st.text(max_size=15).filter(lambda s: "{{" not in s)
SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | SAFE_TEXT
JSON = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SAFE_TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(SAFE_TEXT, JSON, max_size=6))
def test_no_templates_is_identity(value: dict[str, Any]) -> None:
    before = copy.deepcopy(value)
    assert render_config("test", value, {}) == value
    assert value == before


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"\A[A-Z]{1,3}\Z"), SAFE_TEXT, max_size=4),
    st.dictionaries(st.from_regex(r"\A[A-Z]{1,3}\Z"), SAFE_TEXT, max_size=4),
)
def test_env_only_fills_gaps(value: dict[str, str], env_values: dict[str, str]) -> None:
    environ = {f"WORKSPACE_CONFIG_ws_{k}": v for k, v in env_values.items()}
    out = render_config("ws", value, environ)
    assert out == {**env_values, **value}


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.text(max_size=8).filter(lambda s: "{" not in s and "}" not in s), min_size=1, max_size=6
    )
)
def test_chain_of_any_order_renders(parts: list[str]) -> None:
    n = len(parts)
    value = {f"K{i}": f"{parts[i]}{{{{config.K{i + 1}}}}}" for i in range(n - 1)}
    value[f"K{n - 1}"] = parts[-1]
    reordered = dict(reversed(list(value.items())))
    assert render_config("ws", reordered, {})["K0"] == "".join(parts)
