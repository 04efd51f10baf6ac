"""Turning a results document into what people read: tables, the targets, a chart.

The Markdown goes to the terminal and into docs/benchmarks.md between two markers, so the
hand-written analysis around it (why this concurrency model, where time goes) survives
every new run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from smesh.bench import breakdown, conditions, figures
from smesh.bench.processes import Weight

BEGIN = "<!-- bench:results:begin -->"
BREAKDOWN_INTRO = (
    "Where the proxies' CPU per round trip goes (`--breakdown`: one more sockperf run after "
    "each rtt repetition, under perf, whose p50 and p99 are its own, not the figures "
    "above): µs per round trip, both proxies together, median of the repetitions (min-max); "
    "the parts split the cgroups' CPU as perf's samples fell."
)
END = "<!-- bench:results:end -->"


def _value(summary: Mapping[str, float] | None) -> str:
    if summary is None:
        return "-"
    median, low, high = summary["median"], summary["min"], summary["max"]
    digits = 0 if median >= 100 else 1 if median >= 10 else 2
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def figures_table(variants: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    names = list(variants)
    lines = [
        "| figure | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for figure in figures.FIGURES:
        cells = [_value(variants[v].get(figure.name)) for v in names]
        lines.append(f"| {figure.name} ({figure.unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: Sequence[figures.Target]) -> str:
    lines = ["| target | against | smesh ratio | goal | met |", "|---|---|---|---|---|"]
    for t in targets:
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        goal = f"{'≥' if t.at_least else '≤'} {t.bound:g}x"
        met = {True: "yes", False: "**no**", None: "not measured"}[t.met]
        lines.append(f"| {t.name} | {t.reference} | {ratio} | {goal} | {met} |")
    return "\n".join(lines)


def machine_line(machine: Mapping[str, Any]) -> str:
    peers = ", ".join(f"{v}" for v in machine.get("peers", {}).values())
    return (
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB; "
        f"Linux {machine['kernel']}; Python {machine['python']}; {machine['openssl']}; "
        f"{peers}"
    )


def weight_line(document: Mapping[str, Any]) -> str:
    """The proxies' and the apps' CPU weight as the run measured it: a tail compares only
    between processes the scheduler weighed alike (docs/benchmarks.md, "The p99 on fresh
    agents")."""
    notes = document.get("notes", {})
    proxied = [v for v in document["variants"] if v != "direct"]
    if not any(notes.get(v, {}).get("proxy_weight") for v in proxied):
        return "The proxies' CPU weight was not recorded in this run."

    def of(variant: str) -> str:
        found = notes.get(variant, {}).get("proxy_weight")
        if not found:
            return "not recorded"
        return ", ".join(Weight(**w).describe() for w in found)

    described = {v: of(v) for v in proxied}
    apps = document.get("plan", {}).get("app_nice")
    tail = ""
    if apps is not None:
        tail = (
            f"; the apps (iperf3, sockperf, the echo server, the load clients) at the bench's "
            f"nice {apps}, the same for every variant"
        )
    if len(set(described.values())) == 1:
        (weight,) = set(described.values())
        return f"Every proxy ({', '.join(proxied)}) at {weight}{tail}."
    each = "; ".join(f"{v}: {w}" for v, w in described.items())
    return f"The proxies' CPU weight differed between variants ({each}){tail}."


def markdown(document: Mapping[str, Any], chart: str | None = None) -> str:
    variants = document["variants"]
    plan = document.get("plan", {})
    parts = [
        f"Run of {document['date']} on: {machine_line(document['machine'])}.",
        "",
        f"Median of {plan.get('repetitions', '?')} repetitions (min-max in brackets); "
        f"iperf3 {plan.get('iperf_seconds', '?')} s per run, sockperf "
        f"{plan.get('rtt_seconds', '?')} s per run, connections/s at concurrency "
        f"{plan.get('cps_concurrency', '?')}, memory with {plan.get('idle_connections', '?')} "
        "idle connections (growth of both proxies together, per connection). "
        + " ".join(filter(None, (weight_line(document), conditions.line(document)))),
        "",
        figures_table({v: variants[v] for v in variants if v in figures.MAIN_VARIANTS}),
        "",
        targets_table(figures.targets(variants)),
    ]
    candidates = [v for v in variants if v.startswith("model-")]
    if candidates:
        shown = [v for v in ("smesh", "haproxy", "stunnel") if v in variants] + candidates
        parts += [
            "",
            "Concurrency-model candidates, as proxy pairs on the nodes (like stunnel and "
            "haproxy), in the same run:",
            "",
            figures_table({v: variants[v] for v in shown}),
        ]
    cpu = breakdown.table(document)
    if cpu:
        parts += ["", BREAKDOWN_INTRO, "", cpu]
    for name, why in document.get("failed", {}).items():
        parts += ["", f"**{name} failed:** {why}"]
    if chart:
        parts += ["", f"![smesh and the C tunnels relative to the best C peer]({chart})"]
    return "\n".join(parts) + "\n"


def update_document(path: Path, generated: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated section of *path*, keeping everything written by hand."""
    block = f"{begin}\n{generated}{end}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def chart(document: Mapping[str, Any], path: Path) -> None:
    """Each variant's figures as a ratio to the best C peer (1.0 = as good as C)."""
    import matplotlib  # noqa: PLC0415 - heavy, and only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    variants = document["variants"]
    shown = list(figures.FIGURES)
    names = [v for v in figures.MAIN_VARIANTS if v in variants and v != "direct"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ratios = []
        for figure in shown:
            peer = figures.best_peer(variants, figure.name)
            mine = variants[name].get(figure.name)
            ref = variants[peer][figure.name]["median"] if peer else 0.0
            value = mine["median"] if mine else 0.0
            if not figure.higher_is_better:  # so that taller is better everywhere
                value, ref = ref, value
            ratios.append(value / ref if ref > 0 else 0.0)
        ax.bar([x + i * width for x in range(len(shown))], ratios, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(shown))])
    ax.set_xticklabels([f.name for f in shown], rotation=15, fontsize=8)
    ax.set_ylabel("relative to the best C peer (higher is better)")
    ax.set_title("smesh against stunnel and haproxy, same run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
