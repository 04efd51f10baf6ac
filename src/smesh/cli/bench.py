"""``smesh bench``: smesh against direct TCP, stunnel and haproxy in one run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from smesh.bench import figures, peers
from smesh.bench.errors import BenchError

PROJECT_DOCS = Path(__file__).resolve().parents[3] / "docs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="every figure once, briefly (under two minutes)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument(
        "--only",
        metavar="WHAT",
        help="comma-separated variants and/or figure groups to run, e.g. smesh,haproxy or "
        "cps,memory (variants: direct, smesh, stunnel, haproxy, model-*; "
        "groups: throughput, rtt, cps, memory)",
    )
    parser.add_argument(
        "--models",
        action="store_true",
        help="also race the data plane's concurrency-model candidates (model-* variants)",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=PROJECT_DOCS,
        metavar="DIR",
        help="where a full run writes benchmarks.md and benchmarks.png (default: %(default)s)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write py-spy flame graphs of the Python proxies (throughput, cps) into DIR",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="measure nothing: print (and publish, if complete) the results saved in FILE",
    )
    parser.set_defaults(func=run)


def _selection(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    from smesh.bench import runner, variants  # noqa: PLC0415

    chosen = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    known = variants.known()
    unknown = [w for w in chosen if w not in known and w not in runner.GROUPS]
    if unknown:
        raise BenchError(
            f"--only: unknown {', '.join(unknown)}; choose from variants {', '.join(known)} "
            f"and groups {', '.join(runner.GROUPS)}"
        )
    names = [w for w in chosen if w in known]
    if not names:
        names = list(figures.MAIN_VARIANTS)
        if args.models:
            names += [m.variant for m in peers.MODELS]
    groups = [g for g in runner.GROUPS if g in chosen] or list(runner.GROUPS)
    return names, groups


def run(args: argparse.Namespace) -> int:
    from smesh.bench import runner  # noqa: PLC0415
    from smesh.linux import privileges  # noqa: PLC0415

    if args.report:
        try:
            document = json.loads(args.report.read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"--report {args.report}: {exc}") from None
        quick = document.get("plan", {}).get("repetitions", 0) < 3
        return _publish(args, document, complete=not figures.missing(document), quick=quick)
    names, groups = _selection(args)
    privileges.require("smesh bench")
    plan = (runner.Plan.quick if args.quick else runner.Plan.full)(names, groups)
    if args.profile:
        plan = dataclasses.replace(plan, profile=args.profile.resolve())
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s {text}", file=sys.stderr, flush=True)

    document = runner.run(plan, progress)
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    complete = not figures.missing(document) and set(groups) == set(runner.GROUPS)
    return _publish(args, document, complete=complete, quick=args.quick)


def _publish(
    args: argparse.Namespace, document: dict[str, Any], complete: bool, quick: bool
) -> int:
    """Print the tables; a complete, full run also updates the published document."""
    from smesh.bench import report  # noqa: PLC0415

    chart_name = None
    if complete and not quick:
        args.docs.mkdir(parents=True, exist_ok=True)
        report.chart(document, args.docs / "benchmarks.png")
        chart_name = "benchmarks.png"
    text = report.markdown(document, chart_name)
    print(text)
    if complete and not quick:
        report.update_document(args.docs / "benchmarks.md", text)
        print(f"wrote {args.docs / 'benchmarks.md'} and {args.docs / 'benchmarks.png'}")
    failed = document.get("failed", {})
    if failed:
        print(
            f"smesh: error: {len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr
        )
    return 1 if failed else 0
