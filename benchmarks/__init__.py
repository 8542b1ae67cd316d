"""soma-d2 benchmarks: the harness (`benchmarks.harness`) behind tools/benchmark.py and its results."""
