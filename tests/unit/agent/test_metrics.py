"""The agent's metrics: what a dashboard can rely on before anything has happened."""

from __future__ import annotations

from smesh.agent.metrics import TURNED_AWAY, AgentMetrics


def test_every_reason_a_connection_is_turned_away_for_is_exported_at_zero() -> None:
    text = AgentMetrics().render().decode()
    for direction, reasons in TURNED_AWAY.items():
        for reason in reasons:
            series = (
                f'smesh_connections_turned_away_total{{direction="{direction}",'
                f'reason="{reason}"}} 0.0'
            )
            assert series in text
    assert 'reason="handshakes_per_source"' in text
    assert 'direction="outbound",reason="peer_streams"' in text


def test_counters_and_histograms_export_no_created_series() -> None:
    metrics = AgentMetrics()
    metrics.rotation_renewals.inc()
    text = metrics.render().decode()
    assert "smesh_certificate_rotation_renewals_total 1.0" in text
    assert "_created" not in text
