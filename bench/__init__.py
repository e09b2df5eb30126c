"""Benchmark scripts for Meshline; run them all with ``bench/run``."""
