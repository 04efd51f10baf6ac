"""The lab kubelet's volumes: what files a source yields, tokens asked for, mounts made."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube.models.core_v1 import (
    ConfigMapProjection,
    ConfigMapVolumeSource,
    Container,
    DownwardAPIProjection,
    DownwardAPIVolumeFile,
    EmptyDirVolumeSource,
    HostPathVolumeSource,
    KeyToPath,
    ObjectFieldSelector,
    PodSpec,
    ProjectedVolumeSource,
    ResourceRequirements,
    ServiceAccountTokenProjection,
    Volume,
    VolumeMount,
    VolumeProjection,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.errors import ApiStatusError
from smesh.lab import kubelet_volumes as v
from smesh.lab.kubepaths import host_path

UID = "0a1b2c3d-0000-4000-8000-000000000001"


def api_access() -> Volume:
    """The volume the ServiceAccount admission plugin adds to every pod."""
    return Volume(
        name="kube-api-access-x",
        projected=ProjectedVolumeSource(
            defaultMode=0o644,
            sources=[
                VolumeProjection(
                    serviceAccountToken=ServiceAccountTokenProjection(
                        path="token", expirationSeconds=3607
                    )
                ),
                VolumeProjection(
                    configMap=ConfigMapProjection(
                        name="kube-root-ca.crt", items=[KeyToPath(key="ca.crt", path="ca.crt")]
                    )
                ),
                VolumeProjection(
                    downwardAPI=DownwardAPIProjection(
                        items=[
                            DownwardAPIVolumeFile(
                                path="namespace",
                                fieldRef=ObjectFieldSelector(fieldPath="metadata.namespace"),
                            )
                        ]
                    )
                ),
            ],
        ),
    )


def pod(*volumes: Volume, mounts: list[VolumeMount] | None = None) -> Pod:
    return Pod(
        metadata=ObjectMeta(
            name="web-1", namespace="shop", uid=UID, labels={"app": "web", "tier": 'a"b'}
        ),
        spec=PodSpec(
            serviceAccountName="web",
            containers=[Container(name="c", volumeMounts=mounts)],
            volumes=list(volumes),
        ),
    )


def test_configmap_keys_items_modes_and_a_missing_key() -> None:
    data = {"a": b"1", "b": b"2"}
    assert v.key_files(data, None, None, "cm", False) == [
        v.File("a", b"1", 0o644),
        v.File("b", b"2", 0o644),
    ]
    items = [KeyToPath(key="b", path="sub/b.txt", mode=0o600)]
    assert v.key_files(data, items, 0o640, "cm", False) == [v.File("sub/b.txt", b"2", 0o600)]
    with pytest.raises(v.VolumeError, match="has no key 'z'"):
        v.key_files(data, [KeyToPath(key="z", path="z")], None, 'configmap "cm"', False)
    assert v.key_files(data, [KeyToPath(key="z", path="z")], None, "cm", True) == []


def test_paths_stay_inside_the_volume() -> None:
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", ""):
        with pytest.raises(v.VolumeError, match="relative path"):
            v.key_files({"k": b""}, [KeyToPath(key="k", path=bad)], None, "cm", False)


def test_secret_and_binary_data_are_decoded() -> None:
    assert v.secret_data({"data": {"p": "czNjcmV0"}}) == {"p": b"s3cret"}
    assert v.configmap_data({"data": {"t": "x"}, "binaryData": {"b": "AAE="}}) == {
        "t": b"x",
        "b": b"\x00\x01",
    }


def test_downward_api_fields_and_labels_as_the_kubelet_writes_them() -> None:
    p = pod()
    assert v.field_value(p, "metadata.name") == "web-1"
    assert v.field_value(p, "metadata.namespace") == "shop"
    assert v.field_value(p, "metadata.labels") == 'app="web"\ntier="a\\"b"'
    assert v.field_value(p, "metadata.labels['app']") == "web"
    assert v.field_value(p, "spec.nodeName", node="node-2") == "node-2"
    with pytest.raises(v.VolumeError, match="not supported"):
        v.field_value(p, "status.phase")


def test_the_token_request_is_bound_to_the_pod() -> None:
    (source,) = v.token_sources(pod(api_access()))
    assert source == v.TokenSource("kube-api-access-x", "token", "", 3607, 0o644)
    assert v.token_request(pod(), source) == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": 3607,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": UID},
        },
    }
    with_audience = v.TokenSource("t", "tok", "smesh", 600, 0o600)
    assert v.token_request(pod(), with_audience)["spec"]["audiences"] == ["smesh"]


def test_a_token_is_renewed_at_80_percent_of_its_life() -> None:
    issued = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert v.refresh_after(issued, issued + datetime.timedelta(seconds=3607)) == pytest.approx(
        2885.6
    )
    assert v.refresh_after(issued, issued) == 1.0  # never a busy loop


def test_mounts_sources_read_only_propagation_and_the_termination_file(tmp_path: Path) -> None:
    mounts = [
        VolumeMount(name="netns", mountPath="/run/netns", mountPropagation="HostToContainer"),
        VolumeMount(name="kube-api-access-x", mountPath=v.SA_MOUNT, readOnly=True),
        VolumeMount(name="scratch", mountPath="/scratch"),
        VolumeMount(name="scratch", mountPath="/etc/app.d", subPath="app.d"),
        VolumeMount(name="kube-api-access-x", mountPath="/etc/ca.crt", subPath="ca.crt"),
        VolumeMount(name="etc", mountPath="/etc/x", readOnly=True),
    ]
    p = pod(
        api_access(),
        Volume(name="netns", hostPath=HostPathVolumeSource(path="/run/netns")),
        Volume(name="scratch", emptyDir=EmptyDirVolumeSource()),
        Volume(name="etc", hostPath=HostPathVolumeSource(path="/etc")),
        mounts=mounts,
    )
    assert p.spec is not None
    volumes = tmp_path / "volumes"
    api = volumes / "kube-api-access-x"
    api.mkdir(parents=True)
    (api / "ca.crt").write_text("CA")  # written before the containers start
    got = v.container_mounts(p, p.spec.containers[0], tmp_path)
    assert (volumes / "scratch/app.d").is_dir()
    assert got == [
        v.Mount(str(volumes / "scratch"), "/scratch", False),  # parents before children
        v.Mount("/run/netns", "/run/netns", False, "rslave"),
        v.Mount(str(volumes / "scratch/app.d"), "/etc/app.d", False),  # made: a directory
        v.Mount(str(api / "ca.crt"), "/etc/ca.crt", True, is_file=True),
        v.Mount("/etc", "/etc/x", True),
        v.Mount(str(tmp_path / "c.termination-log"), "/dev/termination-log", False, is_file=True),
        v.Mount(str(volumes / "kube-api-access-x"), v.SA_MOUNT, True),
    ]


def test_a_mount_never_hides_the_source_of_another() -> None:
    # The lab's state (pod volumes, node roots) lives under /run/smesh, which the agent's pod
    # mounts from its node root: every mount whose source is there must come first.
    state = "/run/smesh/labs/x/nodes/node-1"
    mounts = [
        v.Mount(f"{state}/root/run/smesh", "/run/smesh", False),
        v.Mount(f"{state}/root/var/lib/smesh", "/var/lib/smesh", False),
        v.Mount(f"{state}/pods/u/volumes/config", "/run/smesh/config", False),
        v.Mount(f"{state}/pods/u/c.termination-log", "/dev/termination-log", False, is_file=True),
    ]
    got = [m.target for m in v.mount_order(mounts)]
    assert got.index("/var/lib/smesh") < got.index("/run/smesh")
    assert got.index("/dev/termination-log") < got.index("/run/smesh")
    # a source inside its own parent's target cannot be ordered: the parent still comes first
    assert got.index("/run/smesh") < got.index("/run/smesh/config")


def test_node_local_host_paths_are_the_nodes_own(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert host_path(root, "/etc/cni/net.d") == f"{root}/etc/cni/net.d"
    assert host_path(root, "/run/smesh/cni.sock") == f"{root}/run/smesh/cni.sock"
    assert host_path(root, "/var/lib/smesh") == f"{root}/var/lib/smesh"
    assert host_path(root, "/opt/cni/bin/smesh-cni") == f"{root}/opt/cni/bin/smesh-cni"
    shared_paths = ("/sys/fs/bpf", "/sys/fs/cgroup", "/run/netns", "/proc", "/run/smesh2")
    for shared in (*shared_paths, "/run/smesh/labs/x/nodes/node-1/cni/ipam"):
        assert host_path(root, shared) == shared
    p = pod(
        Volume(name="run", hostPath=HostPathVolumeSource(path="/run/smesh")),
        Volume(name="bpf", hostPath=HostPathVolumeSource(path="/sys/fs/bpf")),
        mounts=[
            VolumeMount(name="run", mountPath="/run/smesh"),
            VolumeMount(name="bpf", mountPath="/sys/fs/bpf"),
        ],
    )
    assert p.spec is not None
    got = {m.target: m.source for m in v.container_mounts(p, p.spec.containers[0], tmp_path, root)}
    assert got["/run/smesh"] == f"{root}/run/smesh"
    assert got["/sys/fs/bpf"] == "/sys/fs/bpf"


def test_a_mount_of_an_unknown_volume_is_refused(tmp_path: Path) -> None:
    p = pod(mounts=[VolumeMount(name="nope", mountPath="/x")])
    assert p.spec is not None
    with pytest.raises(v.VolumeError, match="names no volume 'nope'"):
        v.container_mounts(p, p.spec.containers[0], tmp_path)


def test_host_path_types(tmp_path: Path) -> None:
    made = tmp_path / "a" / "b"
    v.check_host_path(str(made), "DirectoryOrCreate")
    assert made.is_dir()
    v.check_host_path(str(made / "f"), "FileOrCreate")
    assert (made / "f").is_file()
    v.check_host_path(str(tmp_path / "missing"), "")  # no type: no check
    with pytest.raises(v.VolumeError, match="does not exist"):
        v.check_host_path(str(tmp_path / "missing"), "Directory")
    with pytest.raises(v.VolumeError, match="is not a Socket"):
        v.check_host_path(str(made / "f"), "Socket")


def test_writing_volumes_and_a_token(tmp_path: Path) -> None:
    objects = {"/api/v1/namespaces/shop/configmaps/kube-root-ca.crt": {"data": {"ca.crt": "CA"}}}

    async def get(path: str) -> dict[str, Any]:
        if path not in objects:
            raise ApiStatusError(404, "NotFound", "not found")
        return objects[path]

    requests = []

    async def create(namespace: str, account: str, body: dict[str, Any]) -> dict[str, Any]:
        requests.append((namespace, account, body["spec"]["boundObjectRef"]["uid"]))
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=3607)
        stamp = expires.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"status": {"token": "eyJ.t", "expirationTimestamp": stamp}}

    p = pod(api_access(), Volume(name="cm", configMap=ConfigMapVolumeSource(name="absent")))
    with pytest.raises(v.NotFound, match='configmap "absent" not found'):
        asyncio.run(v.write_volumes(p, tmp_path, get, "node-1"))
    p = pod(api_access())
    asyncio.run(v.write_volumes(p, tmp_path, get, "node-1"))
    (source,) = v.token_sources(p)
    after = asyncio.run(v.write_token(p, tmp_path, source, create))
    assert 2880 < after < 2890
    assert requests == [("shop", "web", UID)]
    directory = v.volume_dir(tmp_path, "kube-api-access-x")
    assert {f.name: f.read_text() for f in directory.iterdir()} == {
        "ca.crt": "CA",
        "namespace": "shop",
        "token": "eyJ.t",
    }
    assert (directory / "token").stat().st_mode & 0o777 == 0o644


def test_quantities_and_resource_field_refs() -> None:
    assert v.quantity("500m") == 0.5
    assert v.quantity("128Mi") == 128 * 2**20
    assert v.quantity("1k") == 1000
    assert v.quantity("2") == 2
    with pytest.raises(v.VolumeError, match="not a resource quantity"):
        v.quantity("lots")
    spec = Container(
        name="c",
        resources=ResourceRequirements(requests={"cpu": "250m"}, limits={"memory": "64Mi"}),
    )
    node = {"cpu": "2", "memory": "4096Ki"}
    assert v.resource_value(spec, "limits.memory", "1Mi", node) == "64"
    assert v.resource_value(spec, "requests.cpu", None, node) == "1"  # rounded up
    assert v.resource_value(spec, "requests.cpu", "1m", node) == "250"
    assert v.resource_value(spec, "limits.cpu", None, node) == "2"  # no limit: the node's
    assert v.resource_value(spec, "requests.memory", None, node) == "0"
    with pytest.raises(v.VolumeError, match="not supported"):
        v.resource_value(spec, "limits.gpu", None, node)


def test_host_ip_field() -> None:
    assert v.field_value(pod(), "status.hostIP", host_ips=["198.19.0.1", "fd00::1"]) == (
        "198.19.0.1"
    )
