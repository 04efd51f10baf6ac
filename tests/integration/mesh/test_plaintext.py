"""Strict inbound (the default): a meshed pod's apps take connections only through the mesh."""

from __future__ import annotations

import pytest

from tests.integration.labkit import LabFactory, smesh
from tests.integration.mesh.conftest import Apps
from tests.integration.mesh.test_agent import POD3, admin, meshed_here, metric, set_meshed, wait

REFUSED = 'decision="plaintext_refused",namespace="default",workload="pod-3"'
HEALTH_PORT = 9200  # a port left open to plaintext, as for a kubelet health probe


@pytest.mark.parametrize("mode", ["ebpf", "nftables"])
def test_plaintext_from_outside_the_mesh_is_refused_and_the_mesh_serves_on(
    lab_factory: LabFactory, mode: str
) -> None:
    lab = lab_factory(
        "--agent-set",
        f"capture.mode={mode}",
        "--agent-set",
        f"capture.plaintextPorts=[{HEALTH_PORT}]",
    )
    apps = Apps(lab)
    apps.serve("pod-3", "halfclose", 9100)
    apps.serve("pod-3", "halfclose", HEALTH_PORT)
    assert apps.run("pod-1", "halfclose", POD3, 9100, 10)["ok"]  # through the tunnel

    set_meshed(lab, "pod-1", meshed=False)  # its connects now leave in plaintext
    wait(lambda: "pod-1" not in meshed_here(lab, "node-1"))
    attempt = apps.run("pod-1", "try-connect", POD3, 9100, 2)
    assert attempt == {"connected": False, "error": "TimeoutError"}
    wait(
        lambda: (
            metric(admin(lab, "node-2", "/metrics").body, "smesh_capture_events_total", REFUSED)
            >= 1
        ),
        timeout=10,
    )
    assert apps.run("pod-1", "try-connect", POD3, HEALTH_PORT, 5)["connected"]  # exempt port

    assert apps.run("pod-2", "halfclose", POD3, 9100, 10)["ok"]  # meshed callers still get in
    status = smesh("capture", "status", "--lab", lab.name).stdout
    assert "PLAINTEXT-REFUSED" in status

    set_meshed(lab, "pod-3", meshed=False)  # out of the mesh, pod-3 takes plaintext again
    wait(lambda: "pod-3" not in meshed_here(lab, "node-2"))
    assert apps.run("pod-1", "try-connect", POD3, 9100, 5)["connected"]


def test_allow_lets_plaintext_reach_a_meshed_pod(lab_factory: LabFactory) -> None:
    lab = lab_factory("--agent-set", "capture.inboundPlaintext=allow")
    apps = Apps(lab)
    apps.serve("pod-3", "halfclose", 9100)
    set_meshed(lab, "pod-1", meshed=False)
    wait(lambda: "pod-1" not in meshed_here(lab, "node-1"))
    assert apps.run("pod-1", "try-connect", POD3, 9100, 5)["connected"]
