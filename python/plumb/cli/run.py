"""``plumb run [--out stats.npz] [--every 2s] -- CMD ...``: capture without changing CMD."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from ..capture.launcher import Settings, child_env, parse_interval
from ..errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a command with MoE expert-load capture injected",
        description="Start CMD with plumb capture injected into every Python process it runs "
                    "(a sitecustomize on PYTHONPATH; yours still runs). MoE models are "
                    "hooked on their first forward; their per-step expert counts are written "
                    "atomically every --every and at exit.",
        epilog="example: plumb run --out stats.npz --every 2s -- python serve.py")
    parser.add_argument("--out", type=Path, default=Path("plumb_stats.npz"),
                        help="plumb .npz stats file (default: %(default)s)")
    parser.add_argument("--every", default="10s",
                        help="write interval: 2s, 500ms, 1m; 0 = only at exit "
                             "(default: %(default)s)")
    parser.add_argument("--window", type=int, default=1000,
                        help="steps (forward passes) kept per model (default: %(default)s)")
    parser.add_argument("--vllm-jsonl", type=Path, default=None, metavar="PATH",
                        help="also write vLLM offline-EPLB stats JSONL here")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                        help="the command to run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> NoReturn:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise InputError("no command given: plumb run [options] -- CMD ...")
    settings = Settings(args.out, parse_interval(args.every), args.window,
                        args.vllm_jsonl).validate()
    # CMD may run for hours before the first write: a path that cannot be written must
    # fail now, not lose the capture at exit.
    _check_writable(settings.out, "--out")
    if settings.vllm_jsonl is not None:
        _check_writable(settings.vllm_jsonl, "--vllm-jsonl")
    env = child_env(settings, os.environ)
    if shutil.which(command[0], path=env.get("PATH")) is None:
        raise InputError(f"command not found: {command[0]}")
    sys.stdout.flush()
    sys.stderr.flush()
    # CMD replaces this process: signals, exit status and the terminal are CMD's own.
    os.execvpe(command[0], command, env)


def _check_writable(path: Path, option: str) -> None:
    """Raises InputError unless a file can be written at ``path``: not a directory, in an
    existing directory this user may write to."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: directory {parent} is not writable")
