"""``smesh-cni`` packed for the node: one executable file run by the host's Python.

The kubelet's container runtime runs CNI plugins on the host, outside any container, so
the plugin cannot use the image's Python environment. It is stdlib-only apart from h11
(imported only when it calls the agent), so it travels as a zipapp: the few modules it
imports and h11, taken from this very installation (the plugin always matches the agent
that installs it), behind a ``#!PYTHON`` line naming the host's interpreter. Python >= 3.11
on the node is a prerequisite (the README says so); an older one gets a CNI error saying so
instead of a traceback.

The archive is deterministic (fixed timestamps, sorted entries), so installing the same
release again finds an identical file and leaves it alone.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h11

import smesh
from smesh.errors import SmeshError

#: What the plugin imports, relative to the smesh package.
SMESH_MODULES = ("__init__.py", "httpclient.py", "kubernetes/__init__.py", "kubernetes/cni.py")
MIN_PYTHON = (3, 11)
_EPOCH = (1980, 1, 1, 0, 0, 0)

# Written in the Python of any version, so an old interpreter reaches the version check.
MAIN = """\
import json, sys
if sys.version_info < {min_python!r}:
    sys.stdout.write(json.dumps({{"cniVersion": "1.0.0", "code": 4, "msg":
        "smesh-cni needs Python >= {min_text} on the node; %s is %s" %
        (sys.executable, sys.version.split()[0])}}) + "\\n")
    sys.exit(1)
from smesh.kubernetes.cni import main
sys.exit(main())
"""


class PluginBuildError(SmeshError):
    """This installation lacks a module the plugin needs (a broken or partial install)."""


def _files() -> list[tuple[str, Path]]:
    root = Path(smesh.__file__).parent
    files = [(f"smesh/{name}", root / name) for name in SMESH_MODULES]
    h11_root = Path(h11.__file__).parent
    files += [(f"h11/{p.name}", p) for p in sorted(h11_root.glob("*.py"))]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing:
        raise PluginBuildError(f"cannot pack smesh-cni: missing {', '.join(missing)}")
    return files


def build(python: str) -> bytes:
    """The plugin executable: ``#!python`` and a zip archive of its modules."""
    if not python.startswith("/") or any(c.isspace() for c in python):
        raise PluginBuildError(
            f"--python {python!r}: must be the absolute path of the node's python3, "
            "e.g. /usr/bin/python3"
        )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        main = MAIN.format(min_python=MIN_PYTHON, min_text=".".join(map(str, MIN_PYTHON)))
        entries = [("__main__.py", main.encode()), *((n, p.read_bytes()) for n, p in _files())]
        for name, data in sorted(entries):
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return f"#!{python}\n".encode() + buffer.getvalue()
