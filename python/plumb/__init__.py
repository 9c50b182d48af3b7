"""plumb: expert-parallel load balancer for mixture-of-experts inference.

Capture per-expert loads (``expert_histogram``), solve a placement (``solve``), score any
placement (``evaluate``). torch is optional: everything but the torch ops works with numpy.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version

from .errors import PlumbError
from .histogram import expert_histogram

try:
    __version__ = version("plumb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

# Register torch.ops.plumb.* eagerly only when the caller already uses torch, so that a
# numpy-only user never pays for importing it.
if sys.modules.get("torch") is not None:
    from . import ops as ops  # noqa: F401

__all__ = ["PlumbError", "expert_histogram", "__version__"]
