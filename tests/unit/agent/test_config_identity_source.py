"""identity.source: kubernetes (certificates through the CSR API) and what it excludes."""

from __future__ import annotations

from pathlib import Path

import pytest

from smesh.agent.config import ConfigError, load

KUBE = "node: node-1\nkubernetes: {kubeconfig: /etc/smesh/agent.kubeconfig}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_default_is_auto(tmp_path: Path) -> None:
    assert load(write(tmp_path, KUBE), environ={}).identity.source == "auto"


def test_kubernetes_source_with_a_kubernetes_section(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, KUBE + "identity: {source: kubernetes}\n"), environ={})
    assert cfg.identity.source == "kubernetes"


def test_kubernetes_source_needs_the_kubernetes_section(tmp_path: Path) -> None:
    text = "node: node-1\nworkloads: /run/w\nidentity: {source: kubernetes}\n"
    with pytest.raises(ConfigError, match="needs the kubernetes section"):
        load(write(tmp_path, text), environ={})


@pytest.mark.parametrize(("key", "value"), [("caDir", "/ca"), ("signerSocket", "/run/s.sock")])
def test_kubernetes_source_excludes_local_signers(tmp_path: Path, key: str, value: str) -> None:
    text = KUBE + f"identity: {{source: kubernetes, {key}: {value}}}\n"
    with pytest.raises(ConfigError, match=f"identity.{key} and identity.source"):
        load(write(tmp_path, text), environ={})


def test_unknown_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source"):
        load(write(tmp_path, KUBE + "identity: {source: vault}\n"), environ={})


def test_csr_timeout_default_and_bounds(tmp_path: Path) -> None:
    assert load(write(tmp_path, KUBE), environ={}).identity.csr_timeout == 30.0
    cfg = load(write(tmp_path, KUBE + "identity: {csrTimeout: 2m}\n"), environ={})
    assert cfg.identity.csr_timeout == 120.0
    with pytest.raises(ConfigError, match="csrTimeout"):
        load(write(tmp_path, KUBE + "identity: {csrTimeout: 10m}\n"), environ={})
