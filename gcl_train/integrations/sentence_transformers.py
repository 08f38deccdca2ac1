"""The GCL loss as a sentence-transformers loss, for `SentenceTransformerTrainer`.

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from gcl_train.integrations.sentence_transformers import GCLLoss

    model = SentenceTransformer("path/to/local/model")
    # columns: anchor (query text), positive (document text), score (graded, higher is better)
    loss = GCLLoss(model, weight_fn="linear", s_max=100)
    SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss).train()

The data set has two text columns, (anchor, positive), optionally more text columns of
hard negatives, and a score column named "score" or "label" (sentence-transformers hands
that column to the loss as `labels`). Each row's weight is `score_to_weight(score,
weight_fn, s_max, **weight_params)` (docs/method.md section 5; "constant" is plain InfoNCE,
i.e. `MultipleNegativesSymmetricRankingLoss`-like with direction "both").

Group masking (docs/method.md section 1): MarqoGS-style data repeats a query over many rows and
a product over many queries, so a batch often holds the same query text, or the same
document text, twice. Those pairs are not negatives of each other: with `use_groups`
(default) two rows whose anchor texts tokenize identically share a query group and two
rows whose positive texts tokenize identically share a document group, and the loss
masks them out of each other's softmax. Hard-negative columns are extra documents with
no query of their own; a negative identical to a row's positive is masked for that row.

The loss is `gcl_kernels.gcl_loss` on the L2-normalised sentence embeddings with a
fixed scale (20, as `MultipleNegativesRankingLoss`) or a learnable one
(`learnable_scale=True`: a log-scale Parameter clamped at `max_scale`; the trainer's
optimizer only sees it if the loss's parameters are passed to it, which
`SentenceTransformerTrainer` does for loss modules with parameters).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcl_kernels import DIRECTIONS, IMPLS, NORMALIZATIONS, WEIGHT_KINDS, gcl_loss, score_to_weight


def token_groups(features: Mapping[str, Tensor]) -> Tensor:
    """[N] int64 ids, equal for rows whose tokens (under the attention mask) are equal.

    Example:
        >>> token_groups({"input_ids": torch.tensor([[1, 2, 0], [1, 2, 0], [3, 0, 0]]),
        ...               "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 0], [1, 0, 0]])}).tolist()
        [0, 0, 1]
    """
    ids = features["input_ids"]
    mask = features.get("attention_mask")
    rows = ids.detach().cpu().tolist()
    if mask is None:
        keys = [tuple(r) for r in rows]
    else:  # the mask's ones need not be a prefix (left padding): key on the kept tokens
        keep = mask.detach().cpu().bool().tolist()
        keys = [tuple(t for t, k in zip(r, mr) if k) for r, mr in zip(rows, keep)]
    index: Dict[tuple, int] = {}
    return torch.tensor([index.setdefault(k, len(index)) for k in keys], dtype=torch.int64, device=ids.device)


class GCLLoss(nn.Module):
    """Generalized Contrastive Learning loss for sentence-transformers models.

    Args:
        model: the `SentenceTransformer` being trained.
        weight_fn: `score_to_weight` kind ("linear", "constant", "power", "log",
            "reciprocal", "sigmoid") or a callable scores -> weights in [0, 1].
        s_max: the largest score of the data set (100 for MarqoGS score_linear).
        weight_params: extra parameters of the weight function (gamma=2, k/c).
        scale: the logit scale (a multiplier on cosine similarity), 20 by default.
        learnable_scale: learn log(scale) as a Parameter (clamped to [1, max_scale]).
        max_scale: upper clamp of a learnable scale.
        direction: "both" (query->doc and doc->query softmaxes, CLIP), "lhs_to_rhs"
            (query->doc only, as MultipleNegativesRankingLoss) or "rhs_to_lhs".
        normalize: "batch" (divide by B) or "weights" (divide by the sum of weights).
        use_groups: mask repeated anchors and repeated positives as non-negatives.
        impl: `gcl_loss` implementation ("auto": fused Triton on CUDA, chunked elsewhere).

    Inputs:
        (anchor, positive[, negative_1, ...]) text columns and a "score" (or "label")
        column: the graded relevance of (anchor, positive), higher is better.

    Example:
        >>> loss = GCLLoss(model, weight_fn="linear", s_max=100)  # doctest: +SKIP
        >>> SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss).train()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, weight_fn: Union[str, Callable[[Tensor], Tensor]] = "linear",
                 s_max: Optional[float] = 100.0, weight_params: Optional[Mapping[str, float]] = None,
                 scale: float = 20.0, learnable_scale: bool = False, max_scale: float = 100.0,
                 direction: str = "both", normalize: str = "batch", use_groups: bool = True, impl: str = "auto"):
        super().__init__()
        if not callable(weight_fn) and weight_fn not in WEIGHT_KINDS:
            raise ValueError(f"weight_fn: expected one of {tuple(WEIGHT_KINDS)} or a callable, got {weight_fn!r}")
        if s_max is not None and (not isinstance(s_max, (int, float)) or isinstance(s_max, bool)
                                  or not math.isfinite(s_max) or s_max <= 0):
            raise ValueError(f"s_max: expected a positive finite number or None, got {s_max!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale: expected a positive finite number, got {scale!r}")
        if not isinstance(max_scale, (int, float)) or not max_scale >= scale:
            raise ValueError(f"max_scale: expected a number >= scale ({scale}), got {max_scale!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
        self.model = model
        self.weight_fn = weight_fn
        self.s_max = None if s_max is None else float(s_max)
        self.weight_params = dict(weight_params or {})
        if not callable(weight_fn):  # fail now, not at the first batch
            try:
                score_to_weight(torch.tensor([1.0]), weight_fn, s_max=self.s_max or 1.0, **self.weight_params)
            except (TypeError, ValueError) as e:
                raise ValueError(f"weight_params: {dict(self.weight_params)} do not fit weight_fn "
                                 f"{weight_fn!r}: {e}") from None
        self.max_scale = float(max_scale)
        self.learnable_scale = bool(learnable_scale)
        log_scale = torch.tensor(math.log(scale))
        if self.learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.direction = direction
        self.normalize = normalize
        self.use_groups = bool(use_groups)
        self.impl = impl

    def scale(self) -> Tensor:
        """The logit scale in use (a learnable one clamped to [1, max_scale])."""
        return self.log_scale.clamp(0.0, math.log(self.max_scale)).exp()

    def weights(self, labels: Tensor) -> Tensor:
        """Per-pair weights [B] from the score column."""
        labels = labels.float()
        if callable(self.weight_fn):
            return self.weight_fn(labels)
        return score_to_weight(labels, self.weight_fn, s_max=self.s_max, **self.weight_params)

    def forward(self, sentence_features: Iterable[Dict[str, Tensor]], labels: Tensor) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"GCLLoss: expected (anchor, positive[, negatives...]) text columns, got {len(features)}")
        embeddings = [self.model(f)["sentence_embedding"] for f in features]
        lhs_groups = rhs_groups = None
        if self.use_groups:
            lhs_groups = token_groups(features[0])
            # one id space over positives and negatives: a negative equal to a positive is its group
            cat = _concat_features(features[1:])
            rhs_groups = token_groups(cat) if cat is not None else None
        return self.compute_loss_from_embeddings(embeddings, labels, lhs_groups, rhs_groups)

    def compute_loss_from_embeddings(self, embeddings: List[Tensor], labels: Optional[Tensor],
                                     lhs_groups: Optional[Tensor] = None,
                                     rhs_groups: Optional[Tensor] = None) -> Tensor:
        """The loss from precomputed embeddings: anchors [B, D], positives [B, D], then any
        negative columns [B, D] (extra documents); `labels` [B] scores (None: weight 1)."""
        if len(embeddings) < 2:
            raise ValueError(f"embeddings: expected anchors and positives (2 or more columns), got {len(embeddings)}")
        q = F.normalize(embeddings[0].float(), dim=-1)
        d = F.normalize(torch.cat([e.float() for e in embeddings[1:]]), dim=-1)
        b = q.shape[0]
        weights = None
        if labels is not None:
            if labels.ndim != 1 or labels.shape[0] != b:
                raise ValueError(f"labels: expected one score per row, shape [{b}], got {tuple(labels.shape)}")
            weights = self.weights(labels.to(q.device))
        return gcl_loss(q, d, self.scale(), weights=weights, lhs_groups=lhs_groups, rhs_groups=rhs_groups,
                        direction=self.direction, normalize=self.normalize, impl=self.impl)

    def get_config_dict(self) -> Dict[str, Any]:
        """What sentence-transformers writes into the model card."""
        return {"weight_fn": self.weight_fn if isinstance(self.weight_fn, str) else repr(self.weight_fn),
                "s_max": self.s_max, "weight_params": self.weight_params, "scale": float(self.scale()),
                "learnable_scale": self.learnable_scale, "direction": self.direction,
                "normalize": self.normalize, "use_groups": self.use_groups}

    @property
    def citation(self) -> str:
        return ("@article{zhu2024generalized, title={Generalized Contrastive Learning for Multi-Modal "
                "Retrieval and Ranking}, author={Zhu, Tianyu and Jung, Myong Chol and Clark, Jesse}, "
                "journal={arXiv preprint arXiv:2404.08535}, year={2024}}")


def _concat_features(features: List[Mapping[str, Tensor]]) -> Optional[Dict[str, Tensor]]:
    """input_ids / attention_mask of several columns stacked (right-padded to one width)."""
    if not features or any("input_ids" not in f for f in features):
        return None
    width = max(f["input_ids"].shape[1] for f in features)
    ids, masks = [], []
    for f in features:
        x = f["input_ids"]
        m = f.get("attention_mask", torch.ones_like(x))
        pad = width - x.shape[1]
        ids.append(F.pad(x, (0, pad)))
        masks.append(F.pad(m, (0, pad)))
    return {"input_ids": torch.cat(ids), "attention_mask": torch.cat(masks)}


__all__ = ["GCLLoss", "token_groups"]
