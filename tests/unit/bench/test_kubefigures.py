"""The Kubernetes figures' arithmetic and parsing: percentiles, the agents' ADD lines, goals."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from smesh.bench import kubefigures, report
from smesh.bench.errors import BenchError
from smesh.bench.kubernetes import KubePlan, pod_manifest
from smesh.cli import bench as cli
from tests.unit.bench.documents import group_document


def _json_line(msg: str, logger: str = "smesh.agent") -> str:
    return json.dumps({"ts": "2026-12-02T21:25:06.314Z", "level": "info", "logger": logger,
                       "msg": msg})  # fmt: skip


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(10, 0, -1)]  # unsorted on purpose
    assert kubefigures.percentile(values, 50) == 5.0
    assert kubefigures.percentile(values, 90) == 9.0
    assert kubefigures.percentile(values, 100) == 10.0
    assert kubefigures.percentile(values, 1) == 1.0


def test_p99_of_fifty_is_the_largest_and_of_two_hundred_the_198th() -> None:
    assert kubefigures.percentile([float(v) for v in range(1, 51)], 99) == 50.0
    assert kubefigures.percentile([float(v) for v in range(1, 201)], 99) == 198.0


@pytest.mark.parametrize(("values", "p"), [([], 50), ([1.0], 0), ([1.0], 101)])
def test_percentile_refuses_nonsense(values: list[float], p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        kubefigures.percentile(values, p)


def test_enrolments_from_json_and_text_lines() -> None:
    log = "\n".join(
        [
            _json_line("CNI ADD of bench/enrol-1 answered: meshed in 12.5 ms"),
            _json_line("HTTP Request: GET https://198.19.0.250:6443/api/v1/pods", "httpx"),
            "{not json",
            _json_line(
                "CNI ADD of plain/web-1 answered: not meshed in 3.0 ms "
                "(namespace is not labelled smesh.io/mesh=enabled)"
            ),
            "2026-12-02 21:25:06 INFO smesh.agent CNI ADD of bench/enrol-2 answered: meshed "
            "in 101 ms",
            _json_line("CNI ADD of bench/enrol-3 refused: the sandbox was deleted"),
        ]
    )
    found = kubefigures.enrolments(log)
    assert found == [
        kubefigures.Enrolment("bench/enrol-1", True, 12.5),
        kubefigures.Enrolment("plain/web-1", False, 3.0),
        kubefigures.Enrolment("bench/enrol-2", True, 101.0),
    ]
    assert [e.pod for e in kubefigures.enrolments(log, "bench")] == [
        "bench/enrol-1",
        "bench/enrol-2",
    ]


def test_enrolment_line_matches_what_the_agent_logs() -> None:
    """The agent's format string (smesh.kubernetes.sandboxes), as it formats it."""
    message = "CNI ADD of %s answered: %s in %.1f ms%s" % ("bench/a", "meshed", 7.25, "")  # noqa: UP031
    assert kubefigures.enrolments(_json_line(message)) == [
        kubefigures.Enrolment("bench/a", True, 7.2)
    ]


def test_a_retried_add_counts_once_with_its_last_duration() -> None:
    entries = [
        kubefigures.Enrolment("bench/a", True, 900.0),
        kubefigures.Enrolment("bench/b", True, 5.0),
        kubefigures.Enrolment("bench/a", True, 20.0),
    ]
    latest = kubefigures.latest_by_pod(entries)
    assert {pod: e.ms for pod, e in latest.items()} == {"bench/a": 20.0, "bench/b": 5.0}


def test_cpu_per_thousand_events() -> None:
    assert kubefigures.per_thousand(0.5, 250) == pytest.approx(2.0)
    with pytest.raises(BenchError, match="no pod events"):
        kubefigures.per_thousand(0.5, 0)


def test_pod_counts() -> None:
    assert kubefigures.pod_counts("") == {}
    assert kubefigures.pod_counts("enroll=50, connect=20,rss=100,churn=500") == {
        "enroll": 50,
        "connect": 20,
        "rss": 100,
        "churn": 500,
    }


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("enrol=5", "NAME=COUNT"),
        ("enroll", "NAME=COUNT"),
        ("enroll=x", "1 to 100"),
        ("rss=0", "1 to 100"),
        ("rss=101", "1 to 100"),
    ],
)
def test_pod_counts_refuses_bad_input(text: str, why: str) -> None:
    with pytest.raises(BenchError, match=why):
        kubefigures.pod_counts(text)


def test_goals_and_table() -> None:
    results = {"enroll_p50_ms": 20.0, "enroll_p99_ms": 150.0, "agent_rss_kib_per_pod": 100.0}
    met = {g.figure: g.met for g in kubefigures.goals(results)}
    assert met == {"enroll_p99_ms": False, "agent_rss_kib_per_pod": True}
    text = kubefigures.markdown({"figures": results, "plan": {"nodes": 2}}, "a machine", "today")
    assert "| enroll_p99_ms | 150 ms | ≤ 100 ms | **no** |" in text
    assert "| agent_rss_kib_per_pod | 100 KiB | ≤ 256 KiB | yes |" in text
    assert "| first_connect_p99_ms | - | - | - |" in text
    assert kubefigures.goals({})[0].met is None


def test_the_kubernetes_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(f"# B\n\n{report.BEGIN}\nproxies\n{report.END}\n\nby hand\n")
    for run in ("first", "second"):
        report.update_document(path, f"{run}\n", kubefigures.BEGIN, kubefigures.END)
    text = path.read_text()
    assert "proxies" in text
    assert "by hand" in text
    assert "second" in text
    assert "first" not in text


def test_only_kubernetes_runs_no_variant() -> None:
    assert cli._selection(argparse.Namespace(only="kubernetes", models=False)) == ([], [])
    names, _groups = cli._selection(argparse.Namespace(only="smesh,kubernetes", models=False))
    assert names == ["smesh"]
    with pytest.raises(BenchError, match="kubernetes"):
        cli._selection(argparse.Namespace(only="kubernets", models=False))


def test_quick_plan_and_counts_from_the_command_line() -> None:
    args = argparse.Namespace(quick=True, kubernetes_pods="rss=7")
    plan = cli._kube_plan(args)
    assert plan == dataclasses.replace(KubePlan.quick(), rss_pods=7)
    assert (plan.enroll_pods, plan.connect_pods, plan.churn_pods) == (20, 5, 20)
    assert (plan.scale_services, plan.scale_updates) == (100, 50)


def test_pod_manifests_place_pods_by_selector_or_binding() -> None:
    scheduled = pod_manifest("a", "app", ["sleep", "1"], "node-2")
    assert scheduled["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-2"}
    assert "nodeName" not in scheduled["spec"]
    bound = pod_manifest("a", "app", ["sleep", "1"], "node-2", bind=True)
    assert bound["spec"]["nodeName"] == "node-2"
    assert bound["metadata"]["labels"] == {"app": "app"}


def _kube_document(failed: str | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "plan": {"nodes": 2, "enroll_pods": 50},
        "figures": {"enroll_p50_ms": 10.0, "enroll_p99_ms": 50.0},
        "notes": {},
    }
    if failed:
        section["failed"] = failed
    return group_document("kubernetes", section)


@pytest.mark.parametrize(("quick", "failed", "written"), [(False, None, True),
                         (True, None, False), (False, "enrolment: boom", False)])  # fmt: skip
def test_only_a_full_kubernetes_run_without_failures_is_published(
    tmp_path: Path, quick: bool, failed: str | None, written: bool
) -> None:
    (tmp_path / "benchmarks.md").write_text("# B\n\nby hand\n")
    args = argparse.Namespace(docs=tmp_path)
    status = cli._publish(args, _kube_document(failed), complete=False, quick=quick)
    text = (tmp_path / "benchmarks.md").read_text()
    assert status == (1 if failed else 0)
    assert ("| enroll_p99_ms | 50.0 ms | ≤ 100 ms | yes |" in text) is written
    assert "by hand" in text
    assert report.BEGIN not in text  # the proxies' section is not touched


def test_the_full_collection_time_is_read_from_an_agents_metrics() -> None:
    text = (
        "# TYPE smesh_agent_gc_pause_seconds histogram\n"
        'smesh_agent_gc_pause_seconds_sum{generation="0"} 0.5\n'
        'smesh_agent_gc_pause_seconds_sum{generation="2"} 0.125\n'
    )
    assert kubefigures.gc_full_pause_seconds(text) == 0.125
    assert kubefigures.gc_full_pause_seconds("smesh_build_info 1\n") == 0.0
