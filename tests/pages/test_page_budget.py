"""A page template cannot take the server's CPU or memory: each render has a budget."""

from __future__ import annotations

import time

import pytest

from flowlink.workspaces import page_templates
from flowlink.workspaces.page_templates import RenderError, render

ROWS = {"rows": [{"name": "a"}, {"name": "b"}]}

OVER_BUDGET = {
    "nested loops": (
        "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
        "more than 0.2 s of CPU",
    ),
    "exponential macro": (
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "more than 0.2 s of CPU",
    ),
    "doubling macro": (
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n-1) }}{% else %}{{ s|length }}{% endif %}"
        "{% endmacro %}{{ d('x', 40) }}",
        "argument too large",
    ),
    "repetition": ("{{ 'x' * 1000000000 }}", "repetition too large"),
    "big number": ("{{ 7 ** 100000 }}", "number too large"),
    "concatenation": ("{{ ('x' * 1000000) + ('x' * 1000000) }}", "value too large"),
    "center": ("{{ 'x'|center(1000000000) }}", "center width too large"),
    "indent": ("{{ ('\n' * 1000000)|indent(100) }}", "indented text too large"),
    "format filter": ("{{ '%999999999s'|format('x') }}", "format width"),
    "% operator": ("{{ '%(x)999999999s' % {'x': 1} }}", "format width"),
    "str.format": ("{{ '{:>999999999}'.format('x') }}", "format width"),
    "str.format width argument": ("{{ '{:>{}}'.format('x', 999999999) }}", "format width"),
    "format_map": ("{{ '{x:>{w}}'.format_map({'x': 'a', 'w': 999999999}) }}", "format width"),
    "ljust": ("{{ 'x'.ljust(1000000000) }}", "format width"),
    "replace filter": ("{{ ('x' * 1000000)|replace('x', 'yy') }}", "replaced text too large"),
    "replace method": ("{{ ('x' * 1000000).replace('x', 'yy') }}", "replaced text too large"),
    "join": ("{{ ('x' * 100000).join(range(99999)) }}", "joined text too large"),
    "slice": ("{{ [1]|slice(1000000000) }}", "slice count too large"),
    "expandtabs": ("{{ 'a\tb'.expandtabs(1000000000) }}", "'expandtabs' is not available"),
    "page size": (
        "{% for a in range(99999) %}{{ 'x' * 100000 }}{% endfor %}",
        "page is larger than",
    ),
}


@pytest.mark.parametrize("name", list(OVER_BUDGET))
def test_a_template_over_its_budget_fails_fast_naming_the_limit(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(page_templates, "MAX_RENDER_CPU_SECONDS", 0.2)
    template, message = OVER_BUDGET[name]
    started = time.process_time()
    with pytest.raises(RenderError, match="SecurityError") as failure:
        render(template, ROWS)
    assert message in str(failure.value)
    assert time.process_time() - started < 1.0


def test_ordinary_templates_render_as_before() -> None:
    template = (
        "{% for r in rows %}<td>{{ loop.index }}/{{ loop.length }} {{ r.name|upper }}</td>"
        "{% endfor %}{{ '%.2f'|format(3.14159) }} {{ '%5.1f' % 2.25 }} {{ '{:>4}'.format('x') }} "
        "{{ 'a,b'.split(',')|join('-') }} {{ 'ab'.replace('a', 'c') }} {{ 'x'|center(5) }}"
        "{{ [1, 2] + [3] }} {{ 'ab' * 2 }} {{ 2 ** 10 }}"
        "{% for r in rows recursive %}{{ r.name }}{% else %}none{% endfor %}"
    )
    assert render(template, ROWS) == (
        "<td>1/2 A</td><td>2/2 B</td>3.14   2.2    x a-b cb   x  [1, 2, 3] abab 1024ab"
    )
