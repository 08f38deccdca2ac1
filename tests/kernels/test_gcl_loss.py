"""gcl_loss (reference and chunked), GCLLoss and fuse_fields.

The reference is checked against float64 finite differences (gradcheck) and open_clip's
ClipLoss; the chunked path against both and against the reference, loss and every
gradient, over awkward shapes (B = 1, ragged last block, B_R > B, 1 to 3 fields per side)
with every direction, normalization and group setting, including its exact fallbacks.
"""
import itertools
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import gcl_kernels.ops.chunked as chunked_mod
from gcl_kernels import GCLLoss, fuse_fields, gcl_loss, score_to_weight, triton_available
from gcl_kernels._validation import canonicalize
from gcl_kernels.functional import _resolve_implementation
from gcl_kernels.ops.chunked import chunk_rows, chunked_gcl_loss
from gcl_kernels.ops.reference import reference_gcl_loss

DIRECTIONS = ("both", "lhs_to_rhs", "rhs_to_lhs")
NORMALIZE = ("batch", "weights")


def make_case(gen, f_l=1, f_r=1, b=5, extra=0, d=4, dtype=torch.float64, groups=False, scale=3.0,
              unit=False):
    """Random inputs; groups draw few ids so that masked pairs are common."""
    x = torch.randn(f_l, b, d, generator=gen, dtype=torch.float64)
    y = torch.randn(f_r, b + extra, d, generator=gen, dtype=torch.float64)
    if unit:
        x = torch.nn.functional.normalize(x, dim=-1)
        y = torch.nn.functional.normalize(y, dim=-1)
    w = torch.rand(b, generator=gen, dtype=torch.float64) + 0.1
    fw = torch.rand(f_l, f_r, generator=gen, dtype=torch.float64) + 0.05
    lg = torch.randint(0, 3, (b,), generator=gen) if groups else None
    rg = torch.randint(0, 4, (b + extra,), generator=gen) if groups else None
    return dict(lhs=x.to(dtype), rhs=y.to(dtype), logit_scale=scale, weights=w, field_weights=fw,
                lhs_groups=lg, rhs_groups=rg)


def loss_and_grads(case, impl, block_elements=None, **opts):
    x = case["lhs"].detach().clone().requires_grad_(True)
    y = case["rhs"].detach().clone().requires_grad_(True)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = torch.tensor(float(case["logit_scale"]), dtype=acc, requires_grad=True)
    kw = {k: v for k, v in case.items() if k not in ("lhs", "rhs", "logit_scale")}
    kw.update(opts)
    if impl == "chunked" and block_elements is not None:
        loss = chunked_gcl_loss(canonicalize(x, y, s, **kw), block_elements=block_elements)
    else:
        loss = gcl_loss(x, y, s, impl=impl, **kw)
    gx, gy, gs = torch.autograd.grad(loss, (x, y, s))
    return loss.detach(), gx, gy, gs


def assert_close_all(got, want, rtol, atol):
    for name, a, b in zip(("loss", "d_lhs", "d_rhs", "d_scale"), got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# --------------------------------------------------------------------------- chunked == reference


@pytest.mark.parametrize("groups", [False, True])
@pytest.mark.parametrize("normalize", NORMALIZE)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_matches_reference_all_shapes(gen, direction, normalize, groups):
    """Every F_L, F_R in {1, 2, 3}, B in {1, 5, 11}, B_R - B in {0, 3}; blocks of 2 to 4 rows."""
    for f_l, f_r, b, extra in itertools.product((1, 2, 3), (1, 2, 3), (1, 5, 11), (0, 3)):
        case = make_case(gen, f_l, f_r, b, extra, groups=groups)
        n_cols = b + extra if direction != "rhs_to_lhs" else b
        block = 3 * n_cols  # 3 rows per block: B = 5 and 11 leave a ragged last block
        assert chunk_rows(n_cols, b, block) == min(b, 3)
        want = loss_and_grads(case, "reference", direction=direction, normalize=normalize)
        got = loss_and_grads(case, "chunked", block, direction=direction, normalize=normalize)
        assert_close_all(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_default_entry_point_and_zero_weight_pairs(gen, monkeypatch):
    """gcl_loss(impl="chunked") with a small module default block; zero field pairs skipped."""
    monkeypatch.setattr(chunked_mod, "DEFAULT_BLOCK_ELEMENTS", 4 * 9)
    case = make_case(gen, 2, 3, b=7, extra=2, groups=True)
    case["field_weights"] = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.5]], dtype=torch.float64)
    want = loss_and_grads(case, "reference")
    got = loss_and_grads(case, "chunked")
    assert_close_all(got, want, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- gradcheck (float64)

GRADCHECK_CASES = [
    # f_l, f_r, b, extra, direction, normalize, groups
    (1, 1, 1, 0, "both", "batch", False),
    (1, 1, 1, 2, "lhs_to_rhs", "weights", False),
    (1, 1, 5, 0, "both", "weights", True),
    (2, 1, 5, 2, "rhs_to_lhs", "batch", True),
    (1, 2, 7, 1, "lhs_to_rhs", "batch", True),
    (3, 2, 5, 3, "both", "batch", False),
    (2, 3, 4, 1, "rhs_to_lhs", "weights", False),
    (3, 3, 3, 2, "both", "weights", True),
]


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("f_l,f_r,b,extra,direction,normalize,groups", GRADCHECK_CASES)
def test_gradcheck_float64(gen, impl, f_l, f_r, b, extra, direction, normalize, groups):
    case = make_case(gen, f_l, f_r, b, extra, d=3, groups=groups)
    kw = dict(weights=case["weights"], field_weights=case["field_weights"], lhs_groups=case["lhs_groups"],
              rhs_groups=case["rhs_groups"], direction=direction, normalize=normalize)
    block = 2 * (b + extra)  # 2-row blocks: ragged for odd B

    def fn(x, y, s):
        inp = canonicalize(x, y, s, **kw)
        return reference_gcl_loss(inp) if impl == "reference" else chunked_gcl_loss(inp, block)

    x = case["lhs"].clone().requires_grad_(True)
    y = case["rhs"].clone().requires_grad_(True)
    s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, y, s), eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- slow paths and extremes


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_chunked_exact_fallbacks_forced(gen, monkeypatch, direction):
    """With limits that reject every fast path, the exact column recompute and the
    two-exponential backward run everywhere and still match the reference."""
    calls = []
    real = chunked_mod._exact_col_lse
    monkeypatch.setattr(chunked_mod, "_exact_col_lse", lambda *a: calls.append(1) or real(*a))
    strict = chunked_mod._Limits(col_floor=math.inf, pair_gap=-math.inf, row_spread=-math.inf)
    monkeypatch.setattr(chunked_mod, "_LIMITS", {torch.float64: strict, torch.float32: strict})
    for f_l, f_r, b, extra, groups in [(1, 1, 1, 0, False), (2, 2, 9, 3, True), (1, 3, 6, 0, True)]:
        case = make_case(gen, f_l, f_r, b, extra, groups=groups)
        want = loss_and_grads(case, "reference", direction=direction)
        got = loss_and_grads(case, "chunked", 2 * (b + extra), direction=direction)
        assert_close_all(got, want, rtol=1e-10, atol=1e-12)
    assert bool(calls) == (direction != "lhs_to_rhs")


def _extreme_float32_case():
    """s = 100; rows 0-11 match their pair (logit ~ +100) except column 5, whose rhs is
    orthogonal to everything (logits ~ 0, i.e. ~100 below the row maxima: exp(-100) is
    below float32's normal range). Pair 3 points the other way from the rest."""
    gen = torch.Generator().manual_seed(7)
    b, d = 12, 6
    base = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    x = torch.nn.functional.normalize(base + 0.05 * torch.randn(b, d, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(base + 0.05 * torch.randn(b, d, generator=gen), dim=-1)
    x[3], y[3] = -x[3], -y[3]
    v = torch.randn(d, generator=gen)
    y[5] = torch.nn.functional.normalize(v - (v @ base) * base, dim=0)
    return dict(lhs=x, rhs=y, logit_scale=100.0, weights=torch.rand(b, generator=gen) + 0.1,
                field_weights=None, lhs_groups=None, rhs_groups=None)


def test_chunked_float32_extreme_logits_use_exact_paths(monkeypatch):
    """The one-exponential shortcuts fail on this case (the column sum underflows, the
    rank-one rescale overflows); the chunked loss must notice, take the exact paths and
    match a float64 reference of the same inputs."""
    case = _extreme_float32_case()
    want = loss_and_grads(dict(case, lhs=case["lhs"].double(), rhs=case["rhs"].double()), "reference")
    calls = []
    real = chunked_mod._exact_col_lse
    monkeypatch.setattr(chunked_mod, "_exact_col_lse", lambda *a: calls.append(1) or real(*a))
    got = loss_and_grads(case, "chunked", 4 * 12)
    assert calls, "the exact column recompute should have run"
    assert_close_all(got, want, rtol=2e-4, atol=2e-4)

    # Without the limits the same inputs go wrong: the slow paths above were needed.
    lax = chunked_mod._Limits(col_floor=0.0, pair_gap=math.inf, row_spread=math.inf)
    monkeypatch.setattr(chunked_mod, "_LIMITS", {torch.float32: lax, torch.float64: lax})
    bad = loss_and_grads(case, "chunked", 4 * 12)
    wrong = [not torch.isfinite(t).all() or not torch.allclose(t.double(), w, rtol=1e-2, atol=1e-2)
             for t, w in zip(bad[1:], want[1:])]
    assert any(wrong)


def test_chunked_never_holds_a_batch_by_batch_matrix(gen):
    """No op in forward or backward produces a tensor near B x B_R elements."""
    b, extra, d, block = 120, 30, 4, 30 * 150

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    case = make_case(gen, 1, 1, b, extra, d=d, dtype=torch.float32, groups=True)
    x = case["lhs"].requires_grad_(True)
    y = case["rhs"].requires_grad_(True)
    with Largest():
        loss = chunked_gcl_loss(canonicalize(x, y, 10.0, case["weights"], None, case["lhs_groups"],
                                             case["rhs_groups"]), block_elements=block)
        loss.backward()
    assert Largest.largest <= block, (Largest.largest, block)
    assert Largest.largest <= b * (b + extra) // 4


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_chunked_low_precision_against_float64(gen, dtype, rtol):
    """Half inputs: S in float32, loss float32, gradients in the input dtype."""
    case = make_case(gen, 2, 2, b=37, extra=5, d=16, dtype=dtype, groups=True, scale=14.0, unit=True)
    got = loss_and_grads(case, "chunked", 8 * 42)
    ref_case = dict(case, lhs=case["lhs"].double(), rhs=case["rhs"].double())
    want = loss_and_grads(ref_case, "reference")
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype and got[2].dtype == dtype
    assert got[3].dtype == torch.float32
    ref32 = loss_and_grads(case, "reference")
    for impl_out in (got, ref32):
        torch.testing.assert_close(impl_out[0].double(), want[0], rtol=rtol, atol=rtol)
        for a, b_ in zip(impl_out[1:], want[1:]):
            scale = float(b_.abs().max())
            torch.testing.assert_close(a.double(), b_, rtol=0, atol=rtol * 4 * scale)


def test_partial_gradients(gen):
    """Only rhs, or only the logit scale, requires grad: same values as with all of them."""
    case = make_case(gen, 2, 1, b=6, extra=1, groups=True)
    full = loss_and_grads(case, "reference")
    y = case["rhs"].clone().requires_grad_(True)
    gy, = torch.autograd.grad(gcl_loss(case["lhs"], y, 3.0, case["weights"], case["field_weights"],
                                       case["lhs_groups"], case["rhs_groups"], impl="chunked"), (y,))
    torch.testing.assert_close(gy, full[2], rtol=1e-10, atol=1e-12)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    gs, = torch.autograd.grad(gcl_loss(case["lhs"], case["rhs"], s, case["weights"], case["field_weights"],
                                       case["lhs_groups"], case["rhs_groups"], impl="chunked"), (s,))
    torch.testing.assert_close(gs, full[3], rtol=1e-10, atol=1e-12)


def test_fully_masked_rows_give_zero_terms(gen):
    """All pairs share a query id: every off-diagonal entry is masked and the loss is 0."""
    case = make_case(gen, 1, 1, b=6, extra=0, groups=True)
    case["lhs_groups"] = torch.zeros(6, dtype=torch.int64)
    case["rhs_groups"] = None
    for impl in ("reference", "chunked"):
        loss, gx, gy, gs = loss_and_grads(case, impl)
        assert float(loss) == pytest.approx(0.0, abs=1e-12)
        assert float(gx.abs().max()) < 1e-12 and float(gs.abs()) < 1e-12


# --------------------------------------------------------------------------- open_clip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("impl", ["reference", "chunked", "auto"])
def test_equals_open_clip_clip_loss(gen, impl, dtype):
    from open_clip.loss import ClipLoss

    b, d = 13, 8
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=dtype), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=dtype), dim=-1)
    results = []
    for fn in (lambda a, t, s: ClipLoss()(a, t, s), lambda a, t, s: gcl_loss(a, t, s, impl=impl)):
        a = img.clone().requires_grad_(True)
        t = txt.clone().requires_grad_(True)
        s = torch.tensor(1 / 0.07, dtype=dtype, requires_grad=True)
        loss = fn(a, t, s)
        results.append((loss.detach(),) + torch.autograd.grad(loss, (a, t, s)))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert_close_all(results[1], results[0], rtol=tol, atol=tol)


# --------------------------------------------------------------------------- properties (hypothesis)

shape_st = st.tuples(st.integers(1, 9), st.integers(0, 3), st.integers(1, 5), st.integers(1, 2),
                     st.integers(1, 2))
prop_settings = settings(max_examples=25, deadline=None, derandomize=True)


def _hyp_case(seed, shape, groups, scale=4.0):
    b, extra, d, f_l, f_r = shape
    return make_case(torch.Generator().manual_seed(seed), f_l, f_r, b, extra, d, groups=groups, scale=scale)


@prop_settings
@given(seed=st.integers(0, 2**31 - 1), shape=shape_st, groups=st.booleans(),
       direction=st.sampled_from(DIRECTIONS), normalize=st.sampled_from(NORMALIZE),
       impl=st.sampled_from(["reference", "chunked"]))
def test_property_batch_permutation_invariance(seed, shape, groups, direction, normalize, impl):
    case = _hyp_case(seed, shape, groups)
    b = case["lhs"].shape[1]
    g = torch.Generator().manual_seed(seed + 1)
    perm = torch.randperm(b, generator=g)
    # Extra negatives may be reordered among themselves as well.
    perm_r = torch.cat([perm, b + torch.randperm(case["rhs"].shape[1] - b, generator=g)])
    moved = dict(case, lhs=case["lhs"][:, perm], rhs=case["rhs"][:, perm_r], weights=case["weights"][perm],
                 lhs_groups=None if not groups else case["lhs_groups"][perm],
                 rhs_groups=None if not groups else case["rhs_groups"][perm_r])
    kw = dict(direction=direction, normalize=normalize, impl=impl)
    args = lambda c: (c["lhs"], c["rhs"], c["logit_scale"], c["weights"], c["field_weights"],
                      c["lhs_groups"], c["rhs_groups"])
    a, b_ = gcl_loss(*args(case), **kw), gcl_loss(*args(moved), **kw)
    assert float(a) == pytest.approx(float(b_), rel=1e-10, abs=1e-12)


@prop_settings
@given(seed=st.integers(0, 2**31 - 1), shape=shape_st, groups=st.booleans(),
       direction=st.sampled_from(DIRECTIONS), factor=st.floats(1e-3, 1e3),
       impl=st.sampled_from(["reference", "chunked"]))
def test_property_weight_scale_invariance_under_weights_normalization(seed, shape, groups, direction, factor,
                                                                      impl):
    case = _hyp_case(seed, shape, groups)
    kw = dict(field_weights=case["field_weights"], lhs_groups=case["lhs_groups"], rhs_groups=case["rhs_groups"],
              direction=direction, normalize="weights", impl=impl)
    a = gcl_loss(case["lhs"], case["rhs"], 4.0, weights=case["weights"], **kw)
    b_ = gcl_loss(case["lhs"], case["rhs"], 4.0, weights=case["weights"] * factor, **kw)
    assert float(a) == pytest.approx(float(b_), rel=1e-9, abs=1e-12)


@prop_settings
@given(seed=st.integers(0, 2**31 - 1), shape=shape_st, groups=st.booleans(),
       direction=st.sampled_from(DIRECTIONS), normalize=st.sampled_from(NORMALIZE),
       scale=st.floats(0.01, 100.0), aligned=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64]), impl=st.sampled_from(["reference", "chunked"]))
def test_property_loss_never_negative(seed, shape, groups, direction, normalize, scale, aligned, dtype, impl):
    case = _hyp_case(seed, shape, groups, scale)
    x, y = case["lhs"], case["rhs"]
    if aligned:  # near-perfect matches: every term is tiny, where rounding could dip below 0
        y = y.clone()
        y[:, : x.shape[1]] = x.mean(0, keepdim=True) * 10
        x = x * 10
    loss = gcl_loss(x.to(dtype), y.to(dtype), scale, case["weights"], case["field_weights"], case["lhs_groups"],
                    case["rhs_groups"], direction=direction, normalize=normalize, impl=impl)
    assert torch.isfinite(loss) and float(loss) >= 0.0


# --------------------------------------------------------------------------- bad input


def _bad_cases():
    b, d = 4, 3
    x, y = torch.randn(b, d), torch.randn(b + 1, d)
    meta = torch.device("meta")
    nan_x = x.clone()
    nan_x[1, 2] = float("nan")
    inf_y = y.clone()
    inf_y[0, 0] = float("inf")
    ok = dict(lhs=x, rhs=y, logit_scale=10.0)
    return [
        ("mismatched D", dict(ok, rhs=torch.randn(b, d + 1)), r"rhs: embedding dimension D=4 does not match lhs D=3"),
        ("mismatched dtype", dict(ok, rhs=y.double()), r"rhs: dtype torch.float64 does not match lhs dtype torch.float32"),
        ("mismatched device", dict(ok, rhs=torch.empty(b, d, device=meta)), r"rhs: device meta does not match"),
        ("B_R < B", dict(ok, rhs=y[:2]), r"rhs: expected B_R >= B .* got B_R=2 < B=4"),
        ("empty batch", dict(ok, lhs=x[:0]), r"lhs: empty batch"),
        ("3-D rhs of wrong rank", dict(ok, rhs=y[None, None]), r"rhs: expected shape"),
        ("integer embeddings", dict(ok, lhs=torch.ones(b, d, dtype=torch.int64)), r"lhs: expected a floating dtype"),
        ("numpy embeddings", dict(ok, lhs=x.numpy()), r"lhs: expected a torch.Tensor"),
        ("weights shape", dict(ok, weights=torch.ones(b + 1)), r"weights: expected shape \[B\]=\[4\], got \(5,\)"),
        ("weights negative", dict(ok, weights=torch.tensor([1.0, -0.5, 1.0, 1.0])), r"weights: expected non-negative"),
        ("weights nan", dict(ok, weights=torch.tensor([1.0, float("nan"), 1.0, 1.0])), r"weights: contains NaN"),
        ("weights inf", dict(ok, weights=torch.tensor([1.0, float("inf"), 1.0, 1.0])), r"weights: contains NaN or inf"),
        ("weights device", dict(ok, weights=torch.ones(b, device=meta)), r"weights: expected device cpu"),
        ("weights list", dict(ok, weights=[1.0] * b), r"weights: expected a tensor"),
        ("weights sum zero", dict(ok, weights=torch.zeros(b), normalize="weights"), r"weights: normalize='weights' needs"),
        ("weights sum overflow", dict(ok, weights=torch.full((b,), 3e38), normalize="weights"), r"weights: the sum overflows"),
        ("field weights shape", dict(ok, field_weights=torch.ones(2, 1)), r"field_weights: expected shape \[F_L, F_R\]=\[1, 1\]"),
        ("field weights negative", dict(ok, lhs=x.expand(2, b, d), field_weights=torch.tensor([[1.0], [-1.0]])),
         r"field_weights: expected non-negative"),
        ("field weights all zero", dict(ok, field_weights=torch.zeros(1, 1)), r"field_weights: all zero"),
        ("field weights nan", dict(ok, field_weights=torch.tensor([[float("nan")]])), r"field_weights: contains NaN"),
        ("field weights junk", dict(ok, field_weights="abc"), r"field_weights: expected a tensor"),
        ("lhs groups shape", dict(ok, lhs_groups=torch.arange(b + 1)), r"lhs_groups: expected shape \[B\]=\[4\]"),
        ("rhs groups shape", dict(ok, rhs_groups=torch.arange(b)), r"rhs_groups: expected shape \[B_R\]=\[5\]"),
        ("groups float", dict(ok, lhs_groups=torch.zeros(b)), r"lhs_groups: expected integer ids"),
        ("groups bool", dict(ok, rhs_groups=torch.zeros(b + 1, dtype=torch.bool)), r"rhs_groups: expected integer ids"),
        ("groups list", dict(ok, lhs_groups=[0] * b), r"lhs_groups: expected an integer tensor"),
        ("groups device", dict(ok, lhs_groups=torch.zeros(b, dtype=torch.int64, device=meta)), r"lhs_groups: expected device"),
        ("scale nan", dict(ok, logit_scale=float("nan")), r"logit_scale: expected a finite positive"),
        ("scale inf", dict(ok, logit_scale=torch.tensor(float("inf"))), r"logit_scale: expected a finite positive"),
        ("scale zero", dict(ok, logit_scale=0.0), r"logit_scale: expected a finite positive multiplier, got 0.0"),
        ("scale negative", dict(ok, logit_scale=torch.tensor(-2.0)), r"logit_scale: expected a finite positive"),
        ("scale vector", dict(ok, logit_scale=torch.ones(2)), r"logit_scale: expected a float or a 0-dim tensor"),
        ("scale string", dict(ok, logit_scale="10"), r"logit_scale: expected a float or a 0-dim tensor"),
        ("scale bool", dict(ok, logit_scale=True), r"logit_scale: expected a float or a 0-dim tensor"),
        ("lhs nan", dict(ok, lhs=nan_x), r"lhs: contains NaN or infinite"),
        ("rhs inf", dict(ok, rhs=inf_y), r"rhs: contains NaN or infinite"),
        ("direction", dict(ok, direction="left"), r"direction: expected one of .* got 'left'"),
        ("normalize", dict(ok, normalize="sum"), r"normalize: expected one of .* got 'sum'"),
        ("impl", dict(ok, impl="cuda"), r"impl: expected one of .* got 'cuda'"),
    ]


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("name,kwargs,match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_raises_value_error(name, kwargs, match, impl):
    kwargs = dict(kwargs)
    kwargs.setdefault("impl", impl)
    with pytest.raises(ValueError, match=match):
        gcl_loss(**kwargs)


def test_block_elements_must_be_positive(gen):
    inp = canonicalize(torch.randn(3, 2), torch.randn(3, 2), 1.0)
    with pytest.raises(ValueError, match="block_elements: expected a positive int, got 0"):
        chunked_gcl_loss(inp, block_elements=0)


def test_overflowing_logits_raise_instead_of_nan():
    x = torch.full((3, 2), 1e19)
    with pytest.raises(FloatingPointError, match="overflow"):
        gcl_loss(x, x.clone(), 10.0, impl="chunked")


def test_auto_resolves_to_chunked_without_cuda():
    assert _resolve_implementation("auto", torch.device("cpu")) == "chunked"
    assert _resolve_implementation("reference", torch.device("cpu")) == "reference"
    assert isinstance(triton_available(), bool)


# --------------------------------------------------------------------------- GCLLoss


def test_gcl_loss_module_scores_scale_and_gradients(gen):
    mod = GCLLoss(weight_fn="power", s_max=100, weight_params={"gamma": 2.0}, impl="chunked")
    assert float(mod.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-6)
    x = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(7, 8, generator=gen), dim=-1)
    scores = [100, 80, 60, 40, 20, 1]
    loss = mod(x, y, scores=scores)
    want = gcl_loss(x, y, 1 / 0.07, weights=score_to_weight(scores, "power", 100, gamma=2.0), impl="reference")
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    loss.backward()
    assert mod.logit_scale.grad is not None and torch.isfinite(mod.logit_scale.grad)
    # d loss / d log_scale = s * d loss / d s
    s = torch.tensor(1 / 0.07, requires_grad=True)
    ds, = torch.autograd.grad(gcl_loss(x, y, s, weights=score_to_weight(scores, "power", 100, gamma=2.0)), (s,))
    assert float(mod.logit_scale.grad) == pytest.approx(float(ds) / 0.07, rel=1e-4)


def test_gcl_loss_module_clamp_buffer_and_state(gen):
    mod = GCLLoss(max_logit_scale=50.0)
    with torch.no_grad():
        mod.logit_scale.fill_(math.log(500.0))
    assert float(mod.scale().detach()) == pytest.approx(50.0)
    x = torch.randn(4, 5, generator=gen)
    mod(x, x.clone()).backward()
    assert float(mod.logit_scale.grad) == 0.0  # clamped: no gradient pushes it further

    frozen = GCLLoss(learn_logit_scale=False, init_logit_scale=20.0, field_weights=[[1.0, 3.0]])
    assert "logit_scale" in dict(frozen.named_buffers()) and not list(frozen.parameters())
    assert set(frozen.state_dict()) == {"logit_scale", "field_weights"}
    x, y = torch.randn(4, 5, generator=gen), torch.randn(2, 4, 5, generator=gen)
    loss = frozen(x, y)
    assert loss.grad_fn is None  # nothing to learn
    want = gcl_loss(x, y, 20.0, field_weights=torch.tensor([[1.0, 3.0]]), impl="reference")
    assert float(loss) == pytest.approx(float(want), rel=1e-5)

    fresh = GCLLoss(learn_logit_scale=False, field_weights=[[1.0, 1.0]])
    fresh.load_state_dict(frozen.state_dict())
    assert float(fresh.scale()) == pytest.approx(20.0, rel=1e-6)
    assert fresh.field_weights.tolist() == [[1.0, 3.0]]


def test_gcl_loss_module_matches_functional_with_fields(gen):
    fw = torch.tensor([[0.9, 0.1], [0.5, 0.0]])
    mod = GCLLoss(direction="lhs_to_rhs", normalize="weights", field_weights=fw, init_logit_scale=7.0, impl="chunked")
    x, y = torch.randn(2, 5, 6, generator=gen), torch.randn(2, 8, 6, generator=gen)
    w = torch.rand(5, generator=gen)
    g = torch.tensor([0, 0, 1, 2, 2])
    got = mod(x, y, weights=w, lhs_groups=g)
    want = gcl_loss(x, y, 7.0, w, fw, g, None, "lhs_to_rhs", "weights", impl="reference")
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_fn="cubic"), r"weight_fn: expected one of"),
    (dict(weight_fn="power"), r"power: missing parameter\(s\) \['gamma'\]"),
    (dict(weight_fn="linear", weight_params={"gamma": 2}), r"linear: unknown parameter"),
    (dict(s_max=-1), r"s_max: expected a number > 0"),
    (dict(direction="up"), r"direction: expected one of"),
    (dict(normalize="l2"), r"normalize: expected one of"),
    (dict(impl="fast"), r"impl: expected one of"),
    (dict(init_logit_scale=0.0), r"init_logit_scale: expected a finite number > 0"),
    (dict(init_logit_scale=200.0), r"init_logit_scale: 200.0 exceeds max_logit_scale=100"),
    (dict(max_logit_scale=float("inf")), r"max_logit_scale: expected a finite number > 0 or None"),
    (dict(field_weights=[1.0, 2.0]), r"field_weights: expected an \[F_L, F_R\] array"),
    (dict(field_weights=[[0.0, -1.0]]), r"field_weights: expected an \[F_L, F_R\] array of finite non-negative"),
    (dict(field_weights="x"), r"field_weights: expected an \[F_L, F_R\] array of numbers"),
])
def test_gcl_loss_module_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GCLLoss(**kwargs)


def test_gcl_loss_module_scores_and_weights_together_rejected(gen):
    x = torch.randn(3, 4, generator=gen)
    with pytest.raises(ValueError, match="scores, weights: give one of them"):
        GCLLoss()(x, x, scores=[1, 2, 3], weights=torch.ones(3))


# --------------------------------------------------------------------------- fuse_fields


def test_fuse_fields_weighted_mean_with_missing_fields(gen):
    img, title = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    title[1] = float("nan")  # a placeholder for a missing field must not leak in
    img[2] = 0.0
    out = fuse_fields(torch.stack([img, title]), [0.9, 0.1], present)
    n = torch.nn.functional.normalize
    want0 = n(0.9 * n(img[0], dim=0) + 0.1 * n(title[0], dim=0), dim=0)
    torch.testing.assert_close(out[0], want0)
    torch.testing.assert_close(out[1], n(img[1], dim=0))
    torch.testing.assert_close(out[2], n(title[2], dim=0))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))


def test_fuse_fields_per_row_weights_gradient_and_dtype(gen):
    emb = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, 3, generator=gen, dtype=torch.float64)
    w[0] = torch.tensor([0.0, 2.0, 0.0])
    out = fuse_fields(emb, w)
    torch.testing.assert_close(out[0], torch.nn.functional.normalize(emb[1, 0], dim=0))
    assert torch.autograd.gradcheck(lambda e: fuse_fields(e, w), (emb,))
    half = fuse_fields(emb.detach().to(torch.bfloat16), w)
    assert half.dtype == torch.bfloat16 and half.shape == (5, 6)
    torch.testing.assert_close(half.double(), out.detach(), rtol=0, atol=2e-2)


@pytest.mark.parametrize("args,match", [
    ((torch.randn(5, 6), [1.0]), r"emb: expected a float tensor of shape \[F, B, D\]"),
    ((torch.randn(2, 5, 6), [1.0]), r"field_weights: expected shape \[F\]=\[2\] or \[B, F\]=\[5, 2\]"),
    ((torch.randn(2, 5, 6), [1.0, -1.0]), r"field_weights: expected non-negative"),
    ((torch.randn(2, 5, 6), [1.0, float("nan")]), r"field_weights: contains NaN"),
    ((torch.randn(2, 5, 6), [0.0, 0.0]), r"5 row\(s\) have no present field with a positive weight"),
    ((torch.randn(2, 3, 6), [1.0, 0.0], torch.tensor([[1, 1], [0, 1], [1, 0]])),
     r"1 row\(s\) have no present field .*first: \[1\]"),
    ((torch.randn(2, 3, 6), [1.0, 1.0], torch.ones(3, 3, dtype=torch.bool)), r"present_mask: expected a \[B, F\]"),
    ((torch.randn(2, 3, 6), [1.0, 1.0], torch.full((3, 2), 2)), r"present_mask: expected bool or 0/1"),
    ((torch.stack([torch.ones(2, 3), -torch.ones(2, 3)]), [1.0, 1.0]), r"emb: the weighted mean .* zero vector"),
    ((torch.full((1, 2, 3), float("inf")), [1.0]), r"emb: a present field with a positive weight contains NaN"),
])
def test_fuse_fields_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        fuse_fields(*args)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2), (torch.float16, 1e-2)])
def test_chunked_cuda_matches_reference(gen, dtype, rtol):
    case = make_case(gen, 2, 1, b=301, extra=17, d=64, dtype=torch.float64, groups=True, scale=20.0, unit=True)
    want = loss_and_grads(case, "reference")
    cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    cuda["lhs"], cuda["rhs"] = cuda["lhs"].to(dtype), cuda["rhs"].to(dtype)
    got = loss_and_grads(cuda, "chunked", 64 * 318)
    assert got[1].dtype == dtype and got[1].is_cuda
    torch.testing.assert_close(got[0].double().cpu(), want[0], rtol=rtol, atol=rtol)
    for a, b_ in zip(got[1:], want[1:]):
        torch.testing.assert_close(a.double().cpu(), b_, rtol=0, atol=rtol * 4 * float(b_.abs().max()))


def test_chunked_refuses_double_backward(gen):
    case = make_case(gen, 1, 1, b=4)
    x = case["lhs"].clone().requires_grad_(True)
    loss = gcl_loss(x, case["rhs"], 3.0, impl="chunked")
    gx, = torch.autograd.grad(loss, (x,), create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        gx.sum().backward()


# --------------------------------------------------------------------------- lhs groups for extra columns

def _brute_force_loss(x, y, s, w, a, lg, rg, c_row, c_col, z):
    """docs/method.md section 1 written out element by element; lg may run past B into the
    extra columns (lhs_groups followed by extra_lhs_groups)."""
    f_l, b, _ = x.shape
    f_r, b_r, _ = y.shape
    total = torch.zeros((), dtype=torch.float64)
    for l in range(f_l):
        for r in range(f_r):
            S = s * x[l] @ y[r].T
            M = torch.zeros(b, b_r, dtype=torch.bool)
            for i in range(b):
                for j in range(b_r):
                    if i == j:
                        continue
                    M[i, j] = bool((lg is not None and j < len(lg) and lg[i] == lg[j])
                                   or (rg is not None and rg[i] == rg[j]))
            Sm = S.masked_fill(M, float("-inf"))
            row = torch.logsumexp(Sm, 1) - S.diagonal()
            col = torch.logsumexp(Sm[:, :b], 0) - S.diagonal()
            total = total + a[l, r] * ((c_row * w * row).sum() + (c_col * w * col).sum()) / z
    return total


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("extra,n_extra_lg", [(4, 2), (4, 4), (3, 0)])
def test_extra_lhs_groups_match_the_definition(gen, impl, direction, extra, n_extra_lg):
    """extra_lhs_groups give the first E extra columns a query, masked like in-batch ones."""
    b = 5
    case = make_case(gen, f_l=2, f_r=2, b=b, extra=extra, groups=True)
    case["extra_lhs_groups"] = torch.randint(0, 3, (n_extra_lg,), generator=gen)
    x, y = case["lhs"], case["rhs"]
    c_row, c_col = {"both": (0.5, 0.5), "lhs_to_rhs": (1.0, 0.0), "rhs_to_lhs": (0.0, 1.0)}[direction]
    lg = torch.cat([case["lhs_groups"], case["extra_lhs_groups"]])
    want = _brute_force_loss(x, y, 3.0, case["weights"], case["field_weights"], lg,
                             case["rhs_groups"], c_row, c_col, float(b))
    got = loss_and_grads(case, impl, block_elements=16 if impl == "chunked" else None, direction=direction)
    torch.testing.assert_close(got[0], want, rtol=1e-10, atol=1e-12)
    if impl == "chunked":
        ref = loss_and_grads(case, "reference", direction=direction)
        assert_close_all(got, ref, rtol=1e-9, atol=1e-12)


def test_extra_lhs_groups_gradcheck_and_unique_ids_change_nothing(gen):
    case = make_case(gen, f_l=1, f_r=2, b=4, extra=3, groups=True)
    x = case["lhs"].clone().requires_grad_(True)
    y = case["rhs"].clone().requires_grad_(True)
    lg, eg = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 7, 0])  # extras 4 and 6 repeat queries 1 and 0
    kw = dict(weights=case["weights"], field_weights=case["field_weights"], rhs_groups=case["rhs_groups"],
              lhs_groups=lg)
    for impl in ("reference", "chunked"):
        assert torch.autograd.gradcheck(
            lambda a, c: gcl_loss(a, c, 2.0, extra_lhs_groups=eg, impl=impl, **kw), (x, y))
    for impl in ("reference", "chunked"):
        plain = gcl_loss(case["lhs"], case["rhs"], 2.0, impl=impl, **kw)
        unique = gcl_loss(case["lhs"], case["rhs"], 2.0, extra_lhs_groups=torch.tensor([100, 101, 102]),
                          impl=impl, **kw)
        torch.testing.assert_close(plain, unique, rtol=0, atol=0)  # queries seen nowhere else mask nothing
        masked = gcl_loss(case["lhs"], case["rhs"], 2.0, extra_lhs_groups=eg, impl=impl, **kw)
        assert not torch.equal(masked, plain)  # the repeated queries among the extras are masked


@pytest.mark.parametrize("kwargs,match", [
    (dict(extra_lhs_groups=torch.zeros(4, dtype=torch.long), lhs_groups=torch.zeros(4, dtype=torch.long)),
     r"extra_lhs_groups: expected shape \[E\] with 0 <= E <= 3 \(B_R - B\), got \(4,\)"),
    (dict(extra_lhs_groups=torch.zeros(2, dtype=torch.long)), r"extra_lhs_groups: given without lhs_groups"),
    (dict(extra_lhs_groups=torch.zeros(2), lhs_groups=torch.zeros(4, dtype=torch.long)),
     r"extra_lhs_groups: expected integer ids"),
])
def test_extra_lhs_groups_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gcl_loss(torch.randn(4, 3), torch.randn(7, 3), 1.0, **kwargs)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_overflowing_logits_raise_the_same_error_in_every_impl(impl):
    x = torch.full((3, 2), 1e20)
    with pytest.raises(FloatingPointError, match=r"GCL loss is (nan|inf): the logits s \* <x, y> overflow torch.float32"):
        gcl_loss(x, x.clone(), 10.0, impl=impl)


def test_score_scale_edge_cases():
    # a score equal to s_max after float32 rounding is not above it
    w = score_to_weight(torch.tensor([100.3, 50.0]), "linear", s_max=100.3)
    assert float(w.max()) <= 1.0 and abs(float(w[0]) - 1.0) < 1e-6
    # a module with s_max below 1 builds (no phantom score of 1.0 is checked against it)
    m = GCLLoss(weight_fn="linear", s_max=0.5)
    assert torch.allclose(m.weights_from_scores(torch.tensor([0.5, 0.25])), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="exceeds s_max"):
        m.weights_from_scores(torch.tensor([0.6]))


def _emulate_cuda_half_products(monkeypatch):
    """The CUDA path on the CPU: float16 operands (dS rounded to float16), float32 products."""
    real_mm_into = chunked_mod._mm_into

    def mm_into(out, a, b, alpha, bias=None):
        if a.dtype == torch.float16:
            a, b = a.float(), b.float()
        return real_mm_into(out, a, b, alpha, bias)

    monkeypatch.setattr(chunked_mod, "_operand_dtype", lambda dtype, acc, device: dtype if dtype == torch.float16 else acc)
    monkeypatch.setattr(chunked_mod, "_mm_into", mm_into)


def test_chunked_float16_products_scale_ds_so_small_gradients_survive(monkeypatch):
    """At B = 4096 dS entries are ~1/B^2, below float16's normal range (6e-5): unscaled
    they are subnormal with a few bits left or flush to zero; scaled by a power of two
    they keep float16's 11 bits."""
    gen = torch.Generator().manual_seed(5)
    b, d = 4096, 32
    x = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    y = torch.nn.functional.normalize(x + 0.3 * torch.randn(b, d, generator=gen, dtype=torch.float64), dim=-1)
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    gcl_loss(xr, yr, 20.0, impl="reference").backward()
    _emulate_cuda_half_products(monkeypatch)

    def rel_err():
        xh = x.half().requires_grad_(True)
        yh = y.half().requires_grad_(True)
        chunked_gcl_loss(canonicalize(xh, yh, 20.0), block_elements=1 << 18).backward()
        return max(float((xh.grad.double() - xr.grad).norm() / xr.grad.norm()),
                   float((yh.grad.double() - yr.grad).norm() / yr.grad.norm()))

    scaled = rel_err()
    monkeypatch.setattr(chunked_mod, "_ds_scale", lambda op, alpha, gamma: 1.0)
    unscaled = rel_err()
    print("fp16 dS rel err scaled %.2e unscaled %.2e" % (scaled, unscaled))
    assert scaled < 1e-3 and unscaled > 4 * scaled, (scaled, unscaled)
