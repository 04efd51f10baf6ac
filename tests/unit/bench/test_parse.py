"""Reading iperf3, sockperf and /proc the way the runner does."""

from __future__ import annotations

import json
import os

import pytest

from smesh.bench import parse
from smesh.bench.errors import BenchError

SOCKPERF = """\
sockperf: [Total Run] RunTime=3.000 sec; Warm up time=400 msec; SentMessages=121537; \
ReceivedMessages=121536
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=2.550 sec; SentMessages=103894; ReceivedMessages=103894
sockperf: Total 103894 observations; each percentile contains 1038.94 observations
sockperf: ---> <MAX> observation = 5190.175
sockperf: ---> percentile 99.999 = 5076.935
sockperf: ---> percentile 99.000 =   58.197
sockperf: ---> percentile 90.000 =   23.204
sockperf: ---> percentile 50.000 =   22.363
sockperf: ---> <MIN> observation =   21.472
"""


def test_sockperf_percentiles_and_count() -> None:
    latency = parse.sockperf(SOCKPERF)
    assert latency == parse.Latency(p50_us=22.363, p99_us=58.197, round_trips=103894, sent=121537)


def test_sockperf_messages_sent_include_the_warm_up() -> None:
    """Per-message figures divide by what was sent: the observations leave the warm-up out
    (a 2 s run observes 1.55 s of it), which read as 1.3 system calls per message."""
    latency = parse.sockperf(SOCKPERF)
    assert latency.sent > latency.round_trips
    without = "\n".join(ln for ln in SOCKPERF.splitlines() if "Total Run" not in ln)
    assert parse.sockperf(without).sent == 0


def test_sockperf_without_percentiles_is_an_error() -> None:
    with pytest.raises(BenchError, match="no percentiles"):
        parse.sockperf("sockperf: ERROR: connection refused")


def test_iperf3_reports_what_the_receiver_got() -> None:
    doc = {
        "end": {
            "sum_sent": {"bits_per_second": 9e9, "bytes": 5_700_000_000},
            "sum_received": {"bits_per_second": 8.5e9, "bytes": 5_300_000_000},
        }
    }
    assert parse.iperf3(json.dumps(doc)) == parse.Throughput(8.5, 5_300_000_000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("iperf3: error - unable to connect", "did not print JSON"),
        (json.dumps({"error": "unable to connect to server"}), "unable to connect"),
        (json.dumps({"end": {}}), "sum_received"),
    ],
)
def test_iperf3_failures_say_why(text: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        parse.iperf3(text)


def test_own_process_cpu_and_memory_are_plausible() -> None:
    assert parse.cpu_seconds(os.getpid()) > 0
    assert 1000 < parse.rss_kib(os.getpid()) < 10_000_000
