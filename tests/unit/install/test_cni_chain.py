"""Chaining smesh-cni into a node's network configuration, and taking it out again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smesh.install import cni_chain, cniapp
from smesh.install.cluster import daemonset_going
from smesh.install.errors import CniConfigError

SETTINGS = cni_chain.PluginSettings("/run/smesh/cni.sock", 15)
ENTRY = {"type": "smesh-cni", "agentSocket": "/run/smesh/cni.sock", "timeoutSeconds": 15}


def calico() -> dict[str, Any]:
    return {
        "name": "k8s-pod-network",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "calico", "ipam": {"type": "calico-ipam"}, "mtu": 1440},
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def test_the_runtime_uses_the_lexically_first_configuration() -> None:
    names = ["99-loopback.conf", "10-calico.conflist", "05-cilium.json", ".hidden.conflist", "x"]
    assert cni_chain.primary_config(names) == "05-cilium.json"
    assert cni_chain.primary_config(["README", "calico-kubeconfig"]) is None


def test_chain_appends_once_and_unchain_restores() -> None:
    original = calico()
    chained = cni_chain.chain(original, SETTINGS)
    assert chained["plugins"] == [*original["plugins"], ENTRY]
    assert cni_chain.chain(chained, SETTINGS) == chained  # idempotent
    assert cni_chain.unchain(chained) == original
    assert original == calico()  # inputs are not mutated


def test_chain_updates_its_entry_in_place_and_drops_duplicates() -> None:
    conf = calico()
    conf["plugins"].insert(1, {"type": "smesh-cni", "timeoutSeconds": 5, "keep": 1})
    conf["plugins"].append({"type": "smesh-cni"})
    chained = cni_chain.chain(conf, cni_chain.PluginSettings("/run/x.sock", 2.5))
    assert [p["type"] for p in chained["plugins"]] == ["calico", "smesh-cni", "portmap"]
    assert chained["plugins"][1] == {
        "type": "smesh-cni",
        "timeoutSeconds": 2.5,
        "keep": 1,
        "agentSocket": "/run/x.sock",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge"}', "single-plugin"),
        ('{"cniVersion": "1.0.0", "plugins": [1]}', "list of objects"),
        ('{"cniVersion": "0.2.0", "plugins": []}', "cniVersion '0.2.0'"),
    ],
)
def test_configurations_smesh_cannot_chain_into_are_refused(text: str, problem: str) -> None:
    with pytest.raises(CniConfigError, match=problem):
        cni_chain.parse(text, "10-x.conflist")


def test_an_empty_plugin_list_is_refused() -> None:
    with pytest.raises(CniConfigError, match="no plugins"):
        cni_chain.chain({"cniVersion": "1.0.0", "plugins": []}, SETTINGS)


def test_install_and_uninstall_on_files(tmp_path: Path) -> None:
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    conf_dir.mkdir()
    primary = conf_dir / "10-calico.conflist"
    primary.write_text(json.dumps(calico()))
    os.chmod(primary, 0o640)
    other = conf_dir / "20-other.conflist"
    other.write_text(json.dumps(calico()))

    change = cni_chain.install(conf_dir, bin_dir, b"#!/bin/sh\n", SETTINGS)
    assert (change.config_changed, change.plugin_changed) == (True, True)
    assert json.loads(primary.read_text())["plugins"][-1] == ENTRY
    assert primary.stat().st_mode & 0o777 == 0o640
    assert json.loads(other.read_text()) == calico()  # only the file the runtime uses
    assert (bin_dir / "smesh-cni").stat().st_mode & 0o777 == 0o755
    again = cni_chain.install(conf_dir, bin_dir, b"#!/bin/sh\n", SETTINGS)
    assert (again.config_changed, again.plugin_changed) == (False, False)
    assert "already chains it" in again.describe("install")

    change = cni_chain.uninstall(conf_dir, bin_dir)
    assert change.config == primary
    assert json.loads(primary.read_text()) == calico()
    assert not (bin_dir / "smesh-cni").exists()
    assert sorted(p.name for p in conf_dir.iterdir()) == ["10-calico.conflist", "20-other.conflist"]
    assert cni_chain.uninstall(conf_dir, bin_dir).describe("uninstall") == (
        f"smesh-cni uninstall: no configuration named it; {bin_dir / 'smesh-cni'} was absent"
    )


def test_install_without_a_network_configuration_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CniConfigError, match="install the cluster's network plugin"):
        cni_chain.install(tmp_path, tmp_path / "bin", b"", SETTINGS)
    assert not (tmp_path / "bin" / "smesh-cni").exists()


def test_a_broken_primary_configuration_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "10-broken.conflist").write_text("{")
    with pytest.raises(CniConfigError, match="not JSON"):
        cni_chain.install(tmp_path, tmp_path / "bin", b"", SETTINGS)
    assert (tmp_path / "10-broken.conflist").read_text() == "{"
    assert not (tmp_path / "bin").exists()


def test_the_packed_plugin_runs_and_is_deterministic(tmp_path: Path) -> None:
    plugin = cniapp.build(sys.executable)
    assert plugin == cniapp.build(sys.executable)
    assert plugin.startswith(f"#!{sys.executable}\n".encode())
    path = tmp_path / "smesh-cni"
    path.write_bytes(plugin)
    path.chmod(0o755)
    proc = subprocess.run(
        [str(path)], env={"CNI_COMMAND": "VERSION"}, capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.0.0"


def test_the_packed_plugin_refuses_an_old_python_with_a_cni_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cniapp, "MIN_PYTHON", (9, 99))  # newer than any node's
    path = tmp_path / "smesh-cni"
    path.write_bytes(cniapp.build(sys.executable))
    path.chmod(0o755)
    proc = subprocess.run([str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["code"] == 4
    assert error["msg"].startswith(f"smesh-cni needs Python >= 9.99 on the node; {sys.executable}")


def test_a_relative_python_is_refused() -> None:
    with pytest.raises(cniapp.PluginBuildError, match="absolute path"):
        cniapp.build("python3")


def test_uninstall_only_when_the_daemonset_is_going() -> None:
    assert daemonset_going(None)
    assert daemonset_going({"metadata": {"deletionTimestamp": "2026-12-03T01:00:00Z"}})
    assert not daemonset_going({"metadata": {"name": "smesh-agent"}})
