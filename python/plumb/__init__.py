"""plumb: expert-parallel load balancer for mixture-of-experts inference.

Capture per-expert loads (``expert_histogram``), solve a placement (``solve``), score any
placement (``evaluate``). torch is optional: everything but the torch ops works with numpy.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from pathlib import Path

from .numba_cache import drop_stale_caches

# Before any kernel is loaded from numba's cache (plumb.numba_cache says why).
drop_stale_caches(Path(__file__).parent)

from .errors import PlumbError  # noqa: E402
from .histogram import expert_histogram  # noqa: E402
from .solver import Placement, evaluate, solve  # noqa: E402
from .topology import Topology  # noqa: E402

# Imported on first use, to keep ``import plumb; plumb.solve(...)`` quick: name -> module.
_LAZY_EXPORTS = {"plan_rearrangement": ".rearrange", "report": ".report",
                 "backtest": ".robust.backtest", "recommend": ".robust.gate",
                 "read_stats": ".io", "read_placement": ".io", "write_placement": ".io"}


class _PlumbModule(types.ModuleType):
    """Keeps ``plumb.report`` the function when the submodule ``plumb.report`` is imported
    first (the import system then sets the package attribute to the submodule)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "report" and isinstance(value, types.ModuleType):
            value = value.report
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _PlumbModule

# Register torch.ops.plumb.* eagerly only when the caller already uses torch, so that a
# numpy-only user never pays for importing it.
if sys.modules.get("torch") is not None:
    from . import ops as ops  # noqa: F401

# Capture needs torch; plumb.Recorder / attach / profile import it on first use only.
_CAPTURE_EXPORTS = ("Recorder", "attach", "profile")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plumb")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str):
    if name in _CAPTURE_EXPORTS:
        from . import capture

        return getattr(capture, name)
    if name in _LAZY_EXPORTS:
        value = getattr(import_module(_LAZY_EXPORTS[name], __name__), name)
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'plumb' has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["Placement", "PlumbError", "Topology", "backtest", "evaluate", "expert_histogram",
           "plan_rearrangement", "read_placement", "read_stats", "recommend", "report",
           "solve", "write_placement", "__version__",
           *_CAPTURE_EXPORTS]
