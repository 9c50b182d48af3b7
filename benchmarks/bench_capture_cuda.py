"""CUDA capture benchmark (needs a GPU): prints the table and rewrites its section of benchmarks/RESULTS.md."""

import sys

from plumb.bench.results import script_main

if __name__ == "__main__":
    sys.exit(script_main(__file__))
