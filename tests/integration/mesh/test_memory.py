"""Apps that do not read cost a bounded amount of memory (issue 18, item 3).

A thousand connections, each sending 1 MiB into a server app that never reads, must not
grow the agents or the node's TCP memory past the budget for unread bytes, and a
well-behaved flow through the same agents is not starved by them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from smesh.bench.parse import iperf3
from tests.integration.labkit import Lab, LabFactory

STALL = str(Path(__file__).with_name("stall.py"))
POD3, POD4 = "198.18.2.2", "198.18.2.3"  # the app that never reads; the one that does
NODE2 = "198.19.0.2"  # outside every pod: plain TCP, for the control
MiB = 1 << 20
# The node's budget four times the pod's, as by default: one pod at its budget leaves
# the node's a quarter full, short of where the other pods' windows would shrink.
NODE_BUDGET_MIB, POD_BUDGET_MIB = 128, 32
STREAMS, EACH = 1000, MiB
# What 1,000 open connections cost the two agents beyond the bytes they hold: records,
# stream objects and sockets (a few KiB each), and the allocator's slack.
BOOKKEEPING = 48 * MiB
# The node's TCP memory beyond the budget once the streams past it are reset: the
# never-reading app's own receive buffers of the streams that live, and the senders'.
KERNEL_EXTRA = 32 * MiB
# ... and while they are being reset: a new stream's first bytes wait in the app's own
# receive buffer (128 KiB by default) and on the sender's side until its reset arrives.
TRANSIT = 256 * 1024
PAGE = 4096
# The well-behaved flow's throughput beside the stalled apps, relative to alone, below which
# it counts as starved: one tenth.
STARVED = 0.1


def agent_rss(lab: Lab) -> int:
    state = json.loads(Path(f"/run/smesh/labs/{lab.name}/state.json").read_text())
    total = 0
    for proc in state["agents"].values():
        for line in Path(f"/proc/{proc['pid']}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def tcp_memory() -> int:
    """The kernel's TCP memory, node-wide (``mem`` in /proc/net/sockstat is in pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * PAGE
    raise AssertionError("no TCP line in /proc/net/sockstat")


class Peaks:
    """The highest agent RSS and TCP memory seen, sampled in the background."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.rss = self.tcp = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.rss = max(self.rss, agent_rss(self.lab))
            self.tcp = max(self.tcp, tcp_memory())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def iperf(lab: Lab, member: str, host: str, port: int) -> float:
    proc = lab.exec(member, ["iperf3", "-c", host, "-p", str(port), "-t", "1", "-J"], timeout=30)
    return iperf3(proc.stdout).gbps


def throughput(lab: Lab) -> float:
    """The well-behaved flow (pod-2 to pod-4, through both agents), relative to plain TCP
    between the nodes measured just before: the machine is shared, and its load drifts
    more between samples than the stalled streams may cost."""
    control = iperf(lab, "node-1", NODE2, 5202)
    return iperf(lab, "pod-2", POD4, 5201) / control


def metric(lab: Lab, name: str) -> float:
    text = lab.exec("node-2", ["curl", "-sS", "-m", "5", "localhost:15020/metrics"]).stdout
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_apps_that_do_not_read_stay_within_the_budget(lab_factory: LabFactory) -> None:
    lab = lab_factory(
        "--agent-set",
        f"limits.unreadBudgetMiB={NODE_BUDGET_MIB}",
        "--agent-set",
        f"limits.unreadBudgetPerPodMiB={POD_BUDGET_MIB}",
    )
    sink = lab.spawn("pod-3", [sys.executable, STALL, "sink", "9000"], stdout=subprocess.PIPE)
    assert sink.stdout is not None
    assert sink.stdout.readline().strip() == b"READY"
    lab.spawn("pod-4", ["iperf3", "-s", "-p", "5201"], stdout=subprocess.DEVNULL)
    lab.spawn("node-2", ["iperf3", "-s", "-p", "5202"], stdout=subprocess.DEVNULL)
    lab.wait_tcp("pod-2", POD4, 5201)
    lab.wait_tcp("node-1", NODE2, 5202)
    alone = [throughput(lab) for _ in range(4)]

    rss0, tcp0 = agent_rss(lab), tcp_memory()
    peaks = Peaks(lab)
    stall = lab.spawn(
        "pod-1",
        [sys.executable, STALL, "stall", POD3, "9000", str(STREAMS), str(EACH)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert stall.stdout is not None
    settled = json.loads(stall.stdout.readline())  # every sender is blocked or reset
    beside = [throughput(lab) for _ in range(8)]
    time.sleep(0.5)
    peaks.stop()
    rss1, tcp1 = agent_rss(lab), tcp_memory()
    held = metric(lab, "smesh_unread_bytes")
    resets = metric(lab, "smesh_unread_budget_resets_total")
    shrinks = metric(lab, "smesh_stream_window_shrinks_total")
    assert stall.stdin is not None
    stall.stdin.close()
    stall.wait(30)
    alone += [throughput(lab) for _ in range(4)]

    report = {
        "settled": settled,
        "agents_rss_growth_mib": round((peaks.rss - rss0) / MiB, 1),
        "tcp_memory_growth_mib": round((peaks.tcp - tcp0) / MiB, 1),
        "agents_rss_settled_mib": round((rss1 - rss0) / MiB, 1),
        "tcp_memory_settled_mib": round((tcp1 - tcp0) / MiB, 1),
        "held_mib": round(held / MiB, 1),
        "resets": resets,
        "shrinks": shrinks,
        "alone_relative": [round(x, 4) for x in alone],
        "beside_relative": [round(x, 4) for x in beside],
    }
    print(json.dumps(report))
    budget = POD_BUDGET_MIB * MiB  # one pod's apps do not read: its budget binds
    assert resets > 0, report  # streams past their share of a full budget were reset
    assert held <= budget * 9 // 8 + MiB, report  # an eighth past, and one stream's DATA
    assert peaks.rss - rss0 <= budget + BOOKKEEPING, report
    assert tcp1 - tcp0 <= budget + KERNEL_EXTRA, report
    assert peaks.tcp - tcp0 <= NODE_BUDGET_MIB * MiB + STREAMS * TRANSIT, report
    # Starved, not slower: a flow stuck behind the stalled streams (a carrier's window
    # spent on them, a budget they exhaust) moves next to nothing. How much slower it runs
    # beside them is a speed comparison for `make bench`; on a machine shared with other
    # work the ratio of two iperf3 samples drifts too far to be asserted (0.8 failed under
    # a load of about 30, on code that does not starve the flow).
    assert min(beside) >= STARVED * statistics.median(alone), report
