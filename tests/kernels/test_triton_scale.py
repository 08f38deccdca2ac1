"""GPU scale check: impl="triton" (and "chunked", reported only) against a float64-accumulated
reference at B = 16k-64k, bf16 and fp16, with lhs / rhs groups and extra negatives (the first
half of them with query ids of their own, `extra_lhs_groups`).

The float64 reference computes every row and column log-sum-exp, the loss and the logit
scale's gradient over the whole B x B_R matrix in row chunks on the GPU, and the gradients
of a sample of rows (d lhs) and columns (d rhs, extra negatives included) exactly. Inputs
are rounded to the tested dtype first, so the comparison measures the kernels' arithmetic.
Tolerances: GPU_TOLS of tests/kernels/test_gcl_loss_triton.py (from the error model there).

Run by benchmarks/gpu_first_call.sh (stage "scale"); GCL_SCALE_LOG=<file> appends one line
per case (dtype, B, implementation, errors) for its summary. Skipped without CUDA.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# same numbers as GPU_TOLS in test_gcl_loss_triton.py (that module sets up the interpreter
# when imported, so it is not imported here)
TOLS = {torch.float16: dict(loss=1e-4, grad=1e-3), torch.bfloat16: dict(loss=1e-4, grad=5e-3)}
SAMPLES = 64
SCALE = 1 / 0.07
D = 768


def _case(b, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    b_r = b + b // 8  # extra negatives
    x = torch.nn.functional.normalize(torch.randn(b, D, device="cuda", generator=g), dim=-1).to(dtype)
    y = torch.nn.functional.normalize(torch.randn(b_r, D, device="cuda", generator=g), dim=-1).to(dtype)
    w = torch.rand(b, device="cuda", generator=g) * 0.9 + 0.1
    # ~4 rows per query; the first half of the extra columns carry query ids too
    lg = torch.randint(0, b // 4, (b + (b_r - b) // 2,), device="cuda", generator=g)
    rg = torch.randint(0, b_r // 2, (b_r,), device="cuda", generator=g)  # ~2 rows per product
    rows = torch.cat([torch.tensor([0, b - 1], device="cuda"),
                      torch.randperm(b, device="cuda", generator=g)[:SAMPLES - 2]])
    cols = torch.cat([torch.tensor([0, b - 1, b, b_r - 1], device="cuda"),
                      torch.randperm(b_r, device="cuda", generator=g)[:SAMPLES - 4]])
    return dict(x=x, y=y, w=w, lg=lg, rg=rg, rows=rows, cols=cols)


def _mask(lg, rg, rows, cols, b):
    n = lg.numel()
    m = (rg[rows][:, None] == rg[cols][None, :])
    m |= (lg[rows][:, None] == lg[cols.clamp(max=n - 1)][None, :]) & (cols < n)[None, :]
    m &= rows[:, None] != cols[None, :]
    return m


def _reference(c):
    """Loss, d logit_scale, d lhs of c["rows"], d rhs of c["cols"], all accumulated in float64."""
    x, y = c["x"].double(), c["y"].double()
    b, b_r = x.shape[0], y.shape[0]
    rw = (0.5 * c["w"] / b).double()  # direction "both", normalize "batch"
    cw = rw
    all_cols = torch.arange(b_r, device="cuda")
    chunk = max(1, (1 << 28) // b_r)
    lse_row = torch.empty(b, dtype=torch.float64, device="cuda")
    m_col = torch.full((b,), -1e300, dtype=torch.float64, device="cuda")
    l_col = torch.zeros(b, dtype=torch.float64, device="cuda")
    diag = (x * y[:b]).sum(1) * SCALE
    for i0 in range(0, b, chunk):
        rows = torch.arange(i0, min(b, i0 + chunk), device="cuda")
        s = SCALE * (x[rows] @ y.T)
        s.masked_fill_(_mask(c["lg"], c["rg"], rows, all_cols, b), float("-inf"))
        lse_row[rows] = torch.logsumexp(s, 1)
        m_new = torch.maximum(m_col, s[:, :b].amax(0))
        l_col = l_col * torch.exp(m_col - m_new) + torch.exp(s[:, :b] - m_new).sum(0)
        m_col = m_new
    lse_col = m_col + torch.log(l_col)
    loss = (rw * (lse_row - diag)).sum() + (cw * (lse_col - diag)).sum()

    def ds_block(rows, cols):
        s = SCALE * (x[rows] @ y[cols].T)
        s.masked_fill_(_mask(c["lg"], c["rg"], rows, cols, b), float("-inf"))
        ds = rw[rows][:, None] * torch.exp(s - lse_row[rows][:, None])
        inb = cols < b
        cc = cols.clamp(max=b - 1)
        ds += torch.where(inb[None, :], cw[cc][None, :] * torch.exp(s - lse_col[cc][None, :]), 0.0)
        ds -= torch.where(rows[:, None] == cols[None, :], (rw + cw)[rows][:, None], 0.0)
        return ds, s

    d_scale = torch.zeros((), dtype=torch.float64, device="cuda")
    for i0 in range(0, b, chunk):
        rows = torch.arange(i0, min(b, i0 + chunk), device="cuda")
        ds, s = ds_block(rows, all_cols)
        d_scale += torch.where(torch.isfinite(s), ds * s, 0.0).sum() / SCALE
    dx = SCALE * ds_block(c["rows"], all_cols)[0] @ y
    dy = SCALE * ds_block(torch.arange(b, device="cuda"), c["cols"])[0].T @ x
    return float(loss), float(d_scale), dx, dy


def _run(c, impl):
    from gcl_kernels import gcl_loss

    x = c["x"].clone().requires_grad_()
    y = c["y"].clone().requires_grad_()
    s = torch.tensor(SCALE, device="cuda", requires_grad=True)
    b = x.shape[0]
    loss = gcl_loss(x, y, s, weights=c["w"], lhs_groups=c["lg"][:b], rhs_groups=c["rg"], impl=impl,
                    extra_lhs_groups=c["lg"][b:])
    loss.backward()
    return float(loss), float(s.grad), x.grad[c["rows"]].double(), y.grad[c["cols"]].double()


def _rel(a, b):
    if isinstance(a, float):
        return abs(a - b) / abs(b)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("b, dtype", [(16384, torch.bfloat16), (16384, torch.float16),
                                      (32768, torch.float16), (65536, torch.bfloat16)])
def test_scale(monkeypatch, b, dtype):
    monkeypatch.setenv("GCL_TRITON_AUTOTUNE", os.environ.get("GCL_TRITON_AUTOTUNE", "0"))
    c = _case(b, dtype, seed=b)
    ref = _reference(c)
    names = ("loss", "d logit_scale", "d lhs (sampled rows)", "d rhs (sampled columns)")
    errs = {}
    for impl in ("triton", "chunked"):
        got = _run(c, impl)
        errs[impl] = {n: _rel(a, r) for n, a, r in zip(names, got, ref)}
        torch.cuda.empty_cache()
    line = (f"{str(dtype).replace('torch.', '')} B={b} B_R={b + b // 8} D={D} groups+extra: " +
            "; ".join(f"{impl}: " + ", ".join(f"{n} {v:.2e}" for n, v in e.items()) for impl, e in errs.items()))
    print(line)
    log = os.environ.get("GCL_SCALE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")
    tol = TOLS[dtype]
    t = errs["triton"]
    assert t["loss"] < tol["loss"], t
    for n in names[1:]:
        assert t[n] < tol["grad"], (n, t)
