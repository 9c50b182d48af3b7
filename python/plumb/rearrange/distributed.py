"""torch.distributed executor: every rank rearranges its own shard of the expert weights.

Every rank builds the same RearrangementPlan (it is deterministic) and calls
``execute_distributed`` with its [L, S, ...] shard. Layer by layer, each rank posts one
``batch_isend_irecv`` with its sends (read straight from the old slots) and its receives, waits,
then performs its local copies (cycle-safe, see ``plumb.rearrange.inplace``), then moves staged
receives into place. A receive lands directly in its destination slot unless that slot's old
contents are still read by a send or a local copy of the same layer; then it is staged in a
receive buffer of at most one layer's shard (S slots per tensor), allocated on first need.
Sender and receiver post each pair's messages in the same order (plan order, then tensor
order), which is how point-to-point messages are matched.
"""

from __future__ import annotations

from ..errors import InputError
from .inplace import (DEFAULT_MAX_SCRATCH_BYTES, ExecutionReport, Scratch, as_weight_list,
                      copy_slots, layer_bounds, slot_bytes)
from .plan import RearrangementPlan
from .routing import DST_RANK, DST_SLOT, SRC_RANK, SRC_SLOT


def execute_distributed(plan: RearrangementPlan, weights, group=None, *,
                        max_scratch_bytes: int = DEFAULT_MAX_SCRATCH_BYTES) -> ExecutionReport:
    """Rearrange this rank's expert weights so that its local slot q of layer l holds expert
    ``plan.new_phy2log[l, rank * S + q]``. Collective: every rank of ``group`` must call it
    with the same plan.

    Args:
        plan: from ``plumb.plan_rearrangement``; plan rank r is rank r of ``group``, whose
            size must be G.
        weights: a torch.Tensor [L, S, ...] or a sequence of them (e.g. w13 and w2): this
            rank's slots, holding ``plan.old_phy2log[l, rank * S + q]`` on entry; contiguous,
            all on the device the process group communicates from (CPU for gloo, the current
            CUDA device for NCCL).
        group: the torch.distributed process group (default: the world group).
        max_scratch_bytes: bound on the buffer that rotates local cycles (see execute_inplace).
            Receive staging is separate and bounded by one layer's shard.

    With NCCL, as for any ``batch_isend_irecv``, the current CUDA device must be set, and if
    this is the group's first collective every rank must take part (true here: all call it).
    Returns this rank's ExecutionReport.
    """
    import torch
    import torch.distributed as dist

    world = dist.get_world_size(group)
    if world != plan.num_ranks:
        raise InputError(f"the process group has {world} ranks but the plan has G = "
                         f"{plan.num_ranks}")
    rank = dist.get_rank(group)
    slots = plan.slots_per_rank
    views = as_weight_list(weights, plan.num_layers, slots, "weights")
    if not all(view.stride(2) == 1 or view.shape[2] <= 1 for view in views):
        raise InputError("weights: each slot must be contiguous to be sent point to point")
    scratch = Scratch(views, max_scratch_bytes)
    per_slot = slot_bytes(views)
    peers = [dist.get_global_rank(group, r) if group is not None else r for r in range(world)]

    first = rank * slots
    transfers, local = plan.transfers, plan.local_copies
    sends = transfers[transfers[:, SRC_RANK] == rank]
    recvs = transfers[transfers[:, DST_RANK] == rank]
    local = local[local[:, DST_RANK] == rank]
    send_bounds, recv_bounds, local_bounds = (layer_bounds(t, plan.num_layers)
                                              for t in (sends, recvs, local))
    buffers = None
    report = ExecutionReport()
    with torch.no_grad():  # weights are often Parameters; the copies are not part of a graph
        for layer in range(plan.num_layers):
            layer_sends = sends[send_bounds[layer]:send_bounds[layer + 1]]
            layer_recvs = recvs[recv_bounds[layer]:recv_bounds[layer + 1]]
            layer_local = local[local_bounds[layer]:local_bounds[layer + 1]]
            still_read = set((layer_sends[:, SRC_SLOT] - first).tolist())
            still_read.update((layer_local[:, SRC_SLOT] - first).tolist())
            ops, staged = [], []
            for src_slot, dst_rank in zip((layer_sends[:, SRC_SLOT] - first).tolist(),
                                          layer_sends[:, DST_RANK].tolist()):
                ops += [dist.P2POp(dist.isend, view[layer, src_slot], peers[dst_rank], group)
                        for view in views]
            for dst_slot, src_rank in zip((layer_recvs[:, DST_SLOT] - first).tolist(),
                                          layer_recvs[:, SRC_RANK].tolist()):
                if dst_slot in still_read:
                    if buffers is None:
                        buffers = [torch.empty((slots, view.shape[2]), dtype=view.dtype,
                                               device=view.device) for view in views]
                    targets = [buffer[len(staged)] for buffer in buffers]
                    staged.append(dst_slot)
                else:
                    targets = [view[layer, dst_slot] for view in views]
                ops += [dist.P2POp(dist.irecv, target, peers[src_rank], group)
                        for target in targets]
            if ops:
                for work in dist.batch_isend_irecv(ops):
                    work.wait()
            # The sends have completed: old contents may now be overwritten.
            if len(layer_local):
                report += copy_slots([view[layer] for view in views],
                                     (layer_local[:, DST_SLOT] - first).tolist(),
                                     (layer_local[:, SRC_SLOT] - first).tolist(), scratch)
            for view, buffer in zip(views, buffers or ()):
                for i, dst_slot in enumerate(staged):
                    view[layer, dst_slot].copy_(buffer[i])
            report += ExecutionReport(slots_written=len(layer_recvs),
                                      bytes_written=len(layer_recvs) * per_slot,
                                      bytes_sent=len(layer_sends) * per_slot,
                                      bytes_received=len(layer_recvs) * per_slot,
                                      staged_bytes=len(staged) * per_slot)
    return report
