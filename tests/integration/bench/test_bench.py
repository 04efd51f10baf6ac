"""`smesh bench --quick` end to end: every variant in its own lab, a complete JSON document.

No figure is asserted against a threshold (speed belongs to `make bench`, not to tests);
what a user relies on is that the run completes, that every figure of every variant is
there and plausible, and that nothing of the run's labs is left behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from smesh.bench import figures
from smesh.linux import netns
from tests.integration.labkit import smesh


def _bench_namespaces() -> set[str]:
    return {n for n in netns.list_names() if re.match(r"^bench[0-9a-f]{6}\.", n)}


def test_quick_run_gives_every_figure_of_every_variant(tmp_path: Path) -> None:
    before = _bench_namespaces()
    out = tmp_path / "results.json"
    docs = tmp_path / "docs"
    proc = smesh("bench", "--quick", "--json", str(out), "--docs", str(docs), timeout=300)

    document = json.loads(out.read_text())
    assert figures.missing(document) == []
    assert list(document["variants"]) == list(figures.MAIN_VARIANTS)
    for name, results in document["variants"].items():
        assert results["throughput_1_gbps"]["median"] > 0.1, name
        assert results["throughput_4_gbps"]["median"] > 0.1, name
        assert 0 < results["rtt_p50_us"]["median"] <= results["rtt_p99_us"]["median"], name
        assert results["cps"]["median"] > 10, name
        proxied = name != "direct"
        assert (results["rss_kib_per_idle_conn"]["median"] > 0) == proxied, name
        assert (results["cpu_s_per_gb"]["median"] > 0) == proxied, name
    assert document["machine"]["cpus"] >= 1
    assert "stunnel" in document["machine"]["peers"]["stunnel"].lower()

    assert "| figure | direct | smesh | stunnel | haproxy |" in proc.stdout
    assert "| cps | " in proc.stdout  # the targets table
    assert "[4/4 haproxy]" in proc.stderr  # the progress display
    assert not docs.exists()  # a quick run is a smoke test: it never publishes figures
    assert _bench_namespaces() == before


def test_unknown_selection_names_the_choices() -> None:
    proc = smesh("bench", "--only", "smesh,warp-drive", check=False)
    assert proc.returncode != 0
    assert "--only: unknown warp-drive" in proc.stderr
    assert "haproxy" in proc.stderr
    assert "throughput" in proc.stderr
