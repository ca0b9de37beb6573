"""Benchmark harness: timing primitives and sweeps (one JSON record per configuration)."""
