"""Locality: per-source traffic, dispatch models and the traffic-aware placement pass.

- ``traffic_metrics``: traffic cost, cross-node / cross-NUMA fractions, rank loads under a
  dispatch model ("even" or "nearest") and the nearest-replica routing table.
- ``routing_table``: per source rank, the slot each expert maps to (SGLang static dispatch).
- ``source_traffic``: the routed picks per (layer, source rank, expert) the kernels read: the
  traffic given, or each expert's load / G from every rank (uniform sources).
- ``improve_locality``: after balancing, swap replicas to cut traffic within a load slack;
  ``locality_pass`` runs it inside ``plumb.solve``.
- ``interchangeable_ranks``: classes of ranks whose contents can be permuted without changing
  traffic or balance (what a later relabelling pass may do freely); ``placement_invariant``
  says when no placement can change traffic at all.
"""

from .dispatch import routing_table, traffic_metrics
from .equivalence import interchangeable_ranks, placement_invariant
from .refine import improve_locality
from .solve_pass import locality_pass
from .traffic import (DISPATCH_MODES, as_load_slack, as_traffic, check_traffic_scale,
                      source_traffic)

__all__ = ["DISPATCH_MODES", "as_load_slack", "as_traffic", "check_traffic_scale",
           "improve_locality", "interchangeable_ranks", "locality_pass", "placement_invariant",
           "routing_table", "source_traffic", "traffic_metrics"]
