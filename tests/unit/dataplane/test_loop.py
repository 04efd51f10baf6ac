"""The agent runs on the event loop its config names."""

from __future__ import annotations

import asyncio
import sys

import pytest

from smesh.dataplane import loop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_what_the_agent_runs_on_by_default() -> None:
    assert loop.run(_loop_module(), "uvloop").startswith("uvloop")


def test_the_standard_loop_is_one_setting_away() -> None:
    assert loop.run(_loop_module(), "asyncio").startswith("asyncio")


def test_a_missing_uvloop_says_how_to_get_going(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import now raises ImportError
    with pytest.raises(loop.LoopUnavailable, match="eventLoop: asyncio"):
        loop.run(_loop_module(), "uvloop")
