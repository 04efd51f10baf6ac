"""Repetitions to figures, schema completeness, and the issue's targets as ratios."""

from __future__ import annotations

from typing import Any

import pytest

from smesh.bench import figures


def _summary(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value}


def _variant(**values: float) -> dict[str, dict[str, float]]:
    base = dict.fromkeys(figures.FIGURE_NAMES, 1.0)
    base.update(values)
    return {name: _summary(v) for name, v in base.items()}


def _document(**variants: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"machine": {}, "date": "2026-11-25", "variants": variants}


def test_summary_is_median_min_max() -> None:
    assert figures.summarize([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    with pytest.raises(ValueError, match="at least one"):
        figures.summarize([])


def test_a_complete_document_has_nothing_missing() -> None:
    doc = _document(**{v: _variant() for v in figures.MAIN_VARIANTS})
    assert figures.missing(doc) == []


def test_missing_variants_figures_and_bad_numbers_are_named() -> None:
    smesh = _variant()
    del smesh["cps"]
    smesh["rtt_p50_us"] = {"median": float("nan"), "min": 1.0, "max": 2.0}
    haproxy = _variant()
    haproxy["throughput_1_gbps"] = {"median": 5.0, "min": 6.0, "max": 7.0}
    doc = _document(direct=_variant(), smesh=smesh, haproxy=haproxy)
    assert figures.missing(doc) == [
        "variants.smesh.rtt_p50_us.median",
        "variants.smesh.cps",
        "variants.stunnel",
        "variants.haproxy.throughput_1_gbps: min <= median <= max fails",
    ]
    assert figures.missing({"variants": {}}, variants=()) == ["machine", "date"]


def test_best_peer_depends_on_the_figure_direction() -> None:
    results = {
        "stunnel": _variant(cps=600, rss_kib_per_idle_conn=100),
        "haproxy": _variant(cps=900, rss_kib_per_idle_conn=30),
    }
    assert figures.best_peer(results, "cps") == "haproxy"
    assert figures.best_peer(results, "rss_kib_per_idle_conn") == "haproxy"
    results["stunnel"]["rss_kib_per_idle_conn"] = _summary(20)
    assert figures.best_peer(results, "rss_kib_per_idle_conn") == "stunnel"
    assert figures.best_peer({"smesh": _variant()}, "cps") is None


def test_targets_against_the_best_peer_and_direct() -> None:
    results = {
        "direct": _variant(throughput_1_gbps=10, throughput_4_gbps=20, rtt_p50_us=50),
        "stunnel": _variant(
            throughput_1_gbps=4, throughput_4_gbps=5, rtt_p50_us=150, rtt_p99_us=280, cps=500
        ),
        "haproxy": _variant(
            throughput_1_gbps=3, throughput_4_gbps=6, rtt_p50_us=130, rtt_p99_us=300, cps=900
        ),
        "smesh": _variant(
            throughput_1_gbps=6, throughput_4_gbps=8, rtt_p50_us=170, rtt_p99_us=1550,
            cps=1800, rss_kib_per_idle_conn=0.5,
        ),
    }  # fmt: skip
    by_name = {t.name: t for t in figures.targets(results)}
    one = by_name["throughput_1_gbps vs C"]
    assert (one.reference, one.ratio, one.met) == ("stunnel", 1.5, True)
    four = by_name["throughput_4_gbps vs C"]
    assert four.reference == "haproxy"
    assert four.ratio == pytest.approx(8 / 6)
    assert four.met is False
    assert by_name["throughput_1_gbps vs direct"].ratio == pytest.approx(0.6)
    latency = by_name["added latency (p50)"]  # (170-50) / (130-50)
    assert latency.ratio == pytest.approx(1.5)
    assert latency.met is False
    # p99: smesh against the C peer with the lower p99 (stunnel here, not haproxy's median)
    tail = by_name["p99 round trip"]
    assert (tail.reference, tail.figure, tail.at_least) == ("stunnel", "rtt_p99_us", False)
    assert tail.ratio == pytest.approx(1550 / 280)
    assert tail.met is False
    assert by_name["cps"].ratio == pytest.approx(2.0)
    assert by_name["cps"].met is True
    assert by_name["rss_kib_per_idle_conn"].ratio == pytest.approx(0.5)
    assert by_name["rss_kib_per_idle_conn"].met is True


def test_targets_without_their_inputs_are_not_measured() -> None:
    targets = figures.targets({"smesh": _variant()})
    assert targets
    assert all(t.ratio is None and t.met is None for t in targets)


def test_p99_target_met_at_or_under_the_best_peer() -> None:
    results = {
        "stunnel": _variant(rtt_p99_us=200),
        "haproxy": _variant(rtt_p99_us=140),
        "smesh": _variant(rtt_p99_us=140),
    }
    tail = next(t for t in figures.targets(results) if t.name == "p99 round trip")
    assert (tail.reference, tail.ratio, tail.met) == ("haproxy", 1.0, True)


def test_targets_document_keeps_both_figures_beside_the_ratio() -> None:
    results = {
        "stunnel": _variant(rtt_p99_us=280),
        "haproxy": _variant(rtt_p99_us=300),
        "smesh": _variant(rtt_p99_us=1550),
    }
    by_name = {t["name"]: t for t in figures.targets_document(results)}
    tail = by_name["p99 round trip"]
    assert tail == {
        "name": "p99 round trip",
        "figure": "rtt_p99_us",
        "against": "best C peer",
        "reference": "stunnel",
        "smesh": 1550,
        "reference_value": 280,
        "ratio": pytest.approx(1550 / 280),
        "bound": 1.0,
        "at_least": False,
        "met": False,
    }
    # a target whose inputs did not run: no figures, no ratio, not judged
    assert by_name["throughput_1_gbps vs direct"]["reference_value"] is None
    assert by_name["throughput_1_gbps vs direct"]["met"] is None
