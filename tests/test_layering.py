"""The floors of the house hold: imports point down, the siblings stay apart, no circles.

The graph is read from the source by ``tests/layering.py`` (imports inside functions
count too: an import hidden in a function is still a dependency).
"""

from __future__ import annotations

import layering
import pytest

GRAPH = layering.edges()


def violations(graph: dict[str, dict[str, int]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            a, b = layering.floor_of(module), layering.floor_of(target)
            upward = layering.FLOORS[b] > layering.FLOORS[a]
            sideways = a != b and layering.FLOORS[a] == layering.FLOORS[b]
            if upward or sideways:
                found.append(f"{module} (line {line}, floor {a}) imports {target} "
                             f"(floor {b})")
    return found


def test_every_import_points_down_the_floors() -> None:
    assert violations(GRAPH) == []


def test_no_import_circles() -> None:
    assert layering.cycles(GRAPH) == []


def test_the_walk_sees_every_package_and_the_imports_in_functions() -> None:
    floors = {layering.floor_of(m) for m in GRAPH}
    assert floors == set(layering.FLOORS)
    # The command line imports the node inside a function, so that starting a trainer
    # does not import the validator: the edge is there all the same.
    assert "flobc.validator.node" in GRAPH["flobc.launch.cli"]


@pytest.mark.parametrize(("module", "target", "kind"), [
    ("flobc.consensus.simulator", "flobc.validator.node", "upward"),
    ("flobc.trainer.loop", "flobc.validator.fl.app", "sideways"),
    ("flobc.ml.models", "flobc.launch.cli", "upward"),
])
def test_a_wrong_import_is_reported(module: str, target: str, kind: str) -> None:
    graph = {m: dict(t) for m, t in GRAPH.items()}
    graph[module][target] = 1
    assert [v for v in violations(graph) if v.startswith(module)] != [], kind


def test_a_circle_is_reported() -> None:
    graph = {m: dict(t) for m, t in GRAPH.items()}
    graph["flobc.codec"]["flobc.crypto"] = 1
    graph["flobc.crypto"]["flobc.codec"] = 1
    assert ["flobc.codec", "flobc.crypto"] in layering.cycles(graph)
