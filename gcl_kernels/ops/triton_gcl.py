"""Fused Triton kernels for the GCL loss (docs/method.md section 1): forward and backward.

No kernel ever holds a B x B_R similarity matrix. The forward and the v1 backward compute
every F_L x F_R field pair from one *stacked* tile: the lhs tile is F_LP row blocks of BM
rows (one per lhs field, F_LP = F_L rounded up to a power of two, padding fields masked)
and the rhs tile is F_RP column blocks of BN columns, so one `tl.dot` of
[F_LP*BM, BK] x [BK, F_RP*BN] produces the scores of all pairs at once. Per-pair
statistics are read from the tile by reshaping it to [F_LP*BM, F_RP, BN] (rows) or
[F_LP, BM, F_RP*BN] (columns).

Kernels (all accumulate in float32; scores are kept in log2 units, S2 = S * log2(e)):
  1. `_gcl_fwd_stats_kernel`, grid G x C: program (g, c) sweeps the rows of row group g
     against the columns of column group c ONCE and produces both partial log-sum-exps:
     rows online in registers (written once per program to rowpart[c]), columns merged
     tile by tile into colpart[g] (the program owns that slice, so no atomics).
  2. `_gcl_fwd_merge_kernel`: reduces the C row partials and G column partials, computes
     the diagonal <x_i, y_i> by a D loop, writes the three per-pair vectors the backward
     needs (row bias, column bias, diagonal coefficient) and one loss partial per program.
  3. The backward, chosen by GCL_TRITON_BACKWARD:
     - "gemm" (default) and "gemm_cols": `triton_gemm_backward.py`. Per block of rows a
       Triton GEMM writes dS (masks, statistics and weights in its epilogue) and cuBLAS
       forms dx = s dS Y and dy = s dS^T X: S is recomputed once, 8 B B_R D flop units in
       all (gemm_cols: dy from a second sweep over column blocks, 10 units, less memory).
     - "split" (v1): `_gcl_bwd_dx_kernel` (row block stationary) and `_gcl_bwd_dy_kernel`
       (column block stationary, on the transposed tile) recompute S tile by tile and
       accumulate dS @ y (dS^T @ x) for one chunk of D_OUT output columns: 14 / 18 / 22
       units at D = 512 / 768 / 1024. Kept selectable until a GPU says which is faster.
     - "fused" (v1): the dx kernel with FUSE_DY also adds dS^T @ x into a float32 dy buffer
       by atomics (dy's summation order varies from run to run).
Memory beyond inputs and gradients: (G + C) * P * B floats of forward partials (G, C <= 32,
16), 3 * P * B floats of statistics; gemm adds one block of dS (a byte budget, default
128 MiB) and a float32 [F_R, B_R, D] dy accumulator, gemm_cols only the dS block;
P = F_L * F_R. docs/triton_kernel.md gives the reasons and the flop counts.

lhs_groups may be longer than B (B <= L <= B_R, gcl_loss's extra_lhs_groups): the lhs-group
mask then covers every column j < L (the runtime length B_LG in the kernels).

Differences from `reference_gcl_loss`:
  - scores are computed in float32 from the input dtype; on the GPU bf16/fp16 tiles go to
    the tensor cores as they are, and float32 inputs use `input_precision` =
    GCL_TRITON_FP32_PRECISION (default "ieee": exact float32 products, no tf32 rounding;
    "tf32x3" and "tf32" are faster and less exact);
  - dS is rounded to the input dtype before the gradient products (as flash-attention does
    with P), as dS * 2^k with 2^k putting its largest possible entry near 2^14, so that fp16
    keeps it (unscaled, dS ~ w / (B B_R) is below fp16's subnormals at large B); 2^-k is
    undone exactly. The interpreter rounds the same way (then multiplies in float32);
  - exp2/log2 are the hardware approximations (no libdevice);
  - float64 is not served (use impl="chunked" or "reference").

Determinism: gemm, gemm_cols and split use no atomics; for fixed configs two runs agree
bit for bit (tested here under the interpreter; the GPU test checks it compiled). With
autotuning the configs are picked per process, so across processes results are
bit-identical only with GCL_TRITON_AUTOTUNE=0 (or the same picks). fused is not.

Tested where: under the Triton 3.8 interpreter (TRITON_INTERPRET=1) on a CPU, float32
against the float64 reference (every backward, field layout, group mask, direction and
normalisation, ragged shapes, several dS blocks, both tile-load paths) and bf16 / fp16 at
small shapes with the GPU's dS rounding; built offline for sm_90 with the compilers and
ptxas of Triton 3.8 (in CI) and Triton 3.6 (the GPU machine's version, every config,
benchmarks/build_sm90.py, with the runtime's divisibility specialisation). Never run on a
GPU: no GPU was available. `benchmarks/gpu_first_call.sh` runs the GPU tests, a scale check
and the benchmark in one device call; until it has run, no GPU speed or accuracy figure is
claimed here.
"""
from __future__ import annotations

import os
import warnings

import torch
import triton
import triton.language as tl

from .._validation import GCLInputs

# Block pointers keep tile addresses out of registers (see _tile_scores). Triton 3.8 calls
# them deprecated in favour of tensor descriptors, which need 16-byte aligned rows (D % 8
# for bf16); block pointers serve any D, run under the interpreter, and exist in the
# Triton 3.6 the GPU machine has.
warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated", category=UserWarning)

# Read once at import: triton.jit picks the interpreter or the compiler at decoration time.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)
MAX_FIELDS = 4
# The kernels loop over D, so this is a tested-range guard, not a hardware limit: above it
# the per-tile K loop and the D_OUT chunking have never been exercised.
MAX_D = 8192
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_FP32_PRECISIONS = ("ieee", "tf32x3", "tf32")

# Target number of row groups (G) and column groups (C) of the forward sweep: G * C programs,
# (G + C) * P * B floats of partials. Tests lower them to exercise the in-program merges.
_FWD_ROW_GROUPS = 32
_FWD_COL_GROUPS = 16
# Tiles used under the interpreter (one config: autotune with several fails there). Small
# enough that tiny test shapes still span several tiles, D chunks and D_OUT chunks.
_INTERPRET_TILES = {"TILE": 16, "TILE_MULTI": 32, "BK": 16, "D_OUT": 16}
# Masked (or padded) scores, in log2 units: finite, so that 2^(_MASKED - finite) is exactly 0,
# dS * S stays 0 there (0 * -inf would be NaN) and no -inf guard is needed anywhere.
_MASKED = tl.constexpr(-1.0e30)


# --------------------------------------------------------------------------------------
# Tile helpers (inlined into the kernels)
# --------------------------------------------------------------------------------------
@triton.jit
def _tile_scores(
    x_ptr,  # [F_L, B, D] lhs embeddings (contiguous)
    y_ptr,  # [F_R, B_R, D] rhs embeddings (contiguous)
    row0, col0,  # first row (of every lhs field) and first column (of every rhs field)
    B, B_R, D, stride_xf, stride_yf,  # stride_xf = B * D, stride_yf = B_R * D (host-computed)
    F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr, CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
    TRANSPOSED: tl.constexpr,
):
    # dot[(l, i), (r, j)] = <x[l, row0 + i, :], y[r, col0 + j, :]>, float32 accumulation,
    # loop over D; [TILE_M, TILE_N], or its transpose [TILE_N, TILE_M] if TRANSPOSED.
    # Block pointers: padding fields, the ragged tail and k >= D load as 0, and the
    # addresses are not held per element in registers (pointer tensors cost ~150 of them).
    xb = tl.make_block_ptr(x_ptr, (F_L, B, D), (stride_xf, D, 1), (0, row0, 0), (F_LP, BM, BK), (2, 1, 0))
    yb = tl.make_block_ptr(y_ptr, (F_R, B_R, D), (stride_yf, D, 1), (0, col0, 0), (F_RP, BN, BK), (2, 1, 0))
    if TRANSPOSED:
        acc = tl.zeros((TILE_N, TILE_M), dtype=tl.float32)
    else:
        acc = tl.zeros((TILE_M, TILE_N), dtype=tl.float32)
    for _ in range(0, D, BK):
        xt = tl.reshape(tl.load(xb, boundary_check=(0, 1, 2), padding_option="zero"), (TILE_M, BK))
        yt = tl.reshape(tl.load(yb, boundary_check=(0, 1, 2), padding_option="zero"), (TILE_N, BK))
        if CAST_F32:
            # the interpreter's bf16/fp16 dot is wrong; the GPU keeps 16-bit tensor-core inputs
            xt = xt.to(tl.float32)
            yt = yt.to(tl.float32)
        if TRANSPOSED:
            acc = tl.dot(yt, tl.trans(xt), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(xt, tl.trans(yt), acc, input_precision=PRECISION)
        xb = tl.advance(xb, (0, 0, BK))
        yb = tl.advance(yb, (0, 0, BK))
    return acc


@triton.jit
def _masked_scores(
    dot,     # [TILE_M, TILE_N] float32 raw dot products <x_i, y_j>
    scale2,  # s * log2(e)
    lg_ptr,  # [B_LG] int64 lhs group ids (read only if HAS_LG); B <= B_LG <= B_R
    rg_ptr,  # [B_R] int64 rhs group ids (read only if HAS_RG)
    i_m, row_ok, j_n, col_ok, B, B_R, B_LG,
    HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
):
    # S2[i, j] = s * log2(e) * <x_i, y_j>, or _MASKED where (i, j) is padding or
    # M[i, j] = (i != j) and ((j < B_LG and lg[i] == lg[j]) or rg[i] == rg[j]).
    # B_LG is the length of lhs_groups: B, or more when the first extra columns (e.g. pairs
    # gathered from other ranks) carry query ids of their own (gcl_loss's extra_lhs_groups).
    # Padding costs one broadcast add (no [TILE_M, TILE_N] predicate); _MASKED is finite, so
    # 2^(S2 - anything finite) is exactly 0 and S2 * 0 is 0 (with -inf it would be NaN).
    pen_m = tl.where(row_ok, 0.0, _MASKED)
    pen_n = tl.where(col_ok, 0.0, _MASKED)
    s2 = dot * scale2 + (pen_m[:, None] + pen_n[None, :])
    if HAS_LG:
        lg_i = tl.load(lg_ptr + i_m, mask=i_m < B, other=0)
        lg_j = tl.load(lg_ptr + j_n, mask=j_n < B_LG, other=0)
        hit = (lg_i[:, None] == lg_j[None, :]) & (j_n < B_LG)[None, :]
        s2 = tl.where(hit & (i_m[:, None] != j_n[None, :]), _MASKED, s2)
    if HAS_RG:
        rg_i = tl.load(rg_ptr + i_m, mask=i_m < B, other=0)
        rg_j = tl.load(rg_ptr + j_n, mask=j_n < B_R, other=0)
        hit = rg_i[:, None] == rg_j[None, :]
        s2 = tl.where(hit & (i_m[:, None] != j_n[None, :]), _MASKED, s2)
    return s2


@triton.jit
def _rows_max(s, TILE_M: tl.constexpr, F_RP: tl.constexpr, BN: tl.constexpr):
    # [TILE_M, F_RP * BN] -> [TILE_M, F_RP]: max over each rhs field's BN columns
    if F_RP == 1:
        out = tl.max(s, axis=1)[:, None]
    else:
        out = tl.max(tl.reshape(s, (TILE_M, F_RP, BN)), axis=2)
    return out


@triton.jit
def _rows_sum(s, TILE_M: tl.constexpr, F_RP: tl.constexpr, BN: tl.constexpr):
    if F_RP == 1:
        out = tl.sum(s, axis=1)[:, None]
    else:
        out = tl.sum(tl.reshape(s, (TILE_M, F_RP, BN)), axis=2)
    return out


@triton.jit
def _cols_max(s, TILE_N: tl.constexpr, F_LP: tl.constexpr, BM: tl.constexpr):
    # [F_LP * BM, TILE_N] -> [F_LP, TILE_N]: max over each lhs field's BM rows
    if F_LP == 1:
        out = tl.max(s, axis=0)[None, :]
    else:
        out = tl.max(tl.reshape(s, (F_LP, BM, TILE_N)), axis=1)
    return out


@triton.jit
def _cols_sum(s, TILE_N: tl.constexpr, F_LP: tl.constexpr, BM: tl.constexpr):
    if F_LP == 1:
        out = tl.sum(s, axis=0)[None, :]
    else:
        out = tl.sum(tl.reshape(s, (F_LP, BM, TILE_N)), axis=1)
    return out


@triton.jit
def _expand_rows(v, TILE_M: tl.constexpr, TILE_N: tl.constexpr, F_RP: tl.constexpr, BN: tl.constexpr):
    # [TILE_M, F_RP] -> [TILE_M, F_RP * BN]: value of pair (l_m, r_n) at every column
    if F_RP == 1:
        out = tl.broadcast_to(v, (TILE_M, TILE_N))
    else:
        out = tl.reshape(tl.broadcast_to(v[:, :, None], (TILE_M, F_RP, BN)), (TILE_M, TILE_N))
    return out


@triton.jit
def _expand_cols(v, TILE_M: tl.constexpr, TILE_N: tl.constexpr, F_LP: tl.constexpr, BM: tl.constexpr):
    # [F_LP, TILE_N] -> [F_LP * BM, TILE_N]
    if F_LP == 1:
        out = tl.broadcast_to(v, (TILE_M, TILE_N))
    else:
        out = tl.reshape(tl.broadcast_to(v[:, None, :], (F_LP, BM, TILE_N)), (TILE_M, TILE_N))
    return out


@triton.jit
def _lse2_merge(a, b):
    # log2(2^a + 2^b), exact for -inf operands
    m = tl.maximum(a, b)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    return m_safe + tl.log2(tl.exp2(a - m_safe) + tl.exp2(b - m_safe))


@triton.jit
def _load_row_stat(
    ptr,  # [P, B] float32 per-pair statistic
    l_m, i_m, row_ok, F_R: tl.constexpr, F_RP: tl.constexpr, B, other,
):
    # -> [TILE_M, F_RP]: stat[l_m * F_R + r, i_m]
    r = tl.arange(0, F_RP)
    offs = (l_m[:, None] * F_R + r[None, :]).to(tl.int64) * B + i_m[:, None]
    return tl.load(ptr + offs, mask=row_ok[:, None] & (r < F_R)[None, :], other=other)


@triton.jit
def _load_col_stat(
    ptr,  # [P, B] float32 per-pair statistic (columns j < B only)
    r_n, j_n, col_ok, F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, B, other,
):
    # -> [F_LP, TILE_N]: stat[l * F_R + r_n, j_n]
    l = tl.arange(0, F_LP)
    offs = (l[:, None] * F_R + r_n[None, :]).to(tl.int64) * B + j_n[None, :]
    ok = (l < F_L)[:, None] & (col_ok & (j_n < B))[None, :]
    return tl.load(ptr + offs, mask=ok, other=other)


@triton.jit
def _dscores(
    s2, rbias, cbias, dcoef, i_m, j_n,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
):
    # dS / g = a*rw_i*P_row + a*cw_j*P_col - [i == j] * a*(rw_i + cw_i), with the weights
    # folded into the exponent: a*rw_i*P_row = 2^(S2 - (lse2_row - log2(a*rw_i))) = 2^(S2 - rbias).
    # Masked or padded entries have S2 = _MASKED (or bias = +inf) and get exactly 0.
    ds = tl.zeros((TILE_M, TILE_N), dtype=tl.float32)
    if HAS_ROW:
        ds += tl.exp2(s2 - _expand_rows(rbias, TILE_M, TILE_N, F_RP, BN))
    if HAS_COL:
        ds += tl.exp2(s2 - _expand_cols(cbias, TILE_M, TILE_N, F_LP, BM))
    on_diag = i_m[:, None] == j_n[None, :]
    ds -= tl.where(on_diag, _expand_rows(dcoef, TILE_M, TILE_N, F_RP, BN), 0.0)
    return ds


@triton.jit
def _masked_scores_t(
    dot_t,   # [TILE_N, TILE_M] float32 raw dot products, transposed: dot_t[n, m] = <x_m, y_n>
    scale2, lg_ptr, rg_ptr, i_m, row_ok, j_n, col_ok, B, B_R, B_LG,
    HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
):
    # the transpose of _masked_scores (same masking rules)
    pen_m = tl.where(row_ok, 0.0, _MASKED)
    pen_n = tl.where(col_ok, 0.0, _MASKED)
    s2 = dot_t * scale2 + (pen_n[:, None] + pen_m[None, :])
    if HAS_LG:
        lg_i = tl.load(lg_ptr + i_m, mask=i_m < B, other=0)
        lg_j = tl.load(lg_ptr + j_n, mask=j_n < B_LG, other=0)
        hit = (lg_j[:, None] == lg_i[None, :]) & (j_n < B_LG)[:, None]
        s2 = tl.where(hit & (j_n[:, None] != i_m[None, :]), _MASKED, s2)
    if HAS_RG:
        rg_i = tl.load(rg_ptr + i_m, mask=i_m < B, other=0)
        rg_j = tl.load(rg_ptr + j_n, mask=j_n < B_R, other=0)
        hit = rg_j[:, None] == rg_i[None, :]
        s2 = tl.where(hit & (j_n[:, None] != i_m[None, :]), _MASKED, s2)
    return s2


@triton.jit
def _load_row_stat_t(
    ptr,  # [P, B] float32 per-pair statistic
    l_m, i_m, row_ok, F_R: tl.constexpr, F_RP: tl.constexpr, B, other,
):
    # -> [F_RP, TILE_M]: stat[l_m * F_R + r, i_m] (the transpose of _load_row_stat)
    r = tl.arange(0, F_RP)
    offs = (l_m[None, :] * F_R + r[:, None]).to(tl.int64) * B + i_m[None, :]
    return tl.load(ptr + offs, mask=row_ok[None, :] & (r < F_R)[:, None], other=other)


@triton.jit
def _load_col_stat_t(
    ptr,  # [P, B] float32 per-pair statistic (columns j < B only)
    r_n, j_n, col_ok, F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, B, other,
):
    # -> [TILE_N, F_LP]: stat[l * F_R + r_n, j_n] (the transpose of _load_col_stat)
    l = tl.arange(0, F_LP)
    offs = (l[None, :] * F_R + r_n[:, None]).to(tl.int64) * B + j_n[:, None]
    ok = (l < F_L)[None, :] & (col_ok & (j_n < B))[:, None]
    return tl.load(ptr + offs, mask=ok, other=other)


@triton.jit
def _dscores_t(
    s2_t, rbias_t, cbias_t, dcoef_t, i_m, j_n,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
):
    # the transpose of _dscores: [TILE_N, TILE_M], so that dS^T feeds tl.dot as the left
    # operand straight from registers (a tl.trans of dS would round-trip shared memory).
    # In the transposed tile a row statistic [F_RP, TILE_M] spreads down the columns the way
    # a column statistic does in the plain tile, so the two expanders swap roles.
    ds = tl.zeros((TILE_N, TILE_M), dtype=tl.float32)
    if HAS_ROW:
        ds += tl.exp2(s2_t - _expand_cols(rbias_t, TILE_N, TILE_M, F_RP, BN))
    if HAS_COL:
        ds += tl.exp2(s2_t - _expand_rows(cbias_t, TILE_N, TILE_M, F_LP, BM))
    on_diag = j_n[:, None] == i_m[None, :]
    ds -= tl.where(on_diag, _expand_cols(dcoef_t, TILE_N, TILE_M, F_RP, BN), 0.0)
    return ds


# --------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------
# Group counts and sizes follow B (G = 32 at 32k, 6 at 704): not specialised, so one binary
# serves every batch size whose other arguments specialise alike (and the GPU tests' builds
# at small B are the ones the benchmark's autotuner finds in Triton's cache).
@triton.jit(do_not_specialize=["G", "GROUP_ROWS", "GROUP_COLS", "B_BUCKET"])
def _gcl_fwd_stats_kernel(
    x_ptr,        # [F_L, B, D] lhs embeddings, input dtype, contiguous
    y_ptr,        # [F_R, B_R, D] rhs embeddings, same dtype, contiguous
    scale_ptr,    # [] float32 logit scale s (a multiplier)
    lg_ptr,       # [B_LG] int64 lhs group ids (read only if HAS_LG)
    rg_ptr,       # [B_R] int64 rhs group ids (read only if HAS_RG)
    rowpart_ptr,  # [C, P, B] float32 out: log2-sum-exp2 of S2 over column group c (if HAS_ROW)
    colpart_ptr,  # [G, P, B] float32 out: log2-sum-exp2 of S2 over row group g (if HAS_COL)
    B, B_R, B_LG, N_COLS, D, stride_xf, stride_yf, G, GROUP_ROWS, GROUP_COLS,
    B_BUCKET,     # B rounded up to a power of two: read only by the autotuner's key
    F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, BK: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr,  # rows / columns per field: TILE_M // F_LP, TILE_N // F_RP
):
    # For every pair p = (l, r), row i < B and column j < B (docs/method.md section 1):
    #   row[i] = log sum_{j < B_R, kept} exp(S[i, j]),  col[j] = log sum_{i < B, kept} exp(S[i, j])
    # in log2 units; this program covers rows [g*GROUP_ROWS, ...) x columns [c*GROUP_COLS, ...).
    # N_COLS = B_R, or B when there is no row term (no statistic needs columns j >= B).
    P = F_L * F_R
    pid = tl.program_id(0)
    g = pid % G
    c = pid // G
    scale2 = tl.load(scale_ptr) * _LOG2E
    row_lo = g * GROUP_ROWS
    row_hi = tl.minimum(row_lo + GROUP_ROWS, B)
    col_lo = c * GROUP_COLS
    col_hi = tl.minimum(col_lo + GROUP_COLS, N_COLS)
    offs_m = tl.arange(0, TILE_M)
    offs_n = tl.arange(0, TILE_N)
    l_m = offs_m // BM
    r_n = offs_n // BN
    r_all = tl.arange(0, F_RP)
    l_all = tl.arange(0, F_LP)

    for row0 in range(row_lo, row_hi, BM):
        i_m = row0 + offs_m % BM
        row_ok = (l_m < F_L) & (i_m < B)
        m_run = tl.full((TILE_M, F_RP), float("-inf"), dtype=tl.float32)
        l_run = tl.zeros((TILE_M, F_RP), dtype=tl.float32)
        for col0 in range(col_lo, col_hi, BN):
            j_n = col0 + offs_n % BN
            col_ok = (r_n < F_R) & (j_n < N_COLS)
            dot = _tile_scores(x_ptr, y_ptr, row0, col0, B, B_R, D, stride_xf, stride_yf,
                               F_L, F_R, F_LP, F_RP, TILE_M, TILE_N, BM, BN, BK,
                               CAST_F32, PRECISION, False)
            s2 = _masked_scores(dot, scale2, lg_ptr, rg_ptr, i_m, row_ok, j_n, col_ok, B, B_R, B_LG,
                                HAS_LG, HAS_RG)
            if HAS_ROW:
                # online log-sum-exp along the row (flash-attention), per rhs field. A row
                # masked so far has m = _MASKED and counts its masked entries as 2^0; the
                # first kept score rescales that by 2^(_MASKED - m) = 0. Every kept row has
                # its diagonal in one column group, and the merge drops partials near _MASKED.
                m_new = tl.maximum(m_run, _rows_max(s2, TILE_M, F_RP, BN))
                p = tl.exp2(s2 - _expand_rows(m_new, TILE_M, TILE_N, F_RP, BN))
                l_run = l_run * tl.exp2(m_run - m_new) + _rows_sum(p, TILE_M, F_RP, BN)
                m_run = m_new
            if HAS_COL:
                # this tile's column log-sum-exp, merged into the slice of colpart[g] that
                # only this program writes; the first row block of the group initialises it
                c_max = _cols_max(s2, TILE_N, F_LP, BM)
                q = tl.exp2(s2 - _expand_cols(c_max, TILE_M, TILE_N, F_LP, BM))
                t = c_max + tl.log2(_cols_sum(q, TILE_N, F_LP, BM))
                offs = ((g * P + l_all[:, None] * F_R + r_n[None, :]).to(tl.int64) * B
                        + j_n[None, :])
                ok = (l_all < F_L)[:, None] & (col_ok & (j_n < B))[None, :]
                # the previous row block's store may come from other threads of this program
                tl.debug_barrier()
                old = tl.load(colpart_ptr + offs, mask=ok & (row0 > row_lo), other=float("-inf"))
                tl.store(colpart_ptr + offs, _lse2_merge(old, t), mask=ok)
        if HAS_ROW:
            offs = ((c * P + l_m[:, None] * F_R + r_all[None, :]).to(tl.int64) * B + i_m[:, None])
            tl.store(rowpart_ptr + offs, m_run + tl.log2(l_run),
                     mask=row_ok[:, None] & (r_all < F_R)[None, :])


@triton.jit(do_not_specialize=["G", "C"])
def _gcl_fwd_merge_kernel(
    x_ptr,         # [F_L, B, D] lhs embeddings
    y_ptr,         # [F_R, B_R, D] rhs embeddings
    scale_ptr,     # [] float32 logit scale s
    rowpart_ptr,   # [C, P, B] float32 row partials (if HAS_ROW)
    colpart_ptr,   # [G, P, B] float32 column partials (if HAS_COL)
    rw_ptr,        # [B] float32 row weights c_row * w / Z (if HAS_ROW)
    cw_ptr,        # [B] float32 column weights c_col * w / Z (if HAS_COL)
    a_ptr,         # [F_L, F_R] float32 field-pair weights
    rbias_ptr,     # [P, B] float32 out: lse2_row - log2(a * rw), +inf where a * rw == 0
    cbias_ptr,     # [P, B] float32 out: lse2_col - log2(a * cw)
    dcoef_ptr,     # [P, B] float32 out: a * (rw + cw), the diagonal's share of dS
    loss_ptr,      # [n_programs] float32 out: this program's part of the loss
    B, B_R, D, G, C,
    F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    PP: tl.constexpr, HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr,
    BLOCK: tl.constexpr, BK: tl.constexpr,
):
    # L = sum_{l,r} a[l,r] * sum_i ( rw_i (row_lse_i - S_ii) + cw_i (col_lse_i - S_ii) ),
    # natural log: lse = lse2 * ln 2, S_ii = s * <x[l, i], y[r, i]>.
    # PP = F_LP * F_RP (padded pairs) comes in as an argument: arange needs a constexpr
    P = F_L * F_R
    pid = tl.program_id(0)
    s = tl.load(scale_ptr)
    pl = tl.arange(0, PP) // F_RP
    pr = tl.arange(0, PP) % F_RP
    p_ok = (pl < F_L) & (pr < F_R)
    pidx = pl * F_R + pr
    i = pid * BLOCK + tl.arange(0, BLOCK)
    i_ok = i < B
    ok = p_ok[:, None] & i_ok[None, :]
    offs_pb = pidx[:, None].to(tl.int64) * B + i[None, :]

    # diagonal <x[l, i], y[r, i]> for every pair, [PP, BLOCK]
    offs_k = tl.arange(0, BK)
    x_rows = (pl[:, None].to(tl.int64) * B + i[None, :]) * D
    y_rows = (pr[:, None].to(tl.int64) * B_R + i[None, :]) * D
    diag = tl.zeros((PP, BLOCK), dtype=tl.float32)
    for k0 in range(0, D, BK):
        kk = k0 + offs_k
        m3 = ok[:, :, None] & (kk < D)[None, None, :]
        xv = tl.load(x_ptr + x_rows[:, :, None] + kk[None, None, :], mask=m3, other=0.0)
        yv = tl.load(y_ptr + y_rows[:, :, None] + kk[None, None, :], mask=m3, other=0.0)
        diag += tl.sum(xv.to(tl.float32) * yv.to(tl.float32), axis=2)
    s_diag = s * diag

    a = tl.load(a_ptr + pidx, mask=p_ok, other=0.0)[:, None]
    loss = tl.zeros((PP, BLOCK), dtype=tl.float32)
    dcoef = tl.zeros((PP, BLOCK), dtype=tl.float32)
    if HAS_ROW:
        lse = tl.full((PP, BLOCK), float("-inf"), dtype=tl.float32)
        for cc in range(0, C):
            v = tl.load(rowpart_ptr + (cc * P).to(tl.int64) * B + offs_pb, mask=ok, other=float("-inf"))
            lse = _lse2_merge(lse, v)
        rw = tl.load(rw_ptr + i, mask=i_ok, other=0.0)[None, :]
        aw = a * rw
        loss += tl.where(ok, aw * (lse * _LN2 - s_diag), 0.0)
        tl.store(rbias_ptr + offs_pb, lse - tl.log2(aw), mask=ok)
        dcoef += aw
    if HAS_COL:
        lse = tl.full((PP, BLOCK), float("-inf"), dtype=tl.float32)
        for gg in range(0, G):
            v = tl.load(colpart_ptr + (gg * P).to(tl.int64) * B + offs_pb, mask=ok, other=float("-inf"))
            lse = _lse2_merge(lse, v)
        cw = tl.load(cw_ptr + i, mask=i_ok, other=0.0)[None, :]
        aw = a * cw
        loss += tl.where(ok, aw * (lse * _LN2 - s_diag), 0.0)
        tl.store(cbias_ptr + offs_pb, lse - tl.log2(aw), mask=ok)
        dcoef += aw
    tl.store(dcoef_ptr + offs_pb, dcoef, mask=ok)
    tl.store(loss_ptr + pid, tl.sum(tl.sum(loss, axis=1), axis=0))


# --------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------
@triton.jit
def _gcl_bwd_dx_kernel(
    x_ptr,       # [F_L, B, D] lhs embeddings
    y_ptr,       # [F_R, B_R, D] rhs embeddings
    scale_ptr,   # [] float32 logit scale s
    gout_ptr,    # [] float32 upstream gradient g of the loss
    pow2_ptr,    # [] float32 2^k: dS is rounded to the input dtype as dS * 2^k (fp16 range)
    lg_ptr,      # [B_LG] int64 lhs group ids (if HAS_LG)
    rg_ptr,      # [B_R] int64 rhs group ids (if HAS_RG)
    rbias_ptr,   # [P, B] float32 row bias from the forward (if HAS_ROW)
    cbias_ptr,   # [P, B] float32 column bias from the forward (if HAS_COL)
    dcoef_ptr,   # [P, B] float32 diagonal coefficient from the forward
    dx_ptr,      # [F_L, B, D] out: d loss / d lhs, input dtype
    dsrow_ptr,   # [F_L, B] float32 out: sum_j dS[i, j] * <x_i, y_j> / g (for d logit_scale)
    dyacc_ptr,   # [F_R, B_R, D] float32 in/out, zeroed by the launcher (read only if FUSE_DY)
    B, B_R, B_LG, N_COLS, D, stride_xf, stride_yf, B_BUCKET,
    F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, FUSE_DY: tl.constexpr,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, BK: tl.constexpr, D_OUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr,  # rows / columns per field: TILE_M // F_LP, TILE_N // F_RP
):
    # dx[l, i, d] = s * g * sum_r sum_j dS_lr[i, j] * y[r, j, d]   for d in this D_OUT chunk
    # ds          = g * sum_{l,r,i,j} dS_lr[i, j] * <x[l, i], y[r, j]>  (= sum dS * S / s)
    # FUSE_DY (the opt-in fused backward): each recomputed dS tile also gives
    #   dy[r, j, chunk] += s * g * sum_l dS_lr^T @ x[l, :, chunk], added by float32 atomics,
    # so S is computed once per D_OUT chunk for both gradients instead of once per kernel:
    # (2 nD + 4) B B_R D backward flops instead of 4 (nD + 1) (docs/triton_kernel.md).
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    scale = tl.load(scale_ptr)
    scale2 = scale * _LOG2E
    pow2 = tl.load(pow2_ptr)
    coef = scale * tl.load(gout_ptr) / pow2  # 2^-k undoes the scaling of dS exactly
    offs_m = tl.arange(0, TILE_M)
    offs_n = tl.arange(0, TILE_N)
    l_m = offs_m // BM
    i_m = pid_m * BM + offs_m % BM
    row_ok = (l_m < F_L) & (i_m < B)
    r_n = offs_n // BN
    rbias = tl.zeros((TILE_M, F_RP), dtype=tl.float32)
    if HAS_ROW:
        rbias = _load_row_stat(rbias_ptr, l_m, i_m, row_ok, F_R, F_RP, B, float("inf"))
    dcoef = _load_row_stat(dcoef_ptr, l_m, i_m, row_ok, F_R, F_RP, B, 0.0)
    acc = tl.zeros((TILE_M, D_OUT), dtype=tl.float32)
    ds_acc = tl.zeros((TILE_M,), dtype=tl.float32)
    row0 = pid_m * BM
    d0 = pid_d * D_OUT
    if FUSE_DY:
        # the stationary lhs chunk: the right operand of dS^T @ x for every column tile
        offs_d = d0 + tl.arange(0, D_OUT)
        xob = tl.make_block_ptr(x_ptr, (F_L, B, D), (stride_xf, D, 1), (0, row0, d0),
                                (F_LP, BM, D_OUT), (2, 1, 0))
        xo = tl.reshape(tl.load(xob, boundary_check=(0, 1, 2), padding_option="zero"),
                        (TILE_M, D_OUT))
        if CAST_F32:
            xo = xo.to(tl.float32)
    for col0 in range(0, N_COLS, BN):
        j_n = col0 + offs_n % BN
        col_ok = (r_n < F_R) & (j_n < N_COLS)
        dot = _tile_scores(x_ptr, y_ptr, row0, col0, B, B_R, D, stride_xf, stride_yf,
                           F_L, F_R, F_LP, F_RP, TILE_M, TILE_N, BM, BN, BK,
                           CAST_F32, PRECISION, False)
        s2 = _masked_scores(dot, scale2, lg_ptr, rg_ptr, i_m, row_ok, j_n, col_ok, B, B_R, B_LG,
                            HAS_LG, HAS_RG)
        cbias = tl.zeros((F_LP, TILE_N), dtype=tl.float32)
        if HAS_COL:
            cbias = _load_col_stat(cbias_ptr, r_n, j_n, col_ok, F_L, F_R, F_LP, B, float("inf"))
        ds = _dscores(s2, rbias, cbias, dcoef, i_m, j_n, TILE_M, TILE_N, F_LP, F_RP, BM, BN,
                      HAS_ROW, HAS_COL)
        ds_acc += tl.sum(ds * s2, axis=1)  # masked: 0 * _MASKED = 0
        yob = tl.make_block_ptr(y_ptr, (F_R, B_R, D), (stride_yf, D, 1), (0, col0, d0),
                                (F_RP, BN, D_OUT), (2, 1, 0))
        yo = tl.reshape(tl.load(yob, boundary_check=(0, 1, 2), padding_option="zero"),
                        (TILE_N, D_OUT))
        # dS * 2^k rounded to the input dtype, as the tensor cores take it; the interpreter
        # rounds the same way, then multiplies in float32
        dsq = (ds * pow2).to(y_ptr.dtype.element_ty)
        if CAST_F32:
            yo = yo.to(tl.float32)
            dsq = dsq.to(tl.float32)
        acc = tl.dot(dsq, yo, acc, input_precision=PRECISION)
        if FUSE_DY:
            # padding rows are zero in dS and in x, so these are exact column sums
            dyp = tl.dot(tl.trans(dsq), xo, input_precision=PRECISION)
            offs = (r_n.to(tl.int64) * stride_yf + j_n.to(tl.int64) * D)[:, None] + offs_d[None, :]
            tl.atomic_add(dyacc_ptr + offs, dyp * coef,
                          mask=col_ok[:, None] & (offs_d < D)[None, :], sem="relaxed")
    dxb = tl.make_block_ptr(dx_ptr, (F_L, B, D), (stride_xf, D, 1), (0, row0, d0),
                            (F_LP, BM, D_OUT), (2, 1, 0))
    tl.store(dxb, tl.reshape((acc * coef).to(dx_ptr.dtype.element_ty), (F_LP, BM, D_OUT)),
             boundary_check=(0, 1, 2))
    tl.store(dsrow_ptr + l_m * B + i_m, ds_acc / scale2, mask=row_ok & (pid_d == 0))


@triton.jit
def _gcl_bwd_dy_kernel(
    x_ptr,       # [F_L, B, D] lhs embeddings
    y_ptr,       # [F_R, B_R, D] rhs embeddings
    scale_ptr,   # [] float32 logit scale s
    gout_ptr,    # [] float32 upstream gradient g
    pow2_ptr,    # [] float32 2^k: dS is rounded to the input dtype as dS * 2^k
    lg_ptr,      # [B_LG] int64 lhs group ids (if HAS_LG)
    rg_ptr,      # [B_R] int64 rhs group ids (if HAS_RG)
    rbias_ptr,   # [P, B] float32 row bias (if HAS_ROW)
    cbias_ptr,   # [P, B] float32 column bias (if HAS_COL)
    dcoef_ptr,   # [P, B] float32 diagonal coefficient
    dy_ptr,      # [F_R, B_R, D] out: d loss / d rhs, input dtype
    B, B_R, B_LG, N_COLS, D, stride_xf, stride_yf, B_BUCKET,
    F_L: tl.constexpr, F_R: tl.constexpr, F_LP: tl.constexpr, F_RP: tl.constexpr,
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr,
    TILE_M: tl.constexpr, TILE_N: tl.constexpr, BK: tl.constexpr, D_OUT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr,  # rows / columns per field: TILE_M // F_LP, TILE_N // F_RP
):
    # dy[r, j, d] = s * g * sum_l sum_i dS_lr[i, j] * x[l, i, d]   for d in this D_OUT chunk
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    scale = tl.load(scale_ptr)
    scale2 = scale * _LOG2E
    pow2 = tl.load(pow2_ptr)
    coef = scale * tl.load(gout_ptr) / pow2
    offs_m = tl.arange(0, TILE_M)
    offs_n = tl.arange(0, TILE_N)
    l_m = offs_m // BM
    r_n = offs_n // BN
    col0 = pid_n * BN
    d0 = pid_d * D_OUT
    j_n = col0 + offs_n % BN
    col_ok = (r_n < F_R) & (j_n < N_COLS)
    # everything in the transposed orientation [TILE_N, TILE_M]: dS^T @ x needs no transpose
    cbias_t = tl.zeros((TILE_N, F_LP), dtype=tl.float32)
    if HAS_COL:
        cbias_t = _load_col_stat_t(cbias_ptr, r_n, j_n, col_ok, F_L, F_R, F_LP, B, float("inf"))
    acc = tl.zeros((TILE_N, D_OUT), dtype=tl.float32)
    for row0 in range(0, B, BM):
        i_m = row0 + offs_m % BM
        row_ok = (l_m < F_L) & (i_m < B)
        dot_t = _tile_scores(x_ptr, y_ptr, row0, col0, B, B_R, D, stride_xf, stride_yf,
                             F_L, F_R, F_LP, F_RP, TILE_M, TILE_N, BM, BN, BK,
                             CAST_F32, PRECISION, True)
        s2_t = _masked_scores_t(dot_t, scale2, lg_ptr, rg_ptr, i_m, row_ok, j_n, col_ok, B, B_R,
                                B_LG, HAS_LG, HAS_RG)
        rbias_t = tl.zeros((F_RP, TILE_M), dtype=tl.float32)
        if HAS_ROW:
            rbias_t = _load_row_stat_t(rbias_ptr, l_m, i_m, row_ok, F_R, F_RP, B, float("inf"))
        dcoef_t = _load_row_stat_t(dcoef_ptr, l_m, i_m, row_ok, F_R, F_RP, B, 0.0)
        ds_t = _dscores_t(s2_t, rbias_t, cbias_t, dcoef_t, i_m, j_n, TILE_M, TILE_N, F_LP, F_RP,
                          BM, BN, HAS_ROW, HAS_COL)
        xob = tl.make_block_ptr(x_ptr, (F_L, B, D), (stride_xf, D, 1), (0, row0, d0),
                                (F_LP, BM, D_OUT), (2, 1, 0))
        xo = tl.reshape(tl.load(xob, boundary_check=(0, 1, 2), padding_option="zero"),
                        (TILE_M, D_OUT))
        dsq_t = (ds_t * pow2).to(x_ptr.dtype.element_ty)  # as in the dx kernel
        if CAST_F32:
            acc = tl.dot(dsq_t.to(tl.float32), xo.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(dsq_t, xo, acc, input_precision=PRECISION)
    dyb = tl.make_block_ptr(dy_ptr, (F_R, B_R, D), (stride_yf, D, 1), (0, col0, d0),
                            (F_RP, BN, D_OUT), (2, 1, 0))
    tl.store(dyb, tl.reshape((acc * coef).to(dy_ptr.dtype.element_ty), (F_RP, BN, D_OUT)),
             boundary_check=(0, 1, 2))


# --------------------------------------------------------------------------------------
# Launchers: configs, shape checks, allocation
# --------------------------------------------------------------------------------------
def _fp32_precision() -> str:
    value = os.environ.get("GCL_TRITON_FP32_PRECISION", "ieee")
    if value not in _FP32_PRECISIONS:
        raise ValueError(
            f"GCL_TRITON_FP32_PRECISION: expected one of {_FP32_PRECISIONS}, got {value!r}"
        )
    return value


def _backward_mode() -> str:
    value = os.environ.get("GCL_TRITON_BACKWARD", "gemm")
    if value not in _BACKWARDS:
        raise ValueError(f"GCL_TRITON_BACKWARD: expected one of {_BACKWARDS}, got {value!r}")
    return value


def _autotune_enabled() -> bool:
    return os.environ.get("GCL_TRITON_AUTOTUNE", "1") != "0"


def _config(num_warps, num_stages, **kwargs):
    return triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)


# Curated, not exhaustive: each key (D, F_LP, F_RP, directions, dtype) benchmarks every
# config once, so the lists stay short. The first entry is the default when autotune is off.
_FWD_CONFIGS = [
    _config(8, 3, TILE_M=128, TILE_N=128, BK=64),
    _config(8, 4, TILE_M=128, TILE_N=128, BK=32),
    _config(4, 3, TILE_M=128, TILE_N=64, BK=64),
    _config(4, 3, TILE_M=64, TILE_N=128, BK=64),
    _config(4, 4, TILE_M=64, TILE_N=64, BK=64),
]
# (stationary tile, streamed tile, D_OUT). The stationary tile times D_OUT float32
# accumulators stay in registers across the whole sweep, so D_OUT is small and a program
# covers one D_OUT chunk of the gradient, recomputing S once per chunk (docs/triton_kernel.md).
# Offline sm_90 builds (Triton 3.8, bf16, one field pair) put the first two at 250-255
# registers with 0-56 bytes of spill; 128-row stationary tiles and D_OUT = 512 spill more.
_BWD_SHAPES = [
    # stationary, streamed, BK, D_OUT, warps, stages
    (64, 64, 64, 256, 8, 2),
    (64, 64, 32, 256, 8, 3),
    (64, 128, 64, 128, 8, 2),
    (128, 64, 64, 128, 8, 2),
    (64, 64, 64, 128, 4, 2),
    (64, 64, 64, 512, 8, 2),
]
_DX_CONFIGS = [_config(w, st, TILE_M=a, TILE_N=b, BK=k, D_OUT=d) for a, b, k, d, w, st in _BWD_SHAPES]
_DY_CONFIGS = [_config(w, st, TILE_M=b, TILE_N=a, BK=k, D_OUT=d) for a, b, k, d, w, st in _BWD_SHAPES]
# The fused backward (GCL_TRITON_BACKWARD=fused) also holds the [TILE_M, D_OUT] lhs chunk and
# a [TILE_N, D_OUT] float32 dy partial per tile. Never built on a GPU run yet: the list is a
# starting point for tuning, not a measured choice.
_FUSED_SHAPES = [
    # stationary rows, streamed columns, BK, D_OUT, warps, stages
    # Offline sm_90 builds (Triton 3.6 and 3.8, benchmarks/build_sm90.py) spill in every
    # entry; the first spills least (312-400 bytes). 128 stationary rows halve the dy atomics
    # per flop but spill 570-1500 bytes (docs/triton_kernel.md).
    (64, 128, 64, 128, 8, 2),
    (128, 64, 64, 128, 8, 2),
    (64, 64, 64, 256, 8, 2),
    (128, 128, 64, 128, 8, 2),
    (64, 64, 64, 128, 4, 2),
]
_FUSED_CONFIGS = [_config(w, st, TILE_M=a, TILE_N=b, BK=k, D_OUT=d) for a, b, k, d, w, st in _FUSED_SHAPES]
# "gemm" (default): per row block, a Triton GEMM writes dS and cuBLAS forms dx and dy
#   (float32 dy accumulator), triton_gemm_backward.py; 8 flop units in all.
# "gemm_cols": the same dS kernel, dy from a second sweep over column blocks; 10 units,
#   no float32 dy buffer.
# "split" (v1): the dx and dy kernels, nothing beyond O(B) statistics; 14-22 units.
# "fused" (v1): one kernel, S recomputed half as often, float32 dy buffer and atomics.
_BACKWARDS = ("gemm", "gemm_cols", "split", "fused")
# dS is stored (gemm) or rounded (split / fused) as dS * 2^k, 2^k putting the largest possible
# |dS| near 2^14: well inside float16's range (65504) and far above its subnormals (2^-14).
_DS_TARGET = 2.0 ** 14
# GROUP_ROWS / GROUP_COLS of the forward are multiples of this, hence of every config's BM, BN.
_GPU_GROUP_ALIGN = 128


def _clamp_configs(configs, d: int):
    """Shrink BK and D_OUT to the padded D (no point loading past it), drop duplicates."""
    dmax = max(16, triton.next_power_of_2(d))
    seen, out = set(), []
    for cfg in configs:
        kw = dict(cfg.kwargs)
        kw["BK"] = min(kw["BK"], dmax)
        if "D_OUT" in kw:
            kw["D_OUT"] = min(kw["D_OUT"], dmax)
        key = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out


def _prune(configs, named_args, **kwargs):
    configs = _clamp_configs(configs, named_args["D"])
    return configs if _autotune_enabled() else configs[:1]


# B_BUCKET (B rounded up to a power of two): a config tuned at B = 1024 is not reused at 64k
_TUNE_KEY = ["D", "B_BUCKET", "F_LP", "F_RP", "HAS_ROW", "HAS_COL"]
# BM and BN follow from the tuned tile and the field count; derived outside the kernel
# because constexpr arithmetic inside it does not survive the interpreter.
_PER_FIELD = triton.heuristics({
    "BM": lambda a: a["TILE_M"] // a["F_LP"],
    "BN": lambda a: a["TILE_N"] // a["F_RP"],
})
if not _INTERPRET:
    _fwd_stats_tuned = triton.autotune(_FWD_CONFIGS, key=_TUNE_KEY,
                                       prune_configs_by={"early_config_prune": _prune})(
        _PER_FIELD(_gcl_fwd_stats_kernel))
    _bwd_dx_tuned = triton.autotune(_DX_CONFIGS, key=_TUNE_KEY,
                                    prune_configs_by={"early_config_prune": _prune})(
        _PER_FIELD(_gcl_bwd_dx_kernel))
    _bwd_dy_tuned = triton.autotune(_DY_CONFIGS, key=_TUNE_KEY,
                                    prune_configs_by={"early_config_prune": _prune})(
        _PER_FIELD(_gcl_bwd_dy_kernel))
    # autotuning runs the kernel once per config: the atomically summed buffer is re-zeroed
    _bwd_fused_tuned = triton.autotune(_FUSED_CONFIGS, key=_TUNE_KEY, reset_to_zero=["dyacc_ptr"],
                                       prune_configs_by={"early_config_prune": _prune})(
        _PER_FIELD(_gcl_bwd_dx_kernel))


def _interpret_tiles(f_lp: int, f_rp: int) -> dict:
    t = _INTERPRET_TILES
    tile_m = t["TILE"] if f_lp == 1 else max(t["TILE_MULTI"], 4 * f_lp)
    tile_n = t["TILE"] if f_rp == 1 else max(t["TILE_MULTI"], 4 * f_rp)
    return {"TILE_M": tile_m, "TILE_N": tile_n, "BK": t["BK"],
            "BM": tile_m // f_lp, "BN": tile_n // f_rp}


def _groups(n: int, target: int, align: int):
    """Split n rows (or columns) into at most `target` groups whose size is a multiple of align."""
    per = align * triton.cdiv(triton.cdiv(n, target), align)
    return per, triton.cdiv(n, per)


def _check_inputs(inp: GCLInputs) -> None:
    x, y = inp.x, inp.y
    if x.dtype not in SUPPORTED_DTYPES:
        hint = " (use impl='chunked' or impl='reference' for float64)" if x.dtype == torch.float64 else ""
        raise ValueError(
            f"lhs: impl='triton' serves float32, float16 and bfloat16 inputs, got {x.dtype}{hint}"
        )
    if not _INTERPRET and (not x.is_cuda or not y.is_cuda):
        raise ValueError(
            f"lhs: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
            f"gcl_kernels.ops.triton_gcl is imported), got device {x.device}; "
            f"impl='chunked' runs anywhere"
        )
    f_l, f_r, b, b_r, d = inp.shape
    if f_l > MAX_FIELDS or f_r > MAX_FIELDS:
        raise ValueError(
            f"lhs/rhs: impl='triton' supports at most {MAX_FIELDS} fields per side, "
            f"got F_L={f_l}, F_R={f_r}; use impl='chunked'"
        )
    if d > MAX_D:
        raise ValueError(f"lhs: impl='triton' supports D <= {MAX_D}, got D={d}; use impl='chunked'")
    if b_r < b:
        raise ValueError(f"rhs: expected B_R >= B, got B_R={b_r} < B={b}")
    for name, t in (("lhs", x), ("rhs", y)):
        if not t.is_contiguous():
            raise ValueError(f"{name}: impl='triton' needs a contiguous tensor, got strides {t.stride()}")
    if inp.logit_scale.dtype != torch.float32 or inp.logit_scale.numel() != 1:
        raise ValueError(
            f"logit_scale: expected a float32 scalar tensor, got dtype {inp.logit_scale.dtype}, "
            f"shape {tuple(inp.logit_scale.shape)}"
        )
    if inp.row_weights is None and inp.col_weights is None:
        raise ValueError("row_weights/col_weights: at least one direction must be present")
    lg = inp.lhs_groups
    if lg is not None and (lg.dim() != 1 or not b <= lg.numel() <= b_r):
        raise ValueError(f"lhs_groups: expected shape [L] with B={b} <= L <= B_R={b_r}, got {tuple(lg.shape)}")
    if _backward_mode() in ("gemm", "gemm_cols"):  # a bad setting fails here, not after the forward
        _gemm_backward_mod.check_env(x.device)


def _flags(inp: GCLInputs) -> dict:
    f_l, f_r = inp.x.shape[0], inp.y.shape[0]
    return dict(
        F_L=f_l, F_R=f_r,
        F_LP=triton.next_power_of_2(f_l), F_RP=triton.next_power_of_2(f_r),
        HAS_ROW=inp.row_weights is not None, HAS_COL=inp.col_weights is not None,
        HAS_LG=inp.lhs_groups is not None, HAS_RG=inp.rhs_groups is not None,
        CAST_F32=_INTERPRET,
        PRECISION=_fp32_precision() if inp.x.dtype == torch.float32 else "tf32",
    )


def _forward(inp: GCLInputs, row_groups: int | None = None, col_groups: int | None = None):
    """Loss and the per-pair statistics the backward needs (rbias, cbias, dcoef: [P, B])."""
    x, y = inp.x, inp.y
    f_l, f_r, b, b_r, d = inp.shape
    p = f_l * f_r
    fl = _flags(inp)
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)
    dummy = torch.empty(1, **f32)
    scale = inp.logit_scale.detach().reshape(1).contiguous()
    lg = inp.lhs_groups if inp.lhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    rg = inp.rhs_groups if inp.rhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    # without a row term only the columns j < B carry a statistic, so sweep only those
    n_cols = b_r if fl["HAS_ROW"] else b
    if _INTERPRET:
        tiles = _interpret_tiles(fl["F_LP"], fl["F_RP"])
        align_m, align_n = tiles["BM"], tiles["BN"]
    else:
        align_m = align_n = _GPU_GROUP_ALIGN
    group_rows, g = _groups(b, row_groups or _FWD_ROW_GROUPS, align_m)
    group_cols, c = _groups(n_cols, col_groups or _FWD_COL_GROUPS, align_n)
    rowpart = torch.empty((c, p, b), **f32) if fl["HAS_ROW"] else dummy
    colpart = torch.empty((g, p, b), **f32) if fl["HAS_COL"] else dummy
    b_lg = inp.lhs_groups.numel() if inp.lhs_groups is not None else b
    args = (x, y, scale, lg, rg, rowpart, colpart, b, b_r, b_lg, n_cols, d, b * d, b_r * d,
            g, group_rows, group_cols, triton.next_power_of_2(b))
    if _INTERPRET:
        _gcl_fwd_stats_kernel[(g * c,)](*args, **fl, **tiles)
    else:
        _fwd_stats_tuned[(g * c,)](*args, **fl)

    pp = fl["F_LP"] * fl["F_RP"]
    block = 32
    bk = max(16, min(256, 8192 // (pp * block)))
    n_prog = triton.cdiv(b, block)
    rbias = torch.empty((p, b), **f32) if fl["HAS_ROW"] else dummy
    cbias = torch.empty((p, b), **f32) if fl["HAS_COL"] else dummy
    dcoef = torch.empty((p, b), **f32)
    loss_part = torch.empty(n_prog, **f32)
    a = inp.field_weights.to(torch.float32).contiguous()
    rw = inp.row_weights if inp.row_weights is not None else dummy
    cw = inp.col_weights if inp.col_weights is not None else dummy
    _gcl_fwd_merge_kernel[(n_prog,)](
        x, y, scale, rowpart, colpart, rw, cw, a, rbias, cbias, dcoef, loss_part,
        b, b_r, d, g, c,
        F_L=fl["F_L"], F_R=fl["F_R"], F_LP=fl["F_LP"], F_RP=fl["F_RP"], PP=pp,
        HAS_ROW=fl["HAS_ROW"], HAS_COL=fl["HAS_COL"], BLOCK=block, BK=bk,
    )
    return loss_part.sum(), (rbias, cbias, dcoef)


def _ds_pow2(dcoef: torch.Tensor) -> torch.Tensor:
    """2^k (float32, on the device, no host sync) with 2 max(dcoef) 2^k in [2^13, 2^14).

    |dS| <= a rw_i + a cw_j <= 2 max(dcoef) off the diagonal and <= dcoef_i on it, so the
    scaled dS fits float16 (max 65504) with room to spare, and its typical entries, about
    max(dcoef) / B_R, stay far above float16's subnormals. 2^-k undoes it exactly.
    """
    mag = 2.0 * dcoef.detach().amax().to(torch.float32)
    k = torch.floor(torch.log2(_DS_TARGET / mag)).clamp(-100.0, 100.0)  # mag = 0: k = 100
    return torch.exp2(k)


def _backward(inp: GCLInputs, stats, gout: torch.Tensor, need_dx: bool, need_dy: bool):
    """v1 (split / fused): dx [F_L, B, D], dy [F_R, B_R, D] (input dtype) and the float32
    per-row sums for d logit_scale."""
    x, y = inp.x, inp.y
    f_l, f_r, b, b_r, d = inp.shape
    fl = _flags(inp)
    dev = x.device
    rbias, cbias, dcoef = stats
    scale = inp.logit_scale.detach().reshape(1).contiguous()
    g = gout.detach().to(torch.float32).reshape(1).contiguous()
    pow2 = _ds_pow2(dcoef).reshape(1)
    lg = inp.lhs_groups if inp.lhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    rg = inp.rhs_groups if inp.rhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    b_lg = inp.lhs_groups.numel() if inp.lhs_groups is not None else b
    bucket = triton.next_power_of_2(b)
    # without a row term, dS is zero on every column j >= B
    n_cols = b_r if fl["HAS_ROW"] else b
    dx = dy = None
    dsrow = torch.empty((f_l, b), dtype=torch.float32, device=dev)
    common = (x, y, scale, g, pow2, lg, rg, rbias, cbias, dcoef)
    # fused: the row sweep also sums dy, into a float32 buffer (returned as is for float32)
    fused = need_dx and need_dy and _backward_mode() == "fused"
    if _INTERPRET:
        t = dict(_interpret_tiles(fl["F_LP"], fl["F_RP"]), D_OUT=_INTERPRET_TILES["D_OUT"])
    if need_dx:
        dx = torch.empty_like(x)
        dyacc = torch.zeros(y.shape, dtype=torch.float32, device=dev) if fused else dsrow  # else unread
        args = common + (dx, dsrow, dyacc, b, b_r, b_lg, n_cols, d, b * d, b_r * d, bucket)
        if _INTERPRET:
            grid = (triton.cdiv(b, t["BM"]), triton.cdiv(d, t["D_OUT"]))
            _gcl_bwd_dx_kernel[grid](*args, **fl, **t, FUSE_DY=fused)
        else:
            f_lp = fl["F_LP"]
            tuned = _bwd_fused_tuned if fused else _bwd_dx_tuned
            tuned[lambda m: (triton.cdiv(b, m["TILE_M"] // f_lp), triton.cdiv(d, m["D_OUT"]))](
                *args, **fl, FUSE_DY=fused)
        if fused:
            dy = dyacc if y.dtype == torch.float32 else dyacc.to(y.dtype)
    if need_dy and not fused:
        dy = torch.empty_like(y) if n_cols == b_r else torch.zeros_like(y)
        args = common + (dy, b, b_r, b_lg, n_cols, d, b * d, b_r * d, bucket)
        if _INTERPRET:
            grid = (triton.cdiv(n_cols, t["BN"]), triton.cdiv(d, t["D_OUT"]))
            _gcl_bwd_dy_kernel[grid](*args, **fl, **t)
        else:
            f_rp = fl["F_RP"]
            _bwd_dy_tuned[lambda m: (triton.cdiv(n_cols, m["TILE_N"] // f_rp), triton.cdiv(d, m["D_OUT"]))](
                *args, **fl)
    return dx, dy, dsrow


class _GCLTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, logit_scale, row_w, col_w, field_w, lhs_groups, rhs_groups):
        inp = GCLInputs(x, y, logit_scale, row_w, col_w, field_w, lhs_groups, rhs_groups)
        loss, stats = _forward(inp)
        ctx.save_for_backward(x, y, logit_scale, row_w, col_w, field_w, lhs_groups, rhs_groups, *stats)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        x, y, logit_scale, row_w, col_w, field_w, lg, rg, *stats = ctx.saved_tensors
        need_x, need_y, need_s = ctx.needs_input_grad[:3]
        inp = GCLInputs(x, y, logit_scale, row_w, col_w, field_w, lg, rg)
        mode = _backward_mode()
        if mode in ("gemm", "gemm_cols"):
            dx, dy, d_scale = _gemm_backward_mod.gemm_backward(inp, stats, grad_out, need_x, need_y,
                                                               need_s, mode)
            if d_scale is not None:
                d_scale = d_scale.reshape(logit_scale.shape)
            return dx, dy, d_scale, None, None, None, None, None
        # v1: d logit_scale comes out of the dx kernel, so it runs whenever either is needed
        dx, dy, dsrow = _backward(inp, stats, grad_out, need_x or need_s, need_y)
        d_scale = None
        if need_s:
            d_scale = (dsrow.sum() * grad_out.to(torch.float32)).reshape(logit_scale.shape)
        return (dx if need_x else None), dy, d_scale, None, None, None, None, None


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------
def triton_gcl_loss(inp: GCLInputs) -> torch.Tensor:
    """GCL loss of docs/method.md section 1 in fused Triton kernels (impl="triton").

    Args:
        inp: canonical inputs from `gcl_kernels._validation.canonicalize` (float32, float16
            or bfloat16 embeddings on a CUDA device, or any device under TRITON_INTERPRET=1).

    Shape:
        inp.x [F_L, B, D], inp.y [F_R, B_R, D] with F_L, F_R <= 4, B_R >= B, D <= 8192.
        Returns a 0-dim float32 loss; gradients reach x and y in their dtype and
        logit_scale in float32.

    Raises:
        ValueError naming the argument for a dtype, device or shape the kernels do not serve.

    Example:
        >>> inp = canonicalize(x.cuda(), y.cuda(), 20.0)
        >>> loss = triton_gcl_loss(inp)
        >>> loss.backward()
    """
    _check_inputs(inp)
    return _GCLTritonFunction.apply(
        inp.x, inp.y, inp.logit_scale, inp.row_weights, inp.col_weights, inp.field_weights,
        inp.lhs_groups, inp.rhs_groups,
    )


# The GEMM backward uses the tile helpers above; imported last so that its module can import
# them from this one (and is defined under the same TRITON_INTERPRET setting).
from . import triton_gemm_backward as _gemm_backward_mod  # noqa: E402
