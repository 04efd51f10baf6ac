"""`smesh bench --breakdown`: perf on the proxies' cgroups during a ping-pong of its own.

A quick haproxy-only run: the breakdown is in the results document, its parts add up to
the cgroups' CPU, and perf saw haproxy's own code and the kernel (so the cgroup filter
caught the proxies' threads, and the DSO names resolved). No figure is judged for speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smesh.bench import breakdown
from tests.integration.labkit import smesh


def test_quick_haproxy_breakdown_sums_to_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = smesh(
        "bench", "--quick", "--only", "haproxy,rtt", "--breakdown",
        "--results", str(out), "--docs", str(tmp_path / "docs"),
        timeout=300,
    )  # fmt: skip

    document = json.loads(out.read_text())
    (entry,) = document["notes"]["haproxy"]["cpu_breakdown"]  # one repetition
    assert entry["round_trips"] > 0
    assert 0 < entry["p50_us"] <= entry["p99_us"]  # its own pass, not the figure's
    parts = entry["parts_us"]
    assert set(parts) == set(breakdown.PARTS)
    assert sum(parts.values()) == pytest.approx(entry["cpu_us"], rel=1e-6)
    assert entry["cpu_us"] == pytest.approx(entry["user_us"] + entry["system_us"], rel=1e-6)
    assert parts["kernel"] > 0
    assert parts["own"] > 0, entry["dsos"]  # haproxy's own binary
    assert entry["own"] == ["haproxy"]
    assert entry["context_switches"] > 0
    assert "| per round trip, both proxies | haproxy |" in proc.stdout
    assert "| the tunnel's own binary µs | " in proc.stdout

    # How the vCPUs idled, and how often the ping-pong halted one (a halted vCPU's wake-up
    # is most of a round trip on a guest that does not poll first).
    idle = document["conditions"]
    (halts,) = document["notes"]["haproxy"]["halts_per_round_trip"]
    if idle["cpuidle_driver"] is not None:
        assert "CPU halts per round trip of the ping-pong: haproxy" in proc.stdout
    if idle["cpuidle_driver"] == "haltpoll" and idle["guest_halt_poll_ns"] == 0:
        assert halts > 0.5, "every round trip wakes idle vCPUs, and none polls first"


def test_a_breakdown_without_the_rtt_group_is_refused_before_any_lab() -> None:
    proc = smesh("bench", "--only", "haproxy,cps", "--breakdown", check=False)
    assert proc.returncode != 0
    assert "--breakdown records during the rtt group: add rtt to --only" in proc.stderr
