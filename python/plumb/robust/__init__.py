"""Robust placement from a window of steps, held-out evaluation, and the benefit gate.

One job per module: weights (recency weights of steps), replicate (replica counts scored on
steps), refine (swap search on the per-step objective), exact (every packing scored, for small
layers), model (the robust objective over all layers, numba), objective
(``solve(objective=, half_life=)`` checks and the robust pass), steps (per-step rank times and
balancedness), checks (argument checks), backtest (``plumb.backtest``), bootstrap (intervals
over steps), gate (``plumb.recommend``).
"""
