"""Benchmark suites: one file each, with a ``suite(bench)`` function (see ``benchmarks/harness.py``)."""
