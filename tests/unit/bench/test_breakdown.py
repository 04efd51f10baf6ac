"""The pure parts of `smesh bench --breakdown`: perf's output, DSO classes, the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smesh.bench import breakdown, figures, report
from smesh.bench.errors import BenchError

# `perf report --stdio --sort dso -n` of a record with one cpu-clock event per cgroup
# (node-1's haproxy, node-2's): two sections, each with its own header.
REPORT = """\
# To display the perf.data header info, please use --header/--header-only options.
#
# Total Lost Samples: 0
#
# Samples: 406  of event 'cpu-clock'
# Event count (approx.): 406406406
#
# Overhead       Samples  Shared Object
# ........  ............  ........................................
#
    59.36%           241  [kernel.kallsyms]
    21.92%            89  haproxy
    13.30%            54  libcrypto.so.3
     3.94%            16  libc.so.6
     0.99%             4  [JIT] tid 4242
     0.49%             2  [vdso]


# Samples: 403  of event 'cpu-clock'
# Event count (approx.): 403403403
#
# Overhead       Samples  Shared Object
# ........  ............  ........................................
#
    53.35%           215  [kernel.kallsyms]
    23.08%            93  haproxy
    16.38%            66  libssl.so.3
     6.20%            25  libc.so.6
     0.50%             2  [veth]
     0.50%             2  libcrypt.so.1

"""

# `perf stat -a -x, -e context-switches -e context-switches -G a,b -o FILE`: the file
# starts with a comment; a cgroup whose threads never ran is <not counted>.
STAT = """\
# started on Thu Dec  3 16:09:30 2026

5120,,context-switches,smesh-lab-b/node-1/host,6002345678,100.00,,
4803,,context-switches,smesh-lab-b/node-2/host,6002345678,100.00,,
<not counted>,,cpu-migrations,smesh-lab-b/node-2/host,0,100.00,,
"""


def test_report_samples_are_summed_over_the_cgroups_sections() -> None:
    found = breakdown.dso_samples(REPORT)
    assert found == {
        "[kernel.kallsyms]": 456,
        "haproxy": 182,
        "libcrypto.so.3": 54,
        "libssl.so.3": 66,
        "libc.so.6": 41,
        "[JIT] tid 4242": 4,
        "[vdso]": 2,
        "[veth]": 2,
        "libcrypt.so.1": 2,
    }
    assert sum(found.values()) == 406 + 403


def test_stat_counts_sum_cgroups_and_take_not_counted_as_zero() -> None:
    assert breakdown.stat_counts(STAT) == {"context-switches": 9923.0, "cpu-migrations": 0.0}


def test_an_unsupported_event_is_an_error_not_a_zero() -> None:
    with pytest.raises(BenchError, match="context-switches"):
        breakdown.stat_counts("<not supported>,,context-switches,a,0,100.00,,\n")


@pytest.mark.parametrize(
    ("dso", "part"),
    [
        ("[kernel.kallsyms]", "kernel"),
        ("[veth]", "kernel"),  # a module
        ("[nf_tables]", "kernel"),
        ("[vdso]", "other"),  # user space, bracketed
        ("[unknown]", "other"),
        ("[JIT] tid 4242", "other"),
        ("bpf_prog_75c48753d80dfe0e_smesh_inbound", "kernel"),  # a BPF program
        ("python3.11", "python"),
        ("libpython3.11.so.1.0", "python"),  # Debian's python3.11 links it
        ("/usr/bin/python3.12", "python"),
        ("loop.cpython-311-x86_64-linux-gnu.so", "uvloop"),
        ("libssl.so.3", "openssl"),
        ("libcrypto.so.3", "openssl"),
        ("_ssl.cpython-311-x86_64-linux-gnu.so", "openssl"),
        ("libc.so.6", "libc"),
        ("libc-2.31.so", "libc"),
        ("libcrypt.so.1", "other"),  # not OpenSSL, not libc
        ("libssl3.so", "other"),  # NSS's, not OpenSSL's
        ("libc++.so.1", "other"),
        ("libcap.so.2", "other"),
        ("_socket.cpython-311-x86_64-linux-gnu.so", "other"),
        ("haproxy", "own"),
        ("stunnel4", "own"),
        ("haproxy-old", "other"),
    ],
)
def test_classify_matches_whole_names(dso: str, part: str) -> None:
    assert breakdown.classify(dso, own=["haproxy", "stunnel4"]) == part


def test_own_is_only_the_tunnels_binary() -> None:
    assert breakdown.classify("haproxy") == "other"  # without being told it is the tunnel's


def test_split_divides_the_cgroups_cpu_as_the_samples_fall() -> None:
    dsos = breakdown.dso_samples(REPORT)
    found = breakdown.split(1000, 150_000, 250_000, dsos, 9923.0, own=["haproxy"])
    assert found.cpu_us == pytest.approx(400.0)
    assert (found.user_us, found.system_us) == (pytest.approx(150.0), pytest.approx(250.0))
    assert found.context_switches == pytest.approx(9.923)
    assert found.samples == 809
    parts = found.parts_us
    assert sum(parts.values()) == pytest.approx(found.cpu_us)
    assert parts["kernel"] == pytest.approx(400.0 * 458 / 809)  # kallsyms + veth
    assert parts["own"] == pytest.approx(400.0 * 182 / 809)
    assert parts["openssl"] == pytest.approx(400.0 * 120 / 809)
    assert parts["libc"] == pytest.approx(400.0 * 41 / 809)
    assert parts["other"] == pytest.approx(400.0 * 8 / 809)  # JIT, vdso, libcrypt
    assert parts["python"] == parts["uvloop"] == 0.0


@pytest.mark.parametrize(
    ("round_trips", "dsos", "message"),
    [(0, {"haproxy": 1}, "no round trip"), (10, {}, "no sample")],
)
def test_split_refuses_what_cannot_be_divided(
    round_trips: int, dsos: dict[str, int], message: str
) -> None:
    with pytest.raises(BenchError, match=message):
        breakdown.split(round_trips, 1, 1, dsos, 0.0)


def test_cpu_stat_reads_user_and_system() -> None:
    text = "usage_usec 300\nuser_usec 100\nsystem_usec 200\nnice_usec 0\n"
    assert breakdown.cpu_stat(text) == (100, 200)
    with pytest.raises(BenchError, match="user_usec"):
        breakdown.cpu_stat("usage_usec 300\n")


def _entry(cpu: float, kernel: float, python: float, switches: float) -> dict[str, Any]:
    parts = dict.fromkeys(breakdown.PARTS, 0.0)
    parts.update(kernel=kernel, python=python, other=cpu - kernel - python)
    found = breakdown.Breakdown(1000, cpu, cpu / 2, cpu / 2, parts, switches, 500)
    return {"p50_us": cpu / 2, "p99_us": cpu * 3, **found.as_dict()}


def _document() -> dict[str, Any]:
    summary = {"median": 1.0, "min": 1.0, "max": 1.0}
    return {
        "machine": {
            "cpu": "Test CPU", "cpus": 2, "memory_gib": 4.0, "kernel": "6.1", "python": "3.11",
            "openssl": "OpenSSL 3.0", "peers": {},
        },
        "date": "2026-12-03T00:00:00+00:00",
        "plan": {"repetitions": 3},
        "variants": {v: {f: summary for f in figures.FIGURE_NAMES} for v in ("smesh", "haproxy")},
        "notes": {
            "smesh": {"cpu_breakdown": [_entry(360, 170, 100, 5.7), _entry(400, 190, 110, 5.5),
                                        _entry(380, 180, 105, 5.6)]},
            "haproxy": {"cpu_breakdown": [_entry(280, 180, 0, 5.3)]},
            "direct": {"round_trips": [40000]},
        },
    }  # fmt: skip


def test_table_puts_variants_side_by_side() -> None:
    text = breakdown.table(_document())
    assert text is not None
    lines = text.splitlines()
    assert lines[0] == "| per round trip, both proxies | smesh | haproxy |"
    assert "| rtt p50 µs, under perf | 190 (180-200) | 140 |" in lines
    assert "| CPU µs | 380 (360-400) | 280 |" in lines
    assert "| kernel µs | 180 (170-190) | 180 |" in lines
    assert "| Python interpreter µs | 105 (100-110) | - |" in lines  # haproxy has none
    assert "| context switches | 5.60 (5.50-5.70) | 5.30 |" in lines
    assert "| the tunnel's own binary µs | - | - |" in lines
    assert len(lines) == 2 + len(breakdown.ROWS)


def test_the_report_prints_the_table_only_when_a_run_recorded_one() -> None:
    document = _document()
    assert "| per round trip, both proxies | smesh | haproxy |" in report.markdown(document)
    for notes in document["notes"].values():
        notes.pop("cpu_breakdown", None)
    assert breakdown.table(document) is None
    assert "per round trip, both proxies" not in report.markdown(document)


def test_a_missing_perf_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BenchError, match=r"perf, which is not installed: .*linux-perf"):
        breakdown.require_perf()


def test_a_perf_that_does_not_run_says_what_it_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "perf"
    fake.write_text("#!/bin/sh\necho 'perf not found for kernel 9.9' >&2\nexit 2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        BenchError, match=r"does not run: perf not found for kernel 9\.9.*linux-perf"
    ):
        breakdown.require_perf()
