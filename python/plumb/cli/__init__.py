"""The ``plumb`` command line: one module per subcommand, each exposing ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import PlumbError

# Each name is a module plumb.cli.<name> with register(subparsers) that sets a ``func``
# default returning the exit code.
_SUBCOMMANDS = ("bench", "report", "run", "solve", "inspect", "recommend")
# The subcommands that solve a placement: their first run on a machine compiles the kernels.
_SOLVING = ("report", "solve", "recommend")

EXIT_OK = 0
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="plumb", description="Expert-parallel load balancer for MoE inference."
    )
    parser.add_argument("--version", action="version", version=f"plumb {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    if args.command in _SOLVING:
        _announce_compile()
    try:
        return int(args.func(args) or EXIT_OK)
    except (PlumbError, ValueError, TypeError, OSError) as err:
        # User errors get one line, never a traceback.
        print(f"plumb {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _announce_compile() -> None:
    """Says on stderr that this run compiles the solver's kernels, when numba's cache lacks
    them: otherwise a first run sits silent for a minute or more (35 s to 2.3 min measured,
    depending on the machine)."""
    from pathlib import Path

    from ..numba_cache import is_cached

    solver_dir = Path(__file__).resolve().parents[1] / "solver"
    try:
        cached = is_cached(solver_dir, "model.solve_layers")
    except (ImportError, AttributeError):
        # A numba that moved its cache locator (plumb.numba_cache warned at import).
        return
    if not cached:
        print("plumb: compiling the solver's kernels into numba's cache (first run on this "
              "machine or after an upgrade: about 0.5-3 minutes, once; later runs load them "
              "in about a second)", file=sys.stderr, flush=True)
