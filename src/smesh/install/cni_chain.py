"""Chaining ``smesh-cni`` into a node's CNI network configuration, and removing it again.

The container runtime uses the lexically first ``*.conf``, ``*.conflist`` or ``*.json`` file
of its configuration directory (libcni's ``ConfFiles`` sorted, as containerd and CRI-O do),
so that is the file smesh edits: it appends one plugin entry (type ``smesh-cni``) to the
list's ``plugins``, after the network plugin whose result it needs. Installing again updates
that one entry in place; uninstalling removes exactly the entries of type ``smesh-cni`` and
leaves every other byte of meaning (other plugins, their order, unknown keys) alone.

Everything here but :func:`install` and :func:`uninstall` is pure. Those two write with
:func:`smesh.linux.files.write_atomic`: a runtime reading the directory at any moment sees
the old or the new file, never half of one. The plugin is written before the configuration
names it and removed after the configuration stops naming it, so the runtime never calls a
plugin that is not there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smesh.install.errors import CniConfigError
from smesh.kubernetes import cni
from smesh.linux.files import write_atomic

PLUGIN_TYPE = "smesh-cni"
#: What libcni reads as network configuration.
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")
#: The conflist's cniVersions whose results smesh-cni passes on (smesh.kubernetes.cni).
SUPPORTED_VERSIONS = cni.SUPPORTED_VERSIONS


@dataclass(frozen=True)
class PluginSettings:
    """smesh-cni's entry: where the agent's hand-off socket is, and how long to wait."""

    agent_socket: str = cni.DEFAULT_SOCKET
    timeout: float = cni.DEFAULT_TIMEOUT

    def entry(self) -> dict[str, Any]:
        timeout: float | int = (
            int(self.timeout) if float(self.timeout).is_integer() else self.timeout
        )
        return {"type": PLUGIN_TYPE, "agentSocket": self.agent_socket, "timeoutSeconds": timeout}


def primary_config(names: Iterable[str]) -> str | None:
    """The file name the runtime uses: the lexically first one with a configuration suffix."""
    candidates = sorted(n for n in names if n.endswith(CONFIG_SUFFIXES) and not n.startswith("."))
    return candidates[0] if candidates else None


def parse(text: str | bytes, name: str) -> dict[str, Any]:
    """A network configuration *list*; a single-plugin ``.conf`` cannot chain a plugin."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniConfigError(f"{name}: not JSON ({exc}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise CniConfigError(f"{name}: not a JSON object")
    plugins = data.get("plugins")
    if plugins is None:
        raise CniConfigError(
            f"{name}: a single-plugin network configuration (no 'plugins' list) cannot run "
            "chained plugins; configure your network plugin to write a .conflist"
        )
    if not isinstance(plugins, list) or not all(isinstance(p, dict) for p in plugins):
        raise CniConfigError(f"{name}: 'plugins' must be a list of objects")
    version = data.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniConfigError(
            f"{name}: cniVersion {version!r} is not one smesh-cni supports "
            f"({', '.join(SUPPORTED_VERSIONS)}); chained results need 0.3.0 or later"
        )
    return data


def is_chained(conflist: dict[str, Any]) -> bool:
    return any(p.get("type") == PLUGIN_TYPE for p in conflist["plugins"])


def chain(conflist: dict[str, Any], settings: PluginSettings) -> dict[str, Any]:
    """*conflist* with smesh-cni's entry: appended, or the existing one updated in place."""
    entry = settings.entry()
    plugins = list(conflist["plugins"])
    ours = [i for i, p in enumerate(plugins) if p.get("type") == PLUGIN_TYPE]
    if not ours:
        if not plugins:
            raise CniConfigError(
                "the network configuration has no plugins: smesh-cni runs after the "
                "network plugin, whose result it needs"
            )
        plugins.append(entry)
    else:
        plugins[ours[0]] = {**plugins[ours[0]], **entry}
        plugins = [p for i, p in enumerate(plugins) if i not in ours[1:]]
    return {**conflist, "plugins": plugins}


def unchain(conflist: dict[str, Any]) -> dict[str, Any]:
    """*conflist* without any smesh-cni entry; everything else as it was."""
    return {**conflist, "plugins": [p for p in conflist["plugins"] if p.get("type") != PLUGIN_TYPE]}


def render(conflist: dict[str, Any]) -> bytes:
    return (json.dumps(conflist, indent=2) + "\n").encode()


# -- the file edge ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """What an install or uninstall did, for its one-line report."""

    config: Path | None
    config_changed: bool
    plugin: Path
    plugin_changed: bool

    def describe(self, verb: str) -> str:
        if verb == "install":
            config = f"{self.config} {'updated' if self.config_changed else 'already chains it'}"
            plugin = f"{self.plugin} {'written' if self.plugin_changed else 'unchanged'}"
        else:
            config = f"{self.config} updated" if self.config else "no configuration named it"
            plugin = f"{self.plugin} {'removed' if self.plugin_changed else 'was absent'}"
        return f"smesh-cni {verb}: {config}; {plugin}"


def _replace_if_different(path: Path, data: bytes, mode: int) -> bool:
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode, durable=True)
    return True


def _config_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def install(conf_dir: Path, bin_dir: Path, plugin: bytes, settings: PluginSettings) -> Change:
    """Install the plugin executable, then chain it into the node's primary configuration."""
    if not conf_dir.is_dir():
        raise CniConfigError(
            f"{conf_dir} does not exist: it must be the container runtime's CNI "
            "configuration directory (cni.confDir in the chart's values)"
        )
    name = primary_config(os.listdir(conf_dir))
    if name is None:
        raise CniConfigError(
            f"no network configuration in {conf_dir} yet: smesh-cni chains into the "
            "node's network plugin; install the cluster's network plugin (CNI) first "
            "(this installer is retried until it is there)"
        )
    path = conf_dir / name
    conflist = parse(path.read_bytes(), str(path))
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / PLUGIN_TYPE
    plugin_changed = _replace_if_different(target, plugin, 0o755)
    config_changed = _replace_if_different(
        path, render(chain(conflist, settings)), _config_mode(path)
    )
    return Change(path, config_changed, target, plugin_changed)


def uninstall(conf_dir: Path, bin_dir: Path) -> Change:
    """Unchain smesh-cni from every configuration naming it, then remove the plugin."""
    changed: Path | None = None
    names = sorted(os.listdir(conf_dir)) if conf_dir.is_dir() else []
    for name in names:
        if not name.endswith(CONFIG_SUFFIXES) or name.startswith("."):
            continue
        path = conf_dir / name
        try:
            conflist = parse(path.read_bytes(), str(path))
        except CniConfigError:
            continue  # not a list smesh could have chained into: not ours to touch
        if is_chained(conflist):
            write_atomic(path, render(unchain(conflist)), _config_mode(path), durable=True)
            changed = path
    target = bin_dir / PLUGIN_TYPE
    try:
        target.unlink()
        removed = True
    except FileNotFoundError:
        removed = False
    return Change(changed, changed is not None, target, removed)
