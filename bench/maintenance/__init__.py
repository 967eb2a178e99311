"""Benchmark of the maintenance procedure: see run.py."""
