"""Agent configuration: defaults, overrides, and one-line errors that name the field."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from smesh.agent.admin import config_view
from smesh.agent.config import ConfigError, load
from smesh.identity.signer import LocalSigner, StaticEntitlements


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_minimal_file_gets_production_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "node: node-1\nworkloads: /run/w\n"), environ={})
    assert cfg.ports.outbound == 18000
    assert cfg.ports.inbound == 18001
    assert (cfg.admin.scrape.address, cfg.admin.scrape.port) == ("0.0.0.0", 15020)
    assert (cfg.admin.debug.address, cfg.admin.debug.port) == ("127.0.0.1", 15000)
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
    assert cfg.admin.max_connections == 64
    assert cfg.admin.read_timeout == 2.0
    assert cfg.credential_cache_dir == Path("/var/lib/smesh/node-1/credentials")
    assert cfg.timeouts.inbound_handshake == 3.0
    assert cfg.limits.max_handshakes_per_source == 8
    assert cfg.limits.max_handshakes_per_pod == 128
    assert cfg.limits.max_carriers_per_peer == 16
    assert cfg.limits.max_streams_per_peer == 1024
    assert cfg.limits.unread_budget_mib == 256
    assert cfg.limits.unread_budget_per_pod_mib == 64
    assert cfg.limits.app_send_buffer_kib == 64
    assert cfg.limits.app_receive_buffer_kib == 64


def test_the_credential_cache_can_be_put_elsewhere(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, "node: node-1\nworkloads: /run/w\n"),
        ["identity.credentialCache=/run/smesh/node-1/cache"],
        environ={},
    )
    assert cfg.credential_cache_dir == Path("/run/smesh/node-1/cache")


def test_durations_take_units(tmp_path: Path) -> None:
    text = "node: n\nworkloads: /w\ntimeouts: {tlsHandshake: 500ms, drain: 2m}\n"
    cfg = load(write(tmp_path, text), environ={})
    assert cfg.timeouts.tls_handshake == 0.5
    assert cfg.timeouts.drain == 120.0


def test_flags_override_environment_which_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node: n\nworkloads: /w\nadmin: {scrape: {port: 15020}}\n")
    env = {"SMESH__ADMIN__SCRAPE__PORT": "15021", "SMESH__CAPTURE__PIN_DIR": "/sys/fs/bpf/x"}
    assert load(path, environ=env).admin.scrape.port == 15021
    assert load(path, environ=env).capture.pin_dir == Path("/sys/fs/bpf/x")
    assert load(path, ["admin.scrape.port=15022"], environ=env).admin.scrape.port == 15022
    cfg = load(path, ["capture.meshCidrs=[10.0.0.0/8]"], environ={})
    assert cfg.capture.mesh_cidrs == ("10.0.0.0/8",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("workloads: /w\n", "agent.yaml: node: required but missing"),
        (
            "node: n\nworkloads: /w\nadmin: {scrape: {port: 70000}}\n",
            "agent.yaml: admin.scrape.port: ",
        ),
        (
            "node: n\nworkloads: /w\nadmin: {debug: {address: localhost}}\n",
            "agent.yaml: admin.debug.address: 'localhost' does not appear to be an IPv4 or IPv6",
        ),
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
        ("node: n\nworkloads: /w\nadmin: {maxConnections: 0}\n", "admin.maxConnections: "),
        ("node: n\nworkloads: /w\nadmin: {readTimeout: 0s}\n", "admin.readTimeout: "),
        ("node: n\nworkloads: /w\ntimeouts: {inboundHandshake: 0s}\n", "inboundHandshake: "),
        ("node: n\nworkloads: /w\nlimits: {maxHandshakesPerSource: 0}\n", "maxHandshakesPerSource"),
        ("node: n\nworkloads: /w\nlimits: {maxCarriersPerPeer: 0}\n", "limits.maxCarriersPerPeer"),
        ("node: n\nworkloads: /w\nlimits: {maxStreamsPerPeer: x}\n", "limits.maxStreamsPerPeer"),
        (
            "node: n\nworkloads: /w\nlimits: {maxHandshakesPerSource: 9, maxHandshakesPerPod: 8}\n",
            "limits: maxHandshakesPerSource (9) is more than maxHandshakesPerPod (8)",
        ),
        ("node: n\nworkloads: /w\nlimits: {unreadBudgetMiB: 0}\n", "limits.unreadBudgetMiB: "),
        (
            "node: n\nworkloads: /w\nlimits: {unreadBudgetPerPodMiB: x}\n",
            "limits.unreadBudgetPerPodMiB: ",
        ),
        ("node: n\nworkloads: /w\nlimits: {appSendBufferKiB: -1}\n", "limits.appSendBufferKiB: "),
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
        load(path, ["admin.scrape.port"], environ={})
    with pytest.raises(ConfigError, match=r"admin\.debug\.port"):
        load(path, environ={"SMESH__ADMIN__DEBUG__PORT": "x"})


@pytest.mark.parametrize(
    ("text", "overrides", "new_keys"),
    [
        ("admin: {port: 15000}\n", [], ("admin.scrape.port", "admin.debug.port")),
        ("admin: {address: 0.0.0.0}\n", [], ("admin.scrape.address", "admin.debug.address")),
        ("", ["admin.port=15001"], ("admin.scrape.port", "admin.debug.port")),
    ],
)
def test_the_one_admin_listeners_keys_are_refused_naming_their_successors(
    tmp_path: Path, text: str, overrides: list[str], new_keys: tuple[str, ...]
) -> None:
    """A kept ``admin.port`` would move the probes' port or put /debug on the node's
    addresses without a word: it is refused, and the message says what to set instead."""
    path = write(tmp_path, "node: n\nworkloads: /w\n" + text)
    with pytest.raises(ConfigError) as info:
        load(path, overrides, environ={})
    message = str(info.value)
    old = "admin.port" if "port" in new_keys[0] else "admin.address"
    assert message.startswith(f"{path}: {old}: the admin endpoint is two listeners now"), message
    assert all(key in message for key in new_keys), message
    assert "\n" not in message


def test_the_two_admin_listeners_need_a_port_each(tmp_path: Path) -> None:
    text = "node: n\nworkloads: /w\nadmin: {debug: {port: 15020}}\n"
    with pytest.raises(ConfigError, match=r"admin: admin\.scrape\.port and admin\.debug\.port "):
        load(write(tmp_path, text), environ={})
    cfg = load(
        write(tmp_path, "node: n\nworkloads: /w\nadmin: {debug: {port: 15001}}\n"), environ={}
    )
    assert cfg.admin.ports == (15020, 15001)  # both excluded from capture, neither a target


def test_debug_config_shows_the_effective_config_without_the_split_keys(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "node: n\nworkloads: /w\n"), ["admin.debug.port=15001"], environ={})
    doc = config_view(cfg)
    assert doc["admin"]["debug"] == {"address": "127.0.0.1", "port": 15001}
    assert doc["admin"]["scrape"] == {"address": "0.0.0.0", "port": 15020}
    assert "port" not in doc["admin"]
    assert "address" not in doc["admin"]
    assert doc["node"] == "n"
    assert json.loads(json.dumps(doc)) == doc  # served as JSON


@pytest.mark.parametrize(
    "value", ["Cluster.Local", "cluster.local:8443", "user@cluster.local", "cluster.local/x", "''"]
)
def test_trust_domain_is_validated_at_load(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"node: n\nworkloads: /w\nidentity: {{trustDomain: {value}}}\n")
    with pytest.raises(ConfigError, match=r"^.*agent\.yaml: identity\.trustDomain: ") as info:
        load(path, environ={})
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"identity\.trustDomain: "):
        load(None, ["node=n", "workloads=/w", f"identity.trustDomain={value}"], environ={})


def test_valid_trust_domain_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "node: n\nworkloads: /w\nidentity: {trustDomain: prod.example-1_x}\n")
    assert load(path, environ={}).identity.trust_domain == "prod.example-1_x"


@pytest.mark.parametrize("value", ["0", "0s", "59s", "30", "169h", "604801"])
def test_cert_ttl_outside_what_the_signer_accepts_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"node: n\nworkloads: /w\nidentity: {{certTtl: {value}}}\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml: identity\.certTtl: ") as info:
        load(path, environ={})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "seconds"), [("1m", 60.0), ("12h", 43200.0), ("168h", 604800.0)])
def test_cert_ttl_within_the_signers_limits(tmp_path: Path, value: str, seconds: float) -> None:
    path = write(tmp_path, f"node: n\nworkloads: /w\nidentity: {{certTtl: {value}}}\n")
    identity = load(path, environ={}).identity
    assert identity.cert_ttl == seconds
    assert identity.cert_lifetime == dt.timedelta(seconds=seconds)
    # What the agent's in-process signer will be given must be a lifetime it accepts.
    LocalSigner(None, StaticEntitlements({}), identity.cert_lifetime)  # type: ignore[arg-type]


def test_override_value_that_is_not_yaml_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "node: n\nworkloads: /w\n")
    with pytest.raises(
        ConfigError, match=r"^override capture\.meshCidrs: '\[10\.0\.0\.0/8' is not"
    ):
        load(path, ["capture.meshCidrs=[10.0.0.0/8"], environ={})
    with pytest.raises(
        ConfigError, match=r"^override admin\.address: 'a: b: c' is not a valid YAML"
    ):
        load(path, environ={"SMESH__ADMIN__ADDRESS": "a: b: c"})
    with pytest.raises(ConfigError, match=r"^override identity\.trust_domain: ") as info:
        load(path, environ={"SMESH__IDENTITY__TRUST_DOMAIN": "'unterminated"})
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.yaml", environ={})


def test_federated_trust_domains_are_validated_like_the_trust_domain(tmp_path: Path) -> None:
    path = write(
        tmp_path, "node: n\nworkloads: /w\nidentity: {federatedTrustDomains: [a.example]}\n"
    )
    assert load(path, environ={}).identity.federated_trust_domains == ("a.example",)
    for value, message in [
        ("[Partner.Example]", "may only hold lowercase"),
        ("[cluster.local]", "this agent's own trust domain"),
        ("partner.example", "valid tuple"),
    ]:
        with pytest.raises(ConfigError, match=r"identity\.federatedTrustDomains: .*" + message):
            load(
                None,
                ["node=n", "workloads=/w", f"identity.federatedTrustDomains={value}"],
                environ={},
            )


def test_registry_lag_is_a_bounded_duration(tmp_path: Path) -> None:
    assert load(None, ["node=n", "workloads=/w"], environ={}).timeouts.registry_lag == 2.0
    lag = load(None, ["node=n", "workloads=/w", "timeouts.registryLag=500ms"], environ={})
    assert lag.timeouts.registry_lag == 0.5
    for value in ("-1", "31s"):
        with pytest.raises(ConfigError, match=r"timeouts\.registryLag: "):
            load(None, ["node=n", "workloads=/w", f"timeouts.registryLag={value}"], environ={})


KUBE = "node: node-1\nkubernetes: {kubeconfig: /etc/smesh/agent.kubeconfig}\n"


def test_a_kubernetes_section_replaces_workloads_with_documented_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, KUBE), environ={})
    assert cfg.workloads is None
    assert cfg.kubernetes is not None
    assert cfg.kubernetes.kubeconfig == Path("/etc/smesh/agent.kubeconfig")
    assert cfg.kubernetes.cni_socket == Path("/run/smesh/cni.sock")
    assert cfg.kubernetes.cgroup_driver == "auto"
    assert cfg.kubernetes.cgroup_root == "/"
    assert cfg.kubernetes.enrol_timeout == 10.0
    assert cfg.sandbox_dir == Path("/var/lib/smesh/node-1/sandboxes")


def test_every_kubernetes_key_is_read(tmp_path: Path) -> None:
    text = (
        "node: node-2\nkubernetes:\n  cniSocket: /run/lab/cni.sock\n  cgroupDriver: cgroupfs\n"
        "  cgroupRoot: /smesh-lab-x/node-2\n  sandboxDir: /var/lib/lab/sandboxes\n"
        "  enrolTimeout: 1500ms\n"
    )
    k = load(write(tmp_path, text), environ={}).kubernetes
    assert k is not None
    assert k.kubeconfig is None  # in-cluster
    assert (k.cni_socket, k.cgroup_driver, k.cgroup_root) == (
        Path("/run/lab/cni.sock"),
        "cgroupfs",
        "/smesh-lab-x/node-2",
    )
    assert (k.sandbox_dir, k.enrol_timeout) == (Path("/var/lib/lab/sandboxes"), 1.5)


def test_kubernetes_keys_can_be_overridden(tmp_path: Path) -> None:
    cfg = load(
        write(tmp_path, KUBE),
        ["kubernetes.enrolTimeout=3s"],
        environ={"SMESH__KUBERNETES__CGROUP_DRIVER": "systemd"},
    )
    assert cfg.kubernetes is not None
    assert (cfg.kubernetes.enrol_timeout, cfg.kubernetes.cgroup_driver) == (3.0, "systemd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "node: n\nworkloads: /w\nkubernetes: {}\n",
            "agent.yaml: (top level): workloads and kubernetes are both set",
        ),
        ("node: n\n", "agent.yaml: (top level): no workload source: set either workloads"),
        ("node: n\nkubernetes: {cgroupDriver: docker}\n", "agent.yaml: kubernetes.cgroupDriver: "),
        ("node: n\nkubernetes: {enrolTimeout: 0s}\n", "agent.yaml: kubernetes.enrolTimeout: "),
        ("node: n\nkubernetes: {enrolTimeout: 10m}\n", "agent.yaml: kubernetes.enrolTimeout: "),
        ("node: n\nkubernetes: {enrolTimeout: soon}\n", "kubernetes.enrolTimeout: 'soon' is not"),
        ("node: n\nkubernetes: {cniSocket: cni.sock}\n", "kubernetes.cniSocket: 'cni.sock' is not"),
        (f"node: n\nkubernetes: {{cniSocket: /{'x' * 120}}}\n", "kubernetes.cniSocket: .* longer"),
        ("node: n\nkubernetes: {sandboxDir: var/x}\n", "kubernetes.sandboxDir: 'var/x' is not"),
        ("node: n\nkubernetes: {kubeconfig: k.yaml}\n", "kubernetes.kubeconfig: 'k.yaml' is not"),
        ("node: n\nkubernetes: {cgroupRoot: kubelet}\n", "kubernetes.cgroupRoot: 'kubelet' is"),
        ("node: n\nkubernetes: {cgroupRoot: /a/../b}\n", "kubernetes.cgroupRoot: "),
        ("node: n\nkubernetes: {cgroupDrvier: auto}\n", "kubernetes.cgroupDrvier: unknown field"),
    ],
)
def test_bad_kubernetes_settings_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(write(tmp_path, text), environ={})


def test_the_handover_socket_and_drain_cap_have_documented_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "node: node-1\nworkloads: /run/w\n"), environ={})
    assert cfg.timeouts.handover_drain == 0.0  # no cap: connections end on their own
    assert cfg.handover_path == Path("/run/smesh/node-1/handover.sock")
    text = "node: node-1\nkubernetes: {cniSocket: /run/x/cni.sock}\n"
    assert load(write(tmp_path, text), environ={}).handover_path == Path(
        "/run/x/agent-handover.sock"
    )
    text = "node: n\nworkloads: /w\nhandoverSocket: /s/h.sock\ntimeouts: {handoverDrain: 1h}\n"
    cfg = load(write(tmp_path, text), environ={})
    assert (cfg.handover_path, cfg.timeouts.handover_drain) == (Path("/s/h.sock"), 3600.0)
    with pytest.raises(ConfigError, match=r"timeouts\.handoverDrain"):
        load(
            write(tmp_path, "node: n\nworkloads: /w\ntimeouts: {handoverDrain: -1s}\n"), environ={}
        )
