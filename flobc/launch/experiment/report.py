"""A grid's results for people: a markdown table and accuracy plots (PNG, matplotlib).

The table has one row per cell; beside each cell's final accuracy it gives the clean run
of the same partition and defence, so what an attack costs can be read off one row.
Plots show test accuracy per round, one figure per partition and attack, one line per
defence and attacker count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flobc.errors import LaunchError

from .grid import CLEAN


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _clean_accuracy(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], float]:
    return {(r["partition"], r["defence"]): r["final_accuracy"]
            for r in records if r["attack"] == CLEAN}


def _fraction(counts: dict[str, int]) -> str:
    sent = sum(counts.values())
    return f"{counts['accepted']} / {sent}" if sent else "-"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """One row per cell: updates accepted (honest and attacker), honest trainers
    excluded, final accuracy (mean of the last rounds) and the clean run's."""
    clean = _clean_accuracy(records)
    lines = ["| partition | attack | attackers | defence | honest accepted | "
             "attacker accepted | honest excluded | final accuracy | clean run | s/round |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        excluded = sum(t["excluded"] for t in r["trust"] if t["role"] == "honest")
        lines.append(
            f"| {r['partition']} | {r['attack']} | {r['attackers']} | {r['defence']} | "
            f"{_fraction(r['updates']['honest'])} | {_fraction(r['updates']['attacker'])} | "
            f"{excluded} | {_percent(r['final_accuracy'])} | "
            f"{_percent(clean.get((r['partition'], r['defence'])))} | "
            f"{r['seconds_per_round']:.2f} |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plot(records: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per partition and attack in ``out``; the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise LaunchError("plots need matplotlib: pip install 'flobc[experiment]'") from exc
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["partition"], r["attack"]), []).append(r)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (partition, attack), cells in groups.items():
        figure, axes = plt.subplots(figsize=(6, 4))
        for r in cells:
            rounds = [x["round"] for x in r["rounds"]]
            label = r["defence"] + (f", {r['attackers']} attacking" if r["attackers"] else "")
            axes.plot(rounds, [100 * x["accuracy"] for x in r["rounds"]], marker=".",
                      label=label)
        axes.set(title=f"{partition}, attack {attack}", xlabel="round",
                 ylabel="test accuracy (%)", ylim=(0, 100))
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        path = out / f"{_slug(partition)}--{_slug(attack)}.png"
        figure.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def write_docs(records: Sequence[dict[str, Any]], settings: dict[str, Any], docs: Path,
               name: str, command: str) -> Path:
    """``docs/NAME.md`` (the table, the command and links to the plots) and the plots in
    ``docs/NAME/``; the markdown file's path."""
    pngs = plot(records, docs / name)
    page = docs / f"{name}.md"
    lines = [f"# Experiment: {name}", "",
             f"{settings['trainers']} trainers, {settings['validators']} validators, model "
             f"{settings['model']}, {settings['rounds']} rounds, sync {settings['sync']}, "
             f"seed {settings['seed']}; final accuracy is the mean test accuracy of the last "
             "3 rounds. Written by:", "", f"    {command}", "",
             markdown_table(records), ""]
    lines += [f"![{p.stem}]({name}/{p.name})" for p in pngs]
    page.write_text("\n".join(lines) + "\n")
    return page
