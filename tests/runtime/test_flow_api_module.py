"""``import flow_api`` works for editors and type checkers outside a runner too."""

from __future__ import annotations

import flow_api
from flowlink.runtime import flow_api as live


def test_top_level_module_exposes_the_runner_names() -> None:
    for name in ("System", "Execution", "ResourceNotFoundError", "DependencyFailedError"):
        assert getattr(flow_api, name) is getattr(live, name)
