"""The loss of one batch: encode queries and document fields, fuse or pair the fields,
and apply `gcl_kernels.GCLLoss` with the model's own logit scale (docs/method.md)."""
from __future__ import annotations

from typing import Iterator, Mapping, Optional, Tuple

import torch

from gcl_kernels import GCLLoss

from ..data import DOC_FIELD_NAMES
from ..models import (
    combine_document_fields,
    encode_document_text_tensor,
    encode_images_tensor,
    encode_text_tensor,
    field_weight_vector,
)
from .data import Batch


def loss_module(model: torch.nn.Module, s_max: float, *, weight_fn: str = "linear",
                weight_params: Optional[Mapping[str, float]] = None, direction: str = "both",
                normalize: str = "batch", field_mode: str = "mean",
                field_weights: Optional[Mapping[str, float]] = None, max_logit_scale: float = 100.0,
                impl: str = "auto", distributed: bool = False) -> GCLLoss:
    """A `gcl_kernels.GCLLoss` that uses the model's own logit scale.

    The module's `logit_scale` is the model's Parameter itself, not a copy, so the
    optimizer, the clamp after each step and the checkpoints see one value, and
    `loss_fn.scale()` is exp(model.logit_scale) clamped at `max_logit_scale`.

    Args:
        model: a two-tower model with a 0-dim `logit_scale` Parameter (log of the scale).
        s_max: the data set's largest score (`score_to_weight`'s s_max).
        weight_fn, weight_params, direction, normalize, max_logit_scale, impl: as `GCLLoss`.
        field_mode: "mean" (one fused document vector) or "pairs" (a softmax per field,
            weighted by the normalised `field_weights`).
        field_weights: document field weights ({"title": 0.1, "image": 0.9} by default).
        distributed: each rank passes its slice and gets its share of the loss over the
            batch gathered from every rank (`GCLLoss(distributed=True)`).

    Example:
        >>> loss_fn = loss_module(bundle.model, 100.0, **cfg.loss_options())  # doctest: +SKIP
        >>> float(loss_fn.scale())  # doctest: +SKIP
    """
    pair_weights = None
    if field_mode == "pairs":
        fw = field_weight_vector(field_weights)
        pair_weights = (fw / fw.sum()).reshape(1, -1)
    return GCLLoss(weight_fn=weight_fn, s_max=s_max, weight_params=dict(weight_params or {}),
                   direction=direction, normalize=normalize, field_weights=pair_weights,
                   max_logit_scale=max_logit_scale, impl=impl, logit_scale=model.logit_scale,
                   distributed=distributed)


def encode_parts(model: torch.nn.Module, batch: Batch,
                 field_weights: Optional[Mapping[str, float]]) -> Iterator[Tuple[Optional[int], torch.Tensor]]:
    """The unit embeddings of a batch, one tower call at a time, in a fixed order: the
    queries (index None), then each document field with a positive weight (its index in
    DOC_FIELD_NAMES). A generator: each part is encoded when it is asked for, so a caller
    can back-propagate one part before the next is encoded (the gradient cache does).

    Queries go through the query tower (`encode_text`), titles through the document tower
    (`encode_document_text` when the model has one, i.e. a Hugging Face model with
    `text_towers="separate"`; else the same `encode_text`)."""
    fw = field_weight_vector(field_weights)
    yield None, encode_text_tensor(model, batch.query_tokens)
    for f, name in enumerate(DOC_FIELD_NAMES):
        if fw[f] > 0:
            tokens_or_pixels = batch.title_tokens if name == "title" else batch.images
            encode = encode_document_text_tensor if name == "title" else encode_images_tensor
            yield f, encode(model, tokens_or_pixels)


def encode_batch(model: torch.nn.Module, batch: Batch,
                 field_weights: Optional[Mapping[str, float]]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit query embeddings [B, D] and unit document field embeddings [F, B, D] (float32),
    with the presence mask [B, F] of the fields that count.

    Fields with zero weight are not encoded (a text-only run never touches the image
    tower): they are zeros and marked absent.
    """
    present = batch.present.clone()
    parts = dict(encode_parts(model, batch, field_weights))
    q = parts.pop(None)
    ref = next(iter(parts.values()))
    for f in range(len(DOC_FIELD_NAMES)):
        if f not in parts:
            present[:, f] = False
    fields = torch.stack([parts.get(f, torch.zeros_like(ref)) for f in range(len(DOC_FIELD_NAMES))])
    return q.float(), fields.float(), present


def documents(fields: torch.Tensor, present: torch.Tensor, field_weights: Optional[Mapping[str, float]],
              field_mode: str) -> torch.Tensor:
    """The documents the loss sees: [B, D] fused ("mean") or [F, B, D] ("pairs")."""
    fw = field_weight_vector(field_weights)
    return combine_document_fields(fields, present, field_mode, fw.to(fields.device))


def embed(model: torch.nn.Module, batch: Batch, field_weights: Optional[Mapping[str, float]],
          field_mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query embeddings [B, D] and document embeddings ([B, D] "mean", [2, B, D] "pairs")."""
    q, fields, present = encode_batch(model, batch, field_weights)
    return q, documents(fields, present, field_weights, field_mode)


def batch_loss(loss_fn: GCLLoss, q: torch.Tensor, docs: torch.Tensor, batch: Batch,
               use_groups: bool = True) -> torch.Tensor:
    """`loss_fn` on a batch's embeddings, with its scores and (optionally) group ids."""
    return loss_fn(q, docs, scores=batch.scores,
                   lhs_groups=batch.lhs_groups if use_groups else None,
                   rhs_groups=batch.rhs_groups if use_groups else None)


def compute_loss(model: torch.nn.Module, batch: Batch, loss_fn: GCLLoss,
                 field_weights: Optional[Mapping[str, float]] = None, field_mode: str = "mean",
                 use_groups: bool = True) -> torch.Tensor:
    """The GCL loss of one batch (docs/method.md) with the model's logit scale.

    Args:
        model: the two-tower model; batch: from `make_batch`.
        loss_fn: from `loss_module(model, ...)` (built once, reused every step).
        field_weights, field_mode: as `loss_module`.
        use_groups: mask repeated queries and products in the batch as non-negatives.
    """
    q, docs = embed(model, batch, field_weights, field_mode)
    return batch_loss(loss_fn, q, docs, batch, use_groups)


__all__ = ["loss_module", "encode_parts", "encode_batch", "documents", "embed", "batch_loss", "compute_loss"]
