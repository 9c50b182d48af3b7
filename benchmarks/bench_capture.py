"""Capture benchmark: prints the table and rewrites its section of benchmarks/RESULTS.md."""

import argparse
import sys
from pathlib import Path

from plumb.bench import capture

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=capture.__doc__)
    capture.add_arguments(parser)
    parser.set_defaults(results=Path(__file__).with_name("RESULTS.md"))
    sys.exit(capture.run(parser.parse_args()))
