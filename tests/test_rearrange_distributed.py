"""plumb.rearrange.execute_distributed over real gloo process groups (CPU processes).

One spawn per world size runs every scenario in the same group, to keep process start-up (the
slow part) to two launches.
"""

import numpy as np
import pytest
from _rearrange_cases import expert_weights

import plumb
from plumb.errors import InputError
from plumb.rearrange import execute_distributed
from plumb.topology import Topology

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")


def scenarios(world: int):
    """(name, topology, old_phy2log, new_phy2log) run on every rank of a world of ``world``."""
    slots, layers = 3, 2
    num_slots = world * slots
    rng = np.random.default_rng(world)
    experts = num_slots - 2

    def random_layer():
        return rng.permutation(np.concatenate([np.arange(experts), rng.integers(0, experts, 2)]))

    old = np.stack([random_layer() for _ in range(layers)])
    topo = Topology.cluster(nodes=2, gpus_per_node=world // 2)
    # Slot p takes slot p + S's expert: one cycle through every rank, every receive staged.
    rotated = np.roll(old, -slots, axis=1)
    # Every slot takes expert 0 of the old layer: one or two sources feed all slots.
    broadcast = np.repeat(old[:, :1], num_slots, axis=1)
    # Local swaps inside each rank plus a cross-rank cycle in layer 1.
    swaps = old.copy()
    swaps[0] = old[0].reshape(world, slots)[:, [1, 0, 2]].reshape(-1)
    return [
        ("random", topo, old, np.stack([random_layer() for _ in range(layers)])),
        ("cycle", topo, old, rotated),
        ("duplicates", topo, old, broadcast),
        ("swaps", topo, old, swaps),
        ("no-change", topo, old, old),
    ]


def run_scenario(plan, group):
    """Rearrange this rank's shard of tagged weights and check every one of its slots."""
    rank = dist.get_rank(group)
    slots = plan.slots_per_rank
    shard = slice(rank * slots, (rank + 1) * slots)
    weights = [w[:, shard].contiguous() for w in expert_weights(plan.old_phy2log, torch)]
    report = execute_distributed(plan, weights, group=group, max_scratch_bytes=8)
    for got, want in zip(weights, expert_weights(plan.new_phy2log, torch)):
        assert torch.equal(got, want[:, shard]), f"rank {rank}: wrong weights"
    stats = plan.stats
    assert report.bytes_received == stats.bytes_received[rank] // stats.bytes_per_expert * 76
    assert report.bytes_sent == stats.bytes_sent[rank] // stats.bytes_per_expert * 76
    return report


def worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        for name, topo, old, new in scenarios(world):
            plan = plumb.plan_rearrangement(old, new, topo, bytes_per_expert=1)
            report = run_scenario(plan, None)
            if name == "no-change":
                assert report.slots_written == 0 and report.bytes_sent == 0
            if name == "cycle":
                assert report.staged_bytes > 0  # receives into slots that were still being sent
        # A subgroup whose plan ranks 0 and 1 are world ranks 1 and 3: peers are translated.
        members = [1, 3] if world >= 4 else [0, 1]
        subgroup = dist.new_group(members)
        if rank in members:
            old = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
            plan = plumb.plan_rearrangement(old, old[:, ::-1], 2, bytes_per_expert=1)
            run_scenario(plan, subgroup)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_gloo_every_slot_correct(world, tmp_path):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    import torch.multiprocessing as mp

    mp.start_processes(worker, args=(world, str(tmp_path / "init")), nprocs=world,
                       start_method="spawn")


def test_world_size_must_match_plan(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1)
    try:
        plan = plumb.plan_rearrangement([[0, 1]], [[1, 0]], 2, 1)
        with pytest.raises(InputError, match="group has 1 ranks but the plan has G = 2"):
            execute_distributed(plan, torch.zeros(1, 1, 4))
        # A world of one: everything is a local copy, no messages.
        plan = plumb.plan_rearrangement([[0, 1, 2]], [[2, 2, 0]], 1, 1)
        weights = expert_weights(plan.old_phy2log, torch)
        report = execute_distributed(plan, weights)
        assert report.bytes_sent == 0 and report.slots_written == 3
        for got, want in zip(weights, expert_weights(plan.new_phy2log, torch)):
            assert torch.equal(got, want)
    finally:
        dist.destroy_process_group()
