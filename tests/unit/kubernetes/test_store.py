"""The informer's store: events derived from state, the relist diff, duplicates dropped."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.kubernetes.store import Event, EventType, Key, Meta, Store


@dataclass(frozen=True)
class Obj:
    namespace: str
    name: str
    uid: str
    rv: str


def meta(obj: Obj) -> Meta:
    return Meta(obj.namespace, obj.name, obj.uid, obj.rv)


def store(*objs: Obj, rv: str = "1") -> Store[Obj]:
    s: Store[Obj] = Store(meta)
    s.replace(objs, rv)
    return s


def kinds(events: list[Event[Obj]]) -> list[tuple[str, str, str]]:
    return [(str(e.type), e.key[1], e.obj.rv) for e in events]


A1, A2 = Obj("ns", "a", "ua", "10"), Obj("ns", "a", "ua", "12")
B1 = Obj("ns", "b", "ub", "11")
C1 = Obj("ns", "c", "uc", "13")


def test_first_list_adds_everything_in_list_order() -> None:
    s: Store[Obj] = Store(meta)
    assert kinds(s.replace([B1, A1], "11")) == [("ADDED", "b", "11"), ("ADDED", "a", "10")]
    assert s.resource_version == "11"
    assert s.snapshot() == {("ns", "a"): A1, ("ns", "b"): B1}


def test_relist_reveals_deletions_first_then_changes() -> None:
    s = store(A1, B1)
    events = s.replace([A2, C1], "13")
    assert kinds(events) == [("DELETED", "b", "11"), ("MODIFIED", "a", "12"), ("ADDED", "c", "13")]
    assert s.snapshot() == {("ns", "a"): A2, ("ns", "c"): C1}
    assert s.resource_version == "13"


def test_relist_of_the_same_state_says_nothing() -> None:
    s = store(A1, B1)
    assert s.replace([B1, A1], "20") == []
    assert s.resource_version == "20"


def test_relist_sees_a_pod_recreated_under_the_same_name() -> None:
    s = store(A1)
    again = Obj("ns", "a", "ua-2", "15")
    assert kinds(s.replace([again], "15")) == [("DELETED", "a", "10"), ("ADDED", "a", "15")]


def test_watch_events_in_order() -> None:
    s = store()
    assert kinds(s.apply("ADDED", A1)) == [("ADDED", "a", "10")]
    assert kinds(s.apply("MODIFIED", A2)) == [("MODIFIED", "a", "12")]
    assert kinds(s.apply("DELETED", A2)) == [("DELETED", "a", "12")]
    assert s.snapshot() == {}
    assert s.resource_version == "12"


def test_duplicates_are_dropped_but_move_the_resource_version() -> None:
    s = store(A1, rv="10")
    assert s.apply("ADDED", A1) == []
    assert s.apply("MODIFIED", A1) == []
    assert s.apply("DELETED", B1) == []  # never seen: nothing to delete
    assert s.resource_version == "11"


def test_modified_of_an_unknown_object_is_an_addition() -> None:
    """A field or label selector starting to match shows up as whatever the server says."""
    s = store()
    assert kinds(s.apply("MODIFIED", A1)) == [("ADDED", "a", "10")]


def test_an_added_with_a_new_uid_replaces_the_old_object() -> None:
    s = store(A1)
    again = Obj("ns", "a", "ua-2", "15")
    assert kinds(s.apply("ADDED", again)) == [("DELETED", "a", "10"), ("ADDED", "a", "15")]


def test_bookmark_moves_only_the_resource_version() -> None:
    s = store(A1)
    s.bookmark("99")
    assert s.resource_version == "99"
    assert s.snapshot() == {("ns", "a"): A1}


def test_unknown_event_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="BOOKMARK"):
        store().apply("BOOKMARK", A1)


states = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.tuples(st.sampled_from(["u1", "u2"]), st.sampled_from(["1", "2", "3"])),
)


def apply_to(view: dict[Key, Obj], events: list[Event[Obj]]) -> None:
    for event in events:
        if event.type is EventType.DELETED:
            assert event.key in view, f"deleted {event.key} that the consumer does not have"
            del view[event.key]
        elif event.type is EventType.ADDED:
            assert event.key not in view, f"added {event.key} twice"
            view[event.key] = event.obj
        else:
            assert event.key in view, f"modified {event.key} before it was added"
            view[event.key] = event.obj


@given(st.lists(states, min_size=1, max_size=6))
def test_a_consumer_applying_the_events_always_equals_the_store(
    lists: list[dict[str, tuple[str, str]]],
) -> None:
    """Whatever the relists, no event is missed or doubled: the consumer's view is the list."""
    s: Store[Obj] = Store(meta)
    view: dict[Key, Obj] = {}
    for n, state in enumerate(lists):
        objs = [Obj("ns", name, uid, rv) for name, (uid, rv) in state.items()]
        apply_to(view, s.replace(objs, str(n)))
        assert view == s.snapshot() == {("ns", o.name): o for o in objs}
        # Replaying the same objects as watch events changes nothing.
        for obj in objs:
            assert s.apply("MODIFIED", obj) == []
