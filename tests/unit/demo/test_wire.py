"""The demo's judge of a capture: plaintext found, TLS records recognised, both ways."""

from __future__ import annotations

import io
import socket
import struct

import dpkt

from smesh.demo.wire import summarize

SECRET = b"Hello from pod-01"


def pcap(*segments: tuple[int, int, int, bytes]) -> bytes:
    """A capture of TCP segments (sport, dport, seq, payload) between two lab pods."""
    out = io.BytesIO()
    writer = dpkt.pcap.Writer(out)
    for sport, dport, seq, payload in segments:
        tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, flags=dpkt.tcp.TH_ACK, data=payload)
        ip = dpkt.ip.IP(
            src=socket.inet_aton("198.18.1.2"), dst=socket.inet_aton("198.18.2.2"), p=6, data=tcp
        )
        ip.len = len(bytes(ip))
        writer.writepkt(bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)))
    return out.getvalue()


def record(kind: int, body: bytes) -> bytes:
    return struct.pack("!BBBH", kind, 3, 3, len(body)) + body


def test_plaintext_is_found_and_is_not_tls() -> None:
    summary = summarize(pcap((40000, 8080, 1, b"xx" + SECRET)), SECRET)
    assert summary.plaintext_seen
    assert not summary.all_tls
    assert summary.ports == {40000, 8080}


def test_tls_records_split_across_segments_and_out_of_order_are_recognised() -> None:
    stream = record(22, b"\x01" * 300) + record(23, b"\x99" * 1000) + record(23, b"\x42" * 17)
    cut1, cut2 = 120, 900
    summary = summarize(
        pcap(
            (40000, 18001, 1 + cut1, stream[cut1:cut2]),
            (40000, 18001, 1, stream[:cut1]),
            (40000, 18001, 1 + cut2, stream[cut2:]),
        ),
        SECRET,
    )
    assert summary.all_tls
    assert summary.tls_records == 3
    assert not summary.plaintext_seen
    assert summary.payload_bytes == len(stream)


def test_a_stream_that_only_starts_like_tls_is_not_tls() -> None:
    summary = summarize(pcap((40000, 18001, 1, record(23, b"ok") + SECRET)), SECRET)
    assert not summary.all_tls
    assert summary.plaintext_seen


def test_an_empty_capture_proves_nothing() -> None:
    summary = summarize(pcap(), SECRET)
    assert not summary.all_tls
    assert summary.packets == 0
