"""What `smesh lab exec POD ...` runs, and in which lab."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from smesh.cli.lab import configure, exec_command
from smesh.lab import api
from smesh.lab.errors import InvalidLabSpec, LabError


@pytest.mark.parametrize(
    ("after_pod", "options", "command"),
    [
        (["--", "curl", "-v", "http://x/"], [], ["curl", "-v", "http://x/"]),
        (["curl", "-v"], [], ["curl", "-v"]),
        (["--name", "b", "--", "curl"], ["--name", "b"], ["curl"]),
        (["--lab=b", "--", "sh", "-c", "a -- b"], ["--lab=b"], ["sh", "-c", "a -- b"]),
        (["grep", "--", "-x", "f"], [], ["grep", "--", "-x", "f"]),  # the command's own --
        (["--", "grep", "--", "-x"], [], ["grep", "--", "-x"]),
        ([], [], []),
    ],
)
def test_options_before_the_double_dash_are_exec_s_own(
    after_pod: list[str], options: list[str], command: list[str]
) -> None:
    assert exec_command(after_pod) == (options, command)


def test_an_option_without_a_double_dash_is_an_error_not_a_command() -> None:
    with pytest.raises(LabError, match="end exec's options with `--`"):
        exec_command(["--name", "b", "curl"])


def test_only_the_api_server_restarts_loopback_only() -> None:
    from smesh.lab import api  # noqa: PLC0415

    with pytest.raises(LabError, match="--loopback-only is for kube-apiserver only, not etcd"):
        api.restart_control_plane("x", "etcd", loopback_only=True)


def up_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["up", *argv])


@pytest.mark.parametrize(
    ("argv", "mode"),
    [
        (["--kubernetes"], "chart"),  # issue 20: the chart is what --kubernetes installs
        (["--kubernetes", "--install", "chart"], "chart"),
        (["--kubernetes", "--install", "processes"], "processes"),
        (["--kubernetes", "--install", "lab"], "processes"),  # the old name
        (["--kubernetes", "--no-mesh"], "processes"),  # nothing to install: no agents at all
        ([], "processes"),  # no API server to apply a chart to
        (["--install", "processes"], "processes"),
    ],
)
def test_how_lab_up_installs_the_mesh(argv: list[str], mode: str) -> None:
    args = up_args(*argv)
    assert api.install_mode(args.install, kubernetes=args.kubernetes, mesh=not args.no_mesh) == (
        mode
    )


def test_install_takes_only_its_modes() -> None:
    with pytest.raises(SystemExit):
        up_args("--kubernetes", "--install", "helm")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"install": "helm"}, "choose chart or processes"),
        ({"install": "chart"}, "needs --kubernetes"),
        ({"install": "chart", "kubernetes": True, "mesh": False}, "needs --kubernetes"),
        ({"install": "chart", "kubernetes": True, "agent_overrides": ["a=b"]}, "chart's values"),
        # the default: the message says the chart came from --kubernetes, and the way out
        ({"kubernetes": True, "agent_overrides": ["a=b"]}, r"--kubernetes \(which installs"),
        ({"kubernetes": True, "policy": Path("p.yaml")}, "pass --install processes"),
        (
            {"kubernetes": True, "install": "processes", "chart_values": ["a=b"]},
            "needs --install chart",
        ),
        ({"install": "chart", "kubernetes": True, "chart_values": ["a"]}, "expected KEY=VALUE"),
        ({"install": "chart", "kubernetes": True, "chart_values": ["=b"]}, "expected KEY=VALUE"),
    ],
)
def test_install_chart_is_refused_where_it_cannot_work(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidLabSpec, match=message):
        api.up("x", **kw)  # refused before anything is built (and before the root check)


def test_a_bad_service_cidr_is_refused_before_anything_is_built() -> None:
    assert up_args("--kubernetes", "--service-cidr", "198.18.240.0/20").service_cidr == (
        "198.18.240.0/20"
    )
    with pytest.raises(InvalidLabSpec, match=r"must contain 198\.18\.255\.10"):
        api.up("x", kubernetes=True, install="processes", service_cidr="198.18.200.0/24")


def test_the_lab_state_remembers_the_service_cidr() -> None:
    from smesh.lab import state  # noqa: PLC0415

    lab = state.LabState("x", 2, 0, mesh=True, kubernetes=True)
    assert str(lab.topology().service_cidr) == "198.18.255.0/24"
    lab.settings["service_cidr"] = "198.18.240.0/20"
    assert str(lab.topology().api_service_ip) == "198.18.240.1"
