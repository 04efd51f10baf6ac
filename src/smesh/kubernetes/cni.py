"""``smesh-cni``: the CNI plugin that hands a new pod sandbox to the node's smesh agent.

The container runtime runs it chained after the network plugins (CNI spec 1.0.0): on ADD
it sends the sandbox (CNI_NETNS, CNI_CONTAINERID, the pod's namespace/name/UID from
CNI_ARGS, the IPs of ``prevResult``) to the agent and prints ``prevResult`` unchanged once
the agent answers, which the agent does only after the pod's capture is attached and its
listeners are open. No app of the pod can run before its sandbox's ADD returns, so there
is no window in which a pod connects uncaptured. If the agent does not answer, the ADD
fails and the pod does not start: fail closed.

DEL is different. The spec asks DEL to succeed even when resources are already gone, and a
runtime whose DEL fails retries it and keeps the sandbox (and the pod's deletion) stuck.
So when the agent cannot be reached, DEL succeeds with a note on stderr: nothing is lost,
because an agent that is down holds no capture state it could release, and an agent that
comes back rebuilds its pods from the API server and releases every pod that is gone. An
agent that *answers* with an error is different: it is alive and knows something could not
be released, so that error is reported and the runtime retries.

Start-up time matters here (the plugin runs once per pod start), so this module is
stdlib-only at import; h11 is imported only when the agent is called. It deliberately does
not import :mod:`smesh.kubernetes.handoff`, whose pydantic models cost about 100 ms to
import: the request is written with the same field names, and the unit tests check that
:func:`smesh.kubernetes.handoff.decode_request` reads it back.

Everything but :func:`call_agent` and :func:`main` is pure: :func:`run` takes the
environment, stdin and a transport and returns what to print and the exit status.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

#: Mirrors :data:`smesh.kubernetes.handoff.DEFAULT_SOCKET` (a unit test keeps them equal).
DEFAULT_SOCKET = "/run/smesh/cni.sock"
#: Mirrors :data:`smesh.kubernetes.handoff.PATH_PREFIX`.
PATH_PREFIX = "/v1/sandboxes/"

SPEC_VERSION = "1.0.0"
#: Every version whose ADD result this plugin can pass through unchanged: 0.3.0 introduced
#: ``prevResult``, and the result's shape (ips/interfaces/routes/dns) is the same since.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")

#: A network configuration is a few KiB; this only stops a runaway writer.
MAX_CONFIG_BYTES = 1 << 20
#: The default bound on one call to the agent: above the agent's default ``enrolTimeout``
#: (10 s), so an agent that gives up on a pod says why before the plugin gives up on it.
DEFAULT_TIMEOUT = 15.0
#: The kubelet's CRI calls time out after 2 minutes (--runtime-request-timeout).
MAX_TIMEOUT = 120.0

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}$")
_IF_NAME = re.compile(r"^[^\s/:]{1,15}$")
_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")
_MAX_NETNS = 4096
_MAX_POD_FIELD = 253
_MAX_UID = 64


class Code(enum.IntEnum):
    """CNI error codes: the spec's well-known ones, and smesh's own from 100 up."""

    INCOMPATIBLE_VERSION = 1
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    AGENT_REFUSED = 100
    INTERNAL = 101


class CniError(Exception):
    """What the plugin prints as a CNI error: *msg* says what to do, *details* the cause."""

    def __init__(self, code: Code, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def result(self, cni_version: str) -> dict[str, Any]:
        return {
            "cniVersion": cni_version,
            "code": int(self.code),
            "msg": self.msg,
            "details": self.details,
        }


class AgentUnreachable(Exception):
    """The agent's socket could not be connected to, or gave no complete answer in time."""


@dataclass(frozen=True)
class Environment:
    """The CNI_* variables of one call, checked against the spec and the hand-off's limits."""

    command: str
    container_id: str = ""
    netns: str = ""
    if_name: str = ""
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""

    @property
    def pod(self) -> str:
        return f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else self.container_id


@dataclass(frozen=True)
class NetConf:
    """The network configuration on stdin: the spec's keys and smesh-cni's own."""

    cni_version: str
    name: str
    agent_socket: str = DEFAULT_SOCKET
    timeout: float = DEFAULT_TIMEOUT
    prev_result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Outcome:
    """What a call prints and how it exits."""

    stdout: str
    exit_code: int = 0
    stderr: list[str] = field(default_factory=list)


def _bad_env(msg: str) -> CniError:
    return CniError(Code.INVALID_ENVIRONMENT, msg)


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K=V`` (CNI_ARGS); an entry without ``=`` is an error, unknown keys are kept."""
    args: dict[str, str] = {}
    for entry in text.split(";"):
        if not entry:
            continue
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise _bad_env(f"CNI_ARGS: {entry!r} is not KEY=VALUE")
        args[key] = value
    return args


def parse_environment(env: Mapping[str, str]) -> Environment:
    """The call's CNI_* variables; the spec's required ones per command, the pod's on ADD."""
    command = env.get("CNI_COMMAND", "")
    if command not in _COMMANDS:
        raise _bad_env(
            f"CNI_COMMAND must be one of {', '.join(_COMMANDS)}, not {command!r}"
            if command
            else "CNI_COMMAND is not set: smesh-cni is run by a container runtime"
        )
    if command == "VERSION":
        return Environment(command)
    container_id = env.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID.match(container_id):
        raise _bad_env(
            f"CNI_CONTAINERID {container_id!r} is not a container ID (1-256 letters, digits, "
            "'_', '.', '-', starting with a letter or digit)"
        )
    if_name = env.get("CNI_IFNAME", "")
    if not _IF_NAME.match(if_name):
        raise _bad_env(f"CNI_IFNAME {if_name!r} is not an interface name (1-15 characters)")
    netns = env.get("CNI_NETNS", "")
    if len(netns) > _MAX_NETNS:
        raise _bad_env(f"CNI_NETNS is longer than {_MAX_NETNS} characters")
    if command != "DEL" and not netns.startswith("/"):
        # DEL may come after the netns is gone; ADD and CHECK need it.
        raise _bad_env(f"CNI_NETNS must be the path of the sandbox's netns, not {netns!r}")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    namespace = args.get("K8S_POD_NAMESPACE", "")
    name = args.get("K8S_POD_NAME", "")
    uid = args.get("K8S_POD_UID", "")
    for key, value, limit in (
        ("K8S_POD_NAMESPACE", namespace, _MAX_POD_FIELD),
        ("K8S_POD_NAME", name, _MAX_POD_FIELD),
        ("K8S_POD_UID", uid, _MAX_UID),
    ):
        if len(value) > limit:
            raise _bad_env(f"CNI_ARGS: {key} is longer than {limit} characters")
    if command != "DEL" and not (namespace and name):
        raise _bad_env(
            "CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME: smesh-cni meshes Kubernetes "
            "pods and needs the runtime's pod arguments (is it in a Kubernetes node's conflist?)"
        )
    return Environment(command, container_id, netns, if_name, namespace, name, uid)


def _bad_config(msg: str) -> CniError:
    return CniError(Code.INVALID_CONFIG, msg)


def parse_config(data: bytes, command: str) -> NetConf:
    """The network configuration; ``prevResult`` is required on ADD and CHECK (chained)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise CniError(
            Code.DECODE_FAILURE,
            f"the network configuration is larger than {MAX_CONFIG_BYTES} bytes",
        )
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(
            Code.DECODE_FAILURE, "the network configuration on stdin is not JSON", str(exc)
        ) from None
    if not isinstance(raw, dict):
        raise _bad_config("the network configuration must be a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise _bad_config("cniVersion: required string")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported by smesh-cni "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _bad_config("name: required string")
    sock = raw.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock.startswith("/"):
        raise _bad_config(f"agentSocket: must be the absolute path of a socket, not {sock!r}")
    timeout = raw.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise _bad_config(
            f"timeoutSeconds: must be a number of seconds in (0, {MAX_TIMEOUT:g}], not {timeout!r}"
        )
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad_config("prevResult: must be a JSON object (the previous plugin's result)")
    if prev is None and command in ("ADD", "CHECK"):
        raise _bad_config(
            "prevResult: missing; smesh-cni must be chained after the network plugin in "
            "the node's conflist, not run on its own"
        )
    return NetConf(version, name, sock, float(timeout), prev)


def config_version(data: bytes) -> str:
    """The cniVersion to answer an error in: the configuration's, if it has a usable one."""
    try:
        version = json.loads(data).get("cniVersion")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return SPEC_VERSION
    return version if version in SUPPORTED_VERSIONS else SPEC_VERSION


def sandbox_ips(prev_result: Mapping[str, Any] | None) -> list[str]:
    """The sandbox's IPs in *prev_result*: those on an interface inside the sandbox, or
    on no named interface (an IPAM-only result); the host-side veth's and bridge's are not
    the pod's."""
    if not prev_result:
        return []
    interfaces = prev_result.get("interfaces")
    interfaces = interfaces if isinstance(interfaces, list) else []
    ips = prev_result.get("ips", [])
    if not isinstance(ips, list):
        raise _bad_config("prevResult.ips: must be a list")
    found: list[str] = []
    for index, entry in enumerate(ips):
        where = f"prevResult.ips[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str):
            raise _bad_config(f"{where}: must be an object with an address")
        try:
            address = ipaddress.ip_interface(entry["address"]).ip
        except ValueError:
            raise _bad_config(f"{where}.address: {entry['address']!r} is not IP/prefix") from None
        iface = entry.get("interface")
        if isinstance(iface, int) and 0 <= iface < len(interfaces):
            owner = interfaces[iface]
            if isinstance(owner, dict) and not owner.get("sandbox"):
                continue
        found.append(str(address))
    return found


def request_body(env: Environment, conf: NetConf) -> bytes:
    """The hand-off request (:class:`smesh.kubernetes.handoff.SandboxRequest` on the wire)."""
    return json.dumps(
        {
            "containerId": env.container_id,
            "netns": env.netns,
            "ifName": env.if_name,
            "podNamespace": env.pod_namespace,
            "podName": env.pod_name,
            "podUid": env.pod_uid,
            "ips": sandbox_ips(conf.prev_result),
        }
    ).encode()


def version_result() -> dict[str, Any]:
    return {"cniVersion": SPEC_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


def add_result(conf: NetConf) -> dict[str, Any]:
    """The previous plugin's result, passed on unchanged in the configuration's version."""
    return {**(conf.prev_result or {}), "cniVersion": conf.cni_version}


def reply_message(body: bytes) -> str:
    """The agent's ``message`` (a :class:`~smesh.kubernetes.handoff.SandboxReply`), or the
    start of the body if it is not one: an error should show what the agent said."""
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        reply = None
    if isinstance(reply, dict) and isinstance(reply.get("message"), str):
        return str(reply["message"])
    return body[:300].decode(errors="replace").strip()


def not_answering(conf: NetConf, reason: str) -> str:
    return f"smesh agent on this node is not answering at {conf.agent_socket}: {reason}"


def judge_reply(env: Environment, conf: NetConf, status: int, body: bytes) -> None:
    """Raise the CNI error for an agent's answer that is not a success."""
    if status == 200:
        return
    verb = env.command
    said = reply_message(body) or "(no message)"
    if status >= 500:
        raise CniError(
            Code.TRY_AGAIN_LATER,
            f"smesh agent at {conf.agent_socket} failed {verb} of pod {env.pod}: {said}",
            f"HTTP {status}",
        )
    raise CniError(
        Code.AGENT_REFUSED,
        f"smesh agent at {conf.agent_socket} refused {verb} of pod {env.pod}: {said}",
        f"HTTP {status}",
    )


Transport = Callable[[str, str, bytes, float], tuple[int, bytes]]
"""(socket path, request path, body, timeout) → (status, body); raises AgentUnreachable."""


def run(env_vars: Mapping[str, str], stdin: Callable[[], bytes], call: Transport) -> Outcome:
    """One plugin call, start to end, with the agent behind *call*."""
    data = b""
    try:
        env = parse_environment(env_vars)
        if env.command == "VERSION":
            return Outcome(json.dumps(version_result()))
        data = stdin()
        conf = parse_config(data, env.command)
        body = request_body(env, conf)
        try:
            status, reply = call(
                conf.agent_socket, PATH_PREFIX + env.command.lower(), body, conf.timeout
            )
        except AgentUnreachable as exc:
            if env.command == "DEL":
                note = not_answering(conf, str(exc))
                return Outcome(
                    "",
                    stderr=[
                        f"smesh-cni: DEL of pod {env.pod} done without the agent ({note}); "
                        "it releases the pod from the API when it is back"
                    ],
                )
            raise CniError(Code.TRY_AGAIN_LATER, not_answering(conf, str(exc))) from None
        judge_reply(env, conf, status, reply)
        if env.command == "ADD":
            return Outcome(json.dumps(add_result(conf)))
        return Outcome("")
    except CniError as exc:
        version = config_version(data) if data else SPEC_VERSION
        return Outcome(json.dumps(exc.result(version)), exit_code=1)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no socket there (is the smesh agent running on this node?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (the smesh agent is not running)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


class _Deadline(TimeoutError):
    pass


def _expire(signum: int, frame: FrameType | None) -> None:
    raise _Deadline


def call_agent(sock_path: str, path: str, body: bytes, timeout: float) -> tuple[int, bytes]:
    """POST *body* to the agent on its Unix socket; the whole exchange is bounded by
    *timeout* (an interval timer, since per-read socket timeouts add up)."""
    import h11  # noqa: PLC0415  (only a call to the agent pays for it)

    from smesh.httpclient import exchange  # noqa: PLC0415

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(sock_path)
            headers = [("host", "smesh-agent"), ("content-type", "application/json")]
            status, reply = exchange(sock, "POST", path, headers, body)
    except (OSError, h11.ProtocolError) as exc:
        raise AgentUnreachable(_describe(exc, timeout)) from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if status == 0:
        raise AgentUnreachable("the connection closed without an answer")
    return status, reply


def main() -> int:
    """The ``smesh-cni`` executable."""
    if "CNI_COMMAND" not in os.environ:
        # What the reference plugins do when a person runs them by hand.
        print(
            "smesh-cni: the smesh CNI plugin, run by the container runtime "
            f"(CNI protocol versions supported: {', '.join(SUPPORTED_VERSIONS)})",
            file=sys.stderr,
        )
        return 0
    try:
        outcome = run(os.environ, lambda: sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1), call_agent)
    except Exception as exc:  # the runtime reads only stdout: a traceback alone says nothing
        error = CniError(Code.INTERNAL, f"smesh-cni failed: {exc!r}")
        outcome = Outcome(json.dumps(error.result(SPEC_VERSION)), exit_code=1)
    for line in outcome.stderr:
        print(line, file=sys.stderr)
    if outcome.stdout:
        print(outcome.stdout)
    return outcome.exit_code
