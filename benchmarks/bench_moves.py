"""Movement benchmark: prints the tables and rewrites its section of benchmarks/RESULTS.md."""

import argparse
import sys
from pathlib import Path

from plumb.bench import moves

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=moves.__doc__)
    moves.add_arguments(parser)
    parser.set_defaults(results=Path(__file__).with_name("RESULTS.md"))
    sys.exit(moves.run(parser.parse_args()))
