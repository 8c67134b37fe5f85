"""``flobc experiment``: federated training under a grid of partitions, attacks and
defences, in one process, with the chain's own application, the trainers' own
training and behaviours and the validators' own validation rules (see ``run``).

It prints one JSON document (the grid's settings and one record per cell) and, with a
docs folder, writes a markdown table and accuracy plots there (``report``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .grid import Grid, GridError, grid_settings, make_grid
from .report import write_docs
from .run import run_grid

__all__ = ["Grid", "GridError", "make_grid", "run_experiment"]


def run_experiment(grid: Grid, *, docs: Path | None = None, name: str = "experiment",
                   keep: Path | None = None, command: str = "flobc experiment"
                   ) -> dict[str, Any]:
    """Run every cell, print the JSON to stdout, write the docs; return the JSON."""
    records = run_grid(grid, keep)
    result: dict[str, Any] = {"settings": grid_settings(grid), "cells": records}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    if docs is not None:
        page = write_docs(records, result["settings"], docs, name, command)
        print(f"wrote {page}", file=sys.stderr)
    return result
