"""The Helm chart rendered by the real `helm` (``make helm`` builds it into build/helm/bin).

Shared by the unit tests of the chart and the integration tests that apply it. Without the
binary a test skips with the command that builds it, and fails under CI, where
``make test`` builds it first.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[1]
HELM = ROOT / "build" / "helm" / "bin" / "helm"
CHART = ROOT / "deploy" / "helm" / "smesh"
MANIFEST = ROOT / "deploy" / "smesh.yaml"
#: What `make manifest` writes above the rendered chart.
MANIFEST_HEADER = (
    "# smesh: rendered by `make manifest` from deploy/helm/smesh with its default values; "
    "do not edit.\n"
)


def helm() -> Path:
    if not HELM.exists():
        message = f"{HELM} is missing: run `make helm`"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return HELM


def template(*flags: str) -> str:
    """`helm template` of the chart as `make manifest` runs it, plus *flags* (--set ...)."""
    argv = [str(helm()), "template", "smesh", str(CHART), "--namespace", "smesh-system"]
    argv += ["--include-crds", *flags]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def objects(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]
