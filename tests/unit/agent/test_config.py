"""Agent configuration: defaults, overrides, and one-line errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from smesh.agent.config import ConfigError, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_minimal_file_gets_production_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "node: node-1\nworkloads: /run/w\n"), environ={})
    assert cfg.ports.outbound == 18000
    assert cfg.ports.inbound == 18001
    assert cfg.admin.port == 15000
    assert cfg.timeouts.tls_handshake == 10.0
    assert cfg.timeouts.connect == 5.0
    assert cfg.timeouts.drain == 30.0
    assert cfg.identity.cert_ttl == 24 * 3600
    assert cfg.non_meshed == "passthrough"
    assert cfg.capture.mode == "auto"
    assert cfg.capture.inbound_plaintext == "refuse"  # strict mTLS unless told otherwise
    assert cfg.capture.plaintext_ports == ()
    assert cfg.event_loop == "uvloop"
    assert cfg.limits.stream_window_budget_mib == 64


def test_durations_take_units(tmp_path: Path) -> None:
    text = "node: n\nworkloads: /w\ntimeouts: {tlsHandshake: 500ms, drain: 2m}\n"
    cfg = load(write(tmp_path, text), environ={})
    assert cfg.timeouts.tls_handshake == 0.5
    assert cfg.timeouts.drain == 120.0


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node: n\nworkloads: /w\nadmin: {port: 15000}\n")
    env = {"SMESH__ADMIN__PORT": "15001", "SMESH__CAPTURE__PIN_DIR": "/sys/fs/bpf/x"}
    assert load(path, environ=env).admin.port == 15001
    assert load(path, environ=env).capture.pin_dir == Path("/sys/fs/bpf/x")
    assert load(path, ["admin.port=15002"], environ=env).admin.port == 15002
    cfg = load(path, ["capture.meshCidrs=[10.0.0.0/8]"], environ={})
    assert cfg.capture.mesh_cidrs == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: /w\n", "agent.yaml: node: required but missing"),
        ("node: n\nworkloads: /w\nadmin: {port: 70000}\n", "agent.yaml: admin.port: "),
        ("node: n\nworkloads: /w\nadmin: {prot: 1}\n", "agent.yaml: admin.prot: unknown field"),
        ("node: n\nworkloads: /w\nnonMeshed: maybe\n", "agent.yaml: nonMeshed: "),
        ("node: n\nworkloads: /w\neventLoop: tokio\n", "agent.yaml: eventLoop: "),
        ("node: n\nworkloads: /w\ncapture: {inboundPlaintext: no}\n", "capture.inboundPlaintext: "),
        ("node: n\nworkloads: /w\ntimeouts: {connect: soon}\n", "timeouts.connect: 'soon' is not"),
        (
            "node: n\nworkloads: /w\ncapture: {meshCidrs: [10.0.0.0/8, nope]}\n",
            "capture.meshCidrs: 'nope' is not a CIDR",
        ),
        ("node: n\nworkloads: /w\ncapture: {excludedPorts: [80, 0]}\n", "capture.excludedPorts[1]"),
        ("node: n\nworkloads: /w\ncapture: {plaintextPorts: [x]}\n", "capture.plaintextPorts[0]"),
        (
            "node: n\nworkloads: /w\nlimits: {streamWindowBudgetMiB: -1}\n",
            "limits.streamWindowBudgetMiB: ",
        ),
        ("[1, 2]\n", "expected a mapping"),
        ("node: [\n", "not valid YAML at line"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_override_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "node: n\nworkloads: /w\n")
    with pytest.raises(ConfigError, match=r"unknown field 'admin\.prot'"):
        load(path, ["admin.prot=1"], environ={})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load(path, ["admin.port"], environ={})
    with pytest.raises(ConfigError, match=r"admin\.port"):
        load(path, environ={"SMESH__ADMIN__PORT": "x"})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml", environ={})
