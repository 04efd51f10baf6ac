"""SPIFFE IDs: strict parsing, one printed form."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.spiffe import NodeId, SpiffeId


def test_parse_and_print() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/pod-1")
    assert (sid.trust_domain, sid.namespace, sid.service_account) == (
        "cluster.local",
        "default",
        "pod-1",
    )
    assert str(sid) == "spiffe://cluster.local/ns/default/sa/pod-1"
    assert SpiffeId.for_workload("shop", "api") == SpiffeId("cluster.local", "shop", "api")
    assert str(NodeId.parse("spiffe://td/smesh/node/node-1")) == "spiffe://td/smesh/node/node-1"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("http://cluster.local/ns/a/sa/b", "must start with spiffe://"),
        ("spiffe:///ns/a/sa/b", "missing trust domain"),
        ("spiffe://Cluster.local/ns/a/sa/b", "lowercase"),
        ("spiffe://cluster.local:8443/ns/a/sa/b", "no port"),
        ("spiffe://user@cluster.local/ns/a/sa/b", "user info"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "path segment"),
        ("spiffe://cluster.local/ns/a/sa/b#frag", "path segment"),
        ("spiffe://cluster.local/ns//sa/b", "empty path segment"),
        ("spiffe://cluster.local/ns/../sa/b", "'.' and '..'"),
        ("spiffe://cluster.local/ns/a/sa/b/", "empty path segment"),
        ("spiffe://cluster.local/ns/a/serviceaccount/b", "/ns/<namespace>/sa/"),
        ("spiffe://cluster.local/ns/a", "/ns/<namespace>/sa/"),
        ("spiffe://cluster.local", "/ns/<namespace>/sa/"),
        ("spiffe://" + "a" * 256 + "/ns/a/sa/b", "longer than 255"),
        ("spiffe://td/ns/a/sa/" + "b" * 2100, "longer than 2048"),
    ],
)
def test_invalid_ids_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidSpiffeId, match=re.escape(why)):
        SpiffeId.parse(text)


labels = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True).filter(
    lambda s: s not in {".", ".."}
)
domains = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True)


@given(domains, labels, labels)
def test_round_trip(td: str, ns: str, sa: str) -> None:
    sid = SpiffeId(td, ns, sa)
    assert SpiffeId.parse(str(sid)) == sid


@given(st.text(max_size=80))
def test_garbage_never_parses_into_an_id_that_prints_differently(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except InvalidSpiffeId:
        return
    assert str(sid) == text
