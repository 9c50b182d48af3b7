"""Movement-minimising placement: what ``plumb.solve(previous=...)`` does with the old layout.

- ``relabel``: permute interchangeable ranks so each new set lands where most of it already is
  (maximum-weight assignment, ``assignment``).
- ``slots``: an expert that stays on its rank keeps its slot.
- ``refine``: swap replicas back to the ranks that held them, within the load cap.
- ``repair``: move only what overloads the previous placement, down to the balanced max load
  (kept per layer where it moves less than the steps above).
- ``budget``: incremental rebalancing under ``move_budget=``.
- ``options``: validation of ``move_budget=`` and ``layers=``; ``pipeline`` chains the steps;
  ``solve_pass`` runs them inside ``plumb.solve``.
"""

from .assignment import max_weight_assignment
from .options import MovementOptions, as_movement_options
from .pipeline import minimise_movement
from .solve_pass import movement_pass

__all__ = ["MovementOptions", "as_movement_options", "max_weight_assignment",
           "minimise_movement", "movement_pass"]
