"""Benchmarks: posttrain against TRL on the same model, data, batches and steps.

Run `python benchmarks/run.py --help` (or `make bench`); see docs/benchmarks.md.
Nothing here is imported by the `posttrain` package, and no test times anything.
"""
