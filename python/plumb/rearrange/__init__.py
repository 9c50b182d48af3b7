"""Rearranging expert weights from one placement to another: metrics, plan, executors.

- ``movement_stats``: what a rearrangement costs (moves, bytes, bottlenecks, time estimate).
- ``plan_rearrangement``: every copy (layer, expert, src rank/slot -> dst rank/slot).
- ``execute_inplace``: apply a plan to stacked [L, P, ...] weights in one process.
- ``execute_distributed``: apply a plan across a torch.distributed group, [L, S, ...] per rank.

The executors import torch when called; the rest is numpy only.
"""

from .distributed import execute_distributed
from .inplace import ExecutionReport, execute_inplace
from .movement import MovementStats, movement_stats
from .plan import RearrangementPlan, plan_rearrangement

__all__ = ["ExecutionReport", "MovementStats", "RearrangementPlan", "execute_distributed",
           "execute_inplace", "movement_stats", "plan_rearrangement"]
