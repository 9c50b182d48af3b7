"""Placement solver: ``solve`` (policies "plumb" and "deepseek") and ``evaluate``.

One job per module: mintree (tournament trees for the kernels), replicate (water-filling
replica counts), pack (capacity-constrained LPT), refine (swap local search), place (one
replicate + pack problem), model (global / hierarchical policy over all layers), threads
(layers split over threads), bounds (lower bounds), metrics (``evaluate``), placement (``Placement``), validate (input checks),
api (``solve``), deepseek (the exact DeepSeek / vLLM greedy).
"""

from .api import solve
from .metrics import Metrics, Moves, evaluate
from .placement import Placement

__all__ = ["Metrics", "Moves", "Placement", "evaluate", "solve"]
