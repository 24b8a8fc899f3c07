"""torchrun support: one process per device, DistributedDataParallel, rank 0 alone writes.

`torchrun --nproc_per_node=N -m prostate_vq train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
everything here is a no-op, so the single-process path has no distributed code in it. See docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prostate_vq.errors import UserInputError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the one process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device, bool]:
    """Join the process group torchrun prepared: NCCL on GPU (one device per local rank), gloo on CPU.

    Returns (context, this rank's device, whether this call created the group: its caller destroys it)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(), device, False
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserInputError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node: "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(minutes=30), device_id=device if backend == "nccl" else None
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend), device, created


@contextlib.contextmanager
def process_group(device: torch.device):
    """The one place a run joins torchrun's process group: yields (context, this rank's device). Nested uses
    join the group the outer one created (train + ReFiT stages share it); only the creator destroys it, with
    a final barrier unless the block failed (after an error the other ranks may never reach one)."""
    ctx, device, created = init_distributed(device)
    ok = False
    try:
        yield ctx, device
        ok = True
    finally:
        if created:
            cleanup(ctx, barrier=ok)


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device, find_unused: bool = False):
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Not actionable here: the 1-channel input conv's weight grad has an ambiguous stride on its size-1 dim.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # broadcast_buffers=False: quantizers keep their EMA/codebook buffers in sync themselves
    # (all-reduced statistics), so DDP must not overwrite ranks 1.. with rank 0 every step.
    # (torch 2.13 calls it deprecated but recommends it until `init_sync_buffers` exists.)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(
            model, device_ids=ids, broadcast_buffers=False, gradient_as_bucket_view=True, find_unused_parameters=find_unused
        )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def state_fingerprint(module: torch.nn.Module, ctx: DistContext) -> dict[str, list[list[float]]]:
    """Per-tensor [sum, sum of squares] of every parameter and buffer, one pair per rank:
    equal rows mean the ranks hold identical weights and codebook statistics."""
    rows = [(name, t.detach().double()) for name, t in module.state_dict().items() if torch.is_tensor(t) and t.numel()]
    device = rows[0][1].device if rows else torch.device("cpu")
    local = torch.stack([torch.stack([t.sum(), t.pow(2).sum()]) for _, t in rows]).to(device)
    gathered = [torch.zeros_like(local) for _ in range(ctx.world_size)] if ctx.enabled else [local]
    if ctx.enabled:
        dist.all_gather(gathered, local)
    return {name: [g[i].tolist() for g in gathered] for i, (name, _) in enumerate(rows)}


def cleanup(ctx: DistContext, barrier: bool = True) -> None:
    if ctx.enabled and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
