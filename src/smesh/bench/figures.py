"""The figures a run reports, how repetitions become one figure, and the targets.

Pure functions over numbers, so the arithmetic that decides "target met" is unit-tested
apart from the slow, noisy measuring.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAIN_VARIANTS = ("direct", "smesh", "stunnel", "haproxy")
C_PEERS = ("stunnel", "haproxy")


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    higher_is_better: bool
    proxy_only: bool = False  # about the proxies themselves: zero for `direct`


FIGURES = (
    Figure("throughput_1_gbps", "Gbit/s", higher_is_better=True),
    Figure("throughput_4_gbps", "Gbit/s", higher_is_better=True),
    Figure("rtt_p50_us", "µs", higher_is_better=False),
    Figure("rtt_p99_us", "µs", higher_is_better=False),
    Figure("cps", "conn/s", higher_is_better=True),
    Figure("rss_kib_per_idle_conn", "KiB", higher_is_better=False, proxy_only=True),
    Figure("cpu_s_per_gb", "CPU s/GB", higher_is_better=False, proxy_only=True),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)

Summary = dict[str, float]  # {"median", "min", "max"}
Results = Mapping[str, Mapping[str, Summary]]  # variant -> figure -> summary


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("a figure needs at least one sample")
    return {
        "median": float(statistics.median(samples)),
        "min": float(min(samples)),
        "max": float(max(samples)),
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def missing(document: Mapping[str, Any], variants: Sequence[str] = MAIN_VARIANTS) -> list[str]:
    """What a results document lacks to follow the published schema ([] when complete)."""
    problems = [key for key in ("machine", "date", "variants") if key not in document]
    runs = document.get("variants", {})
    for variant in variants:
        if variant not in runs:
            problems.append(f"variants.{variant}")
            continue
        for figure in FIGURE_NAMES:
            summary = runs[variant].get(figure)
            if not isinstance(summary, Mapping):
                problems.append(f"variants.{variant}.{figure}")
                continue
            bad = [k for k in ("median", "min", "max") if not _is_number(summary.get(k))]
            problems.extend(f"variants.{variant}.{figure}.{key}" for key in bad)
            if not bad and not summary["min"] <= summary["median"] <= summary["max"]:
                problems.append(f"variants.{variant}.{figure}: min <= median <= max fails")
    return problems


@dataclass(frozen=True)
class Target:
    """One goal of the benchmark issue: smesh's ratio against a reference, and a bound."""

    name: str
    figure: str
    against: str  # "best C peer" or "direct"
    bound: float
    at_least: bool  # True: ratio >= bound; False: ratio <= bound
    ratio: float | None  # None when the reference is missing or zero
    reference: str  # which variant the ratio is taken against

    @property
    def met(self) -> bool | None:
        if self.ratio is None:
            return None
        return self.ratio >= self.bound if self.at_least else self.ratio <= self.bound


def best_peer(results: Results, figure: str) -> str | None:
    """The C peer that did best on *figure* (median), among those that ran."""
    ran = [p for p in C_PEERS if figure in results.get(p, {})]
    if not ran:
        return None
    higher = next(f.higher_is_better for f in FIGURES if f.name == figure)
    key = lambda p: results[p][figure]["median"]  # noqa: E731
    return max(ran, key=key) if higher else min(ran, key=key)


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def targets(results: Results) -> list[Target]:
    """Evaluate the issue's targets; a target whose inputs did not run has ratio None."""
    smesh = results.get("smesh", {})
    direct = results.get("direct", {})
    out: list[Target] = []

    def median(variant: Mapping[str, Summary], figure: str) -> float | None:
        return variant[figure]["median"] if figure in variant else None

    for figure in ("throughput_1_gbps", "throughput_4_gbps"):
        peer = best_peer(results, figure)
        mine = median(smesh, figure)
        ratio = None
        if peer is not None and mine is not None:
            ratio = _ratio(mine, results[peer][figure]["median"])
        out.append(Target(f"{figure} vs C", figure, "best C peer", 1.5, True, ratio, peer or "-"))
        base = median(direct, figure)
        ratio = _ratio(mine, base) if mine is not None and base is not None else None
        out.append(Target(f"{figure} vs direct", figure, "direct", 0.5, True, ratio, "direct"))

    peer = best_peer(results, "rtt_p50_us")
    mine, base = median(smesh, "rtt_p50_us"), median(direct, "rtt_p50_us")
    ratio = None
    if peer is not None and mine is not None and base is not None:
        ratio = _ratio(mine - base, results[peer]["rtt_p50_us"]["median"] - base)
    out.append(
        Target("added latency (p50)", "rtt_p50_us", "best C peer", 1.0, False, ratio, peer or "-")
    )

    # The tail, not only the median: a stall in the agent's loop shows here first (issue 23).
    peer = best_peer(results, "rtt_p99_us")
    mine = median(smesh, "rtt_p99_us")
    ratio = None
    if peer is not None and mine is not None:
        ratio = _ratio(mine, results[peer]["rtt_p99_us"]["median"])
    out.append(
        Target("p99 round trip", "rtt_p99_us", "best C peer", 1.0, False, ratio, peer or "-")
    )

    for figure, bound, at_least in (("cps", 2.0, True), ("rss_kib_per_idle_conn", 0.75, False)):
        peer = best_peer(results, figure)
        mine = median(smesh, figure)
        ratio = None
        if peer is not None and mine is not None:
            ratio = _ratio(mine, results[peer][figure]["median"])
        out.append(Target(figure, figure, "best C peer", bound, at_least, ratio, peer or "-"))
    return out


def targets_document(results: Results) -> list[dict[str, Any]]:
    """The targets as the results JSON keeps them, beside the figures they come from."""
    return [
        {
            "name": t.name,
            "figure": t.figure,
            "against": t.against,
            "reference": t.reference,
            "smesh": results["smesh"][t.figure]["median"]
            if t.figure in results.get("smesh", {})
            else None,
            "reference_value": results[t.reference][t.figure]["median"]
            if t.figure in results.get(t.reference, {})
            else None,
            "ratio": t.ratio,
            "bound": t.bound,
            "at_least": t.at_least,
            "met": t.met,
        }
        for t in targets(results)
    ]
