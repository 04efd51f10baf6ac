"""The kubelet's cgroup layout, checked against paths copied from real nodes."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from smesh.kubernetes.layout import (
    CgroupDriver,
    LayoutError,
    QosClass,
    detect_driver,
    find_pod_cgroup,
    pod_cgroup,
    qos_class,
)

UID = "8d2d6f2a-4f6e-4c1b-9a51-3c0e1f7b2a10"


@pytest.mark.parametrize(
    ("driver", "root", "qos", "expected"),
    [
        # kubeadm on containerd, cgroupfs driver (the kubelet default)
        (CgroupDriver.CGROUPFS, "/", QosClass.GUARANTEED, f"/kubepods/pod{UID}"),
        (CgroupDriver.CGROUPFS, "/", QosClass.BURSTABLE, f"/kubepods/burstable/pod{UID}"),
        (CgroupDriver.CGROUPFS, "/", QosClass.BESTEFFORT, f"/kubepods/besteffort/pod{UID}"),
        # kind and k3s-in-docker nest the kubelet under a --cgroup-root
        (
            CgroupDriver.CGROUPFS,
            "/kubelet",
            QosClass.BURSTABLE,
            f"/kubelet/kubepods/burstable/pod{UID}",
        ),
        # kubeadm >= 1.22 defaults to systemd: slices, dashes in the UID become underscores
        (
            CgroupDriver.SYSTEMD,
            "/",
            QosClass.GUARANTEED,
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice",
        ),
        (
            CgroupDriver.SYSTEMD,
            "/",
            QosClass.BURSTABLE,
            "/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID.replace('-', '_')}.slice",
        ),
        (
            CgroupDriver.SYSTEMD,
            "",
            QosClass.BESTEFFORT,
            "/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice",
        ),
        # a kubelet in a slice of its own (--cgroup-root=/kubelet.slice)
        (
            CgroupDriver.SYSTEMD,
            "/kubelet.slice",
            QosClass.BURSTABLE,
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/"
            f"kubelet-kubepods-burstable-pod{UID.replace('-', '_')}.slice",
        ),
    ],
)
def test_pod_cgroup_matches_real_nodes(
    driver: CgroupDriver, root: str, qos: QosClass, expected: str
) -> None:
    assert pod_cgroup(driver, root, qos, UID) == PurePosixPath(expected)


def test_a_uid_cannot_escape_the_tree() -> None:
    with pytest.raises(LayoutError, match="invalid pod UID"):
        pod_cgroup(CgroupDriver.CGROUPFS, "/", QosClass.BURSTABLE, "../../etc")


def test_unknown_qos_class_is_named() -> None:
    assert qos_class("Burstable") is QosClass.BURSTABLE
    with pytest.raises(LayoutError, match="'Gold'"):
        qos_class("Gold")
    with pytest.raises(LayoutError, match="None"):
        qos_class(None)


def test_driver_detected_from_the_tree(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no kubelet cgroup tree"):
        detect_driver(tmp_path)
    (tmp_path / "kubepods.slice").mkdir()
    assert detect_driver(tmp_path) is CgroupDriver.SYSTEMD
    (tmp_path / "lab" / "kubepods").mkdir(parents=True)
    assert detect_driver(tmp_path, "/lab") is CgroupDriver.CGROUPFS


def test_find_pod_cgroup_requires_the_directory(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="cgroupDriver"):
        find_pod_cgroup(tmp_path, CgroupDriver.CGROUPFS, "/", QosClass.BESTEFFORT, UID)
    pod = tmp_path / "kubepods" / "besteffort" / f"pod{UID}"
    pod.mkdir(parents=True)
    assert find_pod_cgroup(tmp_path, CgroupDriver.CGROUPFS, "/", QosClass.BESTEFFORT, UID) == pod
