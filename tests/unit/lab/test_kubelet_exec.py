"""How the lab kubelet starts a container: capabilities, user, mounts, probes' wire format."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lightkube.models.core_v1 import (
    Capabilities,
    Container,
    ContainerPort,
    PodSecurityContext,
    SecurityContext,
)

from smesh.lab import kubelet_exec as x
from smesh.lab.kubelet_probe import http_request, http_status, port_of
from smesh.lab.kubelet_volumes import Mount


def caps(add: list[str] | None = None, drop: list[str] | None = None) -> SecurityContext:
    return SecurityContext(capabilities=Capabilities(add=add, drop=drop))


def test_capabilities_start_from_the_runtime_defaults() -> None:
    assert x.capabilities(None) == x.DEFAULT_CAPABILITIES
    assert "NET_ADMIN" not in x.DEFAULT_CAPABILITIES
    assert x.capabilities(caps(drop=["ALL"], add=["NET_ADMIN"])) == {"NET_ADMIN"}
    assert x.capabilities(caps(drop=["all"], add=["CAP_BPF", "sys_admin"])) == {
        "BPF",
        "SYS_ADMIN",
    }
    assert x.capabilities(caps(drop=["NET_RAW"])) == x.DEFAULT_CAPABILITIES - {"NET_RAW"}
    assert x.capabilities(SecurityContext(privileged=True)) == set(x.CAPABILITIES)
    with pytest.raises(x.ContainerConfigError, match="unknown capability 'NET_MAGIC'"):
        x.capabilities(caps(add=["NET_MAGIC"]))


def test_the_container_s_user_wins_over_the_pod_s() -> None:
    pod = PodSecurityContext(runAsUser=2000, runAsGroup=3000, supplementalGroups=[5])
    spec = Container(name="c", securityContext=SecurityContext(runAsUser=1000))
    who = x.identity(spec, pod)
    assert (who.uid, who.gid, who.groups) == (1000, 3000, (5,))
    assert x.identity(Container(name="c"), None).uid is None


def test_run_as_non_root_refuses_an_unset_or_zero_user() -> None:
    for context in (
        SecurityContext(runAsNonRoot=True),
        SecurityContext(runAsNonRoot=True, runAsUser=0),
    ):
        with pytest.raises(x.ContainerConfigError, match="runAsNonRoot"):
            x.identity(Container(name="c", securityContext=context), None)
    spec = Container(name="c", securityContext=SecurityContext(runAsUser=65532))
    assert x.identity(spec, PodSecurityContext(runAsNonRoot=True)).uid == 65532


def test_setpriv_sets_the_bounding_set_and_the_user() -> None:
    who = x.Identity(frozenset({"NET_ADMIN", "BPF"}), uid=1000, gid=1000, no_new_privs=True)
    assert x.setpriv_argv(who) == [
        "setpriv",
        "--bounding-set=-all,+bpf,+net_admin",
        "--inh-caps=-all",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "--no-new-privs",
        "--",
    ]
    assert x.setpriv_argv(x.Identity(frozenset(), privileged=True)) == ["setpriv", "--"]


def test_the_mount_script_quotes_paths_and_makes_mount_points() -> None:
    script = x.mount_script(
        [
            Mount("/data/my dir", "/mnt/a b", read_only=True),
            Mount("/run/netns", "/run/netns", read_only=False, propagation="rslave"),
            Mount("/p/c.termination-log", "/dev/termination-log", False, is_file=True),
        ]
    )
    assert "mount --rbind '/data/my dir' '/mnt/a b'" in script
    assert "mount -o remount,bind,ro '/mnt/a b'" in script
    assert "mount --make-rslave /run/netns" in script
    assert "mount --make-rprivate '/mnt/a b'" in script
    assert "[ -e /dev/termination-log ] || { mkdir -p /dev; : > /dev/termination-log; }" in script
    assert script.endswith('exec "$@"')
    # the script is valid sh
    subprocess.run(["sh", "-n", "-c", script], check=True)


def test_the_command_execs_through_unshare_sh_and_setpriv(tmp_path: Path) -> None:
    argv = x.command(["sleep", "1"], [], x.Identity(frozenset({"KILL"})))
    assert argv[:5] == ["unshare", "--mount", "--propagation", "slave", "--"]
    assert argv[5:7] == ["sh", "-c"]
    assert argv[-3:] == ["--", "sleep", "1"]


def test_probe_ports_by_number_or_name() -> None:
    spec = Container(name="c", ports=[ContainerPort(containerPort=8443, name="https")])
    assert port_of(spec, 80) == 80
    assert port_of(spec, "8080") == 8080
    assert port_of(spec, "https") == 8443
    with pytest.raises(ValueError, match="no port named 'http'"):
        port_of(spec, "http")


def test_http_probe_request_and_status() -> None:
    request = http_request("/healthz", "198.18.1.10", 8080, {"X-Probe": "1"})
    assert request.startswith(b"GET /healthz HTTP/1.1\r\nHost: 198.18.1.10:8080\r\n")
    assert b"User-Agent: kube-probe/lab\r\n" in request
    assert b"X-Probe: 1\r\n" in request
    assert request.endswith(b"Connection: close\r\n\r\n")
    assert http_status(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n") == 200
    assert http_status(b"HTTP/1.1 503 Service Unavailable\r\n") == 503
    assert http_status(b"SSH-2.0-OpenSSH\r\n") == 0


def test_command_and_args_expand_variables_of_the_environment_as_kubernetes_does() -> None:
    env = {"NODE_NAME": "node-1", "A": "x"}
    assert x.expand("node=$(NODE_NAME)", env) == "node=node-1"
    assert x.expand("/smesh-lab-l/$(NODE_NAME)/$(A)", env) == "/smesh-lab-l/node-1/x"
    assert x.expand("$(UNSET)", env) == "$(UNSET)"  # an undefined reference stays
    assert x.expand("$$(A)", env) == "$(A)"  # escaped
    assert x.expand("a$$b $ $(A", env) == "a$b $ $(A"
