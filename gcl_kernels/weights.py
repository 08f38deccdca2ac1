"""Weights for the GCL loss: scores to per-pair weights (docs/method.md section 5), and the
"mean" multi-field mode that fuses field embeddings into one vector (section 3)."""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional, Union

import torch

# kind -> (required params, optional params with defaults)
KINDS = {
    "constant": ((), {}),
    "linear": ((), {}),
    "power": (("gamma",), {}),
    "log": ((), {}),
    "reciprocal": ((), {}),
    "sigmoid": (("k", "c"), {}),
}
# Kinds whose formula has no meaning for a negative score (negative or undefined weights).
_NON_NEGATIVE_KINDS = ("linear", "power", "log")


def _desc(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"tensor of shape {tuple(v.shape)}, dtype {v.dtype}"
    return f"{type(v).__name__} {v!r}"


def _as_scores(scores) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        t = scores.detach()
    else:
        try:
            t = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"scores: expected numbers (a tensor, numpy array or list), got {_desc(scores)}") from e
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or _is_int(t)):
        raise ValueError(f"scores: expected real numbers, got dtype {t.dtype}")
    return t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)


def _is_int(t: torch.Tensor) -> bool:
    return t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _real(name: str, value, positive: bool = False) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name}: expected a finite number, got {_desc(value)}")
    if positive and not float(value) > 0:
        raise ValueError(f"{name}: expected a number > 0, got {value!r}")
    return float(value)


def score_to_weight(
    scores,
    kind: Union[str, Callable],
    s_max: Optional[float] = None,
    *,
    clip: bool = False,
    **params,
) -> torch.Tensor:
    """Map graded relevance scores ("higher is better") to per-pair loss weights in [0, 1].

    | kind | weight |
    | --- | --- |
    | constant | 1 (the binary / CE baseline) |
    | linear | s / s_max |
    | power (gamma > 0) | (s / s_max) ** gamma |
    | log | log1p(s) / log1p(s_max) |
    | reciprocal | 1 / (s_max + 1 - s)  (1 / position for MarqoGS score_linear) |
    | sigmoid (k > 0, c) | sigmoid(k * (s / s_max - c)) |

    Args:
        scores: tensor, numpy array or list of real numbers, any shape; finite.
            Negative scores are rejected for linear, power and log (they would give
            negative or undefined weights).
        kind: a name from the table, or a callable `kind(scores, **params)` (also given
            `s_max=` when s_max is set) returning non-negative finite weights of the same
            shape; a callable's output is checked but not rescaled.
        s_max: the largest score of the data set (100 for MarqoGS score_linear), > 0.
            Default: the largest of `scores` -- per batch that makes the weights depend on
            the batch, so pass the data set's value when you call this per batch.
        clip: a score above s_max is an error (a wrong s_max would silently flatten the
            weights); with clip=True such scores are clamped to s_max instead.
        **params: the kind's parameters (gamma; k and c).

    Returns:
        Weights with the shape of `scores`, float64 for float64 input else float32, on
        the device of a tensor input.

    Example:
        >>> score_to_weight([100, 50, 1], "linear", s_max=100)
        tensor([1.0000, 0.5000, 0.0100])
        >>> score_to_weight(torch.tensor([100., 99.]), "reciprocal", s_max=100)
        tensor([1.0000, 0.5000])
    """
    s = _as_scores(scores)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores: contains NaN or infinite values")

    if callable(kind):
        if s_max is not None:
            params = dict(params, s_max=s_max)
        w = kind(s, **params)
        if not isinstance(w, torch.Tensor):
            w = torch.as_tensor(w, dtype=s.dtype, device=s.device)
        if tuple(w.shape) != tuple(s.shape):
            raise ValueError(
                f"kind: the callable returned shape {tuple(w.shape)}, expected the scores' shape {tuple(s.shape)}")
        w = w.to(s.dtype)
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("kind: the callable returned negative, NaN or infinite weights")
        return w

    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind: expected one of {tuple(KINDS)} or a callable, got {_desc(kind)}")
    required, optional = KINDS[kind]
    unknown = sorted(set(params) - set(required) - set(optional))
    if unknown:
        accepted = ", ".join(required + tuple(optional)) or "none"
        raise ValueError(f"{kind}: unknown parameter(s) {unknown}; accepted: {accepted}")
    missing = [p for p in required if p not in params]
    if missing:
        raise ValueError(f"{kind}: missing parameter(s) {missing}, e.g. "
                         + ", ".join(f"{p}=..." for p in missing))

    if kind == "constant":
        return torch.ones_like(s)

    if s_max is None:
        if s.numel() == 0:
            raise ValueError("s_max: cannot default to the largest score of an empty `scores`; pass s_max")
        s_max = float(s.max())
        if not s_max > 0:
            raise ValueError(
                f"s_max: defaults to the largest score, {s_max}, which is not > 0; pass s_max explicitly")
    else:
        s_max = _real("s_max", s_max, positive=True)

    if s.numel():
        hi, lo = float(s.max()), float(s.min())
        # Compare in the scores' precision: a float32 score of 100.3 is 100.30000305, which
        # must not count as above s_max=100.3 (the same number, rounded).
        s_max_here = float(torch.tensor(s_max, dtype=s.dtype))
        if hi > s_max_here:
            if not clip:
                raise ValueError(
                    f"scores: largest score {hi} exceeds s_max={s_max}; fix s_max or pass clip=True "
                    "to clamp scores to s_max")
        s = s.clamp(max=s_max)
        if kind in _NON_NEGATIVE_KINDS and lo < 0:
            raise ValueError(f"scores: kind {kind!r} needs scores >= 0, got minimum {lo}")

    if kind == "linear":
        return s / s_max
    if kind == "power":
        gamma = _real("gamma", params["gamma"], positive=True)
        return (s / s_max) ** gamma
    if kind == "log":
        return torch.log1p(s) / math.log1p(s_max)
    if kind == "reciprocal":
        return 1.0 / (s_max + 1.0 - s)
    k = _real("k", params["k"], positive=True)
    c = _real("c", params["c"])
    return torch.sigmoid(k * (s / s_max - c))


def fuse_fields(
    emb: torch.Tensor,
    field_weights,
    present_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fuse F field embeddings per item into one unit vector (docs/method.md section 6, "mean").

    Each field embedding is L2-normalised, the fields are averaged with the given weights
    (a missing field gets weight 0 and the rest are renormalised to sum to 1), and the mean
    is normalised again. Differentiable with respect to `emb`.

    Args:
        emb: [F, B, D] field embeddings (any float dtype). Values of missing fields are
            ignored, so they may be zeros or NaN placeholders.
        field_weights: [F] (shared) or [B, F] (per item) non-negative weights; a list works.
        present_mask: [B, F] bool (or 0/1), True where the item has the field; default all.

    Shape:
        returns [B, D] in emb's dtype, every row of norm 1.

    Raises:
        ValueError when a row has no present field with a positive weight, when the
        weighted mean of a row is the zero vector, or for malformed arguments.

    Example:
        >>> img, title = torch.randn(4, 8), torch.randn(4, 8)
        >>> present = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
        >>> doc = fuse_fields(torch.stack([img, title]), [0.9, 0.1], present)  # [4, 8]
    """
    if not isinstance(emb, torch.Tensor) or emb.dim() != 3 or not emb.is_floating_point():
        raise ValueError(f"emb: expected a float tensor of shape [F, B, D], got {_desc(emb)}")
    f, b, d = emb.shape
    if f == 0 or b == 0 or d == 0:
        raise ValueError(f"emb: expected F, B, D >= 1, got shape {tuple(emb.shape)}")
    acc = torch.float64 if emb.dtype == torch.float64 else torch.float32

    if not isinstance(field_weights, torch.Tensor):
        try:
            field_weights = torch.as_tensor(field_weights, dtype=acc)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"field_weights: expected [F]=[{f}] or [B, F]=[{b}, {f}] numbers, "
                             f"got {_desc(field_weights)}") from e
    if tuple(field_weights.shape) not in ((f,), (b, f)):
        raise ValueError(f"field_weights: expected shape [F]=[{f}] or [B, F]=[{b}, {f}], "
                         f"got {tuple(field_weights.shape)}")
    w = field_weights.detach().to(device=emb.device, dtype=acc)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("field_weights: contains NaN or infinite values")
    if bool((w < 0).any()):
        raise ValueError(f"field_weights: expected non-negative values, got minimum {float(w.min())}")
    w = w.expand(b, f)

    if present_mask is None:
        present = torch.ones(b, f, dtype=torch.bool, device=emb.device)
    else:
        if not isinstance(present_mask, torch.Tensor) or tuple(present_mask.shape) != (b, f):
            raise ValueError(f"present_mask: expected a [B, F]=[{b}, {f}] bool tensor, got {_desc(present_mask)}")
        if present_mask.dtype != torch.bool:
            if present_mask.is_floating_point() or present_mask.is_complex() or \
                    bool(((present_mask != 0) & (present_mask != 1)).any()):
                raise ValueError(f"present_mask: expected bool or 0/1 integers, got dtype {present_mask.dtype}")
            present_mask = present_mask != 0
        present = present_mask.to(emb.device)

    w = torch.where(present, w, torch.zeros((), dtype=acc, device=emb.device))
    total = w.sum(dim=1)
    empty = (total <= 0).nonzero().squeeze(1)
    if empty.numel():
        rows = empty[:5].tolist()
        raise ValueError(
            f"field_weights/present_mask: {empty.numel()} row(s) have no present field with a positive "
            f"weight (first: {rows}); drop them or give them a field")
    w = w / total[:, None]

    used = (w > 0).T[:, :, None]  # [F, B, 1]
    e = emb.to(acc)
    # Missing or zero-weight fields may hold placeholders (zeros, NaN): keep them out, since
    # 0 * NaN would still poison the mean.
    e = torch.where(used, e, torch.zeros((), dtype=acc, device=emb.device))
    if not bool(torch.isfinite(e).all()):
        raise ValueError("emb: a present field with a positive weight contains NaN or infinite values")
    e = torch.nn.functional.normalize(e, dim=-1)
    fused = torch.einsum("bf,fbd->bd", w, e)
    norm = fused.norm(dim=-1)
    tiny = torch.finfo(acc).eps
    degenerate = (norm <= tiny).nonzero().squeeze(1)
    if degenerate.numel():
        raise ValueError(
            f"emb: the weighted mean of the fields is the zero vector for {degenerate.numel()} row(s) "
            f"(first: {degenerate[:5].tolist()}), so it has no direction")
    return (fused / norm[:, None]).to(emb.dtype)
