"""The proxies' CPU weight: read from /proc as the scheduler has it, and reported."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from smesh.bench import processes, report
from smesh.bench.errors import BenchError
from smesh.bench.processes import Weight

# /proc/PID/stat of a process whose name holds a space and a parenthesis, at nice -5
STAT = "4242 (my (proxy) 1) S 1 4242 4242 0 -1 4194560 7 0 0 0 2 1 0 0 15 -5 3 0 79 5 9"


def test_the_nice_value_is_field_19_after_the_name() -> None:
    assert processes.stat_nice(STAT) == -5


def test_a_truncated_stat_line_is_named() -> None:
    with pytest.raises(BenchError, match="not a /proc/PID/stat line"):
        processes.stat_nice("4242 (proxy) S 1 2")


def test_the_autogroup_and_its_nice() -> None:
    assert processes.autogroup("/autogroup-34625 nice -5\n") == ("/autogroup-34625", -5)
    assert processes.autogroup("/autogroup-7 nice 0") == ("/autogroup-7", 0)
    with pytest.raises(BenchError, match="not a /proc/PID/autogroup line"):
        processes.autogroup("/autogroup-7 weight 1024")


def test_the_root_autogroup_is_an_empty_file() -> None:
    """A process whose session never left the boot one (CI's runner is one) reads ''."""
    assert processes.autogroup("") is None
    assert processes.autogroup("\n") is None
    assert Weight(-5, None, own_autogroup=False).describe() == (
        "nice -5 (in no autogroup of its own)"
    )


def test_this_process_weighs_as_the_bench_itself() -> None:
    (found,) = processes.weights([os.getpid()])
    assert found.nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert not found.own_autogroup  # the autogroup it is compared with is its own


def _proc(root: Path, pid: str, autogroup: str) -> None:
    (root / pid / "task" / pid).mkdir(parents=True)
    (root / pid / "autogroup").write_text(autogroup)
    (root / pid / "task" / pid / "stat").write_text(STAT)


def test_a_bench_in_the_root_autogroup_compares_with_it(tmp_path: Path) -> None:
    """CI's runner: the bench reads '' for itself; a process in a session of its own is in
    an autogroup of its own, and one left in the bench's session is not."""
    _proc(tmp_path, "self", "")
    _proc(tmp_path, "11", "/autogroup-9 nice -5\n")
    _proc(tmp_path, "12", "")
    assert processes.weights([11], tmp_path) == [Weight(-5, -5, own_autogroup=True)]
    assert processes.weights([12], tmp_path) == [Weight(-5, None, own_autogroup=False)]


def test_a_process_that_exited_is_left_out() -> None:
    assert processes.weights([2**22 + 1]) == []  # above pid_max's largest value


def _document(weights: dict[str, list[Weight] | None]) -> dict[str, Any]:
    notes: dict[str, Any] = {"direct": {"proxy_weight": []}}
    for name, found in weights.items():
        notes[name] = {} if found is None else {"proxy_weight": [vars(w) for w in found]}
    return {
        "variants": {"direct": {}, **{name: {} for name in weights}},
        "notes": notes,
        "plan": {"app_nice": 0},
    }


AGENTS = Weight(-5, -5, own_autogroup=True)


def test_one_weight_for_every_proxy_is_said_once() -> None:
    line = report.weight_line(_document({"smesh": [AGENTS], "haproxy": [AGENTS]}))
    assert line == (
        "Every proxy (smesh, haproxy) at nice -5 in an autogroup of its own at nice -5; the "
        "apps (iperf3, sockperf, the echo server, the load clients) at the bench's nice 0, the "
        "same for every variant."
    )


def test_a_proxy_at_another_weight_is_named() -> None:
    bench = Weight(0, 0, own_autogroup=False)
    line = report.weight_line(_document({"smesh": [AGENTS], "stunnel": [bench], "haproxy": None}))
    assert line.startswith("The proxies' CPU weight differed between variants (")
    assert "stunnel: nice 0 in the bench's autogroup at nice 0" in line
    assert "haproxy: not recorded" in line


def test_a_run_before_the_weights_were_recorded_says_so() -> None:
    document = _document({"smesh": None})
    del document["plan"]["app_nice"]
    assert report.weight_line(document) == "The proxies' CPU weight was not recorded in this run."
    machine = {"cpu": "c", "cpus": 2, "memory_gib": 1, "kernel": "k", "python": "3", "openssl": "o"}
    text = report.markdown({**document, "machine": machine, "date": "today"})
    assert "per connection). The proxies' CPU weight was not recorded" in text
