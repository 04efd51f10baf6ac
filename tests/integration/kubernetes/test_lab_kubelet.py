"""The lab kubelet runs system pods: pod-bound tokens, volumes, env, capabilities, probes.

One unmeshed cluster for the module. What a container sees is read through its own mount
namespace (``nsenter --target PID --mount``), which is how its process sees the files.
"""

from __future__ import annotations

import collections.abc
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smesh.lab import state
from tests.integration.kubernetes.clusterkit import (
    command_running,
    kubectl,
    kubernetes_lab,
    pods,
    running,
    sandbox_of,
    wait_for,
)
from tests.integration.labkit import Lab, unique_name

WHOAMI = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: v1
kind: Pod
metadata: {name: whoami}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command:
    - sh
    - -c
    - |
      SA=/var/run/secrets/kubernetes.io/serviceaccount
      API=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
      # A review is read-only, so curl retries it (with -o a retry starts the file over):
      # once (CI of 12-03) the API server's answer ended short (curl exit 18) under load.
      curl -sS --retry 2 --retry-all-errors --fail-with-body --cacert $SA/ca.crt \\
        -H "Authorization: Bearer $(cat $SA/token)" \\
        -H 'Content-Type: application/json' -X POST \\
        -d '{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}' \\
        -o /dev/termination-log $API/apis/authentication.k8s.io/v1/selfsubjectreviews
---
apiVersion: v1
kind: Pod
metadata: {name: notoken}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: ["test", "!", "-e", "/var/run/secrets/kubernetes.io/serviceaccount/token"]
"""

VOLUMES = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {greeting: hello, other: x}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {app: vols}}
spec:
  nodeName: node-1
  containers:
  - name: main
    image: none
    command: ["sleep", "infinity"]
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: cfg, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: sec, key: password}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: MEMORY_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    resources: {limits: {memory: 64Mi}}
    securityContext:
      capabilities: {drop: [ALL], add: [NET_ADMIN]}
    volumeMounts:
    - {name: cfg, mountPath: /etc/smesh-lab-test/cfg}
    - {name: sec, mountPath: /etc/smesh-lab-test/sec}
    - {name: scratch, mountPath: /var/smesh-lab-test/scratch}
    - {name: meta, mountPath: /etc/smesh-lab-test/meta}
    - {name: proj, mountPath: /etc/smesh-lab-test/proj}
    - {name: host, mountPath: /etc/smesh-lab-test/host, readOnly: true}
    - {name: netns, mountPath: /etc/smesh-lab-test/netns, mountPropagation: HostToContainer}
  volumes:
  - {name: cfg, configMap: {name: cfg}}
  - {name: sec, secret: {secretName: sec}}
  - {name: scratch, emptyDir: {}}
  - name: meta
    downwardAPI:
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
  - name: proj
    projected:
      sources:
      - serviceAccountToken: {path: tok, audience: lab, expirationSeconds: 3600}
      - configMap: {name: cfg, items: [{key: greeting, path: g}]}
      - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}
  - {name: host, hostPath: {path: HOSTDIR, type: DirectoryOrCreate}}
  - {name: netns, hostPath: {path: /run/netns, type: Directory}}
"""

PROBES = """
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  nodeName: node-2
  containers:
  - name: exec
    image: none
    command: ["sleep", "infinity"]
    readinessProbe:
      exec: {command: ["test", "-e", "/var/smesh-lab-test/flag/ready"]}
      periodSeconds: 1
    volumeMounts: [{name: flag, mountPath: /var/smesh-lab-test/flag}]
  - name: http
    image: none
    command: ["python3", "-m", "http.server", "8081"]
    readinessProbe: {httpGet: {path: /, port: 8081}, periodSeconds: 1}
  - name: tcp
    image: none
    command: ["sleep", "infinity"]
    readinessProbe: {tcpSocket: {port: 8081}, periodSeconds: 1}
  - name: user
    image: none
    command: ["sleep", "infinity"]
    securityContext: {runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}
  volumes: [{name: flag, emptyDir: {}}]
---
apiVersion: v1
kind: Pod
metadata: {name: rooty}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: none, command: ["true"], securityContext: {runAsNonRoot: true}}
---
apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: none
    terminationMessagePolicy: FallbackToLogsOnError
    command: ["sh", "-c", "echo it broke; exit 4"]
"""


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab("kl", "--no-mesh") as lab:
        yield lab


def finished(lab: Lab, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = pods(lab, "--field-selector", f"metadata.name={name}").get(name)
        if pod and pod["status"].get("phase") in {"Succeeded", "Failed"}:
            return pod
        return None

    return wait_for(f"pod {name} to finish", check)  # type: ignore[no-any-return]


def pid_of(lab: Lab, pod: dict[str, Any], container: str) -> int:
    return int(sandbox_of(lab, pod)["containers"][container]["pid"])


def inside(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """*argv* in the mount namespace of container process *pid*."""
    return subprocess.run(
        ["nsenter", f"--target={pid}", "--mount", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


CONTAINER_PATHS = (
    "/etc/smesh-lab-test",
    "/var/smesh-lab-test",
    "/var/run/secrets",
    "/run/secrets",
    "/dev/termination-log",
)


def container_mounts_on_host() -> list[str]:
    """Host mount points a container's mounts would add (its targets, its volumes); other
    engineers' labs change the rest of the table meanwhile, so only these are compared."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point.startswith(CONTAINER_PATHS) or "/pods/" in point:
            points.append(point)
    return points


def test_a_pod_s_token_names_the_pod_to_the_api(cluster: Lab) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=WHOAMI)
    pod = finished(cluster, "whoami")
    state_ = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert state_["exitCode"] == 0, state_
    review = json.loads(state_["message"])  # via terminationMessagePath
    user = review["status"]["userInfo"]
    assert user["username"] == "system:serviceaccount:default:reader"
    extra = user["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["whoami"]
    assert extra["authentication.kubernetes.io/pod-uid"] == [pod["metadata"]["uid"]]
    assert extra["authentication.kubernetes.io/node-name"] == [pod["spec"]["nodeName"]]
    assert finished(cluster, "notoken")["status"]["phase"] == "Succeeded"


def test_volumes_env_and_capabilities_of_a_container(cluster: Lab) -> None:
    host_dir = Path("/tmp") / unique_name("kl-host")
    assert container_mounts_on_host() == []
    try:
        kubectl(cluster, "apply", "-f", "-", stdin=VOLUMES.replace("HOSTDIR", str(host_dir)))
        pod = running(cluster, "--field-selector", "metadata.name=vols", count=1)["vols"]
        pid = pid_of(cluster, pod, "main")
        assert command_running(pid) == "sleep"  # past the exec chain: its own ids and caps
        status = dict(
            line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        net_admin = f"{1 << 12:016x}"
        assert (status["CapEff"], status["CapBnd"]) == (net_admin, net_admin)
        env = dict(
            entry.split("=", 1)
            for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in entry
        )
        assert (env["GREETING"], env["PASSWORD"]) == ("hello", "s3cret")
        assert (env["HOST_IP"], env["MEMORY_MI"]) == ("198.19.0.1", "64")
        assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
            "198.19.0.250",
            "6443",
        )
        assert env["PATH"].startswith(f"{sys.prefix}/bin:")  # the checkout's smesh first
        root = "/etc/smesh-lab-test"
        expected = {
            f"{root}/cfg/greeting": "hello",
            f"{root}/sec/password": "s3cret",
            f"{root}/meta/name": "vols",
            f"{root}/meta/labels": 'app="vols"',
            f"{root}/proj/g": "hello",
            f"{root}/proj/ns": "default",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace": "default",
        }
        for path, content in expected.items():
            assert inside(pid, "cat", path).stdout == content, path
        for path in (f"{root}/proj/tok", "/var/run/secrets/kubernetes.io/serviceaccount/token"):
            assert inside(pid, "cat", path).stdout.startswith("eyJ"), path  # a JWT
        ca = inside(pid, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt").stdout
        assert ca == (state.directory(cluster.name) / "kubernetes/pki/ca.crt").read_text()
        assert host_dir.is_dir()  # DirectoryOrCreate
        (host_dir / "from-host").write_text("seen")
        assert inside(pid, "cat", f"{root}/host/from-host").stdout == "seen"
        assert inside(pid, "touch", f"{root}/host/x").returncode != 0  # readOnly
        assert inside(pid, "touch", f"{root}/cfg/x").returncode != 0  # API data: read-only
        assert inside(pid, "touch", "/var/smesh-lab-test/scratch/x").returncode == 0
        # HostToContainer: a netns added after the container started appears in it
        later = f"{cluster.name}.kl-later"
        subprocess.run(["ip", "netns", "add", later], check=True)
        try:
            listing = inside(pid, "ls", f"{root}/netns").stdout.split()
            assert later in listing
        finally:
            subprocess.run(["ip", "netns", "del", later], check=False)
        assert container_mounts_on_host() == []  # the container's mounts are its own
        kubectl(cluster, "delete", "pod", "vols", "--wait=true")
        assert container_mounts_on_host() == []
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def test_readiness_probes_user_and_termination_messages(cluster: Lab) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=PROBES)
    pod = running(cluster, "--field-selector", "metadata.name=probed", count=1)["probed"]

    def readiness() -> dict[str, bool]:
        found = pods(cluster, "--field-selector", "metadata.name=probed")["probed"]
        return {c["name"]: c["ready"] for c in found["status"]["containerStatuses"]}

    wait_for(
        "http, tcp and user ready",
        lambda: readiness() == {"exec": False, "http": True, "tcp": True, "user": True},
    )
    ready = [c for c in pods(cluster)["probed"]["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "False"
    node, uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
    pod_dir = state.directory(cluster.name) / "nodes" / node / "pods" / uid
    (pod_dir / "volumes" / "flag" / "ready").write_text("")
    wait_for("the exec probe to pass", lambda: all(readiness().values()))

    def pod_ready() -> bool:
        conditions = pods(cluster)["probed"]["status"]["conditions"]
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for("the pod to be Ready", pod_ready)
    user = pid_of(cluster, pod, "user")
    assert command_running(user) == "sleep"
    status = Path(f"/proc/{user}/status").read_text()
    assert "Uid:\t1000\t1000\t1000\t1000" in status
    assert "CapEff:\t0000000000000000" in status

    failed = finished(cluster, "fails")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (failed["exitCode"], failed["message"]) == (4, "it broke")

    def refused() -> dict[str, Any] | None:
        found = pods(cluster, "--field-selector", "metadata.name=rooty").get("rooty")
        statuses = (found or {}).get("status", {}).get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = wait_for("runAsNonRoot to refuse a root container", refused)
    assert "runAsNonRoot" in waiting["message"]
