"""``plumb run``: capture in an unmodified program.

Parent side (``plumb run [--out F] [--every 2s] -- CMD``, see ``plumb.cli.run``): ``child_env``
puts ``plumb/capture/_inject`` first on ``PYTHONPATH`` and the settings in ``PLUMB_RUN_*``
variables, then CMD replaces the launcher process. Every Python process CMD starts then runs
``_inject/sitecustomize.py``, which runs the sitecustomize it shadows (if any) and then
``bootstrap()``.

Child side (``bootstrap``, called by the sitecustomize once the program imports torch): a global
module forward pre-hook attaches (``plumb.attach``) to the outermost module whose forward runs
first and holds routers, e.g. a ``*ForCausalLM`` on its first forward or ``generate``. Each
attached model's window is written atomically to the stats file (``plumb.io.npz``) every
``--every`` seconds and at exit (normal exit, ``sys.exit``, or SIGTERM when the program left
SIGTERM at its default), plus vLLM offline-EPLB JSONL with ``--vllm-jsonl``.

File names: the first model writes ``--out``; a later model ``i`` writes ``STEM.model{i}.npz``;
in a torch.distributed job of several ranks every name gets ``.rank{r}`` before the suffix.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import signal
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, MutableMapping, Optional, Tuple

from ..errors import InputError

ENV_OUT = "PLUMB_RUN_OUT"
ENV_EVERY = "PLUMB_RUN_EVERY"
ENV_WINDOW = "PLUMB_RUN_WINDOW"
ENV_VLLM_JSONL = "PLUMB_RUN_VLLM_JSONL"
INJECT_DIR = Path(__file__).resolve().parent / "_inject"

# The most steps --window takes: more is a typo (2**31 steps of one layer of 8 experts is
# a 128 GiB ring already); what fits below it depends on the model, checked at attach.
MAX_WINDOW = 2 ** 31 - 1
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
# Exponents too: the parent hands the child repr(seconds), which writes 1e-05 or 1e+16.
_INTERVAL = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|m|h|)\s*$")


def parse_interval(text: str) -> float:
    """Seconds in ``"2s"``, ``"500ms"``, ``"1.5m"``, ``"1h"`` or a bare number of seconds;
    0 means "only at exit"."""
    match = _INTERVAL.match(str(text))
    if match is None:
        raise InputError(f"interval must look like 2s, 500ms, 1m or 1h, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise InputError(f"interval must be finite, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    """What ``plumb run`` asked for: stats path, write interval (s), window (steps), JSONL."""

    out: Path
    every: float
    window: int
    vllm_jsonl: Optional[Path] = None

    def validate(self) -> "Settings":
        if self.every < 0:
            raise InputError(f"--every must be >= 0, got {self.every}")
        if not 1 <= self.window <= MAX_WINDOW:
            raise InputError(f"--window must be in [1, {MAX_WINDOW}] steps, got {self.window}")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Optional["Settings"]:
        if not environ.get(ENV_OUT):
            return None
        jsonl = environ.get(ENV_VLLM_JSONL)
        return cls(Path(environ[ENV_OUT]), parse_interval(environ.get(ENV_EVERY, "0")),
                   int(environ.get(ENV_WINDOW, "1000")),
                   Path(jsonl) if jsonl else None).validate()


def child_env(settings: Settings, environ: Mapping[str, str]) -> MutableMapping[str, str]:
    """``environ`` plus the injection: plumb's sitecustomize first on PYTHONPATH, settings
    (paths made absolute, since CMD may change directory) in ``PLUMB_RUN_*``."""
    env = dict(environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(INJECT_DIR) + (os.pathsep + path if path else "")
    env[ENV_OUT] = str(settings.out.absolute())
    env[ENV_EVERY] = repr(settings.every)
    env[ENV_WINDOW] = str(settings.window)
    if settings.vllm_jsonl is not None:
        env[ENV_VLLM_JSONL] = str(settings.vllm_jsonl.absolute())
    else:
        env.pop(ENV_VLLM_JSONL, None)
    return env


def _warn(message: str) -> None:
    print(f"plumb run: {message}", file=sys.stderr, flush=True)


def _with_suffix(path: Path, tag: str) -> Path:
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")


class Session:
    """The capture state of one process started under ``plumb run``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: List[Tuple[str, Any]] = []  # (model class name, CaptureHandle)
        self._scanned: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._write_lock = threading.Lock()
        self._warned = False

    # -- finding models ------------------------------------------------------------------

    def on_forward(self, module: Any, _args: Any) -> None:
        """Global forward pre-hook: the first call into a module tree attaches to its root."""
        if module in self._scanned:
            return
        try:
            self._scan(module)
        except Exception as err:  # never break the user's program over capture
            self._warn_once(f"not capturing {type(module).__name__}: {err}")

    def _scan(self, root: Any) -> None:
        from .hooks import attach, find_routers

        # Outer modules run first, so this is the outermost module of its tree; its
        # descendants need no scan of their own.
        self._scanned.update(root.modules())
        routers = find_routers(root)
        if not routers:
            return
        # Buffers allocated now, on the model's device: a window that does not fit is
        # reported here (caught by on_forward) instead of raising inside the forward.
        device = next((p.device for p in root.parameters()), None)
        self.models.append((type(root).__name__, attach(root, window=self.settings.window,
                                                         device=device)))
        if self._thread is None and self.settings.every > 0:
            self._thread = threading.Thread(target=self._loop, name="plumb-run-writer",
                                            daemon=True)
            self._thread.start()

    # -- writing -------------------------------------------------------------------------

    def _paths(self, index: int) -> List[Optional[Path]]:
        paths = [self.settings.out, self.settings.vllm_jsonl]
        if index:
            paths = [p and _with_suffix(p, f"model{index}") for p in paths]
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1:
            paths = [p and _with_suffix(p, f"rank{dist.get_rank()}") for p in paths]
        return paths

    def write(self) -> None:
        """Write every attached model's window (atomically); models with no step are skipped."""
        from ..io.npz import PlumbStats, save_plumb_npz
        from .vllm_stats import stats_writer

        with self._write_lock:
            for index, (model, handle) in enumerate(list(self.models)):
                recorder = handle.recorder
                window = recorder.window()
                if window.shape[0] == 0:
                    continue
                out, jsonl = self._paths(index)
                meta = {**recorder.meta(), "source": "plumb run", "model": model,
                        "model_layers": handle.model_layers}
                save_plumb_npz(out, PlumbStats(window=window.cpu().numpy(), meta=meta))
                if jsonl is not None:
                    stats_writer(jsonl, recorder, model=model)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.every):
            try:
                self.write()
            except Exception as err:
                self._warn_once(f"periodic write failed: {err}")

    def close(self) -> None:
        """Stop the periodic writer and write the final windows."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            self.write()
        except Exception as err:
            _warn(f"final write failed: {err}")

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            _warn(message)


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    sys.exit(128 + signum)


SESSION: Optional[Session] = None


def bootstrap(environ: Mapping[str, str] = os.environ) -> Optional[Session]:
    """Start capture in this process if ``plumb run`` configured it (idempotent).

    Called by the injected sitecustomize once the program has imported torch.
    """
    global SESSION
    if SESSION is not None:
        return SESSION
    settings = Settings.from_env(environ)
    if settings is None:
        return None
    import torch

    session = Session(settings)
    torch.nn.modules.module.register_module_forward_pre_hook(session.on_forward)
    atexit.register(session.close)
    # atexit handlers do not run when SIGTERM kills the process; turn it into an exit unless
    # the program (or its environment) already chose a SIGTERM behaviour.
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    SESSION = session
    return session
