"""`smesh cni install|uninstall` on a real configuration directory, then the runtime's chain
read from that directory: Debian's bridge (+ host-local) and the installed smesh-cni, the
zipapp run by the host's python3 through its #! line, exactly as a kubelet would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kubernetes.test_cni_chain import (
    CNI_BIN,
    Chain,
    HandoffServer,
    Sandbox,
    node,  # noqa: F401 - fixtures
    sandbox,  # noqa: F401
    serving,
)
from tests.integration.labkit import Lab

SMESH = Path(sys.executable).parent / "smesh"
HOST_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    not (CNI_BIN / "bridge").exists() or not Path(HOST_PYTHON).exists(),
    reason="needs Debian's containernetworking-plugins and python3",
)


@dataclass
class InstalledChain(Chain):
    """The chain as the runtime reads it: the plugins of the directory's first conflist,
    each run from the directory it is installed in."""

    conf_dir: Path = Path()
    bin_dir: Path = Path()

    def conflist(self) -> dict[str, Any]:
        first = sorted(self.conf_dir.glob("*.conflist"))[0]
        return dict(json.loads(first.read_text()))

    def plugins(self) -> list[dict[str, Any]]:
        return list(self.conflist()["plugins"])

    def exec(
        self, plugin: dict[str, Any], command: str, box: Sandbox, prev: dict[str, Any] | None
    ) -> subprocess.CompletedProcess[str]:
        if plugin["type"] != "smesh-cni":
            return super().exec(plugin, command, box, prev)
        conf = {"cniVersion": "1.0.0", "name": self.name, **plugin}
        if prev is not None:
            conf["prevResult"] = prev
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": box.container_id,
            "CNI_NETNS": box.netns_path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": box.cni_args,
        }
        return subprocess.run(
            ["ip", "netns", "exec", self.node_netns, str(self.bin_dir / "smesh-cni")],
            input=json.dumps(conf),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def smesh_cni(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SMESH), "cni", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_install_chains_smesh_cni_that_the_runtime_then_calls_and_uninstall_removes_it(
    node: Lab,  # noqa: F811
    sandbox: Sandbox,  # noqa: F811
    tmp_path: Path,
) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    chain = InstalledChain(
        f"{node.name}.node-1",
        tmp_path / "cni.sock",
        tmp_path / "ipam",
        conf_dir=conf_dir,
        bin_dir=bin_dir,
    )
    bridge = Chain.plugins(chain)[0]
    original = {"cniVersion": "1.0.0", "name": chain.name, "plugins": [bridge]}
    (conf_dir / "10-bridge.conflist").write_text(json.dumps(original))
    (conf_dir / "99-loopback.conflist").write_text(json.dumps(original))

    installed = smesh_cni(
        "install",
        f"--conf-dir={conf_dir}",
        f"--bin-dir={bin_dir}",
        f"--python={HOST_PYTHON}",
        f"--agent-socket={chain.sock}",
        "--timeout=10",
    )
    assert installed.returncode == 0, installed.stderr
    assert "10-bridge.conflist updated" in installed.stdout
    assert [p["type"] for p in chain.plugins()] == ["bridge", "smesh-cni"]
    again = smesh_cni(
        "install",
        f"--conf-dir={conf_dir}",
        f"--bin-dir={bin_dir}",
        f"--agent-socket={chain.sock}",
        "--timeout=10",
    )
    assert "already chains it" in again.stdout, again.stderr

    with serving(HandoffServer(chain.sock)) as agent:
        (bridge_result, smesh_result), failure = chain.add(sandbox)
        assert failure is None, failure
        assert smesh_result == bridge_result
        assert [path for path, _ in agent.requests] == ["/v1/sandboxes/add"]
        assert agent.requests[0][1].pod_name == "web-1"
        dels = chain.delete(sandbox)
        assert [p.returncode for p in dels] == [0, 0], [p.stderr for p in dels]

    removed = smesh_cni("uninstall", f"--conf-dir={conf_dir}", f"--bin-dir={bin_dir}")
    assert removed.returncode == 0, removed.stderr
    assert chain.conflist() == original
    assert json.loads((conf_dir / "99-loopback.conflist").read_text()) == original
    assert not (bin_dir / "smesh-cni").exists()
