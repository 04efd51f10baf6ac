"""The upgrade figures: the load's report, reset streams, packet counts, the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from smesh.bench import report, upgradefigures
from smesh.bench.errors import BenchError
from smesh.cli import bench as cli
from tests.unit.bench.documents import group_document


def load_report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "seconds": 40.0,
        "long_lived": 20,
        "messages": 40000,
        "long_cut": 0,
        "long_failures": [],
        "long_reopen_failures": 0,
        "connects": 800,
        "connected": 800,
        "failed_connects": 0,
        "longest_failure_ms": 0.0,
        "connect_failures": [],
        "bulk": {
            "bytes": 200_000_000,
            "sent": 200_000_000,
            "sha256_ok": True,
            "cut": False,
            "error": None,
            "ms": 30000.0,
        },
    }
    report.update(changes)
    return report


def test_the_report_is_the_last_json_line_of_the_loads_output() -> None:
    text = "READY\n" + json.dumps(load_report(connects=5, connected=5)) + "\n"
    assert upgradefigures.load_report(text)["connects"] == 5
    with pytest.raises(BenchError, match="no report: READY"):
        upgradefigures.load_report("READY\n{not json\n")
    with pytest.raises(BenchError, match="no output"):
        upgradefigures.load_report("")


def test_an_upgrade_that_lost_nothing_meets_every_goal() -> None:
    figures = upgradefigures.phase_figures("upgrade", load_report(), plaintext_packets=0)
    assert figures == {
        "upgrade_failed_connects": 0.0,
        "upgrade_reset_streams": 0.0,
        "upgrade_connects": 800.0,
        "upgrade_plaintext_packets": 0.0,
        "upgrade_bulk_mb": 200.0,
        "upgrade_bulk_sha256_ok": 1.0,
    }
    text = upgradefigures.markdown({"figures": figures, "plan": {}}, "a machine", "today")
    assert "**no**" not in text
    assert "| upgrade_failed_connects | 0 | 0 | yes |" in text
    assert "| kill9_plaintext_packets | - | 0 | not measured |" in text


def test_a_cut_bulk_transfer_is_a_reset_stream_and_a_wrong_hash_is_not() -> None:
    cut = load_report(long_cut=3)
    cut["bulk"].update(sent=1000, cut=True, sha256_ok=False, error="after 1000 bytes: reset")
    assert upgradefigures.reset_streams(cut) == 4
    wrong = load_report()
    wrong["bulk"].update(sha256_ok=False, error="the server got 200000000 bytes hashing ab")
    figures = upgradefigures.phase_figures("upgrade", wrong, 0)
    assert figures["upgrade_reset_streams"] == 0.0
    assert figures["upgrade_bulk_sha256_ok"] == 0.0
    text = upgradefigures.markdown({"figures": figures}, "m", "d")
    assert "| upgrade_bulk_sha256_ok | 0 | 1 | **no** |" in text


def test_kill9_figures_report_the_losses_and_the_longest_refusal() -> None:
    report = load_report(connects=400, connected=370, long_cut=200, longest_failure_ms=1234.5)
    report["bulk"].update(sent=10, cut=True, sha256_ok=False)
    figures = upgradefigures.phase_figures("kill9", report, plaintext_packets=0)
    assert figures["kill9_failed_connects"] == 30.0
    assert figures["kill9_reset_streams"] == 201.0
    assert figures["kill9_longest_refusal_ms"] == 1234.5
    assert "upgrade_bulk_mb" not in figures


def test_packets_of_the_loads_ports_are_plain_text_and_tunnel_syns_are_counted_apart() -> None:
    lines = [
        "tcpdump: verbose output suppressed, use -v[v]... for full protocol decode",
        "listening on eth0, link-type EN10MB (Ethernet), snapshot length 262144 bytes",
        "09:00:01.1 IP 10.0.0.1.40000 > 10.0.0.2.18001: Flags [S], seq 1, length 0",
        "09:00:01.2 IP 198.18.1.2.51000 > 198.18.2.2.7070: Flags [S], seq 1, length 0",
        "09:00:01.3 IP 198.18.2.2.7071 > 198.18.1.2.51001: Flags [.], ack 1, length 0",
        "09:00:01.4 IP 10.0.0.1.18001 > 10.0.0.2.7070: Flags [S.], seq 9, length 0",
        "2 packets captured",
    ]
    assert upgradefigures.packet_counts(lines, (7070, 7071)) == (3, 1)


def test_the_median_restart_needs_a_restart() -> None:
    assert upgradefigures.median_ms([1.0, 2.0, 0.5]) == 1000.0
    with pytest.raises(BenchError):
        upgradefigures.median_ms([])


def test_only_upgrade_runs_no_variant_and_is_named_in_the_error() -> None:
    assert cli._selection(argparse.Namespace(only="upgrade", models=False)) == ([], [])
    both = argparse.Namespace(only="upgrade,kubernetes", models=False)
    assert cli._selection(both) == ([], [])
    names, _groups = cli._selection(argparse.Namespace(only="smesh,upgrade", models=False))
    assert names == ["smesh"]
    with pytest.raises(BenchError, match="upgrade"):
        cli._selection(argparse.Namespace(only="upgrades", models=False))


def _document(failed: str | None = None) -> dict[str, Any]:
    figures = upgradefigures.phase_figures("upgrade", load_report(), 0)
    section: dict[str, Any] = {"plan": {"nodes": 2, "long": 20}, "figures": figures}
    if failed:
        section["failed"] = failed
    return group_document("upgrade", section)


@pytest.mark.parametrize(("quick", "failed", "written"), [(False, None, True),
                         (True, None, False), (False, "kill9: boom", False)])  # fmt: skip
def test_only_a_full_upgrade_run_without_failures_is_published_in_its_section(
    tmp_path: Path, quick: bool, failed: str | None, written: bool
) -> None:
    docs = tmp_path / "docs"  # created by the run
    args = argparse.Namespace(docs=docs)
    status = cli._publish(args, _document(failed), complete=False, quick=quick)
    assert status == (1 if failed else 0)
    path = docs / "benchmarks.md"
    text = path.read_text() if path.exists() else ""
    assert ("| upgrade_reset_streams | 0 | 0 | yes |" in text) is written
    assert (upgradefigures.BEGIN in text) is written
    assert report.BEGIN not in text  # the proxies' section is not touched


def test_each_kill_is_paired_with_the_window_that_began_before_its_agent_was_ready() -> None:
    Kill = upgradefigures.Kill
    kills = [
        Kill("node-1", 10.0, 11.0, 12.0),
        Kill("node-2", 20.0, 21.0, 21.5),
        Kill("node-1", 30.0, 30.5, 31.0),
    ]
    windows = [[5.0, 5.5], [10.01, 12.05], [20.02, 20.5], [20.6, 21.4]]
    found = upgradefigures.refusals(kills, windows)
    assert found[0] == upgradefigures.Refusal(2040.0, 10.0, 1050.0, 50.0)
    # two windows (a connect worked between them): one refusal, from the first to the last
    assert found[1] == upgradefigures.Refusal(1380.0, 20.0, 400.0, -100.0)
    assert found[2] == upgradefigures.Refusal(0.0, None, None, None)  # no connect failed
    # a connect in flight when its agent died began its window just before the kill
    early = upgradefigures.refusals([Kill("node-1", 10.0, 11.0, 12.0)], [[9.9, 11.5]])
    assert early == [upgradefigures.Refusal(1600.0, -100.0, 500.0, -500.0)]


def test_a_process_start_is_its_ticks_after_boot() -> None:
    # began 2.5 s after boot; read 7.5 s later, at 1000.0 on the wall clock
    assert upgradefigures.process_start(250, 100, uptime=10.0, now=1000.0) == 992.5


def test_the_failed_connects_of_each_kill_are_counted_by_what_the_app_saw() -> None:
    kills = [
        upgradefigures.Kill("node-1", 10.0, 11.0, 12.0),
        upgradefigures.Kill("node-2", 14.0, 15.0, 16.0),
    ]
    failures = [
        "9.800 connection 1: ConnectionRefusedError(111, 'Connection refused')",
        "10.100 connection 2: ConnectionRefusedError(111, 'Connection refused')",
        "13.600 connection 3: ConnectionResetError(104, 'Connection reset by peer')",
        "16.000 connection 4: ConnectionResetError(104, 'Connection reset by peer')",
        "21.500 connection 5: ConnectionResetError(104, 'Connection reset by peer')",
        "not a failure line",
    ]
    found = upgradefigures.errors_by_kill(kills, failures)
    assert found == [{"ConnectionRefusedError": 2}, {"ConnectionResetError": 2}]
