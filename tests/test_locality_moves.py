"""The swap search's incremental move costs and the source shares match direct re-routing."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from plumb.locality.dispatch import expert_routing, replica_lists
from plumb.locality.refine import _expert_moves
from plumb.locality.traffic import source_traffic
from plumb.topology import Topology


@st.composite
def _replicated_expert(draw):
    nodes = draw(st.integers(1, 3))
    topo = Topology.cluster(nodes, draw(st.sampled_from([2, 4])), draw(st.sampled_from([1, 2])))
    g = topo.num_ranks
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 31)))
    slots = draw(st.integers(1, 3))
    copies = draw(st.integers(2, min(4, g * slots)))
    # Expert 0 has ``copies`` replicas (possibly two on one rank); every other slot its own.
    slot_e = rng.permutation(np.r_[np.zeros(copies, dtype=np.int64),
                                   np.arange(1, g * slots - copies + 1)])
    num_experts = g * slots - copies + 1
    tokens = rng.integers(0, 5, (num_experts, g)).astype(float)
    if draw(st.booleans()):
        tokens[0] = 0.0  # no traffic: uniform shares
    weights = rng.lognormal(0, 1, num_experts)
    _, share = source_traffic(tokens.T[None].copy(), weights[None], g)
    return topo, slots, slot_e, weights, tokens, np.ascontiguousarray(share[0].T)


@settings(max_examples=60, deadline=None)
@given(_replicated_expert())
def test_nearest_moves_match_rerouting(case):
    topo, slots, slot_e, weights, tok, shr = case
    cost, level = topo.link_cost, topo.level
    g = topo.num_ranks
    rep, cnt = replica_lists(slot_e, weights.shape[0])
    c = cnt[0]
    ranks = rep[0, :c] // slots
    no_levels = np.zeros(0)
    loads = np.empty(c)
    now = expert_routing(ranks.copy(), c, weights[0], tok[0], shr[0], cost, level, True, loads,
                         no_levels)
    move = np.full((slot_e.shape[0], g), np.nan)
    shift = np.full((slot_e.shape[0], g, rep.shape[1]), np.nan)
    token_cost = tok @ cost
    _expert_moves(0, rep, cnt, slots, weights, tok, shr, cost, True, now, token_cost, move, shift,
                  np.empty(rep.shape[1], dtype=np.int64))
    for i in range(c):
        p = rep[0, i]
        assert move[p, ranks[i]] == 0.0
        for target in range(g):
            moved = ranks.copy()
            moved[i] = target
            cost_moved = expert_routing(moved, c, weights[0], tok[0], shr[0], cost, level, True,
                                        loads, no_levels)
            assert np.isclose(move[p, target], cost_moved - now, rtol=1e-9, atol=1e-9)
            assert np.allclose(shift[p, target, :c], loads, rtol=1e-9, atol=1e-12)


def test_source_shares_split_each_expert_over_sources():
    traffic = np.array([[[3.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # [L=1, G=2, E=3]
    tokens, share = source_traffic(traffic, np.ones((1, 3)), 2)
    assert tokens is traffic
    # Expert 1 received nothing: its shares are uniform over the G = 2 sources.
    assert np.array_equal(share, [[[0.75, 0.5, 1.0], [0.25, 0.5, 0.0]]])
