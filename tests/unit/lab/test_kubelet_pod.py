"""The lab kubelet's reading of a pod spec: grace period, command line, environment."""

from __future__ import annotations

import datetime

import pytest
from lightkube.models.core_v1 import (
    ConfigMapEnvSource,
    ConfigMapKeySelector,
    Container,
    EnvFromSource,
    EnvVar,
    EnvVarSource,
    ObjectFieldSelector,
    PodSpec,
    SecretKeySelector,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.lab.kubelet import container_argv, container_env, grace_period, pod_netns
from smesh.lab.kubelet_exec import ContainerConfigError


def pod(grace: int | None = None, deletion_grace: int | None = None) -> Pod:
    meta = ObjectMeta(name="web-1", namespace="shop", uid="0a1b2c3d-0000-4000-8000-000000000001")
    if deletion_grace is not None:
        meta.deletionTimestamp = datetime.datetime.now(datetime.UTC)
        meta.deletionGracePeriodSeconds = deletion_grace
    spec = PodSpec(containers=[Container(name="c")], terminationGracePeriodSeconds=grace)
    return Pod(metadata=meta, spec=spec)


def test_grace_period_prefers_the_deletion_s_even_when_zero() -> None:
    assert grace_period(pod()) == 30
    assert grace_period(pod(grace=5)) == 5
    assert grace_period(pod(grace=5, deletion_grace=2)) == 2
    assert grace_period(pod(grace=5, deletion_grace=0)) == 0  # --grace-period=0 --force


def test_command_then_args() -> None:
    assert container_argv(Container(name="c", command=["python3", "-m"], args=["http.server"])) == [
        "python3",
        "-m",
        "http.server",
    ]
    assert container_argv(Container(name="c", image="nginx")) == []  # no image entrypoint


def test_environment_literals_and_field_refs() -> None:
    spec = Container(
        name="c",
        env=[
            EnvVar(name="MODE", value="fast"),
            EnvVar(
                name="ME",
                valueFrom=EnvVarSource(fieldRef=ObjectFieldSelector(fieldPath="metadata.name")),
            ),
            EnvVar(
                name="IP",
                valueFrom=EnvVarSource(fieldRef=ObjectFieldSelector(fieldPath="status.podIP")),
            ),
            EnvVar(
                name="NODE",
                valueFrom=EnvVarSource(fieldRef=ObjectFieldSelector(fieldPath="spec.nodeName")),
            ),
        ],
    )
    env = container_env(spec, pod(), "node-2", ["198.18.2.10", "fd00:198:18:2::a"])
    assert env["MODE"] == "fast"
    assert env["ME"] == "web-1"
    assert env["IP"] == "198.18.2.10"
    assert env["NODE"] == "node-2"
    assert env["HOSTNAME"] == "web-1"
    assert "PATH" in env


def test_sandbox_netns_is_named_under_the_lab_prefix() -> None:
    assert pod_netns("lab1", "0a1b2c3d-0000-4000-8000-000000000001") == "lab1.k8s-0a1b2c3d0000"


def test_environment_from_config_maps_secrets_and_the_api_server() -> None:
    spec = Container(
        name="c",
        envFrom=[EnvFromSource(configMapRef=ConfigMapEnvSource(name="cfg"), prefix="CFG_")],
        env=[
            EnvVar(
                name="GREETING",
                valueFrom=EnvVarSource(configMapKeyRef=ConfigMapKeySelector(name="cfg", key="g")),
            ),
            EnvVar(
                name="PASSWORD",
                valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name="sec", key="p")),
            ),
        ],
    )
    objects: dict[tuple[str, str], dict[str, bytes] | None] = {
        ("configmaps", "cfg"): {"g": b"hello"},
        ("secrets", "sec"): {"p": b"s3cret"},
    }
    env = container_env(spec, pod(), "node-1", [], objects)
    assert (env["GREETING"], env["PASSWORD"], env["CFG_g"]) == ("hello", "s3cret", "hello")
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == (
        "198.19.0.250",
        "6443",
    )
    assert env["PATH"].split(":")[0].endswith("/bin")  # the checkout's venv first
    objects[("secrets", "sec")] = None
    with pytest.raises(ContainerConfigError, match='secret "sec" not found'):
        container_env(spec, pod(), "node-1", [], objects)
    objects[("secrets", "sec")] = {"other": b""}
    with pytest.raises(ContainerConfigError, match="couldn't find key p in secret sec"):
        container_env(spec, pod(), "node-1", [], objects)
