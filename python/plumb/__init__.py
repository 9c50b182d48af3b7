"""plumb: expert-parallel load balancer for mixture-of-experts inference.

Capture per-expert loads (``expert_histogram``), solve a placement (``solve``), score any
placement (``evaluate``). torch is optional: everything but the torch ops works with numpy.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from .errors import PlumbError
from .histogram import expert_histogram
from .solver import Placement, evaluate, solve
from .topology import Topology
from .rearrange import plan_rearrangement
from .report import report

try:
    __version__ = version("plumb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Register torch.ops.plumb.* eagerly only when the caller already uses torch, so that a
# numpy-only user never pays for importing it.
if sys.modules.get("torch") is not None:
    from . import ops as ops  # noqa: F401

# Capture needs torch; plumb.Recorder / attach / profile import it on first use only.
_CAPTURE_EXPORTS = ("Recorder", "attach", "profile")


def __getattr__(name: str):
    if name in _CAPTURE_EXPORTS:
        from . import capture

        return getattr(capture, name)
    raise AttributeError(f"module 'plumb' has no attribute {name!r}")


__all__ = ["Placement", "PlumbError", "Topology", "evaluate", "expert_histogram",
           "plan_rearrangement", "report", "solve", "__version__", *_CAPTURE_EXPORTS]
