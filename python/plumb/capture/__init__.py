"""Capture the experts MoE routers really choose, exactly, on the device.

``Recorder`` keeps per-step counts; ``attach`` / ``profile`` hook a model's routers into one;
``register_router`` / ``register_adapter`` teach it new router kinds; ``stats_writer`` writes
a Recorder as vLLM offline-EPLB JSONL; ``plumb run`` (``plumb.capture.launcher``) does all of
it for an unmodified program. Names are imported on first use, so that the launcher can load
this package without importing torch.
"""

import importlib

_EXPORTS = {
    "CaptureHandle": "hooks", "attach": "hooks", "find_routers": "hooks", "profile": "hooks",
    "Recorder": "recorder",
    "RouterAdapter": "registry", "register_adapter": "registry", "register_router": "registry",
    "stats_writer": "vllm_stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
