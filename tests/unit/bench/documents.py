"""A results document of `smesh bench` around one group's section, for the publish tests."""

from __future__ import annotations

from typing import Any


def group_document(group: str, section: dict[str, Any]) -> dict[str, Any]:
    """What a run of *group* alone saves: no proxies' variants, the group's section."""
    return {
        "machine": {"cpu": "cpu", "cpus": 2, "memory_gib": 1, "kernel": "k", "python": "3",
                    "openssl": "o", "peers": {}},
        "date": "today",
        "plan": {"repetitions": 3},
        "variants": {},
        "notes": {},
        "failed": {},
        group: section,
    }  # fmt: skip
