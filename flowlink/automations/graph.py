"""The automations graph of a workspace: triggers -> automations -> flows -> events they emit."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from croniter import croniter

from flowlink.store.models import Workspace

# Event types a flow emits, as far as its script says so literally (``this.emit("type", ...)``).
_EMIT_RE = re.compile(r"""\.emit\(\s*["']([A-Za-z0-9._-]{1,128})["']""")


@dataclass
class Node:
    """One node: ``kind`` is event, schedule, webhook, automation or flow."""

    key: str
    kind: str
    label: str
    column: int
    row: int = 0


@dataclass
class Graph:
    """Nodes by column and the edges between their keys."""

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, kind: str, label: str, column: int) -> str:
        """Add a node once; returns its key."""
        if key not in self.nodes:
            self.nodes[key] = Node(key, kind, label, column)
        return key

    def link(self, source: str, target: str) -> None:
        """Add an edge once."""
        if (source, target) not in self.edges:
            self.edges.append((source, target))


def emitted_types(script: str) -> list[str]:
    """The event types a script emits with a literal type name."""
    return sorted(set(_EMIT_RE.findall(script)))


def next_firings(expression: str, now: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` times (UTC) a cron expression fires after ``now``."""
    itr = croniter(expression, now)
    return [itr.get_next(datetime) for _ in range(count)]


def automation_graph(workspace: Workspace, scripts: dict[str, str]) -> Graph:
    """Build the graph from the workspace's automations and its flows' scripts."""
    graph = Graph()
    automations = (workspace.spec or {}).get("automations", {})
    for slug, automation in sorted(automations.items()):
        when = automation.get("when", {})
        node = graph.add(f"automation:{slug}", "automation", slug, 1)
        for event_type in when.get("events") or ():
            graph.link(graph.add(f"event:{event_type}", "event", event_type, 0), node)
        for expression in when.get("schedules") or ():
            graph.link(graph.add(f"schedule:{expression}", "schedule", expression, 0), node)
        if when.get("endpoint"):
            graph.link(graph.add(f"webhook:{slug}", "webhook", f"webhook {slug}", 0), node)
        flow = automation.get("flow", "")
        graph.link(node, graph.add(f"flow:{flow}", "flow", flow, 2))
    for name in sorted(scripts):
        if f"flow:{name}" not in graph.nodes:
            continue
        for event_type in emitted_types(scripts[name]):
            key = f"event:{event_type}"
            if key in graph.nodes:
                # An event that also triggers: draw the emit edge to the existing node.
                graph.link(f"flow:{name}", key)
            else:
                graph.link(f"flow:{name}", graph.add(key, "event", event_type, 3))
    rows: dict[int, int] = {}
    for placed in graph.nodes.values():
        placed.row = rows.get(placed.column, 0)
        rows[placed.column] = placed.row + 1
    return graph
