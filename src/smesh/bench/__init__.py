"""Benchmarks: smesh against direct TCP and the C tunnels."""
