"""Benchmarks: each prints human-readable figures and ends with one JSON line."""
