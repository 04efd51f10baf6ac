"""The lab kubelet's CNI runtime: network list, per-plugin configuration, environment, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smesh.lab import kubelet_cni as cni
from smesh.lab import topology

NODE = topology.plan("x", nodes=3, kubernetes=True).nodes[1]  # node-2


def test_network_list_bridges_to_br0_and_allocates_above_the_static_pods() -> None:
    network = cni.conflist(NODE, Path("/state/ipam"), None)
    assert network["cniVersion"] == "1.0.0"
    assert [p["type"] for p in network["plugins"]] == ["bridge"]
    bridge = network["plugins"][0]
    assert bridge["bridge"] == "br0"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False
    ipam = bridge["ipam"]
    assert ipam["type"] == "host-local"
    assert ipam["dataDir"] == "/state/ipam"
    assert ipam["ranges"] == [
        [{"subnet": "198.18.2.0/24", "rangeStart": "198.18.2.10", "gateway": "198.18.2.1"}],
        [
            {
                "subnet": "fd00:198:18:2::/64",
                "rangeStart": "fd00:198:18:2::a",
                "gateway": "fd00:198:18:2::1",
            }
        ],
    ]


def test_meshed_network_chains_smesh_cni_last() -> None:
    network = cni.conflist(NODE, Path("/ipam"), Path("/state/nodes/node-2/cni.sock"))
    assert [p["type"] for p in network["plugins"]] == ["bridge", "smesh-cni"]
    assert network["plugins"][1] == {
        "type": "smesh-cni",
        "agentSocket": "/state/nodes/node-2/cni.sock",
        "timeoutSeconds": 15,
    }


def test_plugin_config_carries_name_version_and_prev_result() -> None:
    network = cni.conflist(NODE, Path("/ipam"), Path("/s.sock"))
    first = cni.plugin_config(network, 0, None)
    assert first["name"] == "smesh-lab"
    assert first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "198.18.2.10/24"}]}
    second = cni.plugin_config(network, 1, prev)
    assert second["prevResult"] == prev
    assert second["agentSocket"] == "/s.sock"
    assert "prevResult" not in network["plugins"][1]  # the list itself is not changed


def test_environment_of_a_plugin_call() -> None:
    call = cni.Invocation(
        container_id="k8s-abc",
        netns_path="/run/netns/x.k8s-abc",
        args=cni.cni_args("default", "web-1", "uid-1", "k8s-abc"),
    )
    env = call.env("ADD", Path("/state/cni/bin"), {"PATH": "/usr/bin", "CNI_STALE": "1"})
    assert env == {
        "PATH": "/usr/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "k8s-abc",
        "CNI_NETNS": "/run/netns/x.k8s-abc",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/state/cni/bin",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;"
        "K8S_POD_INFRA_CONTAINER_ID=k8s-abc;K8S_POD_UID=uid-1",
    }


def test_a_plugin_error_object_becomes_the_message() -> None:
    stdout = json.dumps(
        {
            "cniVersion": "1.0.0",
            "code": 11,
            "msg": "smesh agent on this node is not answering at /x/cni.sock",
            "details": "connection refused",
        }
    ).encode()
    error = cni.parse_error("smesh-cni", 1, stdout, b"")
    assert error.code == 11
    assert "smesh agent on this node is not answering at /x/cni.sock" in str(error)
    assert "connection refused" in str(error)
    assert "smesh-cni" in str(error)


def test_a_plugin_without_an_error_object_reports_its_stderr() -> None:
    error = cni.parse_error("bridge", 2, b"", b"panic: oops\n")
    assert error.code == 2
    assert "panic: oops" in str(error)


def test_result_ips_ipv4_first() -> None:
    result = {"ips": [{"address": "fd00:198:18:2::a/64"}, {"address": "198.18.2.10/24"}]}
    assert cni.result_ips(result) == ["198.18.2.10", "fd00:198:18:2::a"]


def test_the_node_network_is_the_first_file_of_its_directory_in_the_nodes_view(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    with pytest.raises(cni.LabError, match="no CNI network configuration"):
        cni.load_network(conf)
    (conf / "20-other.conflist").write_text(json.dumps({"name": "other", "plugins": []}))
    chained = {
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {"type": "bridge", "ipam": {"dataDir": "/run/smesh/labs/l/nodes/node-1/cni/ipam"}},
            {"type": "smesh-cni", "agentSocket": "/run/smesh/cni.sock", "timeoutSeconds": 15},
        ],
    }
    (conf / "10-pods.conflist").write_text(json.dumps(chained))
    (conf / "notes.txt").write_text("not a network")
    network = cni.node_view(cni.load_network(conf), tmp_path / "root")
    assert network["name"] == "pods"
    bridge, smesh_cni = network["plugins"]
    assert smesh_cni["agentSocket"] == f"{tmp_path}/root/run/smesh/cni.sock"
    assert smesh_cni["timeoutSeconds"] == 15
    assert bridge["ipam"]["dataDir"] == "/run/smesh/labs/l/nodes/node-1/cni/ipam"  # the lab's
    (conf / "05-single.conf").write_text(json.dumps({"cniVersion": "0.4.0", "type": "bridge"}))
    assert cni.load_network(conf)["plugins"] == [{"cniVersion": "0.4.0", "type": "bridge"}]
