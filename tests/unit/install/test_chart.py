"""The Helm chart, rendered by the real `helm template`: what a cluster admin applies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from smesh.agent.config import load
from tests.chartkit import MANIFEST, MANIFEST_HEADER, find, objects, template


def agent_config_text(docs: list[dict[str, Any]]) -> str:
    return str(find(docs, "ConfigMap", "smesh-agent-config")["data"]["agent.yaml"])


def load_agent_config(text: str, tmp_path: Path) -> Any:
    """The embedded agent.yaml through smesh's own loader, as `smesh agent --config` reads
    it with the pod's `--set node=$(NODE_NAME)`."""
    data = yaml.safe_load(text)
    assert data["identity"]["source"] == "kubernetes"
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return load(path, ["node=node-1"], environ={})


def test_the_agent_config_is_valid_for_smeshs_own_loader(tmp_path: Path) -> None:
    config = load_agent_config(agent_config_text(objects(template())), tmp_path)
    assert config.kubernetes is not None
    assert config.kubernetes.kubeconfig is None  # in-cluster: the pod's service account
    assert str(config.kubernetes.cni_socket) == "/run/smesh/cni.sock"
    assert config.node == "node-1"


def test_values_reach_the_agent_config(tmp_path: Path) -> None:
    docs = objects(
        template(
            "--set",
            "agent.config.capture.meshCidrs={10.244.0.0/16}",
            "--set",
            "agent.config.identity.trustDomain=example.org",
        )
    )
    config = load_agent_config(agent_config_text(docs), tmp_path)
    assert config.capture.mesh_cidrs == ("10.244.0.0/16",)
    assert config.identity.trust_domain == "example.org"


def test_deploy_smesh_yaml_is_the_rendered_chart() -> None:
    rendered = MANIFEST_HEADER + template()
    assert MANIFEST.read_text() == rendered, (
        "deploy/smesh.yaml is stale: run `make manifest` and commit it"
    )


def test_the_agent_daemonset() -> None:
    docs = objects(template())
    ds = find(docs, "DaemonSet", "smesh-agent")
    assert ds["metadata"]["namespace"] == "smesh-system"
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        # The new agent starts beside the old one and takes the node over (issue 19).
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = ds["spec"]["template"]["spec"]
    # a handed-over agent's open connections live on this long after its pod's deletion
    assert pod["terminationGracePeriodSeconds"] == 3600
    assert pod["hostNetwork"] is True
    assert pod["serviceAccountName"] == "smesh-agent"
    (agent,) = pod["containers"]
    assert agent["securityContext"]["capabilities"] == {
        "add": ["BPF", "NET_ADMIN", "SYS_ADMIN"],
        "drop": ["ALL"],
    }
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in agent["securityContext"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in (
        agent["env"]
    )
    assert "node=$(NODE_NAME)" in agent["args"]
    # Readiness asks the pod's own agent (its file in its own /tmp), not the admin port,
    # which a hand-over passes between the two pods of a surge; liveness stays on it.
    ready_file = "/tmp/smesh-agent-ready"
    assert agent["readinessProbe"]["exec"] == {"command": ["test", "-e", ready_file]}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 15020}
    # the scrape port on the node's addresses; the debug endpoints on its loopback only.
    # No declared ports: with hostNetwork each is a hostPort, which a surge pod cannot share.
    assert "ports" not in agent
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "15020"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert {"name": "tmp", "mountPath": "/tmp"} in agent["volumeMounts"]
    config = yaml.safe_load(agent_config_text(docs))
    assert config["admin"]["readyFile"] == ready_file
    assert config["admin"]["scrape"] == {"address": "0.0.0.0", "port": 15020}
    assert config["admin"]["debug"] == {"address": "127.0.0.1", "port": 15000}
    assert agent["terminationMessagePolicy"] == "FallbackToLogsOnError"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    assert mounts["netns"]["mountPropagation"] == "HostToContainer"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host == {
        "bpffs": "/sys/fs/bpf",
        "cgroup": "/sys/fs/cgroup",
        "netns": "/run/netns",
        "run": "/run/smesh",
        "state": "/var/lib/smesh",
        "cni-conf": "/etc/cni/net.d",
        "cni-bin": "/opt/cni/bin",
    }
    (install,) = pod["initContainers"]
    assert install["command"] == ["smesh", "cni", "install"]
    assert install["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The CNI entry is removed only when the DaemonSet is deleted, never on an upgrade.
    pre_stop = agent["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:3] == ["smesh", "cni", "uninstall"]
    assert "--only-if-daemonset-deleted" in pre_stop


def test_the_controller_deployment_runs_as_non_root() -> None:
    docs = objects(template())
    deployment = find(docs, "Deployment", "smesh-controller")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "smesh-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (controller,) = pod["containers"]
    assert controller["command"] == ["smesh", "controller"]
    assert controller["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def rules(docs: list[dict[str, Any]], kind: str, name: str) -> list[dict[str, Any]]:
    return list(find(docs, kind, name)["rules"])


def grants(rule_list: list[dict[str, Any]], resource: str) -> list[dict[str, Any]]:
    return [r for r in rule_list if resource in r["resources"]]


def test_rbac_is_least_privilege() -> None:
    docs = objects(template())
    agent = rules(docs, "ClusterRole", "smesh-agent") + rules(docs, "Role", "smesh-agent")
    assert grants(agent, "secrets") == []
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in agent)
    (csrs,) = grants(agent, "certificatesigningrequests")
    assert sorted(csrs["verbs"]) == ["create", "get", "list", "watch"]
    assert grants(agent, "certificatesigningrequests/approval") == []
    assert grants(agent, "signers") == []

    controller = rules(docs, "ClusterRole", "smesh-controller")
    controller_ns = rules(docs, "Role", "smesh-controller")
    assert grants(controller, "secrets") == []
    (secrets,) = grants(controller_ns, "secrets")
    assert secrets == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["smesh-ca"],
        "verbs": ["get", "list", "watch"],
    }
    (signers,) = grants(controller, "signers")
    assert signers["resourceNames"] == ["smesh.io/workload-identity"]
    assert sorted(signers["verbs"]) == ["approve", "sign"]
    assert all("*" not in r["verbs"] for r in controller + controller_ns)
    # Namespaced rights are Roles in smesh-system, never cluster-wide.
    assert grants(controller, "configmaps") == grants(controller, "leases") == []
