"""Shared helpers for benchmark output: timing and the sections of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..io.atomic import atomic_write


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2]


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int,
                        every: Optional[Dict[str, int]] = None) -> Dict[str, float]:
    """Median seconds of each function, timed in rounds (one call of each per round).

    Interleaving spreads machine noise evenly over the contenders, so that their ratios hold
    up on a busy machine; the order is shuffled every round (seeded by the round: the same on
    every run), so that no contender always runs right after the same one (after a call of
    the same code, or of the cache-evicting numpy baseline). A rotation would not do: it
    keeps every contender's successor, and with the baseline thinned to every k-th round of
    k contenders it also fixed its place in the round. ``every[name] = k`` times that one
    only every k-th round (at least 3 times in all). One untimed warm-up round first.
    """
    every = every or {}
    rounds = {}
    for name in fns:
        chosen = set(range(0, repeats, every.get(name, 1)))
        spare = [r for r in range(repeats) if r not in chosen]
        chosen.update(spare[:max(0, min(3, repeats) - len(chosen))])
        rounds[name] = chosen
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    order = list(fns.items())
    for round_ in range(repeats):
        shuffled = np.random.default_rng(round_).permutation(len(order))
        for name, fn in (order[i] for i in shuffled):
            if round_ not in rounds[name]:
                continue
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in samples.items()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table; cells are str()-ed as given."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """One line naming the machine the numbers came from."""
    import os

    return (f"{_cpu_model()}, {platform.machine()}, {os.cpu_count()} logical CPUs, Python "
            f"{platform.python_version()}, {platform.system()}")


def _cpu_model() -> str:
    """The CPU's model name (absolute timings differ several-fold between hosts)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def script_main(script: str) -> int:
    """Entry point of ``benchmarks/bench_NAME.py``: run ``plumb.bench.NAME`` with its
    section written to the ``RESULTS.md`` beside the script; returns the exit status."""
    import argparse
    import importlib

    script_path = Path(script)
    module = importlib.import_module(f"plumb.bench.{script_path.stem.removeprefix('bench_')}")
    parser = argparse.ArgumentParser(description=module.__doc__)
    module.add_arguments(parser)
    parser.set_defaults(results=script_path.with_name("RESULTS.md"))
    return module.run(parser.parse_args())


def bench_command(section: str, quick: bool = False, *options: str) -> str:
    """The ``python benchmarks/bench_SECTION.py [--quick] OPTIONS`` line recorded in RESULTS.md."""
    return " ".join([f"python benchmarks/bench_{section}.py"] + ["--quick"] * quick
                    + list(options))


def write_section(path: Path, section: str, command: str, body: str) -> None:
    """Replace (or append) the ``## section`` block of the markdown file at ``path``.

    The block records the command that produced it, the machine, and ``body``.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is rewritten by the command it names.\n"
    block = (f"## {section}\n\nCommand: `{command}`\n\nMachine: {machine_line()}\n\n"
             f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: block + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with atomic_write(path, "w") as handle:
        handle.write(text.rstrip("\n") + "\n")
