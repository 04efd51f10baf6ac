"""`smesh flows` against a real admin server with a flow log (no lab, no root): the merge,
the text line, following until Ctrl-C, and an agent that does not answer."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from smesh.agent.admin import AdminServer, WithRequest
from smesh.agent.flowlog import FlowLog
from smesh.cli.flows import merge, render
from smesh.dataplane.records import ConnectionRecord
from tests.unit.agent.records import inbound
from tests.unit.cli.conftest import SmeshCli


def record(request_id: str, result: str = "ok") -> ConnectionRecord:
    r = inbound(request_id=request_id, rule="web", bytes_from_app=2048, bytes_to_app=10)
    r.finish(result, "denied by rule web" if result == "denied" else "")
    return r


class Agent:
    """An admin server with a flow log, on a loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.log = FlowLog("node-9", 100, 100, 2)
        self.server = AdminServer({"/debug/flows": WithRequest(self.log.serve)})
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start("127.0.0.1", 0), self.loop).result(5)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def add(self, r: ConnectionRecord) -> None:
        self.loop.call_soon_threadsafe(self.log.closed, r)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.log.close)
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def agent() -> Iterator[Agent]:
    running = Agent()
    yield running
    running.stop()


def test_the_recent_flows_of_an_agent_filtered(agent: Agent, smesh_cli: SmeshCli) -> None:
    agent.add(record("1"))
    agent.add(record("2", "denied"))
    shown = smesh_cli("flows", "--admin", agent.address, "-o", "json", "--verdict", "denied")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert [f["request_id"] for f in doc["flows"]] == ["2"]
    assert doc["errors"] == []
    text = smesh_cli("flows", "--admin", agent.address).stdout.splitlines()
    assert len(text) == 2
    assert " node-9 close " in text[0]
    assert "allowed by web" in text[0]
    assert "denied by web" in text[1]


def test_follow_prints_new_flows_and_ends_quietly_on_ctrl_c(agent: Agent) -> None:
    agent.add(record("old"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "smesh", "flows", "--admin", agent.address, "-f", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith("following the flows of")
        agent.add(record("new"))  # said once the agent answered: the stream sees it
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["request_id"] == "new"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_an_agent_that_does_not_answer_is_reported_with_its_fix(
    smesh_cli: SmeshCli, closed_port: int
) -> None:
    where = f"127.0.0.1:{closed_port}"
    for args in ((), ("-f",)):
        proc = smesh_cli("flows", "--admin", where, *args)
        assert proc.returncode == 1
        assert f"{where}: agent admin endpoint {where} did not answer" in proc.stderr
        assert f"fix: check that the agent runs and serves its admin endpoint on {where}" in (
            proc.stderr
        )
        assert "1 of 1 agents did not answer" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_merge_orders_by_time_and_render_says_it_all() -> None:
    a = [{"time": "2026-01-01T00:00:01.000000+00:00", "n": 1}]
    b = [
        {"time": "2026-01-01T00:00:00.500000+00:00", "n": 0},
        {"time": "2026-01-01T00:00:02.000000+00:00", "n": 2},
    ]
    assert [d["n"] for d in merge([a, b])] == [0, 1, 2]
    log = FlowLog("node-1", 10, 10, 1)
    log.closed(record("x"))
    doc: dict[str, Any] = json.loads(log.encoded(next(log.events()))[0])
    line = render(doc)
    assert "node-1 close" in line
    assert "allowed by web" in line
    assert "pod-3:8080 (cluster.local/ns/web/sa/server)" in line
    assert " mTLS sent 10 B received 2.0 KiB in " in line
    assert line.endswith(": ok")
    dropped = {"time": doc["time"], "node": "node-1", "event": "dropped", "dropped": 7}
    assert "DROPPED 7 events" in render({**dropped, "detail": "behind"})
