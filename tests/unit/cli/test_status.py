"""`smesh status --admin` of an agent that does not answer: a row, the fix, exit status 1."""

from __future__ import annotations

import json

from tests.unit.cli.conftest import SmeshCli


def test_an_agent_that_does_not_answer_is_a_row_with_its_fix(
    smesh_cli: SmeshCli, closed_port: int
) -> None:
    where = f"127.0.0.1:{closed_port}"
    proc = smesh_cli("status", "--admin", where)
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[1].split()[:5] == [where, "-", "-", "AGENT", "DOWN"]
    assert f"{where}: agent admin endpoint {where} did not answer" in proc.stdout
    assert f"fix: check that the agent runs and serves its admin endpoint on {where}" in (
        proc.stdout
    )
    assert proc.stderr == f"smesh: error: 1 of 1 agents did not answer ({where})\n"
    assert "Traceback" not in proc.stderr


def test_json_names_the_error_and_the_fix(smesh_cli: SmeshCli, closed_port: int) -> None:
    where = f"127.0.0.1:{closed_port}"
    proc = smesh_cli("status", "--admin", where, "--json")
    assert proc.returncode == 1
    [doc] = json.loads(proc.stdout)
    assert doc["label"] == where
    assert "did not answer" in doc["error"]
    assert doc["fix"].startswith("check that the agent runs")


def test_an_admin_endpoint_without_a_port_is_a_one_line_error(smesh_cli: SmeshCli) -> None:
    for where in ("foo", "127.0.0.1:", "127.0.0.1:99999", ":15000"):
        proc = smesh_cli("status", "--admin", where)
        assert proc.returncode != 0, where
        assert (
            proc.stderr
            == f"smesh: error: --admin {where!r} is not HOST:PORT (e.g. 127.0.0.1:15000)\n"
        )
        assert proc.stdout == ""
