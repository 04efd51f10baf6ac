"""The OCI image `make image` builds (build/image/smesh), unpacked and run from its own
filesystem: `smesh --version` in a chroot of the rootfs, the BPF objects and the non-root
user where the chart expects them.

`make test` (and `make image-test`) build the image first; a missing image fails the test
under CI (CI=true) or SMESH_IMAGE_TEST=1, and is skipped only in a bare `pytest` run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from smesh import __version__

ROOT = Path(__file__).resolve().parents[3]
LAYOUT = ROOT / "build" / "image" / "smesh"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (LAYOUT / "index.json").exists() or shutil.which("umoci") is None:
        message = f"no image at {LAYOUT}: run `make image-test`"
        if os.environ.get("SMESH_IMAGE_TEST") == "1" or os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    target = tmp_path_factory.mktemp("image") / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{LAYOUT}:{__version__}", str(target)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def in_image(bundle: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """*argv* run in a chroot of the image's rootfs, in a private mount namespace."""
    return subprocess.run(
        ["unshare", "--mount", "--fork", CHROOT, str(bundle / "rootfs"), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/opt/smesh/bin:/usr/local/bin:/usr/bin:/bin"},
    )


def test_smesh_runs_from_the_images_filesystem(bundle: Path) -> None:
    proc = in_image(bundle, "smesh", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"smesh {__version__}"
    # The CNI installer packs the plugin from the image's own installation.
    packed = in_image(
        bundle,
        "python3",
        "-c",
        "from smesh.install import cniapp; cniapp.build('/usr/bin/python3')",
    )
    assert packed.returncode == 0, packed.stderr


def test_the_image_holds_the_bpf_objects_and_runs_as_non_root(bundle: Path) -> None:
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["user"]["uid"] == 65532
    env = dict(e.split("=", 1) for e in config["process"]["env"])
    bpf_dir = bundle / "rootfs" / env["SMESH_BPF_DIR"].lstrip("/")
    assert sorted(p.name for p in bpf_dir.glob("*.bpf.o")) == sorted(
        p.name for p in (ROOT / "build" / "bpf").glob("*.bpf.o")
    )
    passwd = (bundle / "rootfs" / "etc" / "passwd").read_text()
    assert "smesh:x:65532:65532:" in passwd
