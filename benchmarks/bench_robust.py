"""Robust benchmark: prints the tables, rewrites the "## robust" section of benchmarks/RESULTS.md.

Full run (every SPEC shape, sigma 0.5/1.0/1.5, 3 windows each, gate with 100 noise windows):
    python benchmarks/bench_robust.py
Smoke run: python benchmarks/bench_robust.py --quick
"""

import argparse
import sys
from pathlib import Path

from plumb.bench import robust

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=robust.__doc__)
    robust.add_arguments(parser)
    parser.set_defaults(results=Path(__file__).with_name("RESULTS.md"))
    sys.exit(robust.run(parser.parse_args()))
