"""The node agent's configuration: one YAML file, overridable by flags and environment.

Validation happens once, at start, and a bad value is reported as one line naming the
field (``agent.yaml: admin.scrape.port: must be between 1 and 65535``), never as a traceback.
Durations accept plain seconds or a unit suffix (``500ms``, ``10s``, ``5m``, ``24h``).
Overrides use dotted keys: ``--set admin.scrape.port=15021`` or
``SMESH__ADMIN__SCRAPE__PORT=15021``.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from smesh.agent import looplag
from smesh.dataplane.loop import LoopKind
from smesh.errors import SmeshError
from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.manager import ROTATION_SPREAD
from smesh.identity.signer import MAX_TTL
from smesh.identity.spiffe import validate_trust_domain
from smesh.validation import UnknownKey, problem

ENV_PREFIX = "SMESH__"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# The certificate lifetimes LocalSigner accepts (smesh.identity.signer): 1 minute to 7 days.
MIN_CERT_TTL = 60.0
MAX_CERT_TTL = MAX_TTL.total_seconds()
# An inbound connection waiting on the registry holds a socket (counted in the pod's cap).
MAX_REGISTRY_LAG = 30.0
MAX_CERTIFICATE_WAIT = 60.0
#: The shortest limits.metricLabelSetExpiry but 0: longer than a usual scrape interval.
MIN_LABEL_SET_EXPIRY = 60.0
RUN_ROOT = Path("/run/smesh")  # a node's runtime sockets: /run/smesh/NODE/...
STATE_ROOT = Path("/var/lib/smesh")  # a node's own state: /var/lib/smesh/NODE/...


class ConfigError(SmeshError):
    """The agent configuration is invalid; the message names the field."""

    exit_code = 2


class UnknownConfigKey(ConfigError, UnknownKey):
    """The configuration has a key the agent does not know (a typo, usually): the message
    names it, where it is, and the closest known key."""


def parse_duration(value: Any) -> Any:
    """``"10s"`` → 10.0; numbers pass through; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (e.g. 500ms, 10s, 5m, 24h)")
        return float(match.group(1)) * _UNITS[match.group(2)]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CaptureSettings(_Section):
    mode: Literal["auto", "ebpf", "nftables"] = "auto"
    mesh_cidrs: tuple[str, ...] = Field(
        default=("198.18.0.0/16", "fd00:198:18::/48"), alias="meshCidrs"
    )
    excluded_ports: tuple[Port, ...] = Field(default=(), alias="excludedPorts")
    # Strict by default: a meshed pod's apps take connections only through the mesh...
    inbound_plaintext: Literal["allow", "refuse"] = Field(
        default="refuse", alias="inboundPlaintext"
    )
    # ...except on these listening ports (health probes from the node, for instance).
    plaintext_ports: tuple[Port, ...] = Field(default=(), alias="plaintextPorts")
    pin_dir: Path | None = Field(default=None, alias="pinDir")

    @field_validator("mesh_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR such as 198.18.0.0/16") from None
        return value


class PortSettings(_Section):
    outbound: Port = 18000
    inbound: Port = 18001


class _Listener(_Section):
    address: str
    port: Port

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value


class ScrapeListener(_Listener):
    """``/metrics``, ``/healthz``, ``/ready``: on the node's addresses, where the kubelet's
    probes and Prometheus reach it (Istio's proxies use 15020 for the same)."""

    address: str = "0.0.0.0"
    port: Port = 15020


class DebugListener(_Listener):
    """``/debug/*`` (workloads, identities, connections, the config): on the node's loopback,
    so only someone on the node reads them; a non-loopback address is logged as a warning."""

    address: str = "127.0.0.1"
    port: Port = 15000


#: The admin endpoint was one listener (admin.address, admin.port) before it was split.
_SPLIT_KEYS = {
    "address": "admin.scrape.address (/metrics, /healthz, /ready; default 0.0.0.0) or "
    "admin.debug.address (/debug/*; default 127.0.0.1)",
    "port": "admin.scrape.port (/metrics, /healthz, /ready; default 15020) or "
    "admin.debug.port (/debug/*; default 15000)",
}


class AdminSettings(_Section):
    scrape: ScrapeListener = ScrapeListener()
    debug: DebugListener = DebugListener()
    # Every pod of the node can reach the scrape port: each listener's connections are
    # capped on their own (one peer address holds a quarter at most), so a pod filling the
    # scrape port's cap cannot lock the node's operator out of /debug, nor a debug client
    # the probes out of /healthz; silent connections are closed after readTimeout.
    max_connections: int = Field(default=64, ge=1, le=65536, alias="maxConnections")
    read_timeout: Seconds = Field(default=2.0, gt=0, le=60, alias="readTimeout")
    # A file this agent creates once it serves the node and removes when it stops (a
    # stop, a broken task; after a hand-over, once its last connection ended): what an
    # exec readiness probe asks, since the admin ports pass from agent to agent in a
    # hand-over and answer for either.
    ready_file: Path | None = Field(default=None, alias="readyFile")
    # GET /debug/flows (docs/agent.md, "Flows"): the recent connection events kept, the
    # responses sent at once (a follower counts until it disconnects), and how many events
    # one follower may fall behind before the next are dropped for it (counted).
    flow_buffer: int = Field(default=4096, ge=0, le=1_000_000, alias="flowBuffer")
    flow_followers: int = Field(default=8, ge=0, le=1024, alias="flowFollowers")
    flow_follower_queue: int = Field(default=1024, ge=1, le=1_000_000, alias="flowFollowerQueue")
    # The keys of the one listener there was: refused, naming their successors (a value
    # kept would silently put /debug on the node's addresses, or move the probes' port).
    address: str | None = Field(default=None, exclude=True)
    port: int | None = Field(default=None, exclude=True)

    @field_validator("address", "port", mode="before")
    @classmethod
    def _split(cls, value: object, info: ValidationInfo) -> object:
        raise ValueError(
            f"the admin endpoint is two listeners now: instead of admin.{info.field_name}, "
            f'set {_SPLIT_KEYS[str(info.field_name)]} (docs/agent.md, "Admin endpoints")'
        )

    @model_validator(mode="after")
    def _distinct_ports(self) -> AdminSettings:
        if self.scrape.port == self.debug.port:
            raise ValueError(
                f"admin.scrape.port and admin.debug.port are both {self.scrape.port}: each "
                "listener needs a port of its own"
            )
        return self

    @property
    def ports(self) -> tuple[int, int]:
        """Both listeners' ports: never captured, never a tunnel's target."""
        return (self.scrape.port, self.debug.port)


class IdentitySettings(_Section):
    trust_domain: str = Field(default="cluster.local", alias="trustDomain")
    # Other trust domains whose workloads may use this node's pods' tunnel ports (their
    # certificates must still chain to the bundle); any other is refused.
    federated_trust_domains: tuple[str, ...] = Field(default=(), alias="federatedTrustDomains")
    # auto: caDir or signerSocket; kubernetes: CSRs to the cluster's smesh controller
    # (smesh.identity.kubecsr), with the kubernetes section's credentials.
    source: Literal["auto", "kubernetes"] = "auto"
    ca_dir: Path | None = Field(default=None, alias="caDir")
    signer_socket: Path | None = Field(default=None, alias="signerSocket")
    node_credential_dir: Path | None = Field(default=None, alias="nodeCredentialDir")
    # Where the agent keeps its pods' certificates and keys (0700) for a restart while
    # the signer is away; default /var/lib/smesh/NODE/credentials (credential_cache_dir).
    credential_cache: Path | None = Field(default=None, alias="credentialCache")
    # The lifetime of certificates signed in this process (caDir), or asked of the CSR API
    # (source: kubernetes; the controller caps it at 24 h); a signing service (signerSocket)
    # uses its own (`smesh ca serve --ttl`).
    cert_ttl: Seconds = Field(default=24 * 3600.0, alias="certTtl")
    # source: kubernetes: how long a CSR waits for the controller's answer.
    csr_timeout: Annotated[Seconds, Field(ge=1, le=300)] = Field(default=30.0, alias="csrTimeout")
    # Once a CA rotation is activated (the bundle names a new signing root), certificates of
    # the old root are renewed early, each at a random moment within this: a cluster's
    # agents spread their CSRs instead of filing them all at once. 0: at once.
    rotation_spread: Annotated[Seconds, Field(ge=0, le=3600)] = Field(
        default=ROTATION_SPREAD, alias="rotationSpread"
    )

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        try:
            return validate_trust_domain(value)
        except InvalidSpiffeId as exc:
            raise ValueError(str(exc)) from None

    @field_validator("federated_trust_domains")
    @classmethod
    def _federated(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for domain in value:
            try:
                validate_trust_domain(domain)
            except InvalidSpiffeId as exc:
                raise ValueError(str(exc)) from None
            if domain == info.data.get("trust_domain"):
                raise ValueError(
                    f"{domain!r} is this agent's own trust domain (always accepted): remove it"
                )
        return value

    @model_validator(mode="after")
    def _kubernetes_source(self) -> IdentitySettings:
        if self.source == "kubernetes":
            for key, value in (("caDir", self.ca_dir), ("signerSocket", self.signer_socket)):
                if value is not None:
                    raise ValueError(
                        f"identity.{key} and identity.source: kubernetes are exclusive: "
                        "certificates come from the cluster's CSR API; remove one"
                    )
        return self

    @field_validator("cert_ttl")
    @classmethod
    def _cert_ttl(cls, value: float) -> float:
        if not MIN_CERT_TTL <= value <= MAX_CERT_TTL:
            raise ValueError(
                f"{value:g}s is not a certificate lifetime: it must be between 1m and "
                f"{MAX_CERT_TTL / 3600:g}h ({MAX_TTL.days} days)"
            )
        return value

    @property
    def cert_lifetime(self) -> dt.timedelta:
        """``certTtl`` as the ``ttl`` :class:`~smesh.identity.signer.LocalSigner` takes."""
        return dt.timedelta(seconds=self.cert_ttl)


class TimeoutSettings(_Section):
    tls_handshake: Seconds = Field(default=10.0, alias="tlsHandshake")
    # How long a connection to a pod's tunnel port may take to prove its peer (the server
    # side; never longer than tlsHandshake): an mTLS handshake costs 2-4 ms of CPU.
    inbound_handshake: Seconds = Field(default=3.0, gt=0, alias="inboundHandshake")
    connect: Seconds = 5.0
    request: Seconds = 10.0
    idle: Seconds = 0.0  # 0: no idle timeout
    drain: Seconds = 30.0  # a plain stop (SIGTERM): open connections get this long
    # After a hand-over to a new agent (docs/agent.md, "Hand-over"): how long the old one
    # serves its open connections at most. 0: no cap, they end on their own.
    handover_drain: Seconds = Field(default=0.0, alias="handoverDrain")
    # How long an inbound peer whose address the workload registry does not know yet (or
    # knows as another pod's) waits for the registry's next update before it is refused.
    registry_lag: Annotated[Seconds, Field(le=MAX_REGISTRY_LAG)] = Field(
        default=2.0, alias="registryLag"
    )
    # A pod is captured and listening before its certificate arrives; a tunnel connection
    # that comes first waits this long for it, then is refused (never sent in plain text).
    certificate_wait: Annotated[Seconds, Field(gt=0, le=MAX_CERTIFICATE_WAIT)] = Field(
        default=5.0, alias="certificateWait"
    )


class LimitSettings(_Section):
    max_connections_per_pod: int = Field(default=4096, ge=1, alias="maxConnectionsPerPod")
    # How far all streams' receive windows together may grow past the initial window
    # (smesh.tunnel.window); 0 keeps every window at its initial size.
    stream_window_budget_mib: int = Field(default=64, ge=0, alias="streamWindowBudgetMiB")
    # Inbound connections still in their mTLS handshake, per source address and per pod:
    # a budget of their own, never maxConnectionsPerPod (docs/dataplane.md).
    max_handshakes_per_source: int = Field(default=8, ge=1, alias="maxHandshakesPerSource")
    max_handshakes_per_pod: int = Field(default=128, ge=1, alias="maxHandshakesPerPod")
    # Each peer (identity, source address) of a pod: inbound carriers; streams inbound,
    # and outbound per destination pod.
    max_carriers_per_peer: int = Field(default=16, ge=1, alias="maxCarriersPerPeer")
    max_streams_per_peer: int = Field(default=1024, ge=1, alias="maxStreamsPerPeer")
    # What the agent may hold for apps that do not read (smesh.tunnel.window.HeldBudget),
    # all pods together and per pod; past it windows shrink, then streams are reset.
    unread_budget_mib: int = Field(default=256, ge=1, le=65536, alias="unreadBudgetMiB")
    unread_budget_per_pod_mib: int = Field(
        default=64, ge=1, le=65536, alias="unreadBudgetPerPodMiB"
    )
    # The kernel send buffer of the agent's sockets to apps (SO_SNDBUF), and the receive
    # buffer of a stream's socket from its app (SO_RCVBUF); 0: autotuned. Both grow to
    # 2 MiB once a stream shows it is fast.
    app_send_buffer_kib: int = Field(default=64, ge=0, le=65536, alias="appSendBufferKiB")
    app_receive_buffer_kib: int = Field(default=64, ge=0, le=65536, alias="appReceiveBufferKiB")
    # Endpoints of a Service one connect may try: the pick, then others while each fails
    # before any byte of the app's has left (docs/kubernetes.md, "Services").
    service_endpoint_attempts: int = Field(default=3, ge=1, le=16, alias="serviceEndpointAttempts")
    # Label sets (workload pairs) of the smesh_tcp_* counters; past it connections are
    # counted in an overflow set (smesh.agent.traffic, smesh_tcp_connections_folded_total).
    max_metric_label_sets: int = Field(default=1000, ge=1, le=100_000, alias="maxMetricLabelSets")
    # A label set none of whose connections is open is dropped after this long without
    # counting anything, so edges of workloads that are gone do not fill the cap; longer
    # than any scrape interval (its last counts must be scraped). 0: never.
    metric_label_set_expiry: Seconds = Field(default=600.0, alias="metricLabelSetExpiry")

    @field_validator("metric_label_set_expiry")
    @classmethod
    def _longer_than_a_scrape(cls, value: float) -> float:
        if 0 < value < MIN_LABEL_SET_EXPIRY:
            raise ValueError(
                f"{value:g}s would drop label sets between scrapes: use 0 (never) or at "
                f"least {MIN_LABEL_SET_EXPIRY:g}s"
            )
        return value

    @model_validator(mode="after")
    def _handshake_budget(self) -> LimitSettings:
        if self.max_handshakes_per_source > self.max_handshakes_per_pod:
            raise ValueError(
                f"maxHandshakesPerSource ({self.max_handshakes_per_source}) is more than "
                f"maxHandshakesPerPod ({self.max_handshakes_per_pod}): raise the second or "
                "lower the first"
            )
        return self


# The kubelet's cgroup drivers (smesh.kubernetes.layout.CgroupDriver), or detect it.
CgroupDriverSetting = Literal["auto", "cgroupfs", "systemd"]
#: How long a CNI ADD may wait, at most, for its pod to be meshed (kubernetes.enrolTimeout).
MAX_ENROL_TIMEOUT = 120.0


class KubernetesSettings(_Section):
    """The Kubernetes workload source: the API server, and the CNI hand-off on this node."""

    # Absent: the in-cluster configuration (the pod's service account).
    kubeconfig: Path | None = None
    cni_socket: Path = Field(default=Path("/run/smesh/cni.sock"), alias="cniSocket")
    cgroup_driver: CgroupDriverSetting = Field(default="auto", alias="cgroupDriver")
    cgroup_root: str = Field(default="/", alias="cgroupRoot")
    # Persisted hand-off records; default /var/lib/smesh/NODE/sandboxes (sandbox_dir).
    sandbox_dir: Path | None = Field(default=None, alias="sandboxDir")
    # A CNI ADD answers within this, meshed or with an error: the runtime's own CNI timeout
    # and the plugin's timeoutSeconds (15 s) must be longer.
    enrol_timeout: Annotated[Seconds, Field(gt=0, le=MAX_ENROL_TIMEOUT)] = Field(
        default=10.0, alias="enrolTimeout"
    )
    # Watch AuthorizationPolicy objects (smesh.io) and enforce them with the policy file's
    # rules and default (docs/policy-kubernetes.md).
    authorization_policies: bool = Field(default=True, alias="authorizationPolicies")

    @field_validator("cni_socket", "sandbox_dir", "kubeconfig")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{str(value)!r} is not an absolute path")
        return value

    @field_validator("cni_socket")
    @classmethod
    def _socket_path(cls, value: Path) -> Path:
        if len(os.fsencode(str(value))) > 107:  # sun_path holds 108 bytes with its NUL
            raise ValueError(f"{str(value)!r} is longer than a Unix socket path may be (107 bytes)")
        return value

    @field_validator("cgroup_root")
    @classmethod
    def _cgroup_root(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/"):
            raise ValueError(
                f"{value!r} is not a cgroup path such as / or /kubelet (the kubelet's "
                "--cgroup-root)"
            )
        return value


class LogSettings(_Section):
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class AgentConfig(_Section):
    node: str = Field(min_length=1)
    # Exactly one workload source: a directory of pod files (the lab), or Kubernetes.
    workloads: Path | None = None
    kubernetes: KubernetesSettings | None = None
    non_meshed: Literal["passthrough", "deny"] = Field(default="passthrough", alias="nonMeshed")
    event_loop: LoopKind = Field(default="uvloop", alias="eventLoop")
    # How often the event loop's lag is sampled (smesh_agent_event_loop_lag_seconds,
    # smesh.agent.looplag); 0: never.
    loop_lag_interval: Seconds = Field(
        default=0.1, le=looplag.MAX_INTERVAL, alias="loopLagInterval"
    )
    policy: Path | None = None
    capture: CaptureSettings = CaptureSettings()
    ports: PortSettings = PortSettings()
    admin: AdminSettings = AdminSettings()
    identity: IdentitySettings = IdentitySettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    limits: LimitSettings = LimitSettings()
    logging: LogSettings = LogSettings()
    # Where the running agent offers its listeners to a new one (docs/agent.md, "Hand-over").
    handover_socket: Path | None = Field(default=None, alias="handoverSocket")

    @model_validator(mode="after")
    def _one_source(self) -> AgentConfig:
        if self.workloads is not None and self.kubernetes is not None:
            raise ValueError(
                "workloads and kubernetes are both set: configure exactly one workload "
                "source (workloads for a directory of pod files, kubernetes for the API server)"
            )
        if self.workloads is None and self.kubernetes is None:
            raise ValueError(
                "no workload source: set either workloads (a directory of pod files) or "
                "kubernetes (the API server; see docs/kubernetes.md)"
            )
        return self

    @field_validator("loop_lag_interval")
    @classmethod
    def _loop_lag_interval(cls, value: float) -> float:
        if 0 < value < looplag.MIN_INTERVAL:
            raise ValueError(
                f"{value:g}s samples the loop too often: use 0 (off) or at least "
                f"{looplag.MIN_INTERVAL * 1000:g}ms"
            )
        return value

    @model_validator(mode="after")
    def _identity_needs_kubernetes(self) -> AgentConfig:
        if self.identity.source == "kubernetes" and self.kubernetes is None:
            raise ValueError(
                "identity.source: kubernetes needs the kubernetes section (the API server "
                "that takes the agent's CSRs)"
            )
        return self

    @property
    def sandbox_dir(self) -> Path:
        """``kubernetes.sandboxDir``, or the default in the node's state directory."""
        configured = self.kubernetes.sandbox_dir if self.kubernetes is not None else None
        return configured or STATE_ROOT / self.node / "sandboxes"

    @property
    def handover_path(self) -> Path:
        """``handoverSocket``, or beside the CNI hand-off, or in /run/smesh/NODE."""
        if self.handover_socket is not None:
            return self.handover_socket
        if self.kubernetes is not None:
            return self.kubernetes.cni_socket.parent / "agent-handover.sock"
        return RUN_ROOT / self.node / "handover.sock"

    @property
    def credential_cache_dir(self) -> Path:
        """``identity.credentialCache``, or the default in the node's state directory."""
        return self.identity.credential_cache or STATE_ROOT / self.node / "credentials"


def _field_aliases(model: type[BaseModel]) -> dict[str, tuple[str, type[BaseModel] | None]]:
    """Map both spellings of every key (``pinDir`` and ``pin_dir``) to the alias used in files."""
    names: dict[str, tuple[str, type[BaseModel] | None]] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:  # an optional section: `kubernetes: KubernetesSettings | None`
            annotation = members[0]
        nested = annotation if isinstance(annotation, type) else None
        sub = nested if nested is not None and issubclass(nested, BaseModel) else None
        key = info.alias or name
        names[name] = names[key] = (key, sub)
    return names


def _parse_override(dotted: str, raw: str) -> Any:
    """An override's value as YAML (``[10.0.0.0/8]``, ``15001``, ``true``); ``""`` stays ``""``."""
    if not raw:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(
            f"override {dotted}: {raw!r} is not a valid YAML value ({problem}); "
            "quote it if it is meant as a string"
        ) from None


def apply_override(data: dict[str, Any], dotted: str, raw: str) -> None:
    """Set ``admin.scrape.port`` in the raw mapping; values are parsed as YAML scalars/lists."""
    model: type[BaseModel] | None = AgentConfig
    target = data
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        known = _field_aliases(model) if model is not None else {}
        if part not in known:
            close = difflib.get_close_matches(part, sorted({k for k, _ in known.values()}), 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"override {dotted}: unknown field {'.'.join(parts[: i + 1])!r}{hint}"
            )
        key, model = known[part]
        if i == len(parts) - 1:
            target[key] = _parse_override(dotted, raw)
        else:
            target = target.setdefault(key, {})


def load(
    path: Path | None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read, override and validate; raise :class:`ConfigError` naming the first bad field."""
    source = str(path) if path else "configuration"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{source}: not valid YAML{where}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: expected a mapping of settings at the top level")
        data = loaded or {}
    env = os.environ if environ is None else environ
    for name, value in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            apply_override(data, dotted, value)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(
                f"override {item!r}: expected KEY=VALUE, e.g. admin.scrape.port=15021"
            )
        apply_override(data, key.strip(), value.strip())
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        found = problem(exc, AgentConfig)
        if found.unknown_key is not None:
            raise UnknownConfigKey(f"{source}: {found}", found) from None
        raise ConfigError(f"{source}: {found}") from None
