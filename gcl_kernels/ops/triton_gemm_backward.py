"""The GEMM backward of the fused GCL loss (GCL_TRITON_BACKWARD=gemm, the default; and gemm_cols).

The v1 backward kernels of `triton_gcl` (split / fused) hold a [rows, D_OUT] gradient
accumulator in registers and so recompute the score tile once per output chunk of D:
14 / 18 / 22 B B_R D flop units (forward + backward) at D = 512 / 768 / 1024 against a
minimum of 8. Here the work is split the way Liger's fused linear cross-entropy and
flash-attention's dataflow split it, for a block of rows at a time:

  1. `_gcl_ds_kernel`: one Triton GEMM, S = s X_blk Y^T (K loop over D, tensor descriptors
     where the strides allow it, block pointers otherwise, persistent grid), whose epilogue
     applies the group masks, the row and column statistics of the forward and the weights
     and writes the block of dS, times a power of two, in the input dtype; it also writes
     one partial per program of sum dS * S / s (the logit scale's gradient).
  2. cuBLAS: dx[blk] = (dS_blk @ Y) * s g / 2^k into a float32 block, and
     dy += dS_blk^T @ X_blk into a float32 [F_R, B_R, D] accumulator (torch.addmm with a
     float32 output), scaled by s g / 2^k once at the end.

So S is computed once in the backward: 2 (forward) + 2 (dS) + 2 (dx) + 2 (dy) = 8 units.
`gemm_cols` instead computes dy in a second sweep over column blocks (dS for all rows of a
block of columns, then dy[cols] = dS^T @ X in one product): 10 units, no float32 dy buffer.

Memory beyond inputs and gradients: one block of dS (its rows chosen from a byte budget,
GCL_TRITON_DS_MB, default 128 MiB, and at most a quarter of the free device memory, never a
fixed row count), the float32 dy accumulator (gemm only, 4 F_R B_R D bytes) and a
[rows, D] float32 block for dx.

Power-of-two scaling of dS: with the weights folded in, dS entries are about w / (B B_R)
(2^-32 at B = 64k), below float16's smallest subnormal (2^-24): rounded to fp16 as they are,
most of them flush to zero. The kernels store dS * 2^k with 2^k chosen on the device so that
the largest possible |dS| (2 max a (rw + cw)) becomes about 2^14, and the gradient products
undo it exactly (2^-k is a power of two). bf16 and fp32 get the same (harmless) scaling.

Tested where: under the Triton 3.8 interpreter on a CPU (both tile-load paths, several row
and column blocks, every field layout, group mask, direction and normalisation, dS rounded to
bf16 / fp16 exactly as the GPU rounds it) and built offline for sm_90 with Triton 3.6 and 3.8
(benchmarks/build_sm90.py); not yet run on a GPU.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._validation import GCLInputs
from . import triton_gcl as _tg
from .triton_gcl import _INTERPRET, _LOG2E, _autotune_enabled, _masked_scores

try:  # host-side tensor descriptors (TMA on Hopper); Triton >= 3.4
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: block pointers only
    TensorDescriptor = None

# Default byte budget of one dS block (GCL_TRITON_DS_MB overrides it); a quarter of the free
# device memory caps it. Tests lower _DS_BLOCK_BYTES to force several blocks.
_DS_BLOCK_MB = 128
_DS_BLOCK_BYTES = None
# Rows (columns) of a block are a multiple of this, so that no tile straddles two blocks'
# worth of buffer; under the interpreter the tiles are 16 wide.
_GPU_ALIGN = 256
_INTERPRET_TILES = {"BM": 16, "BN": 32, "BK": 32, "SPLIT_N": 2}
# Programs of the persistent grid per multiprocessor (a second wave only waits for a slot).
_PROGRAMS_PER_SM = 2
# Programs under the interpreter: few, so that each walks several tiles.
_INTERPRET_PROGRAMS = 3
_TORCH_DT = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# --------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------
@triton.jit
def _ds_epilogue(
    acc,        # [BM, BN] float32 <x_i, y_j> of one tile (or a column slice of it)
    ds_out,     # the kernel's dS output (descriptor or pointer)
    scale2, pow2, lg_ptr, rg_ptr,
    cbias_ptr,  # [P, B] float32 column bias (if HAS_COL)
    rb, dc,     # [BM] float32 row bias and diagonal coefficient of the tile's rows
    p, i_m, row_ok, i0, j0, COL0, COLS, ROWS_PAD, COLS_PAD, B, B_R, B_LG, P,
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
    USE_TMA: tl.constexpr, DS_DTYPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):
    # dS = 2^(S2 - rbias_i) + 2^(S2 - cbias_j) - [i == j] dcoef_i on columns [j0, j0 + BN) of
    # the block; stores dS * 2^k and returns the row sums of dS * S2 (masked: 0 * _MASKED = 0)
    offs_n = j0 + tl.arange(0, BN)
    j_n = COL0 + offs_n
    col_ok = offs_n < COLS
    s2 = _masked_scores(acc, scale2, lg_ptr, rg_ptr, i_m, row_ok, j_n, col_ok, B, B_R, B_LG,
                        HAS_LG, HAS_RG)
    ds = tl.zeros((BM, BN), dtype=tl.float32)
    if HAS_ROW:
        ds += tl.exp2(s2 - rb[:, None])
    if HAS_COL:
        cb = tl.load(cbias_ptr + p * B + j_n, mask=col_ok & (j_n < B), other=float("inf"))
        ds += tl.exp2(s2 - cb[None, :])
    ds -= tl.where(i_m[:, None] == j_n[None, :], dc[:, None], 0.0)
    out = (ds * pow2).to(DS_DTYPE)
    if USE_TMA:
        ds_out.store([p * ROWS_PAD + i0, j0], out)
    else:
        ob = tl.make_block_ptr(ds_out, (P * ROWS_PAD, COLS), (COLS_PAD, 1),
                               (p * ROWS_PAD + i0, j0), (BM, BN), (1, 0))
        tl.store(ob, out, boundary_check=(0, 1))
    return tl.sum(ds * s2, axis=1)


# The block bounds vary from launch to launch (the last block is ragged): not specialised on
# divisibility, so every block runs the same binary instead of compiling a second one.
@triton.jit(do_not_specialize=["ROW0", "ROWS", "COL0", "COLS", "B_BUCKET"])
def _gcl_ds_kernel(
    x_in,       # USE_TMA: descriptor over x as [F_L * B, D], block [BM, BK]; else *x [F_L, B, D]
    y_in,       # USE_TMA: descriptor over y as [F_R * B_R, D], block [BN, BK]; else *y [F_R, B_R, D]
    ds_out,     # USE_TMA: descriptor over dS as [P * ROWS_PAD, COLS], block [BM, BN], row stride
                #   COLS_PAD; else *dS [P, ROWS_PAD, COLS_PAD]. Out: dS * 2^k in DS_DTYPE
    scale_ptr,  # [] float32 logit scale s
    pow2_ptr,   # [] float32 2^k, the power of two dS is stored times
    lg_ptr,     # [B_LG] int64 lhs group ids (read only if HAS_LG)
    rg_ptr,     # [B_R] int64 rhs group ids (read only if HAS_RG)
    rbias_ptr,  # [P, B] float32 row bias lse2_row - log2(a rw) from the forward (if HAS_ROW)
    cbias_ptr,  # [P, B] float32 column bias lse2_col - log2(a cw) (if HAS_COL)
    dcoef_ptr,  # [P, B] float32 a (rw + cw), the diagonal's share of dS
    dsdot_ptr,  # [>= programs] float32 out: per program, sum of dS * <x_i, y_j> over its tiles
    ROW0, ROWS, COL0, COLS, ROWS_PAD, COLS_PAD, B, B_R, B_LG, D, B_BUCKET,
    F_L: tl.constexpr, F_R: tl.constexpr,
    HAS_ROW: tl.constexpr, HAS_COL: tl.constexpr, HAS_LG: tl.constexpr, HAS_RG: tl.constexpr,
    CAST_F32: tl.constexpr, PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
    DS_DTYPE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    SPLIT_N: tl.constexpr,  # 1 or 2: the epilogue's column slices
):
    # For the block rows [ROW0, ROW0 + ROWS) x columns [COL0, COL0 + COLS) of every field
    # pair p = (l, r) (docs/method.md section 1, weights folded into the biases, log2 units):
    #   S2[i, j] = s log2(e) <x[l, i], y[r, j]>, or _MASKED where M[i, j] or padding
    #   dS[i, j] = 2^(S2 - rbias_i) + 2^(S2 - cbias_j) [j < B] - [i == j] dcoef_i
    #   out[p, i - ROW0, j - COL0] = dS[i, j] * 2^k,   dsdot += sum dS * S2 / (s log2 e)
    # B_BUCKET (B rounded up to a power of two) is read only by the autotuner's key.
    P = F_L * F_R
    n_m = tl.cdiv(ROWS, BM)
    n_n = tl.cdiv(COLS, BN)
    per_pair = n_m * n_n
    n_tiles = P * per_pair
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    scale2 = tl.load(scale_ptr) * _LOG2E
    pow2 = tl.load(pow2_ptr)
    offs_m = tl.arange(0, BM)
    dsdot = tl.zeros((BM,), dtype=tl.float32)
    # Persistent: program pid takes tiles pid, pid + n_prog, ...; tiles run down the rows of
    # one column tile first, so the programs in flight share y tiles (the x block is small).
    for t in range(pid, n_tiles, n_prog):
        p = t // per_pair
        rem = t - p * per_pair
        tn = rem // n_m
        tm = rem - tn * n_m
        l = p // F_R
        r = p - l * F_R
        i0 = tm * BM
        j0 = tn * BN
        i_m = ROW0 + i0 + offs_m
        row_ok = i0 + offs_m < ROWS

        acc = tl.zeros((BM, BN), dtype=tl.float32)
        if USE_TMA:
            # rows past B read the next field's rows (or zeros past the end): finite, and
            # masked below by row_ok / col_ok; k >= D reads zeros
            for k in range(0, D, BK):
                xt = x_in.load([l * B + ROW0 + i0, k])
                yt = y_in.load([r * B_R + COL0 + j0, k])
                if CAST_F32:  # the interpreter's 16-bit dot is wrong; the GPU keeps bf16/fp16
                    xt = xt.to(tl.float32)
                    yt = yt.to(tl.float32)
                acc = tl.dot(xt, tl.trans(yt), acc, input_precision=PRECISION)
        else:
            xb = tl.make_block_ptr(x_in + l.to(tl.int64) * B * D, (B, D), (D, 1), (ROW0 + i0, 0),
                                   (BM, BK), (1, 0))
            yb = tl.make_block_ptr(y_in + r.to(tl.int64) * B_R * D, (B_R, D), (D, 1), (COL0 + j0, 0),
                                   (BN, BK), (1, 0))
            for k in range(0, D, BK):
                xt = tl.load(xb, boundary_check=(0, 1), padding_option="zero")
                yt = tl.load(yb, boundary_check=(0, 1), padding_option="zero")
                if CAST_F32:
                    xt = xt.to(tl.float32)
                    yt = yt.to(tl.float32)
                acc = tl.dot(xt, tl.trans(yt), acc, input_precision=PRECISION)
                xb = tl.advance(xb, (0, BK))
                yb = tl.advance(yb, (0, BK))

        rb = tl.zeros((BM,), dtype=tl.float32)
        if HAS_ROW:
            rb = tl.load(rbias_ptr + p * B + i_m, mask=row_ok, other=float("inf"))
        dc = tl.load(dcoef_ptr + p * B + i_m, mask=row_ok, other=0.0)
        # the epilogue in SPLIT_N column slices: fewer float32 temporaries live at once
        if SPLIT_N == 1:
            dsdot += _ds_epilogue(acc, ds_out, scale2, pow2, lg_ptr, rg_ptr, cbias_ptr, rb, dc, p,
                                  i_m, row_ok, i0, j0, COL0, COLS, ROWS_PAD, COLS_PAD, B, B_R, B_LG,
                                  P, HAS_ROW, HAS_COL, HAS_LG, HAS_RG, USE_TMA, DS_DTYPE, BM, BN)
        else:
            a0, a1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            dsdot += _ds_epilogue(a0, ds_out, scale2, pow2, lg_ptr, rg_ptr, cbias_ptr, rb, dc, p,
                                  i_m, row_ok, i0, j0, COL0, COLS, ROWS_PAD, COLS_PAD, B, B_R, B_LG,
                                  P, HAS_ROW, HAS_COL, HAS_LG, HAS_RG, USE_TMA, DS_DTYPE, BM, BN // 2)
            dsdot += _ds_epilogue(a1, ds_out, scale2, pow2, lg_ptr, rg_ptr, cbias_ptr, rb, dc, p,
                                  i_m, row_ok, i0, j0 + BN // 2, COL0, COLS, ROWS_PAD, COLS_PAD, B,
                                  B_R, B_LG, P, HAS_ROW, HAS_COL, HAS_LG, HAS_RG, USE_TMA, DS_DTYPE,
                                  BM, BN // 2)
    tl.store(dsdot_ptr + pid, tl.sum(dsdot, axis=0) / scale2)


# --------------------------------------------------------------------------------------
# Configs and launcher
# --------------------------------------------------------------------------------------
def _set_block_shapes(nargs):
    """Autotune pre-hook: the descriptors' block shapes follow the config being run (the dS
    store goes out one epilogue slice at a time)."""
    bm, bn, bk = nargs["BM"], nargs["BN"], nargs["BK"]
    if TensorDescriptor is not None and isinstance(nargs["x_in"], TensorDescriptor):
        nargs["x_in"].block_shape = [bm, bk]
        nargs["y_in"].block_shape = [bn, bk]
        nargs["ds_out"].block_shape = [bm, bn // nargs["SPLIT_N"]]


def _config(bm, bn, bk, warps, stages, split):
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "SPLIT_N": split}, num_warps=warps,
                         num_stages=stages, pre_hook=_set_block_shapes)


# Curated for Hopper, tensor-core 16-bit inputs; the first is the default with autotune off.
# 128 x 256 on 8 warps: two consumer warpgroups of m64n256 wgmma (the largest instruction);
# 128 x 128 on 4 warps leaves room for two programs per SM, so one's epilogue overlaps the
# other's products. Offline sm_90 builds: docs/triton_kernel.md.
_DS_SHAPES = [
    # BM, BN, BK, warps, stages, epilogue slices
    (128, 256, 64, 8, 3, 2),
    (128, 128, 64, 8, 4, 1),
    (128, 128, 64, 4, 2, 2),
    (256, 128, 64, 8, 3, 2),
]
_DS_CONFIGS = [_config(*s) for s in _DS_SHAPES]
# float32 inputs: operands twice the bytes, and with input_precision "ieee" (the default, no
# tensor cores) the products run on FMA units from registers, where the 16-bit tiles spill
# kilobytes; block pointers then (see _use_tma). Offline builds: 128 x 64 on 8 warps 160
# registers, no spill (ieee, block pointers), 117 registers (tf32, descriptors).
_DS_SHAPES_FP32 = [
    (128, 64, 32, 8, 2, 1),
    (64, 64, 32, 4, 2, 1),
    (128, 128, 32, 8, 2, 2),
]
_DS_CONFIGS_FP32 = [_config(*s) for s in _DS_SHAPES_FP32]


def _prune(configs, named_args, **kwargs):
    if kwargs.get("DS_DTYPE") == tl.float32:
        configs = _DS_CONFIGS_FP32
    dmax = max(16, triton.next_power_of_2(named_args["D"]))
    seen, out = set(), []
    for cfg in configs:
        kw = dict(cfg.kwargs, BK=min(cfg.kwargs["BK"], dmax))
        key = (tuple(sorted(kw.items())), cfg.num_warps, cfg.num_stages)
        if key not in seen:
            seen.add(key)
            out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                     pre_hook=cfg.pre_hook))
    return out if _autotune_enabled() else out[:1]


_DS_TUNE_KEY = ["D", "B_BUCKET", "F_L", "F_R", "HAS_ROW", "HAS_COL", "HAS_LG", "HAS_RG",
                "DS_DTYPE", "USE_TMA"]
if not _INTERPRET:
    # the per-program partials of a config with a larger grid would outlive its timing run
    _ds_tuned = triton.autotune(_DS_CONFIGS, key=_DS_TUNE_KEY, reset_to_zero=["dsdot_ptr"],
                                prune_configs_by={"early_config_prune": _prune})(_gcl_ds_kernel)


def _tma_mode() -> str:
    value = os.environ.get("GCL_TRITON_TMA", "auto")
    if value not in ("auto", "0", "1"):
        raise ValueError(f"GCL_TRITON_TMA: expected auto, 0 or 1, got {value!r}")
    return value


def check_env(device) -> None:
    """Fail on a bad GCL_TRITON_TMA or GCL_TRITON_DS_MB before the forward, not after it."""
    _tma_mode()
    _block_budget(device)


def _use_tma(d: int, esize: int, precision: str = "tf32") -> bool:
    """Tensor descriptors need 16-byte aligned rows (D * esize % 16 == 0) and Hopper or newer;
    not for float32 products on FMA units (precision "ieee"), which spill with them."""
    mode = _tma_mode()
    if TensorDescriptor is None or mode == "0" or (d * esize) % 16:
        return False
    if esize == 4 and precision == "ieee" and not _INTERPRET:
        return False
    if _INTERPRET:
        return True
    return torch.cuda.get_device_capability()[0] >= 9


def _num_programs(device) -> int:
    if _INTERPRET:
        return _INTERPRET_PROGRAMS
    return _PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _block_budget(device) -> int:
    """Bytes one dS block may take: GCL_TRITON_DS_MB (default 128 MiB), at most 1/4 of free memory."""
    if _DS_BLOCK_BYTES is not None:
        return _DS_BLOCK_BYTES
    try:
        mb = float(os.environ.get("GCL_TRITON_DS_MB", _DS_BLOCK_MB))
    except ValueError:
        raise ValueError(f"GCL_TRITON_DS_MB: expected a number of MiB, got {os.environ['GCL_TRITON_DS_MB']!r}")
    if not mb > 0:
        raise ValueError(f"GCL_TRITON_DS_MB: expected a positive number of MiB, got {mb}")
    budget = int(mb * 2 ** 20)
    if device.type == "cuda":
        budget = min(budget, _free_bytes(device) // 4)
    return budget


def _free_bytes(device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    # memory the caching allocator holds but does not use is free for this purpose too
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def block_length(n: int, other: int, p: int, esize: int, device) -> int:
    """Rows (or columns) of one dS block of p x [block, other] values: as many as the byte
    budget holds, a multiple of the alignment, at least one alignment unit, at most n."""
    align = _INTERPRET_TILES["BM"] if _INTERPRET else _GPU_ALIGN
    per = p * _round_up(other, 16) * esize
    budget = _block_budget(device)
    rows = max(align, budget // per // align * align)
    if device.type == "cuda" and rows == align and align * per > _free_bytes(device) // 2:
        raise MemoryError(
            f"impl='triton': one block of {align} rows of dS ({align * per / 2**20:.0f} MiB for "
            f"{p} field pairs x {other} columns) does not fit in half the free device memory; "
            f"use impl='chunked' or fewer columns")
    return min(rows, _round_up(n, align))


_ADDMM_F32 = {}


def _addmm_f32_supported(device, dtype) -> bool:
    """torch.addmm(fp32 C, 16-bit A, 16-bit B, out_dtype=float32) on this device (CUDA, torch >= 2.8)."""
    key = (str(device), dtype)
    if key not in _ADDMM_F32:
        try:
            c = torch.zeros(2, 2, dtype=torch.float32, device=device)
            a = torch.ones(2, 2, dtype=dtype, device=device)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            _ADDMM_F32[key] = bool(c[0, 0] == 2)
        except (TypeError, RuntimeError, NotImplementedError):
            _ADDMM_F32[key] = False
    return _ADDMM_F32[key]


def _mm_f32(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """out (float32) = [out +] a @ b, products of the (possibly 16-bit) operands summed in float32."""
    beta = 1 if accumulate else 0
    if a.dtype == torch.float32:
        torch.addmm(out, a, b, beta=beta, out=out)
    elif a.is_cuda and _addmm_f32_supported(a.device, a.dtype):
        torch.addmm(out, a, b, out_dtype=torch.float32, beta=beta, out=out)
    elif a.is_cuda:  # torch without the mixed addmm: float32 products, 8192 output rows at a time
        for r0 in range(0, a.shape[0], 8192):
            try:
                prod = torch.mm(a[r0:r0 + 8192], b, out_dtype=torch.float32)
            except (TypeError, RuntimeError):
                prod = torch.mm(a[r0:r0 + 8192].float(), b.float())
            o = out[r0:r0 + 8192]
            o.add_(prod) if accumulate else o.copy_(prod)
    else:  # CPU (the interpreter): exact float32 products of the 16-bit values
        torch.addmm(out, a.float(), b.float(), beta=beta, out=out)


def ds_launch_args(inp: GCLInputs, stats, pow2, buf, dsdot, row0: int, rows: int, col0: int,
                   cols: int, rows_pad: int, cols_pad: int, use_tma: bool, tiles=None):
    """(positional args, constexpr kwargs) of one `_gcl_ds_kernel` launch; the build report
    (benchmarks/build_sm90.py) specialises the same list."""
    x, y = inp.x, inp.y
    f_l, f_r, b, b_r, d = inp.shape
    p = f_l * f_r
    fl = _tg._flags(inp)
    rbias, cbias, dcoef = stats
    dev = x.device
    scale = inp.logit_scale.detach().reshape(1).to(torch.float32).contiguous()
    lg = inp.lhs_groups if inp.lhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    rg = inp.rhs_groups if inp.rhs_groups is not None else torch.empty(1, dtype=torch.int64, device=dev)
    b_lg = lg.numel() if inp.lhs_groups is not None else b
    if use_tma:
        t = tiles or {"BM": 64, "BN": 64, "BK": 64, "SPLIT_N": 1}  # reset per config (_set_block_shapes)
        x_in = TensorDescriptor(x, [f_l * b, d], [d, 1], [t["BM"], t["BK"]])
        y_in = TensorDescriptor(y, [f_r * b_r, d], [d, 1], [t["BN"], t["BK"]])
        ds_in = TensorDescriptor(buf, [p * rows_pad, cols], [cols_pad, 1],
                                 [t["BM"], t["BN"] // t.get("SPLIT_N", 1)])
    else:
        x_in, y_in, ds_in = x, y, buf
    args = (x_in, y_in, ds_in, scale, pow2, lg, rg, rbias, cbias, dcoef, dsdot,
            row0, rows, col0, cols, rows_pad, cols_pad, b, b_r, b_lg, d,
            triton.next_power_of_2(b))
    consts = dict(F_L=f_l, F_R=f_r, HAS_ROW=fl["HAS_ROW"], HAS_COL=fl["HAS_COL"],
                  HAS_LG=fl["HAS_LG"], HAS_RG=fl["HAS_RG"], CAST_F32=fl["CAST_F32"],
                  PRECISION=fl["PRECISION"], USE_TMA=use_tma, DS_DTYPE=_TORCH_DT[x.dtype])
    return args, consts


def _launch_ds(inp, stats, pow2, buf, dsdot, row0, rows, col0, cols, rows_pad, cols_pad, use_tma):
    p = inp.x.shape[0] * inp.y.shape[0]
    if _INTERPRET:
        t = dict(_INTERPRET_TILES)
        args, consts = ds_launch_args(inp, stats, pow2, buf, dsdot, row0, rows, col0, cols,
                                      rows_pad, cols_pad, use_tma, t)
        n_tiles = p * triton.cdiv(rows, t["BM"]) * triton.cdiv(cols, t["BN"])
        _gcl_ds_kernel[(min(n_tiles, dsdot.numel()),)](*args, **consts, **t)
        return
    args, consts = ds_launch_args(inp, stats, pow2, buf, dsdot, row0, rows, col0, cols,
                                  rows_pad, cols_pad, use_tma)
    n_max = dsdot.numel()

    def grid(meta):
        return (min(n_max, p * triton.cdiv(rows, meta["BM"]) * triton.cdiv(cols, meta["BN"])),)
    _ds_tuned[grid](*args, **consts)


# --------------------------------------------------------------------------------------
# The backward
# --------------------------------------------------------------------------------------
def gemm_backward(inp: GCLInputs, stats, gout: torch.Tensor, need_dx: bool, need_dy: bool,
                  need_ds: bool, mode: str):
    """dx [F_L, B, D], dy [F_R, B_R, D] (input dtype, None where not needed) and the float32
    0-dim d loss / d logit_scale (None where not needed)."""
    x, y = inp.x, inp.y
    f_l, f_r, b, b_r, d = inp.shape
    p = f_l * f_r
    dev = x.device
    dtype = x.dtype
    esize = x.element_size()
    rbias, cbias, dcoef = stats
    has_row = inp.row_weights is not None
    n_cols = b_r if has_row else b  # without a row term dS is zero on every column j >= B
    s = inp.logit_scale.detach().to(torch.float32).reshape(())
    g = gout.detach().to(torch.float32).reshape(())
    pow2 = _tg._ds_pow2(dcoef).reshape(1)
    unscale = (s * g / pow2).reshape(())  # gradient = (stored dS products) * s g / 2^k
    use_tma = _use_tma(d, esize, _tg._flags(inp)["PRECISION"])
    dsdot = torch.zeros(_num_programs(dev), dtype=torch.float32, device=dev)
    dsum = torch.zeros((), dtype=torch.float32, device=dev)

    dx = torch.empty_like(x) if need_dx else None
    dy = None
    cols_mode = mode == "gemm_cols"
    dyacc = None
    if need_dy and not cols_mode:
        dyacc = torch.zeros((f_r, b_r, d), dtype=torch.float32, device=dev)

    # sweep 1: row blocks x all columns -> dx, the scale's partials and (gemm) dy
    if need_dx or need_ds or dyacc is not None:
        rows = block_length(b, n_cols, p, esize, dev)
        cols_pad = _round_up(n_cols, 16)
        buf = torch.empty(p * rows * cols_pad, dtype=dtype, device=dev)
        ds3 = buf.view(p, rows, cols_pad)
        dxblk = torch.empty((rows, d), dtype=torch.float32, device=dev) if need_dx else None
        for i0 in range(0, b, rows):
            n = min(rows, b - i0)
            _launch_ds(inp, stats, pow2, buf, dsdot, i0, n, 0, n_cols, rows, cols_pad, use_tma)
            dsum += dsdot.sum()
            for l in range(f_l):
                if need_dx:
                    acc = dxblk[:n]
                    for r in range(f_r):
                        _mm_f32(acc, ds3[l * f_r + r, :n, :n_cols], y[r, :n_cols], accumulate=r > 0)
                    torch.mul(acc, unscale, out=dx[l, i0:i0 + n])
                if dyacc is not None:
                    for r in range(f_r):
                        _mm_f32(dyacc[r, :n_cols], ds3[l * f_r + r, :n, :n_cols].T, x[l, i0:i0 + n],
                                accumulate=True)
        del buf, ds3, dxblk
    if dyacc is not None:
        if dtype == torch.float32:
            dy = dyacc.mul_(unscale)
        else:
            dy = torch.empty_like(y)
            torch.mul(dyacc, unscale, out=dy)
        del dyacc

    # sweep 2 (gemm_cols): all rows x column blocks -> dy[cols] = dS^T @ X, no float32 buffer
    if need_dy and cols_mode:
        dy = torch.empty_like(y) if n_cols == b_r else torch.zeros_like(y)
        cols = block_length(n_cols, b, p, esize, dev)
        rows_pad = _round_up(b, _INTERPRET_TILES["BM"] if _INTERPRET else _GPU_ALIGN)
        cols_pad = _round_up(cols, 16)
        buf = torch.empty(p * rows_pad * cols_pad, dtype=dtype, device=dev)
        ds3 = buf.view(p, rows_pad, cols_pad)
        dyblk = torch.empty((cols, d), dtype=torch.float32, device=dev)
        for c0 in range(0, n_cols, cols):
            n = min(cols, n_cols - c0)
            _launch_ds(inp, stats, pow2, buf, dsdot, 0, b, c0, n, rows_pad, cols_pad, use_tma)
            for r in range(f_r):
                acc = dyblk[:n]
                for l in range(f_l):
                    _mm_f32(acc, ds3[l * f_r + r, :b, :n].T, x[l], accumulate=l > 0)
                torch.mul(acc, unscale, out=dy[r, c0:c0 + n])
        del buf, ds3, dyblk

    d_scale = dsum * g if need_ds else None
    return dx, dy, d_scale
