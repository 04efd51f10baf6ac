"""Pure parts of the client and informer: paths, selectors, metadata."""

from __future__ import annotations

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.client import NAMESPACES, PODS, Selection
from smesh.kubernetes.errors import KubernetesError, WatchProtocolError
from smesh.kubernetes.informer import object_meta
from smesh.kubernetes.store import Meta


def test_paths() -> None:
    assert PODS.path() == "/api/v1/pods"
    assert PODS.path("web") == "/api/v1/namespaces/web/pods"
    assert NAMESPACES.path() == "/api/v1/namespaces"
    with pytest.raises(ValueError, match="not namespaced"):
        NAMESPACES.path("web")


def test_selectors_pass_through_verbatim() -> None:
    selection = Selection(field_selector="spec.nodeName=node-1", label_selector="app in (a,b)")
    assert selection.params() == {
        "fieldSelector": "spec.nodeName=node-1",
        "labelSelector": "app in (a,b)",
    }
    assert Selection().params() == {}


def test_decode_gives_typed_pods() -> None:
    spec = {"nodeName": "x", "containers": [{"name": "c"}]}
    pod = PODS.decode({"metadata": {"name": "a", "namespace": "n"}, "spec": spec})
    assert isinstance(pod, Pod)
    assert pod.spec is not None
    assert pod.spec.nodeName == "x"


def test_an_invalid_object_is_a_protocol_error() -> None:
    with pytest.raises(WatchProtocolError, match="pods: not a valid object"):
        PODS.decode({"metadata": {"name": "a"}, "spec": {"nodeName": "x"}})
    with pytest.raises(WatchProtocolError, match="expected an object"):
        PODS.decode(["a"])


def test_object_meta() -> None:
    pod = Pod(metadata=ObjectMeta(name="a", namespace="n", uid="u", resourceVersion="3"))
    assert object_meta(pod) == Meta("n", "a", "u", "3")
    with pytest.raises(KubernetesError, match="without name, uid or resourceVersion"):
        object_meta(Pod(metadata=ObjectMeta(name="a")))
