"""The GCL loss over a batch spread across processes, with negatives gathered from all ranks.

Each rank holds its local slice of the global batch (the global batch is the concatenation
of the ranks' slices in rank order). `gathered_gcl_loss` all-gathers the embeddings *with
gradients* (`torch.distributed.nn.functional.all_gather`), plus the weights and the query
and product group ids, and returns this rank's share of the global loss:

    share_k = c_row/Z * sum_{i in rows of k}    a w[i] row[i]   (its rows against every column)
            + c_col/Z * sum_{j in columns of k} a w[j] col[j]   (its columns against every row)

so that sum_k share_k equals `gcl_loss` on the global batch (docs/method.md section 1):
every query is contrasted with the documents of every rank, every
document with the queries of every rank, and a repeated query or product on another
rank is masked as a false negative. Each rank computes b_k x B_R + b_k x B scores, not
the whole B x B_R matrix.

Both shares are ordinary `gcl_loss` calls, so every implementation (reference, chunked,
Triton) serves: the columns are ordered with this rank's own positives first (its rows'
diagonal stays the diagonal), the other ranks' positives follow as extra columns that
carry their query ids (`extra_lhs_groups`), and the gathered extra negatives come last.
The column share is the row share of the transposed problem (documents as rows, queries
as columns, field weights transposed). Weights are pre-scaled by b_k * c / Z so that the
local "batch" normalisation yields the global one.

Gradients: backward through the all-gather sums every rank's contribution into the owner
of each embedding, so the gradient of sum_k share_k reaches every embedding; summing
parameter gradients over ranks (an all-reduce with SUM, what `gcl_train` does after
backward) then gives the single-process gradient. Ranks may hold different numbers of
rows (e.g. after dropping unusable examples); the slices are padded for the collective.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ._validation import DIRECTIONS, NORMALIZATIONS, accumulation_dtype
from .functional import gcl_loss


def _dist():
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("gathered_gcl_loss: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (torchrun sets the environment)")
    return dist


def _gather_sizes(n: Tuple[int, int], device, group) -> List[Tuple[int, int]]:
    dist = _dist()
    t = torch.tensor(list(n), dtype=torch.int64, device=device)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [(int(o[0]), int(o[1])) for o in out]


def _pad_rows(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if t.shape[dim] == n:
        return t.contiguous()
    shape = list(t.shape)
    shape[dim] = n - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient for this rank's
    slice (reduce-scatter on NCCL; all-reduce and a slice where reduce-scatter is missing,
    as on gloo)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, group) -> torch.Tensor:
        dist = _dist()
        ctx.group = group
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, t, group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        dist = _dist()
        world, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        grad = grad.contiguous()
        n = grad.shape[0] // world
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            out = grad.new_empty((n,) + tuple(grad.shape[1:]))
            dist.reduce_scatter_tensor(out, grad, group=ctx.group)
            return out, None
        dist.all_reduce(grad, group=ctx.group)
        return grad[rank * n:(rank + 1) * n], None


def _gather(t: torch.Tensor, sizes: Sequence[int], dim: int, group, with_grad: bool) -> List[torch.Tensor]:
    """Every rank's `t` (dimension `dim` of length sizes[rank]), as a list in rank order."""
    dist = _dist()
    n = max(max(sizes), 1)
    padded = _pad_rows(t.movedim(dim, 0), n, 0)
    if with_grad:
        parts = list(_AllGatherWithGrad.apply(padded, group).split(n))
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
    return [p[:k].movedim(0, dim) for p, k in zip(parts, sizes)]


def gathered_gcl_loss(
    lhs: torch.Tensor,
    rhs: torch.Tensor,
    logit_scale,
    weights: Optional[torch.Tensor] = None,
    field_weights: Optional[torch.Tensor] = None,
    lhs_groups: Optional[torch.Tensor] = None,
    rhs_groups: Optional[torch.Tensor] = None,
    direction: str = "both",
    normalize: str = "batch",
    impl: str = "auto",
    group=None,
) -> torch.Tensor:
    """This rank's share of the GCL loss over the batch gathered from every rank.

    Arguments are as in `gcl_loss`, for this rank's local slice: lhs [b, D] or
    [F_L, b, D], rhs [b_r, D] or [F_R, b_r, D] (rows past b are this rank's extra
    negatives), weights [b], lhs_groups [b], rhs_groups [b_r]. Group ids must mean the
    same thing on every rank (e.g. ids of the query and product strings, not positions).
    `group` is the process group (default: the world).

    Returns:
        A 0-dim loss; the sum over ranks equals `gcl_loss` on the global batch (the
        ranks' slices concatenated in rank order, extra negatives after all positives).

    Example:
        >>> # in each of N processes started by torchrun, after init_process_group:
        >>> share = gathered_gcl_loss(q_local, d_local, 20.0, weights=w_local)  # doctest: +SKIP
        >>> share.backward()  # then all-reduce (SUM) the parameter gradients  # doctest: +SKIP
    """
    dist = _dist()
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
    if not isinstance(lhs, torch.Tensor) or not isinstance(rhs, torch.Tensor):
        raise ValueError("lhs, rhs: expected tensors (see gcl_loss)")
    x = lhs if lhs.dim() == 3 else lhs.unsqueeze(0)
    y = rhs if rhs.dim() == 3 else rhs.unsqueeze(0)
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"lhs, rhs: expected [B, D] or [F, B, D], got {tuple(lhs.shape)} and {tuple(rhs.shape)}")
    b, b_r = x.shape[1], y.shape[1]
    if b_r < b:
        raise ValueError(f"rhs: expected B_R >= B (rows past B are extra negatives), got B_R={b_r} < B={b}")
    rank = dist.get_rank(group)
    dev = x.device
    acc = accumulation_dtype(x.dtype)
    sizes = _gather_sizes((b, b_r - b), dev, group)
    pos = [s[0] for s in sizes]
    ext = [s[1] for s in sizes]
    total_b = sum(pos)
    if total_b == 0:
        raise ValueError("lhs: the global batch is empty on every rank")

    w = torch.ones(b, dtype=acc, device=dev) if weights is None else weights.detach().to(dev, acc)
    if tuple(w.shape) != (b,):
        raise ValueError(f"weights: expected shape [B]=[{b}], got {tuple(w.shape)}")
    w_all = torch.cat(_gather(w, pos, 0, group, with_grad=False))
    if normalize == "batch":
        z = float(total_b)
    else:
        z = float(w_all.sum())
        if not z > 0:
            raise ValueError("weights: normalize='weights' needs weights with a positive sum over all ranks, got 0")
    c_row, c_col = {"both": (0.5, 0.5), "lhs_to_rhs": (1.0, 0.0), "rhs_to_lhs": (0.0, 1.0)}[direction]
    a = None if field_weights is None else torch.as_tensor(field_weights)

    def others_first_local(parts: List[torch.Tensor], dim: int) -> torch.Tensor:
        return torch.cat([parts[rank]] + [p for k, p in enumerate(parts) if k != rank], dim=dim)

    lg_parts = rg_pos_parts = None
    if lhs_groups is not None:
        lg_parts = _gather(lhs_groups.to(dev, torch.int64), pos, 0, group, with_grad=False)
    if rhs_groups is not None:
        rg = rhs_groups.to(dev, torch.int64)
        rg_pos_parts = _gather(rg[:b], pos, 0, group, with_grad=False)
        rg_ext = torch.cat(_gather(rg[b:], ext, 0, group, with_grad=False))

    # A rank with no rows of its own still joins every collective (and the gathers' backward).
    share = x.new_zeros((), dtype=acc)

    if c_row:
        y_pos = others_first_local(_gather(y[:, :b], pos, 1, group, with_grad=True), 1)
        y_ext = _gather(y[:, b:], ext, 1, group, with_grad=True)
        cols = torch.cat([y_pos] + y_ext, dim=1)
        if b:
            kw = {}
            if lg_parts is not None:
                kw["lhs_groups"] = lg_parts[rank]
                kw["extra_lhs_groups"] = torch.cat([p for k, p in enumerate(lg_parts) if k != rank]) \
                    if len(lg_parts) > 1 else lg_parts[rank][:0]
            if rg_pos_parts is not None:
                kw["rhs_groups"] = torch.cat([others_first_local(rg_pos_parts, 0), rg_ext])
            share = share + gcl_loss(x, cols, logit_scale, weights=w * (b * c_row / z), field_weights=a,
                                     direction="lhs_to_rhs", normalize="batch", impl=impl, **kw)
        else:
            share = share + 0.0 * cols.sum()  # keeps this rank in the gather's backward
    if c_col:
        rows_all = others_first_local(_gather(x, pos, 1, group, with_grad=True), 1)
        if b:
            kw = {}
            if rg_pos_parts is not None:  # documents are the rows now: products are their "queries"
                kw["lhs_groups"] = rg_pos_parts[rank]
                kw["extra_lhs_groups"] = torch.cat([p for k, p in enumerate(rg_pos_parts) if k != rank]) \
                    if len(rg_pos_parts) > 1 else rg_pos_parts[rank][:0]
            if lg_parts is not None:
                kw["rhs_groups"] = others_first_local(lg_parts, 0)
            share = share + gcl_loss(y[:, :b], rows_all, logit_scale, weights=w * (b * c_col / z),
                                     field_weights=None if a is None else a.T, direction="lhs_to_rhs",
                                     normalize="batch", impl=impl, **kw)
        else:
            share = share + 0.0 * rows_all.sum()
    return share


__all__ = ["gathered_gcl_loss"]
