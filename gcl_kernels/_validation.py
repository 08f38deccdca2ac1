"""Argument checks at the public boundary, and the canonical form every implementation takes.

`canonicalize(...)` turns the user-facing arguments of `gcl_loss` into a `GCLInputs`
whose fields every implementation (reference, chunked, triton) consumes unchanged:

    x            [F_L, B, D]    lhs field embeddings (input dtype)
    y            [F_R, B_R, D]  rhs field embeddings (same dtype and device as x)
    logit_scale  0-dim tensor   accumulation dtype (float64 for float64 inputs, else
                                float32), on x's device, still attached to the user's graph
    row_weights  [B] or None    c_row * w / Z  (None when the direction has no row term)
    col_weights  [B] or None    c_col * w / Z  (None when the direction has no column term)
    field_weights [F_L, F_R]    a[l, r], accumulation dtype
    lhs_groups   [L] int64 or None, B <= L <= B_R: the query group of columns j < L
                 (rows i < B read the first B; entries past B are the user's
                 `extra_lhs_groups`); columns j >= L have no query
    rhs_groups   [B_R] int64 or None

so that, for every implementation,

    L = sum_{l,r} a[l,r] * ( sum_i row_weights[i] row[i] + sum_j col_weights[j] col[j] )

with row / col as in docs/method.md section 1. Direction and normalization are folded into the
two weight vectors here, once, so no kernel has to know about them. Weights and field
weights are data, not parameters: they are detached and get no gradient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

DIRECTIONS = ("both", "lhs_to_rhs", "rhs_to_lhs")
NORMALIZATIONS = ("batch", "weights")
IMPLS = ("auto", "reference", "chunked", "triton")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class GCLInputs:
    x: torch.Tensor
    y: torch.Tensor
    logit_scale: torch.Tensor
    row_weights: Optional[torch.Tensor]
    col_weights: Optional[torch.Tensor]
    field_weights: torch.Tensor
    lhs_groups: Optional[torch.Tensor]
    rhs_groups: Optional[torch.Tensor]

    @property
    def shape(self):
        """(F_L, F_R, B, B_R, D)."""
        return (self.x.shape[0], self.y.shape[0], self.x.shape[1], self.y.shape[1], self.x.shape[2])


def _desc(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"tensor of shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"
    return f"{type(t).__name__} {t!r}"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _all_finite(t: torch.Tensor) -> bool:
    """True when t has no NaN or inf.

    One summing pass first: `torch.isfinite(t).all()` is several times slower on the CPU
    (it materialises two boolean tensors), and a finite sum proves every element finite.
    Only a non-finite sum (a NaN or inf, or an overflowing sum) needs the exact check.
    """
    if t.numel() == 0:
        return True
    total = t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
    if bool(torch.isfinite(total)):
        return True
    return bool(torch.isfinite(t).all())


def _check_embeddings(name: str, t, ndim_hint: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor of shape {ndim_hint}, got {_desc(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}"
        )
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif t.dim() != 3:
        raise ValueError(f"{name}: expected shape {ndim_hint}, got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one field, got shape {tuple(t.shape)}")
    if t.shape[2] == 0:
        raise ValueError(f"{name}: expected an embedding dimension D >= 1, got shape {tuple(t.shape)}")
    return t


def _check_groups(name: str, g, n: int, n_name: str, device, n_max: Optional[int] = None) -> Optional[torch.Tensor]:
    """Integer ids of shape [n] (or, with n_max, any length in [n, n_max])."""
    if g is None:
        return None
    want = f"[{n_name}]=[{n}]" if n_max is None or n_max == n else f"[{n_name}] with {n} <= {n_name} <= {n_max} (B_R - B)"
    if not isinstance(g, torch.Tensor):
        raise ValueError(f"{name}: expected an integer tensor of shape {want}, got {_desc(g)}")
    if g.dtype.is_floating_point or g.dtype.is_complex or g.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer ids (e.g. torch.int64), got dtype {g.dtype}")
    if g.dim() != 1 or not (n <= g.shape[0] <= (n if n_max is None else n_max)):
        raise ValueError(f"{name}: expected shape {want}, got {tuple(g.shape)}")
    if g.device != device:
        raise ValueError(f"{name}: expected device {device} (the device of lhs), got {g.device}")
    return g.to(torch.int64).contiguous()


def canonicalize(
    lhs,
    rhs,
    logit_scale,
    weights=None,
    field_weights=None,
    lhs_groups=None,
    rhs_groups=None,
    direction: str = "both",
    normalize: str = "batch",
    check_finite: bool = True,
    extra_lhs_groups=None,
) -> GCLInputs:
    """Validate `gcl_loss` arguments and return the canonical `GCLInputs`.

    Raises:
        ValueError naming the argument, what was expected and what was given.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")

    x = _check_embeddings("lhs", lhs, "[B, D] or [F_L, B, D]")
    y = _check_embeddings("rhs", rhs, "[B_R, D] or [F_R, B_R, D]")
    f_l, b, d = x.shape
    f_r, b_r, d_r = y.shape
    if d != d_r:
        raise ValueError(f"rhs: embedding dimension D={d_r} does not match lhs D={d}")
    if x.dtype != y.dtype:
        raise ValueError(f"rhs: dtype {y.dtype} does not match lhs dtype {x.dtype}")
    if x.device != y.device:
        raise ValueError(f"rhs: device {y.device} does not match lhs device {x.device}")
    if b == 0:
        raise ValueError(f"lhs: empty batch (B=0), shape {tuple(lhs.shape)}")
    if b_r < b:
        raise ValueError(
            f"rhs: expected B_R >= B (rows past B are extra negatives), got B_R={b_r} < B={b}"
        )
    if check_finite:
        if not _all_finite(x):
            raise ValueError("lhs: contains NaN or infinite values")
        if not _all_finite(y):
            raise ValueError("rhs: contains NaN or infinite values")

    acc = accumulation_dtype(x.dtype)
    device = x.device

    # logit scale: python number or 0-dim tensor; keeps its autograd graph.
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1 or logit_scale.dim() > 1:
            raise ValueError(
                f"logit_scale: expected a float or a 0-dim tensor, got shape {tuple(logit_scale.shape)}"
            )
        if not logit_scale.dtype.is_floating_point:
            raise ValueError(f"logit_scale: expected a floating tensor, got dtype {logit_scale.dtype}")
        value = float(logit_scale.detach().reshape(()).item())
        scale = logit_scale.reshape(()).to(device=device, dtype=acc)
    elif isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        value = float(logit_scale)
        scale = torch.tensor(value, dtype=acc, device=device)
    else:
        raise ValueError(f"logit_scale: expected a float or a 0-dim tensor, got {_desc(logit_scale)}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"logit_scale: expected a finite positive multiplier, got {value}")

    # per-pair weights
    if weights is None:
        w = torch.ones(b, dtype=acc, device=device)
    else:
        if not isinstance(weights, torch.Tensor):
            raise ValueError(f"weights: expected a tensor of shape [B]=[{b}], got {_desc(weights)}")
        if tuple(weights.shape) != (b,):
            raise ValueError(f"weights: expected shape [B]=[{b}], got {tuple(weights.shape)}")
        if weights.device != device:
            raise ValueError(f"weights: expected device {device} (the device of lhs), got {weights.device}")
        w = weights.detach().to(acc)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weights: contains NaN or infinite values")
        if bool((w < 0).any()):
            raise ValueError(f"weights: expected non-negative values, got minimum {float(w.min())}")

    if normalize == "batch":
        z = float(b)
        w = w / z
    else:
        total = w.sum()
        if not bool(total > 0):
            raise ValueError("weights: normalize='weights' needs weights with a positive sum, got sum 0")
        if not bool(torch.isfinite(total)):
            raise ValueError(f"weights: the sum overflows {acc}; rescale the weights (normalize='weights' "
                             "is invariant to their scale)")
        w = w / total

    c_row, c_col = {"both": (0.5, 0.5), "lhs_to_rhs": (1.0, 0.0), "rhs_to_lhs": (0.0, 1.0)}[direction]
    row_w = (w * c_row).contiguous() if c_row else None
    col_w = (w * c_col).contiguous() if c_col else None

    # field-pair weights; default: mean over the F_L x F_R pairs.
    if field_weights is None:
        a = torch.full((f_l, f_r), 1.0 / (f_l * f_r), dtype=acc, device=device)
    else:
        if not isinstance(field_weights, torch.Tensor):
            try:
                field_weights = torch.as_tensor(field_weights, dtype=acc)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(
                    f"field_weights: expected a tensor of shape [F_L, F_R]=[{f_l}, {f_r}], got {_desc(field_weights)}"
                ) from e
        if tuple(field_weights.shape) != (f_l, f_r):
            raise ValueError(
                f"field_weights: expected shape [F_L, F_R]=[{f_l}, {f_r}], got {tuple(field_weights.shape)}"
            )
        a = field_weights.detach().to(device=device, dtype=acc)
        if not bool(torch.isfinite(a).all()):
            raise ValueError("field_weights: contains NaN or infinite values")
        if bool((a < 0).any()):
            raise ValueError(f"field_weights: expected non-negative values, got minimum {float(a.min())}")
        if not bool((a > 0).any()):
            raise ValueError("field_weights: all zero; at least one field pair needs a positive weight")
    a = a.contiguous()

    lg = _check_groups("lhs_groups", lhs_groups, b, "B", device)
    if extra_lhs_groups is not None:
        if lg is None:
            raise ValueError("extra_lhs_groups: given without lhs_groups; the extra columns' query ids "
                             "are compared with the rows' lhs_groups")
        eg = _check_groups("extra_lhs_groups", extra_lhs_groups, 0, "E", device, n_max=b_r - b)
        lg = torch.cat([lg, eg])
    rg = _check_groups("rhs_groups", rhs_groups, b_r, "B_R", device)

    return GCLInputs(x.contiguous(), y.contiguous(), scale, row_w, col_w, a, lg, rg)


def overflow_message(inp: GCLInputs, value: float) -> str:
    """The error every implementation raises when the loss is not finite."""
    acc = inp.logit_scale.dtype
    return (f"GCL loss is {value}: the logits s * <x, y> overflow {acc} (logit_scale "
            f"{float(inp.logit_scale.detach())}, largest |lhs| {float(inp.x.detach().abs().max())}, "
            f"largest |rhs| {float(inp.y.detach().abs().max())}); normalise the embeddings or "
            f"lower the logit scale")


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    return impl
