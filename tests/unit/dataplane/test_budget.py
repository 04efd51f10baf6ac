"""The accounting behind the handshake budget and the peers' fair shares (no sockets)."""

from __future__ import annotations

import pytest

from smesh.dataplane.budget import Budget, address_of


def test_each_key_gets_at_most_its_own_share() -> None:
    budget: Budget[str, int] = Budget(per_key=2)
    assert budget.admit("a", 1).admitted
    assert budget.admit("a", 2).admitted
    assert budget.admit("a", 3).refused == "per_key"
    assert budget.admit("b", 4).admitted  # another key is not held back by "a"
    assert (budget.count("a"), budget.count("b"), len(budget)) == (2, 1, 3)


def test_a_released_item_makes_room_and_releasing_twice_counts_once() -> None:
    budget: Budget[str, int] = Budget(per_key=1)
    budget.admit("a", 1)
    assert budget.release("a", 1)
    assert not budget.release("a", 1)
    assert not budget.release("b", 1)
    assert len(budget) == 0
    assert budget.keys() == []
    assert budget.admit("a", 2).admitted


def test_at_its_share_a_key_gives_up_its_oldest_evictable_item_first() -> None:
    budget: Budget[str, str] = Budget(per_key=3)
    for item in ("busy-1", "idle-1", "idle-2"):
        budget.admit("peer", item)
    idle = lambda item: item.startswith("idle")  # noqa: E731
    admission = budget.admit("peer", "new", evictable=idle)
    assert admission.admitted
    assert admission.evicted == "idle-1"
    assert budget.items("peer") == ["busy-1", "idle-2", "new"]


def test_at_its_share_with_nothing_evictable_a_key_is_refused() -> None:
    budget: Budget[str, str] = Budget(per_key=2)
    budget.admit("peer", "busy-1")
    budget.admit("peer", "busy-2")
    admission = budget.admit("peer", "new", evictable=lambda item: False)
    assert admission.refused == "per_key"
    assert admission.evicted is None
    assert budget.items("peer") == ["busy-1", "busy-2"]


def test_a_full_total_lets_a_light_key_in_at_the_heaviest_keys_cost() -> None:
    budget: Budget[str, str] = Budget(per_key=4, total=6)
    for i in range(4):
        budget.admit("flood", f"f{i}")
    budget.admit("other", "o0")
    budget.admit("other", "o1")
    admission = budget.admit("legit", "l0")
    assert admission.admitted
    assert admission.evicted == "f0"  # the heaviest key's oldest
    assert len(budget) == 6
    assert budget.count("flood") == 3


def test_a_full_total_takes_from_the_longest_held_of_equally_heavy_keys() -> None:
    budget: Budget[str, str] = Budget(per_key=4, total=4)
    for key in "abcd":
        budget.admit(key, f"{key}0")
    admission = budget.admit("e", "e0")  # everyone holds one: the oldest key gives
    assert admission.evicted == "a0"
    assert budget.admit("e", "e1").refused == "total"  # e would hold more than anyone
    budget.release("d", "d0")
    budget.admit("b", "b1")  # b: 2, c: 1, e: 1
    assert budget.admit("c", "c1").evicted == "b0"


def test_a_flood_from_a_few_sources_never_keeps_a_new_source_out() -> None:
    """Whatever a handful of sources do, a source with nothing under way gets a slot."""
    budget: Budget[str, int] = Budget(per_key=8, total=16)
    item = 0
    for _round in range(50):
        for source in ("x", "y", "z"):
            item += 1
            budget.admit(source, item)
        item += 1
        assert budget.admit("legit", item).admitted
        budget.release("legit", item)  # its handshake finished in a few milliseconds
    assert len(budget) <= 16
    assert all(budget.count(source) <= 8 for source in ("x", "y", "z"))


def test_a_budget_needs_room_for_one() -> None:
    with pytest.raises(ValueError, match="room for one"):
        Budget(per_key=0)
    with pytest.raises(ValueError, match="room for one"):
        Budget(per_key=1, total=0)


@pytest.mark.parametrize(
    ("source", "address"),
    [
        ("198.18.2.2:40000", "198.18.2.2"),
        ("[fd00::1]:40000", "fd00::1"),
        ("peer", "peer"),  # not an address with a port (a test's or an AF_UNIX one)
    ],
)
def test_the_address_of_a_records_source(source: str, address: str) -> None:
    assert address_of(source) == address
