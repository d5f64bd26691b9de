"""torch.distributed for both trainers, started by `torchrun`: one process per GPU (or per CPU slot with gloo).

The rank comes from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE), read when a run starts, never at
import (yolov5 reads it at import, which makes its modules hard to reuse). Without those variables every
helper here is a no-op and a run is the plain single-process one.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError

# Set once this process joins a process group: such a process must end through exit_rank() (see there).
_joined = False


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and saves."""
        return self.rank == 0


def context_from_env() -> DistContext:
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return DistContext(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)), world_size=world)


def setup(ctx: DistContext, device: str) -> torch.device:
    """Join the process group and pick this rank's device: cuda:LOCAL_RANK with NCCL, or the CPU with gloo."""
    if not ctx.enabled:
        raise ValueError("setup() is for distributed runs")
    cpu = device.lower() == "cpu" or not torch.cuda.is_available()
    if not cpu:
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA devices: "
                            f"--nproc_per_node must not exceed the GPUs of the node")
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if cpu else "nccl", timeout=datetime.timedelta(minutes=30))
    global _joined
    _joined = True
    return torch.device("cpu") if cpu else torch.device("cuda", ctx.local_rank)


def wrap(module: nn.Module, ctx: DistContext, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` (its gradients are averaged over the ranks), or `module` itself."""
    if not ctx.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, output_device=ids[0] if ids else None)


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's `value` on every rank (a flag, a path): so that every rank stops, or saves, together."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def summed(counts: dict[str, int], ctx: DistContext, device: torch.device) -> dict[str, int]:
    """Each count summed over the ranks (a collective: every rank calls it, with the same keys)."""
    if not ctx.enabled:
        return dict(counts)
    total = torch.tensor(list(counts.values()), dtype=torch.long, device=device)
    dist.all_reduce(total)
    return dict(zip(counts, total.tolist()))


def leave(ctx: DistContext, *, finished: bool) -> None:
    """Leave the process group at the end of a run.

    After a finished run every rank first waits for the others (rank 0 validates and saves after the last epoch
    while the others are done), then the group is destroyed. After a failure nobody waits, since the peers may
    be gone, and the group is not destroyed: a collective teardown could hang, and torchrun ends the other
    ranks once this one exits non-zero (as torchtitan does). The process itself must then end through
    exit_rank().
    """
    if not (ctx.enabled and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
        dist.destroy_process_group()


def exit_rank(code: int) -> NoReturn:
    """End this process with `code`; a process that joined a process group skips the interpreter's teardown.

    Why: DistributedDataParallel keeps its process group alive from C++ after the wrapper is deleted and the
    group destroyed (torch 2.14: the gloo threads `pt_gloo_runloop` and `gloo_tcp_loop` outlive
    destroy_process_group() and gc.collect() whenever a DDP wrapper was built). Those threads are then torn down
    at interpreter exit, and on the CPU that sometimes aborts the finished rank with SIGABRT ("terminate called
    without an active exception", torch PR #179291): a run whose checkpoints are all saved exits -6 and
    torchrun reports it failed. Every file this package writes is closed before its command returns, so
    nothing is lost by leaving through os._exit once the logs and streams are flushed.
    """
    if not _joined:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more to save
            pass
    os._exit(code)


def per_rank_batch(batch_size: int, ctx: DistContext) -> int:
    """--batch-size is the global batch, as in yolov5: each rank takes its share."""
    if batch_size % ctx.world_size:
        raise UserError(f"--batch-size {batch_size} is not a multiple of the {ctx.world_size} processes")
    return batch_size // ctx.world_size


def oom_message(batch_size: int, ctx: Optional[DistContext] = None) -> str:
    per = f" ({batch_size // ctx.world_size} per GPU)" if ctx is not None and ctx.enabled else ""
    return (f"CUDA out of memory at --batch-size {batch_size}{per}: try --batch-size {max(1, batch_size // 2)} "
            f"(or a smaller --imgsz)")
