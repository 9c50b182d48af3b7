"""Robust benchmark: prints the tables, rewrites the "## robust" section of benchmarks/RESULTS.md.

Full run (every SPEC shape, sigma 0.5/1.0/1.5, 3 windows each, gate with 100 noise windows):
    python benchmarks/bench_robust.py
Smoke run: python benchmarks/bench_robust.py --quick
"""

import sys

from plumb.bench.results import script_main

if __name__ == "__main__":
    sys.exit(script_main(__file__))
