"""argparse types of the ``plumb bench`` options: a bad value is a usage error naming the
option (exit status 2), not a traceback or a table of NaN from a negative repeat count.

The list types check the text and return it unchanged: the benchmarks print the options
back as the command that reproduces their table.
"""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An int >= 1 (repeats, steps, rounds, threads, layers, ranks...)."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An int >= 0 (seeds)."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (sizes in MiB, sigmas)."""
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0 (drift)."""
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def shape_names(text: str) -> str:
    """Comma-separated benchmark shape names (``plumb.bench.workloads``), at least one."""
    from .workloads import shape

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated shape names, got {text!r}")
    for name in names:
        try:
            shape(name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def sigma_list(text: str) -> str:
    """Comma-separated lognormal sigmas, each a finite number > 0, at least one."""
    cells = [cell.strip() for cell in text.split(",")]
    if not all(cells):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, got {text!r}")
    for cell in cells:
        positive_float(cell)
    return text
