"""Data-parallel training across processes and machines (torchrun).

    torchrun --nproc_per_node 4 $(which gcl-train) --data ... --batch-size 1024 --out runs/x
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_endpoint host:29500 \\
        $(which gcl-train) ...

`--batch-size` is the global batch. Every rank reads the same deterministic stream of
examples (text rows only) and keeps its contiguous slice of each global batch: only its
own images are loaded and only its own rows are encoded. The loss is
`gcl_kernels.GCLLoss(distributed=True)`: embeddings, scores and group ids are gathered
from every rank, with gradients, and each rank computes its share (its rows against all
columns, its columns against all rows); the shares sum to the single-process loss.

Gradients are then summed over ranks with a bucketed all-reduce after backward (the
collective DistributedDataParallel issues), so every replica takes the identical
optimiser step. It is done explicitly rather than through DDP's autograd hooks because
the gradient cache back-propagates each step in several passes and the logit scale's
gradient arises outside the towers' forward, two things DDP's reducer does not support
without unused-parameter bookkeeping that can zero a gradient. Rank 0 alone writes
config, checkpoints, logs and progress; ranks check at start that they run the same
configuration. Backend: NCCL on CUDA, gloo on the CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job (world 1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The rank, world size and local rank torchrun put in the environment (or 0, 1, 0)."""
    def get(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name}: expected an integer in the environment, got {raw!r}") from None

    world = get("WORLD_SIZE", 1)
    rank = get("RANK", 0)
    local = get("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return DistEnv(rank, world, local)


def init_distributed(env: DistEnv, device: torch.device, timeout_minutes: float) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); returns this rank's device.

    On CUDA each rank takes `cuda:LOCAL_RANK`. A no-op for a single process.
    """
    if not env.enabled:
        return device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": device} if device.type == "cuda" else {}))
    if dist.get_world_size() != env.world or dist.get_rank() != env.rank:
        raise RuntimeError(f"process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                           f"the environment says {env.rank} of {env.world}")
    return device


def shutdown(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def all_gather_objects(env: DistEnv, obj: Any) -> List[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    if not env.enabled:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(env: DistEnv, error: Optional[BaseException]) -> None:
    """Raise on every rank when any rank failed a set-up step (instead of leaving the
    others waiting in the next collective); the message names the rank."""
    errors = all_gather_objects(env, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    bad = [(r, e) for r, e in enumerate(errors) if e is not None]
    if bad:
        r, e = bad[0]
        raise RuntimeError(f"rank {r} of {env.world} failed during set-up: {e}")


def check_same_config(env: DistEnv, cfg_json: Dict[str, Any], ignore: Sequence[str] = ()) -> None:
    """Every rank must run the same configuration (ValueError naming the differing options)."""
    if not env.enabled:
        return
    mine = {k: v for k, v in cfg_json.items() if k not in ignore}
    for r, other in enumerate(all_gather_objects(env, mine)):
        if other != mine:
            diff = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
            raise ValueError(f"ranks run different configurations: rank {env.rank} and rank {r} differ in "
                             f"{diff} (e.g. {diff[0]}: {mine.get(diff[0])!r} vs {other.get(diff[0])!r}); "
                             f"start every rank with the same command line")


def all_reduce_sum(env: DistEnv, value: float, device: torch.device) -> float:
    """The sum of a number over ranks."""
    if not env.enabled:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


def all_reduce_gradients(env: DistEnv, params: Iterable[torch.nn.Parameter],
                         bucket_bytes: int = 64 << 20) -> None:
    """Sum every parameter's gradient over ranks, in flat buckets of about `bucket_bytes`.

    A parameter without a gradient on some rank (a rank that held no rows) counts as
    zeros there; one without a gradient on every rank keeps `grad = None`, exactly as in
    a single-process run (AdamW then leaves it alone).
    """
    if not env.enabled:
        return
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not params:
        return
    dev = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=dev)
    dist.all_reduce(has)
    live = [p for p, h in zip(params, has.tolist()) if h]
    for p in live:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: List[torch.Tensor] = []
    size = 0

    def flush():
        nonlocal bucket, size
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        bucket, size = [], 0

    for p in live:
        g = p.grad
        if bucket and (g.dtype != bucket[0].dtype or g.device != bucket[0].device or size >= bucket_bytes):
            flush()
        bucket.append(g)
        size += g.numel() * g.element_size()
    flush()


def broadcast_parameters(env: DistEnv, module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (what DDP does at construction)."""
    if not env.enabled:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def shard_bounds(n: int, env: DistEnv) -> range:
    """The contiguous slice of a global batch of `n` examples that this rank keeps (equal
    slices when n divides evenly; a short last batch is split as evenly as it goes)."""
    base, extra = divmod(n, env.world)
    start = env.rank * base + min(env.rank, extra)
    return range(start, start + base + (env.rank < extra))


__all__ = ["DistEnv", "env_from_torchrun", "init_distributed", "shutdown", "all_gather_objects",
           "broadcast_object", "agree", "check_same_config", "all_reduce_sum", "all_reduce_gradients",
           "broadcast_parameters", "shard_bounds"]
