"""`gcl_loss`: the one functional entry point; picks the implementation in one place."""
from __future__ import annotations

import functools

import torch

from ._validation import GCLInputs, canonicalize, check_impl, overflow_message


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and there is a CUDA device (or TRITON_INTERPRET=1)."""
    import os

    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _resolve_implementation(impl: str, device: torch.device) -> str:
    impl = check_impl(impl)
    if impl != "auto":
        return impl
    if device.type == "cuda" and triton_available():
        return "triton"
    return "chunked"


def _run(impl: str, inp: GCLInputs) -> torch.Tensor:
    if impl == "reference":
        from .ops.reference import reference_gcl_loss

        return reference_gcl_loss(inp)
    if impl == "chunked":
        from .ops.chunked import chunked_gcl_loss

        return chunked_gcl_loss(inp)
    if impl == "triton":
        from .ops.triton_gcl import triton_gcl_loss  # lazy: the only GPU-facing import

        return triton_gcl_loss(inp)
    raise AssertionError(impl)


def gcl_loss(
    lhs: torch.Tensor,
    rhs: torch.Tensor,
    logit_scale,
    weights: torch.Tensor | None = None,
    field_weights: torch.Tensor | None = None,
    lhs_groups: torch.Tensor | None = None,
    rhs_groups: torch.Tensor | None = None,
    direction: str = "both",
    normalize: str = "batch",
    impl: str = "auto",
    extra_lhs_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized contrastive loss (docs/method.md section 1).

    Args:
        lhs: query-side embeddings, [B, D] or [F_L, B, D] (one slice per field).
        rhs: document-side embeddings, [B_R, D] or [F_R, B_R, D]; B_R >= B, rows past B
            are extra negatives with no query of their own.
        logit_scale: the multiplier s (already exponentiated, as in open_clip); a float or
            a 0-dim tensor, which gets a gradient when it requires one.
        weights: [B] non-negative per-pair weights (see `score_to_weight`); default 1.
        field_weights: [F_L, F_R] non-negative field-pair weights; default 1 / (F_L * F_R).
        lhs_groups: [B] integer ids; equal ids (e.g. the same query) are not negatives.
        rhs_groups: [B_R] integer ids; equal ids (e.g. the same product) are not negatives.
        extra_lhs_groups: [E] integer ids, 0 <= E <= B_R - B (needs lhs_groups): the query
            ids of the first E extra columns B..B+E-1 (e.g. pairs gathered from other
            ranks), so a row's repeated query among them is masked too; extra columns
            past B+E have no query of their own (mined negatives).
        direction: "both" (CLIP's mean of the two), "lhs_to_rhs" or "rhs_to_lhs".
        normalize: "batch" (divide by B) or "weights" (divide by the sum of weights).
        impl: "auto", "reference", "chunked" or "triton".

    Returns:
        0-dim loss, float64 for float64 inputs, else float32.

    Example:
        >>> x = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> y = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        >>> loss = gcl_loss(x, y, 20.0, weights=torch.rand(8))
    """
    inp = canonicalize(lhs, rhs, logit_scale, weights, field_weights, lhs_groups, rhs_groups,
                       direction, normalize, extra_lhs_groups=extra_lhs_groups)
    loss = _run(_resolve_implementation(impl, inp.x.device), inp)
    if not bool(torch.isfinite(loss.detach())):  # one behaviour for every implementation
        raise FloatingPointError(overflow_message(inp, float(loss.detach())))
    return loss
