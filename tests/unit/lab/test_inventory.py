"""`smesh lab list` and the answer to a lab name that is not up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from smesh.lab import inventory, state


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path)
    return tmp_path


def make(name: str, **kw: object) -> None:
    lab = state.LabState(name=name, nodes=2, pods_per_node=2, mesh=True, **kw)  # type: ignore[arg-type]
    lab.phase = "up"
    state.save(lab)


def test_labs_are_listed_with_their_shape_and_age(root: Path) -> None:
    make("alpha", created=time.time() - 125)
    make("kube", kubernetes=True, settings={"install": "chart"})
    (root / "broken").mkdir()
    (root / "broken" / "state.json").write_text("{not json")
    (root / "empty").mkdir()  # no state: not a lab
    found = {lab.name: lab for lab in inventory.labs()}
    assert sorted(found) == ["alpha", "broken", "kube"]
    assert found["alpha"].pods == 4
    assert inventory.age_text(found["alpha"].age()) == "2m"
    assert found["kube"].kubernetes is True
    assert found["kube"].pods is None
    assert found["kube"].install == "chart"
    assert found["broken"].phase == "damaged"


def test_a_state_saved_before_the_age_was_recorded_has_none(root: Path) -> None:
    make("old")
    path = root / "old" / "state.json"
    data = json.loads(path.read_text())
    del data["created"]
    path.write_text(json.dumps(data))
    [lab] = inventory.labs()
    assert lab.age() is None
    assert inventory.age_text(lab.age()) == "-"


def test_a_mistyped_name_is_answered_with_the_labs_here_and_the_closest(root: Path) -> None:
    make("payments")
    make("smesh")
    assert inventory.not_found("paymnts") == (
        "no lab named 'paymnts' is up; labs here: payments, smesh (did you mean 'payments'?)"
    )
    assert inventory.not_found("zzz") == "no lab named 'zzz' is up; labs here: payments, smesh"


def test_with_no_lab_at_all_it_says_how_to_start_one(root: Path) -> None:
    assert "start one with `smesh lab up --lab x`" in inventory.not_found("x")
