"""smesh-cni's pure parts: the CNI environment and configuration, the results and errors it
prints, what it sends the agent, and what it makes of the agent's answer."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from smesh.kubernetes import cni, handoff

SOCK = "/run/smesh/test.sock"

BRIDGE_RESULT: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "br0", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "veth1234", "mac": "aa:aa:aa:aa:aa:02"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": "/run/netns/pod-a"},
    ],
    "ips": [
        {"interface": 2, "address": "198.18.1.200/24", "gateway": "198.18.1.1"},
        {"interface": 2, "address": "fd00:198:18:1::c8/64", "gateway": "fd00:198:18:1::1"},
        {"interface": 1, "address": "192.0.2.9/32"},  # host side: not the pod's
    ],
    "dns": {},
}

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": "/run/netns/pod-a",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
    "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=8d2d6f2a",
}


def config(**extra: Any) -> bytes:
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "type": "smesh-cni",
        "agentSocket": SOCK,
        "prevResult": BRIDGE_RESULT,
    }
    conf.update(extra)
    return json.dumps({k: v for k, v in conf.items() if v is not None}).encode()


class Agent:
    """The transport, answering as told and keeping what it was sent."""

    def __init__(self, status: int = 200, body: bytes = b"", down: bool = False) -> None:
        self.status = status
        self.body = body or handoff.encode(handoff.SandboxReply(pod="shop/web-1", meshed=True))
        self.down = down
        self.calls: list[tuple[str, str, bytes, float]] = []

    def __call__(self, sock: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        self.calls.append((sock, path, body, timeout))
        if self.down:
            raise cni.AgentUnreachable("connection refused (the smesh agent is not running)")
        return self.status, self.body


def call(agent: Agent, stdin: bytes | None = None, **env: str) -> cni.Outcome:
    return cni.run({**ENV, **env}, lambda: config() if stdin is None else stdin, agent)


def error(outcome: cni.Outcome) -> dict[str, Any]:
    assert outcome.exit_code != 0
    result = json.loads(outcome.stdout)
    assert set(result) == {"cniVersion", "code", "msg", "details"}
    return result  # type: ignore[no-any-return]


def test_version_needs_no_config_and_lists_the_versions() -> None:
    def no_stdin() -> bytes:
        raise AssertionError("VERSION must not read stdin")

    outcome = cni.run({"CNI_COMMAND": "VERSION"}, no_stdin, Agent())
    assert outcome.exit_code == 0
    assert json.loads(outcome.stdout) == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"],
    }


def test_add_passes_the_previous_result_on_in_the_config_version() -> None:
    agent = Agent()
    outcome = call(agent, config(cniVersion="0.4.0"))
    assert outcome.exit_code == 0
    assert json.loads(outcome.stdout) == {**BRIDGE_RESULT, "cniVersion": "0.4.0"}
    [(sock, path, body, timeout)] = agent.calls
    assert (sock, path, timeout) == (SOCK, "/v1/sandboxes/add", cni.DEFAULT_TIMEOUT)
    # The agent's own decoder reads what the plugin wrote: both ends agree on the wire.
    assert handoff.decode_request(body) == handoff.SandboxRequest(
        container_id="c0ffee",
        netns="/run/netns/pod-a",
        if_name="eth0",
        pod_namespace="shop",
        pod_name="web-1",
        pod_uid="8d2d6f2a",
        ips=(ipaddress.ip_address("198.18.1.200"), ipaddress.ip_address("fd00:198:18:1::c8")),
    )


def test_the_mirrored_constants_equal_the_handoffs() -> None:
    assert cni.DEFAULT_SOCKET == handoff.DEFAULT_SOCKET
    assert cni.PATH_PREFIX == handoff.PATH_PREFIX
    assert {c.value for c in handoff.Command} == {"add", "del", "check"}


def test_defaults_apply_when_the_config_has_no_smesh_keys() -> None:
    conf = cni.parse_config(config(agentSocket=None), "ADD")
    assert (conf.agent_socket, conf.timeout) == (handoff.DEFAULT_SOCKET, 15.0)
    assert cni.parse_config(config(timeoutSeconds=2), "ADD").timeout == 2.0


@pytest.mark.parametrize("command", ["CHECK", "DEL"])
def test_check_and_del_print_nothing_on_success(command: str) -> None:
    agent = Agent()
    outcome = call(agent, CNI_COMMAND=command)
    assert (outcome.stdout, outcome.exit_code) == ("", 0)
    assert agent.calls[0][1] == f"/v1/sandboxes/{command.lower()}"


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_an_agent_that_does_not_answer_fails_add_and_check(command: str) -> None:
    result = error(call(Agent(down=True), CNI_COMMAND=command))
    assert result["code"] == 11
    assert result["msg"] == (
        f"smesh agent on this node is not answering at {SOCK}: "
        "connection refused (the smesh agent is not running)"
    )


def test_del_succeeds_without_the_agent_and_says_so() -> None:
    outcome = call(Agent(down=True), CNI_COMMAND="DEL", CNI_NETNS="")
    assert (outcome.stdout, outcome.exit_code) == ("", 0)
    [note] = outcome.stderr
    assert "DEL of pod shop/web-1 done without the agent" in note
    assert SOCK in note


def test_del_needs_neither_netns_nor_pod_args_nor_prev_result() -> None:
    agent = Agent()
    outcome = call(agent, config(prevResult=None), CNI_COMMAND="DEL", CNI_NETNS="", CNI_ARGS="")
    assert outcome.exit_code == 0
    request = handoff.decode_request(agent.calls[0][2])
    assert (request.container_id, request.netns, request.ips) == ("c0ffee", "", ())


@pytest.mark.parametrize(
    ("status", "code", "verb"), [(503, 11, "failed"), (500, 11, "failed"), (400, 100, "refused")]
)
def test_an_agent_error_is_reported_with_its_own_message(status: int, code: int, verb: str) -> None:
    reply = handoff.encode(handoff.SandboxReply(message="pod shop/web-1 is not in the API yet"))
    result = error(call(Agent(status, reply)))
    assert result["code"] == code
    assert result["msg"] == (
        f"smesh agent at {SOCK} {verb} ADD of pod shop/web-1: pod shop/web-1 is not in the API yet"
    )
    assert result["details"] == f"HTTP {status}"


def test_a_failed_del_the_agent_answered_is_reported() -> None:
    """An agent that answers is alive: its error means something is still held."""
    result = error(call(Agent(500, b"boom"), CNI_COMMAND="DEL"))
    assert result["msg"].endswith("failed DEL of pod shop/web-1: boom")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CNI_COMMAND": "GC"}, "CNI_COMMAND must be one of"),
        ({"CNI_COMMAND": ""}, "CNI_COMMAND is not set"),
        ({"CNI_CONTAINERID": ""}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "-x"}, "CNI_CONTAINERID"),
        ({"CNI_CONTAINERID": "a" * 257}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "a-very-long-ifname"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": ""}, "CNI_IFNAME"),
        ({"CNI_NETNS": ""}, "CNI_NETNS"),
        ({"CNI_NETNS": "relative/netns"}, "CNI_NETNS"),
        ({"CNI_ARGS": "K8S_POD_NAMESPACE=a;junk"}, "'junk' is not KEY=VALUE"),
        ({"CNI_ARGS": "K8S_POD_NAME=web"}, "lacks K8S_POD_NAMESPACE or K8S_POD_NAME"),
        ({"CNI_ARGS": "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;K8S_POD_UID=" + "u" * 65}, "UID"),
    ],
)
def test_bad_environment_is_error_4_naming_the_variable(env: dict[str, str], needle: str) -> None:
    agent = Agent()
    result = error(call(agent, **env))
    assert result["code"] == 4
    assert needle in result["msg"]
    assert not agent.calls


@pytest.mark.parametrize(
    ("stdin", "code", "needle"),
    [
        (b"{not json", 6, "not JSON"),
        (b"[1]", 7, "JSON object"),
        (b" " * (cni.MAX_CONFIG_BYTES + 1), 6, "larger than"),
        (config(cniVersion="0.2.0"), 1, "cniVersion 0.2.0 is not supported"),
        (config(cniVersion=None), 7, "cniVersion"),
        (config(name=None), 7, "name"),
        (config(agentSocket="run/cni.sock"), 7, "agentSocket"),
        (config(timeoutSeconds=0), 7, "timeoutSeconds"),
        (config(timeoutSeconds=121), 7, "timeoutSeconds"),
        (config(timeoutSeconds=True), 7, "timeoutSeconds"),
        (config(timeoutSeconds="15"), 7, "timeoutSeconds"),
        (config(prevResult=None), 7, "chained after the network plugin"),
        (config(prevResult=[]), 7, "prevResult"),
        (config(prevResult={"ips": {}}), 7, "prevResult.ips"),
        (config(prevResult={"ips": [{"address": "nope"}]}), 7, "prevResult.ips[0].address"),
        (config(prevResult={"ips": [{"gateway": "10.0.0.1"}]}), 7, "prevResult.ips[0]"),
    ],
)
def test_bad_config_is_a_cni_error_naming_the_field(stdin: bytes, code: int, needle: str) -> None:
    agent = Agent()
    result = error(call(agent, stdin))
    assert result["code"] == code
    assert needle in result["msg"]
    assert not agent.calls


def test_errors_speak_the_config_version() -> None:
    assert error(call(Agent(down=True), config(cniVersion="0.4.0")))["cniVersion"] == "0.4.0"
    assert error(call(Agent(), b"{"))["cniVersion"] == "1.0.0"


def test_ipam_only_result_ips_all_count() -> None:
    """An IPAM plugin's result names no interfaces: every IP in it is the sandbox's."""
    assert cni.sandbox_ips({"ips": [{"address": "10.1.0.5/16"}]}) == ["10.1.0.5"]
    assert cni.sandbox_ips(None) == []


def test_reply_message_shows_what_a_non_smesh_answer_said() -> None:
    assert cni.reply_message(b'{"message": "no"}') == "no"
    assert cni.reply_message(b"<html>bad gateway</html>\n") == "<html>bad gateway</html>"


def test_an_unexpected_failure_is_still_a_cni_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object) -> cni.Outcome:
        raise RuntimeError("bug")

    monkeypatch.setenv("CNI_COMMAND", "ADD")
    monkeypatch.setattr(cni, "run", broken)
    assert cni.main() == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["code"], result["msg"]) == (101, "smesh-cni failed: RuntimeError('bug')")
