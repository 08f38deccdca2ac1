"""Document fields in the model (docs/method.md section 6): field-weight
vectors in `DOC_FIELD_NAMES` order and the fusion of field embeddings ("mean") or their
pairing ("pairs")."""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from ..data.fields import DEFAULT_DOC_FIELD_WEIGHTS, DOC_FIELD_NAMES

FIELD_MODES = ("mean", "pairs")


def field_weight_vector(field_weights: Optional[Mapping[str, float]] = None,
                        fields: Sequence[str] = DOC_FIELD_NAMES) -> torch.Tensor:
    """{"title": 0.1, "image": 0.9} -> tensor [F] in `fields` order; checks the values."""
    fw = dict(DEFAULT_DOC_FIELD_WEIGHTS if field_weights is None else field_weights)
    unknown = sorted(set(fw) - set(fields))
    if unknown:
        raise ValueError(f"field_weights: unknown fields {unknown}; expected keys from {list(fields)}")
    vals = []
    for f in fields:
        v = float(fw.get(f, 0.0))
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"field_weights: {f!r} must be a finite weight >= 0, got {v}")
        vals.append(v)
    if sum(vals) <= 0:
        raise ValueError(f"field_weights: at least one field needs a positive weight, got {fw}")
    return torch.tensor(vals, dtype=torch.float32)


def combine_document_fields(fields: torch.Tensor, present: Optional[torch.Tensor],
                            mode: str, field_weights: torch.Tensor) -> torch.Tensor:
    """Fuse ("mean") or keep apart ("pairs") the document fields (docs/method.md section 6).

    "mean": the weighted mean of the unit field embeddings, missing fields weight 0 and
    the rest renormalised, then L2-normalised: [B, D]. "pairs": [F, B, D] as is, except that
    a missing field is replaced by the row's fused embedding, because the loss has no
    per-row field mask and a zero vector would still sit in every softmax.

    Args:
        fields: [F, B, D] unit field embeddings.
        present: [B, F] bool (None: all present).
        mode: "mean" or "pairs".
        field_weights: [F] non-negative weights.

    Shape:
        "mean" -> [B, D]; "pairs" -> [F, B, D].
    """
    if mode not in FIELD_MODES:
        raise ValueError(f"field_mode: expected one of {FIELD_MODES}, got {mode!r}")
    from gcl_kernels import fuse_fields

    fw = field_weights.to(device=fields.device, dtype=fields.dtype)
    fused = fuse_fields(fields, fw, present)
    if mode == "mean":
        return fused
    if present is None or bool(present.all()):
        return fields
    missing = ~present.to(fields.device).T  # [F, B]
    return torch.where(missing[..., None], fused[None], fields)
