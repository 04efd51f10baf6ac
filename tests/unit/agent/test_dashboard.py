"""The Grafana dashboard asks only for metrics the agent exports (deploy/grafana)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from smesh.agent.metrics import AgentMetrics

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "smesh-dashboard.json"
#: Series Prometheus makes itself for every target, not the agent.
PROMETHEUS_OWN = {"up"}
#: PromQL words that are not metric names (functions are told by the "(" after them).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
#: The sample names of each metric type, by the family's name.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}


def exported() -> set[str]:
    """Every sample name the agent's registry can export, with every optional part on."""
    metrics = AgentMetrics()
    metrics.kubernetes(dict)
    metrics.authorization_policies()
    return {
        family.name + suffix for family in metrics.collect() for suffix in SUFFIXES[family.type]
    }


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: strings, label matchers, ranges and the label
    lists of ``by``/``without``/``on``/``ignoring``/``group_*`` taken out first."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group()
        follows = text[match.end() :].lstrip()
        if follows.startswith("(") or name.lower() in KEYWORDS:
            continue  # a function, or an operator word
        if text[: match.start()].endswith("$"):
            continue  # a Grafana variable
        names.add(name)
    return names


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", ()))  # a collapsed row keeps its panels inside
    return found


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", ())
    ]


def test_the_tokenizer_finds_metric_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, side) (rate(a_bucket{x="b c",y=~"$job"}'
        "[$__rate_interval]))) / on (side) group_left (z) b_total - time() + c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_every_query_of_the_dashboard_names_metrics_the_agent_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    assert "smesh_tcp_connections_opened_total" in known  # (the registry is the real one)
    found = queries(dashboard)
    assert len(found) >= 10
    used: set[str] = set()
    for where, expr in found:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - known - PROMETHEUS_OWN
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by the agent"
        used |= names
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        for name in re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", query):
            assert name in known, f"variable {variable['name']}: {name} is not exported"
    # the golden panels: traffic and bytes per edge, mTLS, denials, certificates, health
    for name in (
        "smesh_tcp_connections_opened_total",
        "smesh_tcp_received_bytes_total",
        "smesh_tcp_sent_bytes_total",
        "smesh_policy_denials_total",
        "smesh_certificate_expiry_timestamp_seconds",
        "smesh_agent_ready",
        "smesh_handovers_total",
        "smesh_agent_gc_pause_seconds_bucket",
    ):
        assert name in used, f"no panel shows {name}"
    assert any('connection_security_policy="mutual_tls"' in expr for _, expr in found)


@pytest.mark.parametrize(
    "expr", ["rate(smesh_sent_bytes_total[5m])", "smesh_connections_opened_total"]
)
def test_a_retired_or_misspelt_metric_would_be_caught(expr: str) -> None:
    assert metric_names(expr) - exported()


def test_the_dashboard_is_importable_as_grafana_reads_it() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"]
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            refs = [target["refId"] for target in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]
