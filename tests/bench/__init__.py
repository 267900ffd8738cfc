"""Benchmarks: `python -m tests.bench [NAME ...]` prints a table per benchmark and writes bench-results/*.json."""
