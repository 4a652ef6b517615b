"""Imports between domains go one way (grimp's graph of every import, in functions and TYPE_CHECKING too).

data <- training <- registry <- cycle; serving uses data, training and registry, and reaches the
cycle only through a trigger injected by the composition root (``reloop_service.compose``). The
shared modules (config, storage, clitools, alerts) import no domain; replay and the entry points
(cli, compose) sit on top.
"""

from __future__ import annotations

from collections import defaultdict

import grimp
import pytest

PACKAGE = "reloop_service"
DOMAINS = ("data", "training", "registry", "cycle", "serving", "replay")
SHARED = ("config", "storage", "clitools", "alerts")
# What each domain may import besides itself and the shared modules.
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "storage": {"config"},
    "clitools": {"config"},
    "alerts": {"config"},
    "data": set(),
    "training": {"data"},
    "registry": {"data", "training"},
    "cycle": {"data", "training", "registry", "serving"},  # serving: only its harness, see below
    "serving": {"data", "training", "registry"},
    "replay": {"data", "training", "registry", "cycle", "serving"},
}
# The cycle runs the demo's server through this module alone (no app internals).
CYCLE_MAY_IMPORT_FROM_SERVING = {f"{PACKAGE}.serving.harness"}


def domain_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


@pytest.fixture(scope="module")
def edges() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(importer domain, imported domain) -> [(importer module, imported module), ...]."""
    graph = grimp.build_graph(PACKAGE, include_external_packages=False)
    found: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for module in graph.modules:
        src = domain_of(module)
        for imported in graph.find_modules_directly_imported_by(module):
            dst = domain_of(imported)
            if dst != src and imported.startswith(PACKAGE + "."):
                found[(src, dst)].append((module, imported))
    return found


def test_every_domain_imports_only_in_the_allowed_direction(edges: dict) -> None:
    bad = []
    for (src, dst), pairs in sorted(edges.items()):
        if src not in ALLOWED:  # cli, compose: the entry points compose everything
            continue
        allowed = ALLOWED[src] | (set(SHARED) if src in DOMAINS else set())
        if dst not in allowed:
            bad.append(f"{src} -> {dst}: {pairs[0][0]} imports {pairs[0][1]}")
    assert not bad, "imports against the direction:\n" + "\n".join(bad)


def test_serving_reaches_the_cycle_only_through_an_injected_trigger(edges: dict) -> None:
    assert ("serving", "cycle") not in edges
    through = {imported for _, imported in edges.get(("cycle", "serving"), [])}
    assert through <= CYCLE_MAY_IMPORT_FROM_SERVING, through


def test_no_circle_between_domains(edges: dict) -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in edges:
        graph[src].add(dst)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph[node]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted({tuple(sorted((a, b))) for a, b in edges if reaches(b, a)})
    assert not circles, f"domains that import each other (directly or through others): {circles}"


def test_the_graph_is_real(edges: dict) -> None:
    """The check above would pass on an empty graph: these known edges must be seen."""
    assert ("cycle", "registry") in edges and ("registry", "training") in edges
    assert ("compose", "cycle") in edges and ("compose", "serving") in edges
