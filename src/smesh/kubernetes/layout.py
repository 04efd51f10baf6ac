"""Where a kubelet puts a pod's cgroup, so the agent can attach capture to it.

The CNI hand-off names a pod's network namespace but not its cgroup: the container runtime
creates that from the kubelet's layout, which is a pure function of the kubelet's cgroup
driver, its ``--cgroup-root``, the pod's QoS class and its UID. Both drivers, on cgroup v2:

* ``cgroupfs``: ``<root>/kubepods/pod<uid>`` for Guaranteed pods, and
  ``<root>/kubepods/{burstable,besteffort}/pod<uid>`` for the others;
* ``systemd``: nested slices named after their parents, with the UID's dashes turned into
  underscores (systemd reserves ``-`` for nesting), e.g.
  ``kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice``.

Containers are children of their pod's cgroup, so capture attached to the pod cgroup
reaches every container, present and future. The lab's kubelet creates its pods with this
module, so the lab exercises exactly the lookup a real node needs.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path, PurePosixPath

from smesh.kubernetes.errors import KubernetesError

_UID = re.compile(r"^[0-9a-fA-F-]{1,64}$")


class LayoutError(KubernetesError):
    """A pod's cgroup cannot be named or found from the kubelet's layout."""


class CgroupDriver(enum.StrEnum):
    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"


class QosClass(enum.StrEnum):
    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BESTEFFORT = "BestEffort"


def qos_class(value: str | None) -> QosClass:
    """The pod's ``status.qosClass`` (set by the API server when the pod is created)."""
    try:
        return QosClass(value or "")
    except ValueError:
        raise LayoutError(
            f"unknown QoS class {value!r}: expected one of {', '.join(q.value for q in QosClass)}"
        ) from None


def _slice_path(parent: PurePosixPath, name: str) -> PurePosixPath:
    """A systemd slice nested in *parent*: ``a.slice`` + ``b`` → ``a.slice/a-b.slice``."""
    if parent.name.endswith(".slice") and parent.name != "-.slice":
        return parent / f"{parent.name.removesuffix('.slice')}-{name}.slice"
    return parent / f"{name}.slice"


def pod_cgroup(driver: CgroupDriver, root: str, qos: QosClass, uid: str) -> PurePosixPath:
    """The pod's cgroup relative to the cgroup v2 mount, e.g. ``/kubepods/burstable/pod<uid>``.

    *root* is the kubelet's ``--cgroup-root`` (``/`` unless the node says otherwise).
    """
    if not _UID.match(uid):
        raise LayoutError(f"invalid pod UID {uid!r}: expected a UUID")
    base = PurePosixPath("/") / root.strip("/") if root.strip("/") else PurePosixPath("/")
    if driver is CgroupDriver.CGROUPFS:
        kubepods = base / "kubepods"
        pod = f"pod{uid}"
        if qos is QosClass.GUARANTEED:
            return kubepods / pod
        return kubepods / qos.value.lower() / pod
    kubepods = _slice_path(base, "kubepods")
    escaped = uid.replace("-", "_")
    if qos is QosClass.GUARANTEED:
        return _slice_path(kubepods, f"pod{escaped}")
    tier = _slice_path(kubepods, qos.value.lower())
    return _slice_path(tier, f"pod{escaped}")


def detect_driver(cgroup_mount: Path, root: str = "/") -> CgroupDriver:
    """The driver a running kubelet uses, from what exists under the cgroup v2 mount."""
    relative = root.strip("/")
    for driver in CgroupDriver:
        kubepods = pod_cgroup(driver, root, QosClass.GUARANTEED, "0").parent
        if (cgroup_mount / str(kubepods).lstrip("/")).is_dir():
            return driver
    where = cgroup_mount / relative if relative else cgroup_mount
    raise LayoutError(
        f"no kubelet cgroup tree (kubepods or kubepods.slice) under {where}: is the kubelet "
        "running with cgroup v2, and is kubernetes.cgroupRoot its --cgroup-root?"
    )


def find_pod_cgroup(
    cgroup_mount: Path, driver: CgroupDriver, root: str, qos: QosClass, uid: str
) -> Path:
    """The pod's cgroup directory, which must exist (the runtime made it before the CNI)."""
    path = cgroup_mount / str(pod_cgroup(driver, root, qos, uid)).lstrip("/")
    if not path.is_dir():
        raise LayoutError(
            f"pod {uid}: no cgroup at {path} ({driver.value} driver, QoS {qos.value}); "
            "check kubernetes.cgroupDriver and kubernetes.cgroupRoot against the kubelet's "
            "--cgroup-driver and --cgroup-root"
        )
    return path
