"""What an operator sees of a lab's agents: every node in `smesh status` (a dead agent too),
a `trace` of a pod that does not exist, the labs here, and an agent's log."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from smesh.jsonlines import whole_lines
from smesh.lab import state
from tests.integration.labkit import SMESH, LabFactory, Lines, smesh
from tests.integration.mesh.test_agent import node, wait


def test_status_shows_every_node_and_a_dead_agent_with_its_fix(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    log = state.directory(lab.name) / "node-2" / "agent.log"

    # a pod that is not captured: answered at once (the timeout only stops a trace that
    # would wait forever, as it did)
    trace = smesh("trace", "--lab", lab.name, "--pod", "pod-99", check=False, timeout=60)
    assert trace.returncode != 0
    assert "'pod-99'" in trace.stderr
    assert "pods: pod-1, pod-2, pod-3, pod-4" in trace.stderr

    # the labs here, and a mistyped name answered with them
    listed = {entry["name"]: entry for entry in json.loads(smesh("lab", "list", "--json").stdout)}
    assert listed[lab.name]["nodes"] == 2
    assert listed[lab.name]["kubernetes"] is False
    assert listed[lab.name]["phase"] == "up"
    assert smesh("lab", "list").stdout.startswith("NAME ")
    typo = smesh("lab", "status", "--name", lab.name[:-1], check=False)
    assert typo.returncode != 0
    assert f"did you mean {lab.name!r}?" in typo.stderr
    assert "lab up" not in typo.stderr  # not advice to create it

    # node-2's log, followed while its agent is killed and started again
    first = smesh("lab", "logs", "--name", lab.name, "node-2").stdout.splitlines()
    assert first
    assert all(json.loads(line)["level"] for line in first)
    # ... and the signing service logs as the agents do: JSON lines (it issued 4 certificates)
    signer = state.directory(lab.name) / "ca" / "signer.log"
    records = [json.loads(line) for line in whole_lines(signer)]  # every line is JSON
    assert all(r["level"] and r["logger"].startswith("smesh.") for r in records)
    assert sum(r["msg"].startswith("issued spiffe://") for r in records) >= 4
    follow = subprocess.Popen(
        [*SMESH, "lab", "logs", "--name", lab.name, "--follow", "node-2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        followed = Lines(follow.stdout)

        os.kill(node(lab, "node-2")["agent_pid"], signal.SIGKILL)  # as an OOM kill would
        wait(lambda: node(lab, "node-2")["agent_health"] == "dead", timeout=15)
        down = smesh("status", "--lab", lab.name, check=False)
        assert down.returncode == 1, down
        rows = [line.split() for line in down.stdout.splitlines()]
        assert rows[1][:2] == ["node-1", "pod-1"]
        assert rows[1][3] == "ready"
        assert rows[3][:5] == ["node-2", "-", "-", "AGENT", "DOWN"]
        assert f"fix: smesh lab restart-agent --lab {lab.name} node-2" in down.stdout
        assert "1 of 2 agents did not answer (node-2)" in down.stderr
        docs = json.loads(smesh("status", "--lab", lab.name, "--json", check=False).stdout)
        assert [d["label"] for d in docs] == ["node-1", "node-2"]
        assert "is not running" in docs[1]["error"]
        assert docs[1]["fix"] == f"smesh lab restart-agent --lab {lab.name} node-2"

        smesh("lab", "restart-agent", "--name", lab.name, "node-2")
        assert smesh("status", "--lab", lab.name).returncode == 0
        grown = len(log.read_text().splitlines())
        assert grown > len(first)
        wait(lambda: len(followed.lines) >= grown, timeout=30)  # the new agent's lines too
    finally:
        follow.terminate()
        follow.wait(timeout=10)

    # `--follow | head -1` ends when head does, though the agent logs nothing new
    command = " ".join([*SMESH, "lab", "logs", "--name", lab.name, "--follow", "node-1"])
    piped = subprocess.run(
        ["bash", "-c", f'{command} | head -1; echo "${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(piped.stdout)["level"]
    assert piped.stderr == f"{128 + signal.SIGPIPE}\n"

    unknown = smesh("status", "--lab", lab.name, "--node", "node-5", check=False)
    assert unknown.returncode != 0
    assert unknown.stdout == ""
    assert "no node 'node-5' (nodes: node-1, node-2)" in unknown.stderr
