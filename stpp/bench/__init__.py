"""Benchmarks that print figures for BENCHMARKS.md: ``python -m stpp.bench {speed,quality} ...``."""
