"""The labs on this machine: what ``smesh lab list`` shows and what a mistyped name is told.

A lab is a directory with a ``state.json`` under the state root (/run/smesh/labs); a
directory whose state does not parse is still listed (``damaged``), since ``lab down``
is what removes it.
"""

from __future__ import annotations

import difflib
import time
from dataclasses import dataclass

from smesh.lab import state
from smesh.lab.errors import LabError


@dataclass(frozen=True)
class LabSummary:
    name: str
    phase: str  # "up", "building" (an `up` running or crashed) or "damaged"
    nodes: int | None = None
    pods: int | None = None  # static pods (a Kubernetes lab's pods come from its API)
    kubernetes: bool | None = None
    mesh: bool | None = None
    install: str | None = None  # "processes" or "chart" (meshed labs)
    created: float | None = None  # unix time; None for a lab made before smesh recorded it

    def age(self, now: float | None = None) -> float | None:
        return None if self.created is None else max(0.0, (now or time.time()) - self.created)

    def as_dict(self) -> dict[str, object]:
        age = self.age()
        return {
            "name": self.name,
            "phase": self.phase,
            "nodes": self.nodes,
            "pods": self.pods,
            "kubernetes": self.kubernetes,
            "mesh": self.mesh,
            "install": self.install,
            "created": self.created,
            "age_seconds": None if age is None else round(age, 1),
        }


def labs() -> list[LabSummary]:
    """Every lab with saved state here, by name."""
    if not state.STATE_ROOT.is_dir():
        return []
    found = []
    for directory in sorted(state.STATE_ROOT.iterdir()):
        if not directory.is_dir() or not (directory / "state.json").exists():
            continue
        try:
            lab = state.load(directory.name)
        except (LabError, TypeError, KeyError):  # unreadable, or another smesh version's
            found.append(LabSummary(directory.name, "damaged"))
            continue
        if lab is None:  # removed while we looked
            continue
        found.append(
            LabSummary(
                name=lab.name,
                phase=lab.phase,
                nodes=lab.nodes,
                pods=None if lab.kubernetes else lab.nodes * lab.pods_per_node,
                kubernetes=lab.kubernetes,
                mesh=lab.mesh,
                install=str(lab.settings.get("install", "processes")) if lab.mesh else None,
                created=lab.created or None,
            )
        )
    return found


def not_found(name: str) -> str:
    """The answer to a lab name that is not up: the labs that are, and the closest one."""
    names = [lab.name for lab in labs()]
    if not names:
        return (
            f"no lab named {name!r} is up, nor any other; "
            f"start one with `smesh lab up --lab {name}`"
        )
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"no lab named {name!r} is up; labs here: {', '.join(names)}{hint}"


def age_text(seconds: float | None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: as kubectl shows an age."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
