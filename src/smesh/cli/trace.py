"""`smesh trace`: stream capture events (the structured successor of trace_pipe)."""

from __future__ import annotations

import argparse
import sys
import time

from smesh.capture import lab as capture_lab
from smesh.capture.events import as_json, as_line, wall_time
from smesh.capture.trace import Tracer
from smesh.cli.options import add_lab
from smesh.cli.output import add_output, wants_json
from smesh.lab.errors import UnknownMember


def configure(trace: argparse.ArgumentParser) -> None:
    add_lab(trace)
    trace.add_argument("--node", help="only this node (default: every captured node)")
    trace.add_argument("--pod", help="only events of this pod")
    add_output(trace)  # json: one object per line, as the events come
    trace.add_argument("--count", type=int, default=0, help="stop after COUNT events")
    trace.add_argument(
        "--timeout", type=float, default=0.0, help="stop after SECONDS (default: never)"
    )
    trace.set_defaults(func=_trace)


def _trace(args: argparse.Namespace) -> int:
    sources = capture_lab.trace_sources(args.lab, args.node)
    if args.pod:
        # Checked first: events of a pod that is not captured never come, and a trace that
        # waits for them would wait forever.
        pods = capture_lab.captured_pods(sources)
        if args.pod not in pods:
            where = ", ".join(node or "?" for node, _ in sources)
            raise UnknownMember(
                f"no pod {args.pod!r} is captured on {where} of lab {args.lab!r} "
                f"(pods: {', '.join(pods) or 'none'})"
            )
    until = time.monotonic() + args.timeout if args.timeout > 0 else None
    shown = 0
    with Tracer(sources) as tracer:
        nodes = ", ".join(node or "?" for node, _ in sources)
        print(
            f"tracing capture events of lab {args.lab!r} ({nodes}); Ctrl-C stops", file=sys.stderr
        )
        sys.stderr.flush()
        for traced in tracer.events(until=until):
            if args.pod and traced.pod != args.pod:
                continue
            when = wall_time(traced.event.ts_ns, time.monotonic_ns(), time.time())
            render = as_json if wants_json(args) else as_line
            print(render(traced.event, traced.pod, traced.node, when), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    return 0
