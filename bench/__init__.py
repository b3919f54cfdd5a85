"""Benchmark helpers (not deployed)."""
