"""Locality: per-source traffic, dispatch models and the traffic-aware placement pass.

- ``traffic_metrics``: traffic cost, cross-node / cross-NUMA fractions, rank loads under a
  dispatch model ("even" or "nearest") and the nearest-replica routing table.
- ``routing_table``: per source rank, the slot each expert maps to (SGLang static dispatch).
- ``improve_locality``: after balancing, swap replicas to cut traffic within a load slack.
"""

from .dispatch import routing_table, traffic_metrics
from .refine import improve_locality
from .traffic import DISPATCH_MODES, as_traffic

__all__ = ["DISPATCH_MODES", "as_traffic", "improve_locality", "routing_table",
           "traffic_metrics"]
