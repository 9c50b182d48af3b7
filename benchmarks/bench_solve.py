"""Solve benchmark: prints the table and rewrites the '## solve' section of benchmarks/RESULTS.md.

Full run (every SPEC shape, sigma 0.5/1.0/1.5, cold start): python benchmarks/bench_solve.py
Smoke run: python benchmarks/bench_solve.py --quick
"""

import sys

from plumb.bench.results import script_main

if __name__ == "__main__":
    sys.exit(script_main(__file__))
