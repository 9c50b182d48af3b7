"""Solve benchmark: prints the table and rewrites the '## solve' section of benchmarks/RESULTS.md.

Full run (every SPEC shape, sigma 0.5/1.0/1.5, cold start): python benchmarks/bench_solve.py
Smoke run: python benchmarks/bench_solve.py --quick
"""

import argparse
import sys
from pathlib import Path

from plumb.bench import solve

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=solve.__doc__)
    solve.add_arguments(parser)
    parser.set_defaults(results=Path(__file__).with_name("RESULTS.md"))
    sys.exit(solve.run(parser.parse_args()))
