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
KUBERNETES = "kubernetes"
UPGRADE = "upgrade"
SEPARATE = (KUBERNETES, UPGRADE)  # groups with a lab of their own, run only when named


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="every figure once, briefly (under two minutes)"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="write the results document (JSON) here"
    )
    # --json meant this file before -o json meant a format on every other command: kept,
    # hidden, so scripts that pass it still work
    parser.add_argument("--json", dest="results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        metavar="WHAT",
        help="comma-separated variants and/or figure groups to run, e.g. smesh,haproxy or "
        "cps,memory (variants: direct, smesh, stunnel, haproxy, model-*; "
        "groups: throughput, rtt, cps, memory; kubernetes: the Kubernetes lab's figures, "
        "upgrade: agent upgrades and kill -9 under a steady load; those two alone unless "
        "other variants or groups are named too)",
    )
    parser.add_argument(
        "--kubernetes-pods",
        metavar="COUNTS",
        help="pod counts of the kubernetes group, e.g. enroll=50,connect=20,rss=100,churn=50 "
        "(defaults: those; --quick: 20, 5, 30, 20)",
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
        "--breakdown",
        action="store_true",
        help="after each rtt repetition, one more under perf: the proxies' CPU per round "
        "trip split into kernel, interpreter, uvloop, OpenSSL, libc, the tunnel's own code "
        "(needs the Debian package linux-perf)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="measure nothing: print (and publish, if complete) the results saved in FILE",
    )
    parser.set_defaults(func=run)


def _selection(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Variants and groups of the proxy comparison; both empty when only kubernetes runs."""
    from smesh.bench import runner, variants  # noqa: PLC0415

    chosen = [w.strip() for w in (args.only or "").split(",") if w.strip()]
    if chosen and set(chosen) <= set(SEPARATE):
        return [], []
    chosen = [w for w in chosen if w not in SEPARATE]
    known = variants.known()
    unknown = [w for w in chosen if w not in known and w not in runner.GROUPS]
    if unknown:
        raise BenchError(
            f"--only: unknown {', '.join(unknown)}; choose from variants {', '.join(known)} "
            f"and groups {', '.join((*runner.GROUPS, *SEPARATE))}"
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
    if args.breakdown and names and "rtt" not in groups:
        raise BenchError("--breakdown records during the rtt group: add rtt to --only")
    kubernetes = KUBERNETES in (args.only or "").replace(" ", "").split(",")
    kube_plan = _kube_plan(args) if kubernetes else None
    upgrade = UPGRADE in (args.only or "").replace(" ", "").split(",")
    privileges.require("smesh bench")
    plan = (runner.Plan.quick if args.quick else runner.Plan.full)(names, groups)
    if args.profile:
        plan = dataclasses.replace(plan, profile=args.profile.resolve())
    if args.breakdown:
        from smesh.bench import breakdown  # noqa: PLC0415

        breakdown.require_perf()  # before any lab is built
        plan = dataclasses.replace(plan, breakdown=True)
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s {text}", file=sys.stderr, flush=True)

    document = runner.run(plan, progress) if names else runner.empty_document(plan)
    if kube_plan is not None:
        document["kubernetes"] = _run_kubernetes(kube_plan, progress)
    if upgrade:
        document["upgrade"] = _run_upgrade(args.quick, progress)
    if args.results:
        args.results.write_text(json.dumps(document, indent=2) + "\n")
    complete = not figures.missing(document) and set(groups) == set(runner.GROUPS)
    return _publish(args, document, complete=complete, quick=args.quick)


def _kube_plan(args: argparse.Namespace) -> Any:
    from smesh.bench import kubefigures, kubernetes  # noqa: PLC0415

    plan = kubernetes.KubePlan.quick() if args.quick else kubernetes.KubePlan()
    counts = kubefigures.pod_counts(args.kubernetes_pods or "")
    return dataclasses.replace(plan, **{f"{k}_pods": v for k, v in counts.items()})


def _in_workdir(group: str, run: Any, progress: Any) -> dict[str, Any]:
    """Run one lab-building group in a scratch directory, kept only when the run failed."""
    import shutil  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    workdir = Path(tempfile.mkdtemp(prefix=f"smesh-bench-{group}-"))
    section: dict[str, Any] = run(workdir, lambda text: progress(f"[{group}] {text}"))
    if "failed" in section:
        progress(f"[{group}] logs of the failed run are kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return section


def _run_kubernetes(plan: Any, progress: Any) -> dict[str, Any]:
    from smesh.bench import kubernetes  # noqa: PLC0415

    return _in_workdir("kubernetes", lambda w, p: kubernetes.run(plan, w, p), progress)


def _run_upgrade(quick: bool, progress: Any) -> dict[str, Any]:
    from smesh.bench import upgrade  # noqa: PLC0415

    plan = upgrade.UpgradePlan.quick() if quick else upgrade.UpgradePlan()
    return _in_workdir("upgrade", lambda w, p: upgrade.run(plan, w, p), progress)


def _publish_upgrade(args: argparse.Namespace, document: dict[str, Any], quick: bool) -> int:
    """The upgrade table; a full run without failures also goes into the document."""
    from smesh.bench import report, upgradefigures  # noqa: PLC0415

    section = document["upgrade"]
    line = report.machine_line(document["machine"])
    text = upgradefigures.markdown(section, line, document["date"])
    print(text)
    if "failed" in section:
        print(f"smesh: error: upgrade: {section['failed']}", file=sys.stderr)
        return 1
    if not quick:
        args.docs.mkdir(parents=True, exist_ok=True)
        path = args.docs / "benchmarks.md"
        report.update_document(path, text, upgradefigures.BEGIN, upgradefigures.END)
        print(f"wrote the upgrade section of {path}")
    return 0


def _publish_kubernetes(args: argparse.Namespace, document: dict[str, Any], quick: bool) -> int:
    """The Kubernetes table; a full run without failures also goes into the document."""
    from smesh.bench import kubefigures, report  # noqa: PLC0415

    section = document["kubernetes"]
    text = kubefigures.markdown(section, report.machine_line(document["machine"]), document["date"])
    print(text)
    if "failed" in section:
        print(f"smesh: error: kubernetes: {section['failed']}", file=sys.stderr)
        return 1
    if not quick:
        path = args.docs / "benchmarks.md"
        report.update_document(path, text, kubefigures.BEGIN, kubefigures.END)
        print(f"wrote the Kubernetes section of {path}")
    return 0


def _publish(
    args: argparse.Namespace, document: dict[str, Any], complete: bool, quick: bool
) -> int:
    """Print the tables; a complete, full run also updates the published document."""
    status = 0
    if "kubernetes" in document:
        status = _publish_kubernetes(args, document, quick)
    if "upgrade" in document:
        status = max(status, _publish_upgrade(args, document, quick))
    if not document.get("variants") and not document.get("failed"):
        return status
    return max(status, _publish_variants(args, document, complete, quick))


def _publish_variants(
    args: argparse.Namespace, document: dict[str, Any], complete: bool, quick: bool
) -> int:
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
