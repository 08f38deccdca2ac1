"""Memory-light GCL loss in plain PyTorch: a `torch.autograd.Function` over row blocks.

Forward sweeps blocks of `chunk` rows of S = s * x @ y^T per field pair and keeps, per
pair, the row log-sum-exps and an online column log-sum-exp; backward recomputes each block
of S and turns it into the block of dS, then accumulates dx and dy with two matrix
products. Nothing of size B x B_R is ever held: the extra memory is two blocks of
chunk x B_R values plus O((B + B_R) * (D + F_L * F_R)) vectors and gradient accumulators.

Formulas (docs/method.md section 1, with direction and normalization folded into
row_w = c_row * w / Z and col_w = c_col * w / Z by `canonicalize`):

    lse_row[i] = log sum_j exp(S[i, j])      (unmasked j < B_R)
    lse_col[j] = log sum_i exp(S[i, j])      (unmasked i < B, j < B)
    L  = sum_p a_p * ( sum_i row_w[i] (lse_row[i] - S[i, i]) + sum_j col_w[j] (lse_col[j] - S[j, j]) )
    dS = a_p * ( row_w[i] P_row[i, j] + col_w[j] P_col[i, j] - (row_w[i] + col_w[i]) [i == j] )
    dx = s * dS @ y,   dy = s * dS^T @ x,   ds = sum(dS * S) / s = sum(x * dx) / s

Blocks are held transposed, as S[I, :]^T of shape [B_R, chunk] (S^T_I = s * y @ x_I^T):
on the 2-core CPU this was written on, MKL ran the three block products of a step
7 to 10% faster in that layout than in [chunk, B_R] (B = 16384, D = 512, chunk = 512,
1 and 2 threads), and a whole forward + backward at B = 8192 about 5% faster.

One exponential per element, not two. The forward shifts each row by its maximum m[i],
E = exp(S - m), and gets the column sums from the same E with one matrix-vector product,
sum_i exp(S[i, j] - K) = (E^T @ exp(m - K))[j] with K the largest m seen so far. The
backward computes P_row = exp(S - lse_row) (the shift is folded into the matrix product as
its bias) and gets P_col = P_row * exp(lse_row[i] - lse_col[j]), a rank-one rescale. Both
shortcuts lose only terms that are negligible as long as the log-sum-exps of a block lie
within a few dozen units of each other (see `_LIMITS`); a column whose forward sum falls
below the floor is recomputed exactly, and a backward block outside the limits takes the
two-exponential path. Both slow paths are exact and tested.

Dtypes: float16 and bfloat16 compute S in float32. On the CPU the inputs are cast to
float32; on CUDA the matrix products read the half inputs and accumulate in float32
(`torch.mm(..., out_dtype=torch.float32)`, when this torch has it), and dS is cast back to
the input dtype for the two gradient products, as flash-attention does with P. Tested here
on the CPU in float64, float32, bfloat16 and float16; the CUDA branch is exercised by the
GPU-marked tests only.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .._validation import GCLInputs, overflow_message

# Elements of one block (chunk x B_R values). 2**23 float32 = 32 MiB: large enough that the dy
# accumulation (a product with inner size `chunk`) stays compute-bound on a CPU, small
# next to the B x B_R matrices the naive loss materialises.
DEFAULT_BLOCK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class _Limits:
    col_floor: float  # forward: a column sum (relative to the running max) below this is recomputed
    pair_gap: float  # backward: fast path needs lse_row[i] - lse_col[j] <= pair_gap
    row_spread: float  # backward: and max - min of lse_row within the block <= row_spread


# float32 keeps normal numbers down to e^-87 and overflows at e^88; float64 at e^-708 / e^709.
# With these limits every term the fast paths drop is below e^-27 (float32) or e^-100
# (float64) relative to the quantity it belongs to, and no intermediate overflows.
_LIMITS = {
    torch.float32: _Limits(col_floor=2.0 ** -60, pair_gap=60.0, row_spread=80.0),
    torch.float64: _Limits(col_floor=2.0 ** -800, pair_gap=600.0, row_spread=650.0),
}


def chunk_rows(n_cols: int, n_rows: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    """Rows per block so that a [rows, n_cols] block holds about `block_elements` values."""
    c = block_elements // max(n_cols, 1)
    if c >= 8:
        c -= c % 8
    return max(1, min(n_rows, c))


@functools.lru_cache(maxsize=None)
def _mixed_mm_supported(device: str, dtype: torch.dtype) -> bool:
    """Whether torch.mm(half, half, out_dtype=float32) runs on this device (CUDA, torch >= 2.8)."""
    try:
        a = torch.zeros(2, 2, dtype=dtype, device=device)
        torch.mm(a, a, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def _operand_dtype(dtype: torch.dtype, acc: torch.dtype, device: torch.device) -> torch.dtype:
    if dtype == acc:
        return acc
    if device.type == "cuda" and _mixed_mm_supported(str(device), dtype):
        return dtype
    return acc


def _mm_into(out, a, b, alpha: float, bias=None):
    """out = bias + alpha * (a @ b) (bias broadcast, may alias out), accumulated in out.dtype."""
    if a.dtype == out.dtype:
        if bias is None:
            torch.addmm(out, a, b, beta=0.0, alpha=alpha, out=out)
        else:
            torch.addmm(bias, a, b, alpha=alpha, out=out)
        return out
    prod = torch.mm(a, b, out_dtype=out.dtype)
    if bias is None:
        return torch.mul(prod, alpha, out=out)
    return torch.add(bias, prod, alpha=alpha, out=out)


def _ds_scale(op: torch.dtype, alpha: Optional[torch.Tensor], gamma: Optional[torch.Tensor]) -> float:
    """The power of two that puts the largest possible |dS| just under 2^14 before a float16
    cast (1.0 for every other operand dtype: bfloat16 has float32's exponent range)."""
    if op != torch.float16:
        return 1.0
    bound = sum(float(t.abs().max()) for t in (alpha, gamma) if t is not None and t.numel())
    if not bound > 0:
        return 1.0
    return 2.0 ** math.floor(math.log2(2.0 ** 14 / bound))


def _block_mask(lhs_groups, rhs_groups, rows: torch.Tensor, cols: torch.Tensor, b: int):
    """M[rows, cols] of docs/method.md section 1 (True = not a negative), or None without groups."""
    if lhs_groups is None and rhs_groups is None:
        return None
    m = torch.zeros(rows.numel(), cols.numel(), dtype=torch.bool, device=rows.device)
    if rhs_groups is not None:
        m |= rhs_groups[rows][:, None] == rhs_groups[cols][None, :]
    if lhs_groups is not None:
        n_lg = lhs_groups.shape[0]  # B <= n_lg <= B_R: columns past it have no query
        same = lhs_groups[rows][:, None] == lhs_groups[cols.clamp(max=n_lg - 1)][None, :]
        m |= same & (cols < n_lg)[None, :]
    m &= rows[:, None] != cols[None, :]
    return m


def _pairs(field_weights: torch.Tensor) -> List[Tuple[int, int]]:
    pos = (field_weights > 0).cpu()
    return [(l, r) for l in range(pos.shape[0]) for r in range(pos.shape[1]) if bool(pos[l, r])]


def _exact_col_lse(xo, yo, s, rows_all, cols, lhs_groups, rhs_groups, b, block_elements, acc):
    """log sum_i exp(S[i, j]) over unmasked i < B for the given columns, two-pass stable."""
    out = torch.empty(cols.numel(), dtype=acc, device=xo.device)
    step = chunk_rows(b, cols.numel(), block_elements)
    for c0 in range(0, cols.numel(), step):
        cj = cols[c0:c0 + step]
        t = torch.empty(b, cj.numel(), dtype=acc, device=xo.device)
        _mm_into(t, xo, yo[cj].T, s)
        mask = _block_mask(lhs_groups, rhs_groups, rows_all, cj, b)
        if mask is not None:
            t.masked_fill_(mask, float("-inf"))
        out[c0:c0 + step] = torch.logsumexp(t, dim=0)
    return out


class ChunkedGCLFunction(torch.autograd.Function):
    """Autograd function behind `chunked_gcl_loss`; the arguments are `GCLInputs` fields."""

    @staticmethod
    def forward(ctx, x, y, logit_scale, row_w, col_w, field_w, lhs_groups, rhs_groups,
                block_elements):
        f_l, b, d = x.shape
        acc = logit_scale.dtype
        dev = x.device
        s = float(logit_scale)
        n_cols = y.shape[1] if row_w is not None else b  # the column term never looks past B
        op = _operand_dtype(x.dtype, acc, dev)
        xo = x.to(op)
        yo = y[:, :n_cols].to(op)
        pairs = _pairs(field_w)
        npairs = len(pairs)
        lim = _LIMITS[acc]

        chunk = chunk_rows(n_cols, b, block_elements)
        buf = torch.empty(n_cols * chunk, dtype=acc, device=dev)
        cols_idx = torch.arange(n_cols, device=dev)
        diag = torch.empty(npairs, b, dtype=acc, device=dev)
        lse_row = torch.empty(npairs, b, dtype=acc, device=dev) if row_w is not None else None
        if col_w is not None:
            col_sum = torch.zeros(npairs, b, dtype=acc, device=dev)
            col_ref = torch.full((npairs,), float("-inf"), dtype=acc, device=dev)

        for i0 in range(0, b, chunk):
            i1 = min(b, i0 + chunk)
            blk = buf[: n_cols * (i1 - i0)].view(n_cols, i1 - i0)  # S[I, :]^T
            mask = _block_mask(lhs_groups, rhs_groups, cols_idx[i0:i1], cols_idx, b)
            for p, (l, r) in enumerate(pairs):
                _mm_into(blk, yo[r], xo[l, i0:i1].T, s)
                diag[p, i0:i1] = blk[i0:i1].diagonal()
                if mask is not None:
                    blk.masked_fill_(mask.T, float("-inf"))
                m = blk.amax(dim=0)  # row maxima of S; finite: the diagonal is never masked
                blk.sub_(m[None, :]).exp_()
                if row_w is not None:
                    lse_row[p, i0:i1] = blk.sum(dim=0).log_().add_(m)
                if col_w is not None:
                    k_new = torch.maximum(col_ref[p], m.max())
                    col_sum[p].mul_(torch.exp(col_ref[p] - k_new))
                    col_sum[p].addmv_(blk[:b], torch.exp(m - k_new))
                    col_ref[p] = k_new
        del buf

        lse_col = None
        if col_w is not None:
            lse_col = col_sum.log() + col_ref[:, None]
            bad = col_sum < lim.col_floor
            if bool(bad.any()):
                rows_all = cols_idx[:b]
                for p, (l, r) in enumerate(pairs):
                    cols = bad[p].nonzero().squeeze(1)
                    if cols.numel():
                        lse_col[p, cols] = _exact_col_lse(
                            xo[l], yo[r], s, rows_all, cols, lhs_groups, rhs_groups, b,
                            block_elements, acc)

        a = field_w[[l for l, _ in pairs], [r for _, r in pairs]] if pairs else field_w.new_zeros(0)
        # Each term is >= 0 exactly (a log-sum-exp over a set that holds the diagonal);
        # the clamp only removes rounding below zero (the column sums take another route).
        loss = logit_scale.new_zeros(())
        if row_w is not None:
            loss = loss + (a[:, None] * (lse_row - diag).clamp_(min=0) * row_w).sum()
        if col_w is not None:
            loss = loss + (a[:, None] * (lse_col - diag).clamp_(min=0) * col_w).sum()
        if not bool(torch.isfinite(loss)):  # stop before the backward works on inf
            raise FloatingPointError(overflow_message(
                GCLInputs(x, y, logit_scale, row_w, col_w, field_w, lhs_groups, rhs_groups), float(loss)))

        ctx.save_for_backward(x, y, logit_scale, row_w, col_w, a, lhs_groups, rhs_groups,
                              lse_row, lse_col)
        ctx.pairs = pairs
        ctx.block_elements = block_elements
        ctx.n_cols = n_cols
        return loss

    @staticmethod
    @once_differentiable  # the saved log-sum-exps are constants: no double backward
    def backward(ctx, grad):
        (x, y, logit_scale, row_w, col_w, a, lhs_groups, rhs_groups, lse_row,
         lse_col) = ctx.saved_tensors
        pairs, n_cols = ctx.pairs, ctx.n_cols
        need_x, need_y, need_s = ctx.needs_input_grad[:3]
        f_l, b, d = x.shape
        f_r = y.shape[0]
        acc = logit_scale.dtype
        dev = x.device
        s = float(logit_scale)
        lim = _LIMITS[acc]
        op = _operand_dtype(x.dtype, acc, dev)
        xo = x.to(op)
        yo = y[:, :n_cols].to(op)
        g = grad.to(acc)

        dx = torch.zeros(f_l, b, d, dtype=acc, device=dev) if (need_x or need_s) else None
        dy = torch.zeros(f_r, y.shape[1], d, dtype=acc, device=dev) if need_y else None
        if not pairs or (dx is None and dy is None):
            return None, None, None, None, None, None, None, None, None

        both = row_w is not None and col_w is not None
        alpha = (a[:, None] * row_w * g) if row_w is not None else None  # [P, B]
        gamma = (a[:, None] * col_w * g) if col_w is not None else None  # [P, B]
        # dS entries are at most max|alpha| + max|gamma| (P <= 1) and ~1/B^2 typically: far below
        # float16's normal range at large B. Scale dS by a power of two before the cast (exact,
        # undone in the products' alpha) so the half products see normal numbers.
        ds_scale = _ds_scale(op, alpha, gamma)
        chunk = chunk_rows(n_cols, b, ctx.block_elements)
        starts = list(range(0, b, chunk))
        buf = torch.empty(n_cols * chunk, dtype=acc, device=dev)
        rbuf = torch.empty(b * chunk, dtype=acc, device=dev) if both else None
        cols_idx = torch.arange(n_cols, device=dev)

        if both:
            # Decide, once and on the host, which (block, pair) may use the one-exp path.
            col_min = lse_col.amin(dim=1).cpu()
            rows_host = lse_row.cpu()
            fast = {}
            for p in range(len(pairs)):
                for i0 in starts:
                    blk_lse = rows_host[p, i0:i0 + chunk]
                    hi, lo = float(blk_lse.max()), float(blk_lse.min())
                    fast[p, i0] = hi - float(col_min[p]) <= lim.pair_gap and hi - lo <= lim.row_spread

        for i0 in starts:
            i1 = min(b, i0 + chunk)
            n = i1 - i0
            blk = buf[: n_cols * n].view(n_cols, n)  # dS[I, :]^T, built in place from S[I, :]^T
            mask = _block_mask(lhs_groups, rhs_groups, cols_idx[i0:i1], cols_idx, b)
            mask_t = mask.T if mask is not None else None
            for p, (l, r) in enumerate(pairs):
                x_blk = xo[l, i0:i1]
                if both:
                    lr = lse_row[p, i0:i1]
                    al = alpha[p, i0:i1]
                    rb = rbuf[: b * n].view(b, n)
                    if fast[p, i0]:
                        _mm_into(blk, yo[r], x_blk.T, s, bias=-lr[None, :])
                        if mask_t is not None:
                            blk.masked_fill_(mask_t, float("-inf"))
                        blk.exp_()  # P_row^T
                        k = lr.max()
                        # P_col * col_w = P_row * exp(lse_row[i] - k) * col_w[j] exp(k - lse_col[j])
                        torch.addcmul(al[None, :], (gamma[p] * torch.exp(k - lse_col[p]))[:, None],
                                      torch.exp(lr - k)[None, :], out=rb)
                        blk[:b].mul_(rb)
                        if n_cols > b:
                            blk[b:].mul_(al[None, :])
                    else:
                        _mm_into(blk, yo[r], x_blk.T, s)
                        if mask_t is not None:
                            blk.masked_fill_(mask_t, float("-inf"))
                        torch.sub(blk[:b], lse_col[p][:, None], out=rb)
                        rb.exp_().mul_(gamma[p][:, None])
                        blk.sub_(lr[None, :]).exp_().mul_(al[None, :])
                        blk[:b].add_(rb)
                    blk[i0:i1].diagonal().sub_(al + gamma[p, i0:i1])
                elif row_w is not None:
                    al = alpha[p, i0:i1]
                    _mm_into(blk, yo[r], x_blk.T, s, bias=-lse_row[p, None, i0:i1])
                    if mask_t is not None:
                        blk.masked_fill_(mask_t, float("-inf"))
                    blk.exp_().mul_(al[None, :])
                    blk[i0:i1].diagonal().sub_(al)
                else:
                    _mm_into(blk, yo[r], x_blk.T, s, bias=-lse_col[p][:, None])
                    if mask_t is not None:
                        blk.masked_fill_(mask_t, float("-inf"))
                    blk.exp_().mul_(gamma[p][:, None])
                    blk[i0:i1].diagonal().sub_(gamma[p, i0:i1])

                ds_blk = blk if op == acc else (blk.mul_(ds_scale) if ds_scale != 1.0 else blk).to(op)
                if dx is not None:
                    dxb = dx[l, i0:i1]
                    _mm_into(dxb, ds_blk.T, yo[r], s / ds_scale, bias=dxb)
                if dy is not None:
                    dyb = dy[r, :n_cols]
                    _mm_into(dyb, ds_blk, x_blk, s / ds_scale, bias=dyb)

        d_scale = None
        if need_s:
            d_scale = (x.to(acc) * dx).sum() / s
        gx = dx.to(x.dtype) if need_x else None
        gy = dy.to(y.dtype) if need_y else None
        return gx, gy, d_scale, None, None, None, None, None, None


def chunked_gcl_loss(inp: GCLInputs, block_elements: Optional[int] = None) -> torch.Tensor:
    """GCL loss over row blocks; never materialises a B x B_R matrix.

    Args:
        inp: canonical inputs from `gcl_kernels._validation.canonicalize`.
        block_elements: size of one [chunk, B_R] block in elements (default
            `DEFAULT_BLOCK_ELEMENTS`); tests pass small values to force ragged blocks.

    Returns:
        0-dim loss in the accumulation dtype (float64 for float64 inputs, else float32),
        differentiable with respect to x, y and the logit scale.

    Example:
        >>> from gcl_kernels._validation import canonicalize
        >>> inp = canonicalize(torch.randn(10, 8), torch.randn(12, 8), 10.0)
        >>> loss = chunked_gcl_loss(inp, block_elements=48)  # blocks of 4 rows
    """
    if block_elements is None:
        block_elements = DEFAULT_BLOCK_ELEMENTS
    if not isinstance(block_elements, int) or block_elements < 1:
        raise ValueError(f"block_elements: expected a positive int, got {block_elements!r}")
    return ChunkedGCLFunction.apply(
        inp.x, inp.y, inp.logit_scale, inp.row_weights, inp.col_weights, inp.field_weights,
        inp.lhs_groups, inp.rhs_groups, block_elements)
