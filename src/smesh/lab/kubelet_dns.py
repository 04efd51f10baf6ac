"""The ``/etc/resolv.conf`` a kubelet gives a pod, from its ``dnsPolicy`` and ``dnsConfig``.

As the kubelet's ``pkg/kubelet/network/dns``: ``ClusterFirst`` (the default) points a pod
at the cluster DNS Service with the search path ``<ns>.svc.<domain> svc.<domain> <domain>``
and ``ndots:5``, so a short Service name resolves in the pod's own namespace first;
``ClusterFirst`` on a hostNetwork pod and ``Default`` take the node's file;
``ClusterFirstWithHostNet`` gives a hostNetwork pod the cluster's; ``None`` starts empty.
``dnsConfig`` is then merged in: nameservers and search domains appended (duplicates
dropped), options by name, the pod's winning. The kubelet's limits apply (three
nameservers, 32 search domains of 2048 characters together: the rest dropped).

Pure: the lab kubelet writes the text into the pod's directory and binds it over
``/etc/resolv.conf`` in each container's mount namespace (never the machine's file).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightkube.resources.core_v1 import Pod

MAX_NAMESERVERS = 3  # glibc reads no more
MAX_SEARCH_DOMAINS = 32
MAX_SEARCH_CHARS = 2048
CLUSTER_NDOTS = "5"


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: dict[str, str | None] = field(default_factory=dict)  # name → value (None: flag)

    def render(self) -> str:
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {server}" for server in self.nameservers]
        if self.options:
            words = [
                name if value is None else f"{name}:{value}" for name, value in self.options.items()
            ]
            lines.append("options " + " ".join(words))
        return "".join(line + "\n" for line in lines)


def parse(text: str) -> ResolvConf:
    """The nameservers, search domains and options of a resolv.conf (the node's)."""
    conf = ResolvConf()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            conf.nameservers.append(words[1])
        elif words[0] in {"search", "domain"}:
            conf.searches = words[1:]  # the last one wins, as in glibc
        elif words[0] == "options":
            for word in words[1:]:
                name, sep, value = word.partition(":")
                conf.options[name] = value if sep else None
    return conf


def policy(pod: Pod) -> str:
    """Which file the pod gets: ``cluster``, ``host`` or ``none``."""
    spec = pod.spec
    wanted = (spec.dnsPolicy if spec else None) or "ClusterFirst"
    host_network = bool(spec and spec.hostNetwork)
    if wanted == "None":
        return "none"
    if wanted == "ClusterFirstWithHostNet":
        return "cluster"
    if wanted == "ClusterFirst" and not host_network:
        return "cluster"
    return "host"


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _limit_searches(searches: list[str]) -> list[str]:
    kept: list[str] = []
    for domain in searches[:MAX_SEARCH_DOMAINS]:
        if len(" ".join([*kept, domain])) > MAX_SEARCH_CHARS:
            break
        kept.append(domain)
    return kept


def resolv_conf(pod: Pod, cluster_dns: str, domain: str, node_file: str) -> str | None:
    """The pod's resolv.conf; None where the pod keeps the node's own file unchanged (a
    ``host`` policy without ``dnsConfig``: nothing to bind over it)."""
    kind = policy(pod)
    extra = pod.spec.dnsConfig if pod.spec else None
    if kind == "host" and extra is None:
        return None
    if kind == "cluster":
        namespace = (pod.metadata.namespace if pod.metadata else None) or "default"
        conf = ResolvConf(
            nameservers=[cluster_dns],
            searches=[f"{namespace}.svc.{domain}", f"svc.{domain}", domain],
            options={"ndots": CLUSTER_NDOTS},
        )
    elif kind == "host":
        conf = parse(node_file)
    else:
        conf = ResolvConf()
    if extra is not None:
        conf.nameservers = _unique([*conf.nameservers, *(extra.nameservers or [])])
        conf.searches = _unique([*conf.searches, *(extra.searches or [])])
        for option in extra.options or []:
            if option.name:
                conf.options[option.name] = option.value
    conf.nameservers = conf.nameservers[:MAX_NAMESERVERS]
    conf.searches = _limit_searches(conf.searches)
    return conf.render()
