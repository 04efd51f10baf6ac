"""Workload files: validation naming the field, change detection, last-good on bad edits."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from pathlib import Path

import pytest

from smesh.agent.workloads import DirectorySource, Registry, Workload, WorkloadError, parse, write


def pod(
    name: str = "pod-1", node: str = "node-1", ip: str = "198.18.1.2", **extra: object
) -> Workload:
    return Workload.model_validate(
        {
            "name": name,
            "node": node,
            "ips": [ip, "fd00:198:18:1::2"],
            "netns": f"lab.{name}",
            "cgroup": f"/sys/fs/cgroup/x/{name}",
            **extra,
        }
    )


def test_file_round_trip_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, pod(serviceAccount="api", namespace="shop"))
    loaded = parse(path.read_text(), str(path))
    assert loaded == pod(serviceAccount="api", namespace="shop")
    assert loaded.key == "shop/pod-1"
    assert loaded.ipv4 == ipaddress.IPv4Address("198.18.1.2")
    assert loaded.ipv6 == ipaddress.IPv6Address("fd00:198:18:1::2")
    assert json.loads(path.read_text())["serviceAccount"] == "api"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ips": ["not-an-ip"]}, r"ips\[0\]"),
        ({"ips": []}, "ips"),
        ({"name": "Pod_1"}, "name"),
        ({"meshed": "perhaps"}, "meshed"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_invalid_workload_names_file_and_field(change: dict[str, object], field: str) -> None:
    data = json.loads(pod().model_dump_json(by_alias=True)) | change
    with pytest.raises(WorkloadError, match=rf"^w/pod-1.json: {field}: "):
        parse(json.dumps(data), "w/pod-1.json")


def test_directory_source_sees_adds_changes_and_removals(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    assert source.scan().workloads == {}
    write(tmp_path, pod("pod-1"))
    write(tmp_path, pod("pod-3", node="node-2", ip="198.18.2.2"))
    snap = source.scan()
    assert sorted(snap.workloads) == ["default/pod-1", "default/pod-3"]
    assert list(snap.on_node("node-2")) == ["default/pod-3"]

    write(tmp_path, pod("pod-1", meshed=False))
    assert source.scan().workloads["default/pod-1"].meshed is False
    (tmp_path / "pod-3.json").unlink()
    assert list(source.scan().workloads) == ["default/pod-1"]


def test_a_broken_edit_keeps_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = DirectorySource(tmp_path)
    path = write(tmp_path, pod("pod-1"))
    source.scan()
    path.write_text('{"name": "pod-1", "node": ')
    os.utime(path, ns=(1, 1))
    assert source.scan().workloads["default/pod-1"] == pod("pod-1")
    assert "not valid JSON or YAML" in caplog.text


def test_watch_yields_a_new_snapshot_after_a_change(tmp_path: Path) -> None:
    async def scenario() -> list[list[str]]:
        source = DirectorySource(tmp_path, interval=0.01)
        seen: list[list[str]] = []
        async for snapshot in source.watch():
            seen.append(sorted(snapshot.workloads))
            if len(seen) == 1:
                write(tmp_path, pod("pod-2"))
            else:
                return seen
        return seen

    assert asyncio.run(asyncio.wait_for(scenario(), 5)) == [[], ["default/pod-2"]]


def test_registry_finds_workloads_by_any_of_their_addresses(tmp_path: Path) -> None:
    write(tmp_path, pod("pod-1"))
    registry = Registry(DirectorySource(tmp_path).scan())
    assert registry.lookup(ipaddress.ip_address("198.18.1.2")) == pod("pod-1")
    assert registry.lookup(ipaddress.ip_address("fd00:198:18:1::2")) == pod("pod-1")
    assert registry.lookup(ipaddress.ip_address("198.18.9.9")) is None
