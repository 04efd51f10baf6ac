"""The "figure | value | goal | met" table that the Kubernetes and upgrade groups publish.

The groups differ only in what a goal is (a bound to stay under, an exact count to hit) and
how their numbers read; the table itself, with its "-" for a figure that has no goal and
"not measured" for one without a value, is one thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupFigure:
    """One published figure of a bench group: its key in the results, unit and method."""

    name: str
    unit: str
    how: str


#: What a group says of a figure's goal: the goal cell, and whether the value meets it
#: (``None``: not measured). ``None`` instead of the pair: the figure has no goal.
GoalCell = Callable[[GroupFigure, float | None], tuple[str, bool | None] | None]


def figure_table(
    figures: Iterable[GroupFigure],
    results: Mapping[str, float],
    goal_cell: GoalCell,
    number: Callable[[float], str],
) -> list[str]:
    lines = ["| figure | value | goal | met |", "|---|---|---|---|"]
    for figure in figures:
        value = results.get(figure.name)
        unit = f" {figure.unit}" if figure.unit else ""
        shown = "-" if value is None else f"{number(value)}{unit}"
        goal = goal_cell(figure, value)
        if goal is None:
            lines.append(f"| {figure.name} | {shown} | - | - |")
            continue
        cell, met = goal
        verdict = {True: "yes", False: "**no**", None: "not measured"}[met]
        lines.append(f"| {figure.name} | {shown} | {cell} | {verdict} |")
    return lines
