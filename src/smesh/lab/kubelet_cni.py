"""The lab kubelet's CNI runtime: a network configuration list run as a container runtime does.

CNI spec 1.0.0: each plugin is an executable found on ``CNI_PATH``, called with
``CNI_COMMAND``/``CNI_CONTAINERID``/``CNI_NETNS``/``CNI_IFNAME``/``CNI_ARGS`` in its environment
and its network configuration on stdin. For ADD the plugins of the list run in order and each
after the first gets the previous one's result as ``prevResult``; for DEL they run in reverse
order, each with the cached result of the ADD. A plugin fails with a non-zero exit and an
error object ``{"code", "msg", "details"}`` on stdout, which is what a user sees in the pod's
``FailedCreatePodSandBox`` event. The building of configurations and environments is pure;
:func:`add` and :func:`delete` run the plugins.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smesh.lab.errors import LabError
from smesh.lab.kubepaths import host_path
from smesh.lab.topology import Node

CNI_VERSION = "1.0.0"
NETWORK_NAME = "smesh-lab"
#: host-local hands out addresses from here on: below it are the gateway (.1) and the
#: addresses a lab without --kubernetes gives its static pods (.2 ...).
FIRST_HOST = 10
#: How long one plugin may take; smesh-cni has its own, shorter, timeoutSeconds.
PLUGIN_TIMEOUT = 60.0
#: What smesh-cni waits for its agent (the key and value of the design's plugin config).
SMESH_CNI_TIMEOUT_SECONDS = 15
#: The plugins a lab's CNI_PATH holds: Debian's containernetworking-plugins and smesh's own.
SYSTEM_PLUGIN_DIR = Path("/usr/lib/cni")
SYSTEM_PLUGINS = ("bridge", "host-local", "loopback")


class CniError(LabError):
    """A CNI plugin failed; the message is the plugin's own ``msg`` (and ``details``)."""

    def __init__(self, plugin: str, code: int, message: str) -> None:
        super().__init__(f"plugin type={plugin!r} failed (code {code}): {message}")
        self.plugin = plugin
        self.code = code


def conflist(node: Node, ipam_dir: Path, agent_socket: Path | None) -> dict[str, Any]:
    """The node's network: its ``br0`` bridge, host-local over its pod CIDRs, then smesh-cni
    (when *agent_socket* is given: the lab is meshed through the API)."""
    ranges = []
    for cidr, gateway in ((node.pod_cidr4, node.gateway4), (node.pod_cidr6, node.gateway6)):
        ranges.append(
            [
                {
                    "subnet": str(cidr),
                    "rangeStart": str(cidr.network_address + FIRST_HOST),
                    "gateway": str(gateway),
                }
            ]
        )
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": "br0",  # made by `lab up`, with the gateway addresses already on it
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(ipam_dir),
                "ranges": ranges,
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            },
        }
    ]
    if agent_socket is not None:
        plugins.append(
            {
                "type": "smesh-cni",
                "agentSocket": str(agent_socket),
                "timeoutSeconds": SMESH_CNI_TIMEOUT_SECONDS,
            }
        )
    return {"cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": plugins}


def plugin_config(
    network: Mapping[str, Any], index: int, prev_result: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What plugin *index* of *network* reads on stdin (the spec's "network configuration")."""
    config = dict(network["plugins"][index])
    config["cniVersion"] = network["cniVersion"]
    config["name"] = network["name"]
    if prev_result is not None:
        config["prevResult"] = dict(prev_result)
    return config


def cni_args(namespace: str, name: str, uid: str, container_id: str) -> str:
    """``CNI_ARGS`` as the kubelet's runtimes set them (the CNI plugins of Kubernetes read them)."""
    return ";".join(
        [
            "IgnoreUnknown=1",
            f"K8S_POD_NAMESPACE={namespace}",
            f"K8S_POD_NAME={name}",
            f"K8S_POD_INFRA_CONTAINER_ID={container_id}",
            f"K8S_POD_UID={uid}",
        ]
    )


@dataclass(frozen=True)
class Invocation:
    """One sandbox's CNI call parameters, the same for every plugin of the list."""

    container_id: str
    netns_path: str
    args: str
    ifname: str = "eth0"

    def env(self, command: str, cni_path: Path, base: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns_path,
            CNI_IFNAME=self.ifname,
            CNI_ARGS=self.args,
            CNI_PATH=str(cni_path),
        )
        return env


def parse_error(plugin: str, returncode: int, stdout: bytes, stderr: bytes) -> CniError:
    """The spec's error object if the plugin printed one, else what it wrote."""
    try:
        error = json.loads(stdout)
    except ValueError:
        error = None
    if isinstance(error, dict) and ("msg" in error or "code" in error):
        message = str(error.get("msg", ""))
        if error.get("details"):
            message += f"; {error['details']}"
        code = error.get("code")
        return CniError(plugin, code if isinstance(code, int) else returncode, message)
    text = (stderr or stdout).decode(errors="replace").strip()[-500:]
    return CniError(plugin, returncode, text or f"exited with status {returncode}")


async def run_plugin(
    cni_path: Path, plugin: str, env: dict[str, str], config: dict[str, Any]
) -> dict[str, Any]:
    """Run one plugin; its parsed result (``{}`` for DEL, which prints nothing)."""
    executable = cni_path / plugin
    if not os.access(executable, os.X_OK):
        raise CniError(plugin, 0, f"failed to find plugin {plugin!r} in path [{cni_path}]")
    proc = await asyncio.create_subprocess_exec(
        str(executable),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        stdout, stderr = await asyncio.wait_for(
            proc.communicate(json.dumps(config).encode()), PLUGIN_TIMEOUT
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CniError(plugin, 0, f"did not finish within {PLUGIN_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        raise parse_error(plugin, proc.returncode or 0, stdout, stderr)
    if not stdout.strip():
        return {}
    try:
        result = json.loads(stdout)
    except ValueError:
        raise CniError(plugin, 0, f"printed a result that is not JSON: {stdout[:200]!r}") from None
    if not isinstance(result, dict):
        raise CniError(plugin, 0, f"printed a result that is not an object: {stdout[:200]!r}")
    return result


async def add(
    network: Mapping[str, Any], call: Invocation, cni_path: Path, base_env: Mapping[str, str]
) -> dict[str, Any]:
    """ADD through the whole list; the last plugin's result (the sandbox's addresses)."""
    result: dict[str, Any] | None = None
    env = call.env("ADD", cni_path, base_env)
    for index, plugin in enumerate(network["plugins"]):
        result = await run_plugin(
            cni_path, plugin["type"], env, plugin_config(network, index, result)
        )
    return result or {}


async def delete(
    network: Mapping[str, Any],
    call: Invocation,
    cni_path: Path,
    base_env: Mapping[str, str],
    prev_result: Mapping[str, Any] | None,
) -> None:
    """DEL through the whole list in reverse; every plugin is called, the first error raised."""
    env = call.env("DEL", cni_path, base_env)
    first: CniError | None = None
    for index in reversed(range(len(network["plugins"]))):
        plugin = network["plugins"][index]["type"]
        try:
            await run_plugin(cni_path, plugin, env, plugin_config(network, index, prev_result))
        except CniError as exc:
            first = first or exc
    if first is not None:
        raise first


def result_ips(result: Mapping[str, Any]) -> list[str]:
    """The sandbox's addresses from a CNI result, IPv4 first (``podIPs`` order)."""
    ips = []
    for entry in result.get("ips") or []:
        address = str(entry.get("address", "")).partition("/")[0]
        if address:
            ips.append(address)
    return sorted(ips, key=lambda ip: ":" in ip)


def link_plugins(cni_path: Path, smesh_cni: Path | None) -> None:
    """CNI_PATH for the lab: links to the system plugins, and to smesh-cni if it is installed."""
    cni_path.mkdir(parents=True, exist_ok=True)
    targets = {name: SYSTEM_PLUGIN_DIR / name for name in SYSTEM_PLUGINS}
    if smesh_cni is not None:
        targets["smesh-cni"] = smesh_cni
    for name, target in targets.items():
        link = cni_path / name
        if not link.is_symlink():
            link.symlink_to(target)


def load_network(conf_dir: Path) -> dict[str, Any]:
    """The node's network as a runtime picks it: the lexically first ``*.conf``,
    ``*.conflist`` or ``*.json`` of *conf_dir*; a single-plugin ``.conf`` is a list of one."""
    names = sorted(
        p.name for p in conf_dir.glob("*") if p.suffix in {".conf", ".conflist", ".json"}
    )
    if not names:
        raise LabError(f"no CNI network configuration in {conf_dir} (network not ready)")
    path = conf_dir / names[0]
    try:
        network = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"CNI network configuration {path}: {exc}") from exc
    if not isinstance(network, dict):
        raise LabError(f"CNI network configuration {path} is not a JSON object")
    if "plugins" not in network:
        network = {
            "cniVersion": network.get("cniVersion", CNI_VERSION),
            "name": network.get("name", ""),
            "plugins": [network],
        }
    return network


def node_view(value: Any, root: Path) -> Any:
    """*value* (a network configuration) with every node-local path in it mapped into the
    node's root: the plugins run on the machine, but must see the paths the node's agent
    and CNI installer wrote (e.g. smesh-cni's ``agentSocket: /run/smesh/cni.sock``)."""
    if isinstance(value, str):
        return host_path(root, value) if value.startswith("/") else value
    if isinstance(value, list):
        return [node_view(item, root) for item in value]
    if isinstance(value, dict):
        return {key: node_view(item, root) for key, item in value.items()}
    return value
