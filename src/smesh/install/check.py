"""`smesh install check`: is smesh installed and working on this cluster, and if not, what to do.

Every check is a pure function from API objects (plain JSON, as the API server sends them)
to :class:`Check` results, one line each, with a fix for each failure; :func:`run` is the
small I/O part that reads the objects. What the agents know about their node (kernel
features, capture, certificates) reaches the API through what the DaemonSet already
publishes: an agent that cannot start (no BTF, no cgroup v2, capture not attachable)
exits with one line naming the cause, which the kubelet keeps as the container's
termination message (terminationMessagePolicy: FallbackToLogsOnError); an agent that is
Ready has attached capture and opened its hand-off socket (its readiness probe is
/healthz). Certificates are seen from the CSRs: a CSR pending for long means nobody signs.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from smesh.errors import SmeshError

NAMESPACE = "smesh-system"
CRDS = ("authorizationpolicies.smesh.io",)
SIGNER = "smesh.io/workload-identity"
AGENT = "smesh-agent"
CONTROLLER = "smesh-controller"
TRUST_BUNDLE = "smesh-trust-bundle"
#: BPF features smesh's capture uses (cgroup sock_addr/sockops/sockopt programs, BTF,
#: ring buffers) are all there from this kernel on.
MIN_KERNEL = (5, 10)
#: A CSR of smesh's signer pending longer than this means the controller is not signing.
CSR_PENDING_LIMIT = dt.timedelta(seconds=60)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    {self.name}: {self.detail}"
        return f"FAIL  {self.name}: {self.detail}; fix: {self.fix}"


def _meta(obj: Obj) -> Obj:
    return dict(obj.get("metadata") or {})


def _status(obj: Obj) -> Obj:
    return dict(obj.get("status") or {})


def _condition(obj: Obj, kind: str) -> Obj | None:
    for cond in _status(obj).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def api_server(server: str, version: Obj) -> Check:
    git = version.get("gitVersion", "unknown version")
    return Check("API server", True, f"{server} answers, Kubernetes {git}")


def api_unreachable(server: str, error: str) -> Check:
    return Check(
        "API server",
        False,
        f"{server}: {error}",
        "check the kubeconfig's server and credentials (`kubectl --kubeconfig K version`)",
    )


def crd(name: str, obj: Obj | None) -> Check:
    fix = (
        "install smesh's CRDs: `kubectl apply -f deploy/smesh.yaml` (or `helm install smesh "
        "deploy/helm/smesh`)"
    )
    if obj is None:
        return Check(f"CRD {name}", False, "not found", fix)
    established = _condition(obj, "Established")
    if established is None or established.get("status") != "True":
        why = (established or {}).get("message") or "not Established yet"
        return Check(
            f"CRD {name}",
            False,
            why,
            f"see `kubectl describe crd {name}` (names accepted? a conflicting CRD?)",
        )
    versions = ", ".join(v.get("name", "?") for v in (obj.get("spec") or {}).get("versions", []))
    return Check(f"CRD {name}", True, f"Established ({versions})")


def controller(deployment: Obj | None) -> Check:
    name = f"controller Deployment {NAMESPACE}/{CONTROLLER}"
    logs = (
        f"`kubectl -n {NAMESPACE} logs deploy/{CONTROLLER}` and `kubectl -n {NAMESPACE} get pods`"
    )
    if deployment is None:
        return Check(name, False, "not found", "install smesh (deploy/smesh.yaml or the chart)")
    status = _status(deployment)
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    available = status.get("availableReplicas", 0) or 0
    cond = _condition(deployment, "Available")
    if available < 1 or (cond is not None and cond.get("status") != "True"):
        why = (cond or {}).get("message") or "no replica available"
        return Check(name, False, f"{available}/{wanted} available: {why}", f"see {logs}")
    return Check(name, True, f"{available}/{wanted} replicas available")


def lease(obj: Obj | None, now: dt.datetime) -> Check:
    name = f"controller Lease {NAMESPACE}/{CONTROLLER}"
    fix = (
        f"the controller elects a leader within 15 s of starting: see `kubectl -n {NAMESPACE} "
        f"logs deploy/{CONTROLLER}`"
    )
    if obj is None:
        return Check(name, False, "no leader has ever held it", fix)
    spec = obj.get("spec") or {}
    holder = spec.get("holderIdentity")
    renewed = _time(spec.get("renewTime"))
    duration = dt.timedelta(seconds=spec.get("leaseDurationSeconds") or 0)
    if not holder or renewed is None:
        return Check(name, False, "held by nobody", fix)
    if renewed + duration < now:
        ago = int((now - renewed).total_seconds())
        return Check(name, False, f"{holder} stopped renewing it {ago} s ago", fix)
    return Check(name, True, f"held by {holder}")


def trust_bundle(obj: Obj | None, now: dt.datetime) -> Check:
    name = f"trust bundle ConfigMap {NAMESPACE}/{TRUST_BUNDLE}"
    fix = (
        "the controller writes it from the CA Secret smesh-system/smesh-ca: create the "
        "Secret (`smesh ca init --kubeconfig K`, or your own CA) and check the controller"
    )
    if obj is None:
        return Check(name, False, "not found", fix)
    pem = str((obj.get("data") or {}).get("roots.pem") or "")
    try:
        roots = x509.load_pem_x509_certificates(pem.encode()) if pem.strip() else []
    except ValueError as exc:
        return Check(name, False, f"roots.pem is not PEM certificates ({exc})", fix)
    if not roots:
        return Check(name, False, "roots.pem holds no certificate", fix)
    valid = [r for r in roots if r.not_valid_before_utc <= now <= r.not_valid_after_utc]
    if not valid:
        return Check(
            name,
            False,
            f"none of its {len(roots)} root(s) is valid now",
            "rotate the CA (`smesh ca rotate --kubeconfig K`)",
        )
    expiry = min(r.not_valid_after_utc for r in valid)
    return Check(name, True, f"{len(valid)} valid root(s), first expiry {expiry:%Y-%m-%d}")


def kernel_version(text: str) -> tuple[int, int] | None:
    match = re.match(r"^(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def node_kernel(node: Obj) -> Check:
    name = _meta(node).get("name", "?")
    text = str((_status(node).get("nodeInfo") or {}).get("kernelVersion") or "")
    version = kernel_version(text)
    minimum = ".".join(map(str, MIN_KERNEL))
    if version is None:
        return Check(
            f"kernel of {name}", False, f"unknown ({text!r})", f"smesh needs Linux >= {minimum}"
        )
    if version < MIN_KERNEL:
        return Check(
            f"kernel of {name}",
            False,
            f"Linux {text} is older than {minimum}",
            f"upgrade the node to Linux >= {minimum} with BTF (/sys/kernel/btf/vmlinux)",
        )
    return Check(f"kernel of {name}", True, f"Linux {text}")


def _pod_ready(pod: Obj) -> bool:
    cond = _condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def _why_not_ready(pod: Obj) -> str:
    """The agent container's state in words: waiting reason, last termination message."""
    for status in _status(pod).get("containerStatuses") or []:
        if status.get("name") != "agent":
            continue
        parts = []
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            parts.append(f"{waiting.get('reason', 'waiting')}")
        terminated = (status.get("lastState") or {}).get("terminated") or (
            status.get("state") or {}
        ).get("terminated")
        if terminated:
            message = str(terminated.get("message") or "").strip().splitlines()
            said = message[-1] if message else f"exit code {terminated.get('exitCode')}"
            parts.append(f"last exit: {said}")
        restarts = status.get("restartCount") or 0
        if restarts:
            parts.append(f"{restarts} restart(s)")
        if not parts:
            parts.append("running, readiness probe (/healthz) failing")
        return "; ".join(parts)
    phase = _status(pod).get("phase", "Pending")
    return f"{phase}, agent container not started"


def agents(daemonset: Obj | None, nodes: Iterable[Obj], pods: Iterable[Obj]) -> list[Check]:
    """The DaemonSet, then one line per node: its agent pod Ready, or why not."""
    ds_name = f"agent DaemonSet {NAMESPACE}/{AGENT}"
    if daemonset is None:
        return [
            Check(ds_name, False, "not found", "install smesh (deploy/smesh.yaml or the chart)")
        ]
    status = _status(daemonset)
    checks = [
        Check(
            ds_name,
            True,
            f"{status.get('numberReady', 0)}/{status.get('desiredNumberScheduled', 0)} ready, "
            f"{status.get('updatedNumberScheduled', 0)} up to date",
        )
    ]
    by_node: dict[str, list[Obj]] = {}
    for pod in pods:
        by_node.setdefault((pod.get("spec") or {}).get("nodeName") or "", []).append(pod)
    for node in nodes:
        name = _meta(node).get("name", "?")
        here = by_node.get(name, [])
        check = f"agent on {name}"
        if not here:
            checks.append(
                Check(
                    check,
                    False,
                    "no agent pod (pods started here fail their CNI ADD once smesh-cni is "
                    "chained, or run unmeshed if it is not)",
                    f"see `kubectl -n {NAMESPACE} describe daemonset {AGENT}` (nodeSelector, "
                    "tolerations, resources)",
                ),
            )
            continue
        # After a rolling update, the old pod may linger, deleted, while its agent serves
        # the connections it held (docs/agent.md, "Hand-over"): the node's agent is the other.
        lingering = [p for p in here if _meta(p).get("deletionTimestamp")]
        here = [p for p in here if p not in lingering] or here
        ready = [p for p in here if _pod_ready(p)]
        if ready:
            detail = f"{_meta(ready[0]).get('name')} Ready (capture attached)"
            if lingering and ready[0] not in lingering:
                detail += f"; {len(lingering)} old agent pod(s) serving their last connections"
            checks.append(Check(check, True, detail))
            continue
        pod = here[0]
        pod_name = _meta(pod).get("name")
        checks.append(
            Check(
                check,
                False,
                f"{pod_name} not Ready: {_why_not_ready(pod)}",
                f"see `kubectl -n {NAMESPACE} logs {pod_name} -c agent --previous` "
                "(docs/kubernetes.md, Install: prerequisites)",
            )
        )
    return checks


def csrs(items: Iterable[Obj], now: dt.datetime) -> Check:
    """smesh's CSRs: issued and denied counts; any pending too long is a failure."""
    ours = [c for c in items if (c.get("spec") or {}).get("signerName") == SIGNER]
    issued = [c for c in ours if _status(c).get("certificate")]
    denied = [c for c in ours if _condition(c, "Denied") or _condition(c, "Failed")]
    stuck = []
    for c in ours:
        if c in issued or c in denied:
            continue
        created = _time(_meta(c).get("creationTimestamp"))
        if created is not None and now - created > CSR_PENDING_LIMIT:
            stuck.append(_meta(c).get("name", "?"))
    pending = len(ours) - len(issued) - len(denied)
    detail = f"{len(issued)} issued, {len(denied)} denied, {pending} pending"
    if stuck:
        return Check(
            f"certificates ({SIGNER})",
            False,
            f"{detail}; {len(stuck)} pending for over {CSR_PENDING_LIMIT.seconds} s "
            f"(e.g. {stuck[0]})",
            f"the controller is not signing: see `kubectl -n {NAMESPACE} logs deploy/{CONTROLLER}`",
        )
    return Check(f"certificates ({SIGNER})", True, detail)


Reader = Callable[[str], "Obj | None"]
Lister = Callable[..., list[Obj]]  # (path, **query parameters)


def run(server: str, get: Reader, items: Lister, now: dt.datetime) -> list[Check]:
    """Every check, in order; without an API server, only the first (the rest cannot run)."""
    try:
        version = get("/version")
    except SmeshError as exc:
        return [api_unreachable(server, str(exc))]
    checks = [api_server(server, version or {})]
    for name in CRDS:
        checks.append(
            crd(name, get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"))
        )
    ns = f"/namespaces/{NAMESPACE}"
    checks.append(controller(get(f"/apis/apps/v1{ns}/deployments/{CONTROLLER}")))
    checks.append(lease(get(f"/apis/coordination.k8s.io/v1{ns}/leases/{CONTROLLER}"), now))
    checks.append(trust_bundle(get(f"/api/v1{ns}/configmaps/{TRUST_BUNDLE}"), now))
    nodes = items("/api/v1/nodes")
    checks.extend(node_kernel(node) for node in nodes)
    checks.extend(
        agents(
            get(f"/apis/apps/v1{ns}/daemonsets/{AGENT}"),
            nodes,
            items(f"/api/v1{ns}/pods", labelSelector=f"app.kubernetes.io/name={AGENT}"),
        )
    )
    checks.append(csrs(items("/apis/certificates.k8s.io/v1/certificatesigningrequests"), now))
    return checks
