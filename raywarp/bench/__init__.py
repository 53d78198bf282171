"""Benchmarks: each prints a table of measured figures (`python -m raywarp.bench.NAME`)."""
