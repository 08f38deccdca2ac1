"""impl="triton" against the reference: loss and every gradient (x, y, logit_scale).

Without CUDA the kernels run under the Triton interpreter (TRITON_INTERPRET=1) on the CPU,
in float32, at tiny shapes, and are compared with the reference in float64 (relative error
under 1e-4). With CUDA the same tests run the compiled kernels, and the GPU-marked tests
add bf16 / fp16 / fp32 at large sizes, every autotune config, and a memory bound.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _interpreter_ready() -> bool:
    """Whether this process can run Triton kernels under the interpreter.

    triton.jit picks the interpreter when a function is defined, and triton.language's own
    helpers (tl.sum, tl.max, tl.zeros) are defined when triton is first imported. So
    TRITON_INTERPRET=1 must be set before triton's first import; when another test module
    imported triton first (open_clip does), the CPU tests rerun in a subprocess instead.
    """
    if "triton" not in sys.modules:
        return True
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language.standard as std

    return isinstance(std.sum, InterpretedFunction)


NEED_SUBPROCESS = not HAS_CUDA and not _interpreter_ready()
if not HAS_CUDA and not NEED_SUBPROCESS:
    _old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        import gcl_kernels.ops.triton_gcl as tg
    finally:
        # restored so the rest of the session sees its own environment; the kernels stay
        # interpreted, and `_route` sets the variable again while each test here runs
        if _old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _old
else:
    pytest.importorskip("triton")
    import gcl_kernels.ops.triton_gcl as tg

from gcl_kernels import gcl_loss  # noqa: E402
from gcl_kernels._validation import GCLInputs, canonicalize  # noqa: E402
from gcl_kernels.ops.reference import reference_gcl_loss  # noqa: E402

# The interpreter evaluates masked lanes too (0 * inf, log2(0)) and numpy warns about them;
# Triton >= 3.7 calls block pointers deprecated (the kernel module says why it keeps them).
pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:tl.make_block_ptr is deprecated:UserWarning"),
]


@pytest.fixture(autouse=True)
def _route(request, monkeypatch):
    """In a process where triton was imported compiled and there is no GPU, every test but
    the subprocess runner is skipped: the runner reruns this file under the interpreter.
    Otherwise, without a GPU, TRITON_INTERPRET=1 is set for the test's duration (the
    interpreter reads it again at launch time)."""
    if NEED_SUBPROCESS:
        if request.node.originalname != "test_interpreter_suite_in_subprocess":
            pytest.skip("triton was imported before this module without TRITON_INTERPRET; "
                        "covered by test_interpreter_suite_in_subprocess")
    elif not HAS_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.skipif(not NEED_SUBPROCESS, reason="this process runs the kernels directly")
def test_interpreter_suite_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.fixture(autouse=True)
def _one_config(monkeypatch):
    """Compiled runs use the cheapest config per key: correctness is config-independent and
    is checked config by config in test_every_gpu_config; autotuning each tiny shape would
    only cost compile time."""
    monkeypatch.setenv("GCL_TRITON_AUTOTUNE", "0")


def _make_case(b, b_r, d, f_l=1, f_r=1, groups=None, scale=10.0, seed=0, zero_weights=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(f_l, b, d, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(f_r, b_r, d, generator=g), dim=-1)
    w = torch.rand(b, generator=g) + 0.05
    fw = torch.rand(f_l, f_r, generator=g) + 0.05
    if zero_weights and b > 2:
        w[1] = 0.0  # a zero weight: its row bias is +inf and its terms vanish
    if zero_weights and f_l * f_r >= 4:
        fw[0, -1] = 0.0  # a zero field pair (only where at least three others remain)
    lg = torch.randint(0, max(2, b // 3), (b,), generator=g) if groups in ("lhs", "both") else None
    rg = torch.randint(0, max(2, b_r // 3), (b_r,), generator=g) if groups in ("rhs", "both") else None
    return dict(x=x, y=y, w=w, fw=fw, lg=lg, rg=rg, scale=scale)


def _run(case, fn, dtype, device, direction="both", normalize="batch", grads=(True, True, True)):
    # fresh leaves: .to() may return the case's own tensor, whose .grad would accumulate
    x = case["x"].detach().to(device=device, dtype=dtype).clone().requires_grad_(grads[0])
    y = case["y"].detach().to(device=device, dtype=dtype).clone().requires_grad_(grads[1])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.tensor(case["scale"], dtype=acc, device=device, requires_grad=grads[2])
    mv = lambda t: None if t is None else t.to(device)  # noqa: E731
    inp = canonicalize(x, y, s, weights=case["w"].to(device=device, dtype=acc),
                       field_weights=case["fw"].to(device=device, dtype=acc),
                       lhs_groups=mv(case["lg"]), rhs_groups=mv(case["rg"]),
                       direction=direction, normalize=normalize)
    loss = fn(inp)
    loss.backward()
    out = [loss.detach()] + [t.grad if t.requires_grad else None for t in (x, y, s)]
    return [None if t is None else t.detach().double().cpu() for t in out]


def _rel(a, b):
    """Relative error in norm; against an exactly-zero reference, the absolute error (a
    gradient that vanishes analytically comes out at rounding level, ~1e-8)."""
    ref = float(b.norm())
    return float((a - b).norm()) / (ref if ref > 1e-9 else 1.0)


def _check(case, tol=1e-4, **kw):
    ref = _run(case, reference_gcl_loss, torch.float64, "cpu", **kw)
    got = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE, **kw)
    for name, a, b in zip(("loss", "d lhs", "d rhs", "d logit_scale"), got, ref):
        assert (a is None) == (b is None), name
        if b is not None:
            err = _rel(a, b)
            assert err < tol, f"{name}: relative error {err:.3g} >= {tol:g}"
    return got


# --------------------------------------------------------------------------------------
# Interpreter (CPU) / compiled (GPU) tests at tiny shapes, float32
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [None, "lhs", "rhs", "both"])
@pytest.mark.parametrize("fields", [(1, 1), (2, 2), (1, 3), (3, 2)])
def test_fields_and_groups(fields, groups):
    # B, B_R, D not multiples of the tiles (16 / 32), D spans several BK and D_OUT chunks
    _check(_make_case(19, 27, 40, *fields, groups=groups, seed=fields[0] * 10 + fields[1]))


@pytest.mark.parametrize("normalize", ["batch", "weights"])
@pytest.mark.parametrize("direction", ["both", "lhs_to_rhs", "rhs_to_lhs"])
def test_directions_and_normalizations(direction, normalize):
    # F_R = 2 with B_R > B: rhs_to_lhs sweeps only the columns j < B of each rhs field
    _check(_make_case(21, 35, 20, 1, 2, groups="both", seed=3), direction=direction,
           normalize=normalize)


@pytest.mark.parametrize("b, b_r, d, groups", [
    (1, 1, 5, None),      # one pair: the loss is 0
    (1, 7, 5, "rhs"),     # one query, six extra negatives
    (2, 2, 1, "lhs"),     # D = 1
    (17, 17, 48, None),   # one row past the tile, D = 3 chunks
])
def test_small_and_ragged(b, b_r, d, groups):
    case = _make_case(b, b_r, d, groups=groups, seed=b + d)
    if b == 1 and b_r == 1:
        ref = _run(case, reference_gcl_loss, torch.float64, "cpu")
        got = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
        for a, r in zip(got, ref):
            assert torch.allclose(a, r, atol=1e-6)
    else:
        _check(case)


def test_four_by_four_fields():
    _check(_make_case(9, 13, 24, 4, 4, groups="both", seed=44))


def test_large_logit_scale():
    # s = 100 (open_clip's clamp): scores span [-100, 100]; exp2 of -inf masks must stay exact
    _check(_make_case(37, 41, 32, 1, 2, groups="both", scale=100.0, seed=5))


@pytest.mark.parametrize("row_groups, col_groups", [(1, 1), (2, 3)])
def test_forward_group_split(monkeypatch, row_groups, col_groups):
    # one group with many row blocks exercises the in-program column merge; several groups
    # exercise the merge of partials across programs
    monkeypatch.setattr(tg, "_FWD_ROW_GROUPS", row_groups)
    monkeypatch.setattr(tg, "_FWD_COL_GROUPS", col_groups)
    _check(_make_case(45, 53, 17, 2, 1, groups="both", seed=7), direction="both")


def test_every_offdiagonal_masked():
    # all queries share one group: each row keeps only its diagonal and the B_R - B extras
    case = _make_case(20, 26, 16, seed=8)
    case["lg"] = torch.zeros(20, dtype=torch.int64)
    _check(case)
    case["rg"] = torch.zeros(26, dtype=torch.int64)  # nothing but the diagonal: loss 0
    ref = _run(case, reference_gcl_loss, torch.float64, "cpu")
    got = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
    for a, r in zip(got, ref):
        assert torch.allclose(a, r, atol=1e-6)


def test_partial_gradients_and_determinism():
    case = _make_case(23, 30, 24, 2, 2, groups="rhs", seed=9)
    ref = _run(case, reference_gcl_loss, torch.float64, "cpu", grads=(True, False, False))
    got = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE, grads=(True, False, False))
    assert got[2] is None and got[3] is None
    assert _rel(got[1], ref[1]) < 1e-4
    only_y = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE, grads=(False, True, False))
    full = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
    again = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
    assert torch.equal(only_y[2], full[2])
    # no atomics anywhere: two runs agree bit for bit
    for a, b in zip(full, again):
        assert torch.equal(a, b)


# --- the opt-in fused backward (GCL_TRITON_BACKWARD=fused): same oracle, same tolerance ---
@pytest.mark.parametrize("fields, groups, direction, normalize", [
    ((1, 1), None, "both", "batch"),
    ((2, 3), "both", "both", "batch"),
    ((3, 2), "lhs", "lhs_to_rhs", "weights"),
    ((1, 2), "rhs", "rhs_to_lhs", "batch"),
])
def test_fused_backward(monkeypatch, fields, groups, direction, normalize):
    monkeypatch.setenv("GCL_TRITON_BACKWARD", "fused")
    # B and B_R ragged against the tiles, B_R > B, D spanning three ragged D_OUT chunks
    case = _make_case(29, 37, 40, *fields, groups=groups, seed=21)
    _check(case, direction=direction, normalize=normalize)


def test_fused_backward_partial_gradients(monkeypatch):
    # one of x, y needing a gradient falls back to that side's split kernel; both agree
    case = _make_case(23, 30, 24, 2, 2, groups="rhs", seed=9)
    monkeypatch.setenv("GCL_TRITON_BACKWARD", "fused")
    fused = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
    only_x = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE, grads=(True, False, True))
    monkeypatch.setenv("GCL_TRITON_BACKWARD", "split")
    split = _run(case, tg.triton_gcl_loss, torch.float32, DEVICE)
    assert torch.equal(fused[0], split[0])  # the same forward
    # dx and d logit_scale: the same row sweep in both modes (tiles may differ on a GPU)
    for a, b in ((fused[1], split[1]), (fused[3], split[3]), (only_x[1], split[1]),
                 (fused[2], split[2])):
        assert _rel(a, b) < 1e-6
    assert only_x[2] is None


def test_rejects_bad_backward_mode(monkeypatch):
    monkeypatch.setenv("GCL_TRITON_BACKWARD", "atomic")
    with pytest.raises(ValueError, match="GCL_TRITON_BACKWARD"):
        tg.triton_gcl_loss(_inputs())


def test_public_entry_point():
    case = _make_case(18, 18, 12, seed=10)
    x = case["x"][0].to(DEVICE).requires_grad_()
    y = case["y"][0].to(DEVICE).requires_grad_()
    loss = gcl_loss(x, y, 10.0, weights=case["w"].to(DEVICE), impl="triton")
    loss.backward()
    xr = case["x"][0].double().requires_grad_()
    yr = case["y"][0].double().requires_grad_()
    ref = gcl_loss(xr, yr, 10.0, weights=case["w"].double(), impl="reference")
    ref.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - ref.item()) < 1e-4 * abs(ref.item())
    assert _rel(x.grad.double().cpu(), xr.grad) < 1e-4
    assert x.grad.dtype == torch.float32


@pytest.mark.skipif(HAS_CUDA, reason="the interpreter's half-precision path only")
@pytest.mark.parametrize("backward", ["split", "fused"])
@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_half_inputs_interpreted(monkeypatch, dtype, tol, backward):
    monkeypatch.setenv("GCL_TRITON_BACKWARD", backward)
    # same rounded inputs for both sides; the error left is the gradient's rounding to dtype
    case = _make_case(19, 22, 24, 1, 2, groups="lhs", seed=11)
    case["x"] = case["x"].to(dtype).float()
    case["y"] = case["y"].to(dtype).float()
    ref = _run(case, reference_gcl_loss, torch.float64, "cpu")
    got = _run(case, tg.triton_gcl_loss, dtype, DEVICE)
    assert _rel(got[0], ref[0]) < 1e-5
    for a, b in zip(got[1:], ref[1:]):
        assert _rel(a, b) < tol


# --------------------------------------------------------------------------------------
# Compiled for Hopper without a GPU: the interpreter cannot catch what only the compiler
# rejects, so each kernel is built for sm_90 (Triton's bundled ptxas) in a clean process.
# --------------------------------------------------------------------------------------
_BUILD_SM90 = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "benchmarks", "build_sm90.py")


def _build_sm90(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, _BUILD_SM90, "--json", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    import json

    return {f"{r['kernel']} {r['dtype']}": r for r in json.loads(lines[-1][len("RESULT "):])}


@pytest.mark.skipif(HAS_CUDA, reason="the GPU tests run the compiled kernels for real")
def test_kernels_build_for_sm90():
    try:
        import triton.backends.nvidia  # noqa: F401
    except Exception:
        pytest.skip("Triton's NVIDIA backend is not installed")
    # every kernel, first config, bf16, multi-field with both group masks; dx in fp32 too
    res = _build_sm90("--dtype", "bf16", "--fields", "2x3", "--groups", "yes")
    res.update(_build_sm90("--dtype", "fp32", "--fields", "1x1", "--kernels", "dx"))
    assert set(res) == {"fwd bf16", "merge bf16", "dx bf16", "dy bf16", "fused bf16", "dx fp32"}
    # the tile products of the hot kernels run on Hopper's warpgroup tensor cores
    for name in ("fwd bf16", "dx bf16", "dy bf16", "fused bf16"):
        assert res[name]["hgmma"] > 0, (name, res[name])
    print({k: (v["regs"], v["spill_bytes"], v["hgmma"]) for k, v in res.items()})


# --------------------------------------------------------------------------------------
# Argument checks at the launcher
# --------------------------------------------------------------------------------------
def _inputs(f_l=1, f_r=1, b=4, d=8, dtype=torch.float32, device=DEVICE):
    x = torch.randn(f_l, b, d, dtype=dtype, device=device)
    y = torch.randn(f_r, b, d, dtype=dtype, device=device)
    return canonicalize(x, y, 10.0)


def test_rejects_float64():
    with pytest.raises(ValueError, match="float64.*impl='chunked'"):
        tg.triton_gcl_loss(_inputs(dtype=torch.float64))
    with pytest.raises(ValueError, match="impl='chunked'"):
        gcl_loss(torch.randn(4, 8, dtype=torch.float64, device=DEVICE),
                 torch.randn(4, 8, dtype=torch.float64, device=DEVICE), 10.0, impl="triton")


def test_rejects_too_many_fields():
    with pytest.raises(ValueError, match="at most 4 fields.*F_L=5"):
        tg.triton_gcl_loss(_inputs(f_l=5))


def test_rejects_large_d():
    with pytest.raises(ValueError, match=f"D <= {tg.MAX_D}, got D={tg.MAX_D + 1}"):
        tg.triton_gcl_loss(_inputs(b=1, d=tg.MAX_D + 1))


def test_rejects_non_contiguous():
    inp = _inputs(b=4, d=8)
    x = torch.randn(1, 8, 4, device=DEVICE).transpose(1, 2)
    bad = GCLInputs(x, inp.y, inp.logit_scale, inp.row_weights, inp.col_weights,
                    inp.field_weights, None, None)
    with pytest.raises(ValueError, match="lhs: .*contiguous"):
        tg.triton_gcl_loss(bad)


def test_rejects_cpu_tensors_when_compiled(monkeypatch):
    monkeypatch.setattr(tg, "_INTERPRET", False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*got device cpu"):
        tg.triton_gcl_loss(_inputs(device="cpu"))


def test_rejects_bad_fp32_precision(monkeypatch):
    monkeypatch.setenv("GCL_TRITON_FP32_PRECISION", "fast")
    with pytest.raises(ValueError, match="GCL_TRITON_FP32_PRECISION"):
        tg.triton_gcl_loss(_inputs())


# --------------------------------------------------------------------------------------
# GPU: large sizes, half precision, every config, memory
# --------------------------------------------------------------------------------------
# Tolerances against the float64 reference on the same (rounded) inputs. bf16 / fp16 round
# dS and the gradients to 8 / 11 mantissa bits; fp32 uses input_precision="ieee".
GPU_TOLS = {
    torch.float32: dict(loss=1e-5, grad=1e-4),
    torch.float16: dict(loss=1e-4, grad=5e-3),
    torch.bfloat16: dict(loss=1e-4, grad=3e-2),
}


def _gpu_check(case, dtype, **kw):
    case = dict(case)
    case["x"] = case["x"].to(dtype).float()
    case["y"] = case["y"].to(dtype).float()
    ref = _run(case, reference_gcl_loss, torch.float64, "cuda", **kw)
    got = _run(case, tg.triton_gcl_loss, dtype, "cuda", **kw)
    tol = GPU_TOLS[dtype]
    assert _rel(got[0], ref[0]) < tol["loss"], ("loss", _rel(got[0], ref[0]))
    for name, a, b in zip(("d lhs", "d rhs", "d logit_scale"), got[1:], ref[1:]):
        assert _rel(a, b) < tol["grad"], (name, _rel(a, b))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("fields, groups", [((1, 1), None), ((2, 2), "both")])
def test_gpu_large(dtype, fields, groups):
    case = _make_case(3000, 3500, 768, *fields, groups=groups, scale=30.0, seed=12)
    _gpu_check(case, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_fused_backward_large(monkeypatch, dtype):
    monkeypatch.setenv("GCL_TRITON_BACKWARD", "fused")
    case = _make_case(3000, 3500, 768, 2, 2, groups="both", scale=30.0, seed=15)
    _gpu_check(case, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("direction", ["lhs_to_rhs", "rhs_to_lhs"])
def test_gpu_directions_large_d(direction):
    case = _make_case(1100, 1333, 2048, 1, 3, groups="rhs", scale=50.0, seed=13)
    _gpu_check(case, torch.bfloat16, direction=direction, normalize="weights")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("fields", [(1, 1), (2, 3)])
def test_every_gpu_config(monkeypatch, fields):
    # autotune may pick any config on some GPU: each one must be right, not only the default.
    # With GCL_TRITON_AUTOTUNE=0 (the fixture) each kernel runs the first config of its list,
    # so a one-config list forces that config.
    # bf16: the tensor-core path that autotuning is for
    case = _make_case(700, 901, 200, *fields, groups="both", seed=14)
    case["x"] = case["x"].to(torch.bfloat16).float()
    case["y"] = case["y"].to(torch.bfloat16).float()
    ref = _run(case, reference_gcl_loss, torch.float64, "cuda")
    tol = GPU_TOLS[torch.bfloat16]
    tuned = (tg._fwd_stats_tuned, tg._bwd_dx_tuned, tg._bwd_dy_tuned, tg._bwd_fused_tuned)
    lists = (tg._FWD_CONFIGS, tg._DX_CONFIGS, tg._DY_CONFIGS, tg._FUSED_CONFIGS)
    try:
        for kernel, configs in zip(tuned, lists):
            monkeypatch.setenv("GCL_TRITON_BACKWARD",
                               "fused" if kernel is tg._bwd_fused_tuned else "split")
            for cfg in configs:
                for other in tuned:
                    other.cache.clear()
                monkeypatch.setattr(kernel, "configs", [cfg])
                got = _run(case, tg.triton_gcl_loss, torch.bfloat16, "cuda")
                assert _rel(got[0], ref[0]) < tol["loss"], ("loss", cfg, _rel(got[0], ref[0]))
                for name, a, b in zip(("d lhs", "d rhs", "d s"), got[1:], ref[1:]):
                    assert _rel(a, b) < tol["grad"], (name, cfg, _rel(a, b))
            monkeypatch.setattr(kernel, "configs", configs)
    finally:
        for other in tuned:
            other.cache.clear()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_gpu_memory_is_linear():
    b, d = 16384, 512
    x = torch.randn(b, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(b, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gcl_loss(x[:256], y[:256], 20.0, impl="triton").backward()  # compile outside the window
    x.grad = y.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = gcl_loss(x, y, 20.0, impl="triton")
    loss.backward()
    torch.cuda.synchronize()
    grads = x.grad.numel() * x.grad.element_size() * 2
    extra = torch.cuda.max_memory_allocated() - base - grads
    naive = b * b * 4  # one float32 B x B matrix, the least the naive loss holds
    assert extra < 0.01 * naive, f"extra {extra / 2**20:.1f} MiB vs naive {naive / 2**20:.0f} MiB"
