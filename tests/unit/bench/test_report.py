"""The Markdown a run prints and the docs section it replaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smesh.bench import figures, report


def _document() -> dict[str, Any]:
    def variant(scale: float) -> dict[str, dict[str, float]]:
        return {
            name: {"median": 2.0 * scale, "min": 1.0 * scale, "max": 3.0 * scale}
            for name in figures.FIGURE_NAMES
        }

    return {
        "machine": {
            "cpu": "Test CPU", "cpus": 2, "memory_gib": 4.0, "kernel": "6.1", "python": "3.11",
            "openssl": "OpenSSL 3.0", "peers": {"stunnel": "stunnel 5.68"},
        },
        "date": "2026-11-25T00:00:00+00:00",
        "plan": {"repetitions": 3},
        "variants": {v: variant(i + 1) for i, v in enumerate(figures.MAIN_VARIANTS)},
    }  # fmt: skip


def test_markdown_has_every_figure_every_variant_and_the_targets() -> None:
    text = report.markdown(_document(), "benchmarks.png")
    header = next(line for line in text.splitlines() if line.startswith("| figure"))
    assert header == "| figure | direct | smesh | stunnel | haproxy |"
    for name in figures.FIGURE_NAMES:
        assert f"| {name} (" in text
    assert "| 4.00 (2.00-6.00) |" in text  # smesh: median (min-max)
    assert "| cps | haproxy | 0.50x | >= 2x | **no** |" in text.replace("≥", ">=")
    # p99 against the best C peer: stunnel (median 6.00) beats haproxy (8.00); smesh 4.00
    assert "| p99 round trip | stunnel | 0.67x | <= 1x | yes |" in text.replace("≤", "<=")
    assert "Test CPU, 2 CPUs" in text
    assert "![" in text


def test_update_keeps_the_hand_written_text(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## Why\nkept\n")
    report.update_document(doc, "new table\n")
    text = doc.read_text()
    assert "old" not in text
    assert f"{report.BEGIN}\nnew table\n{report.END}" in text
    assert text.startswith("# Benchmarks\n\nintro")
    assert text.endswith("## Why\nkept\n")


def test_update_creates_the_document(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    report.update_document(doc, "table\n")
    report.update_document(doc, "table 2\n")
    assert doc.read_text().count(report.BEGIN) == 1
    assert "table 2" in doc.read_text()


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    report.chart(_document(), path)
    assert path.read_bytes().startswith(b"\x89PNG")


def test_candidates_get_their_own_table_beside_smesh_and_the_peers() -> None:
    document = _document()
    document["variants"]["model-streams"] = document["variants"]["smesh"]
    text = report.markdown(document)
    main = next(line for line in text.splitlines() if line.startswith("| figure"))
    assert "model-streams" not in main
    assert "| figure | smesh | haproxy | stunnel | model-streams |" in text
