"""`GCLLoss`: the loss as an `nn.Module` holding its options and an optional learnable scale."""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import nn

from ._validation import DIRECTIONS, NORMALIZATIONS, check_impl
from .functional import gcl_loss
from .weights import KINDS, score_to_weight


class GCLLoss(nn.Module):
    """Generalized contrastive loss over precomputed embeddings (docs/method.md sections 1 and 5).

    The module holds the options and the logit scale; the caller encodes the batch and
    passes the embeddings (the "compute from embeddings" half of a loss, so the same math
    serves training, cached embeddings and tests). Graded scores become per-pair weights
    through `score_to_weight`.

    The logit scale is stored as its log, initialised to log(init_logit_scale) (CLIP:
    1 / 0.07), and used as exp(.) clamped to at most `max_logit_scale` (CLIP: 100), as
    open_clip does. With learn_logit_scale=False it is a buffer and gets no gradient.

    Args:
        weight_fn: score-to-weight kind ("linear", "power", ... see `score_to_weight`) or
            a callable, used when `forward` gets `scores`.
        s_max: passed to `score_to_weight`; set it to the data set's largest score so that
            weights do not depend on the batch (100 for MarqoGS score_linear).
        weight_params: the kind's parameters, e.g. {"gamma": 2.0}.
        direction, normalize, field_weights, impl: as in `gcl_loss`.
        learn_logit_scale: make the log scale an `nn.Parameter`.
        init_logit_scale: initial multiplier s (> 0, at most max_logit_scale).
        logit_scale: an existing 0-dim log-scale Parameter to use instead of creating one
            (e.g. an open_clip model's `logit_scale`), so the model, its optimizer and its
            checkpoints hold the one value; init_logit_scale and learn_logit_scale are
            then not used.
        distributed: the batch is spread over the processes of `process_group` (default:
            the world): `forward` gets this rank's slice and returns this rank's share of
            the loss over the gathered batch (`gcl_kernels.distributed.gathered_gcl_loss`);
            the shares sum to the loss of the whole batch, so sum (not average) the
            parameter gradients over ranks.
        process_group: the `torch.distributed` group for `distributed=True`.
        max_logit_scale: upper clamp applied on use; None for no clamp.

    Shape:
        lhs [B, D] or [F_L, B, D]; rhs [B_R, D] or [F_R, B_R, D]; scores or weights [B].
        Output: 0-dim loss.

    Example:
        >>> loss_fn = GCLLoss(weight_fn="linear", s_max=100)
        >>> q = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
        >>> d = torch.nn.functional.normalize(torch.randn(8, 32), dim=-1)
        >>> loss = loss_fn(q, d, scores=torch.randint(1, 101, (8,)))
        >>> loss.backward()  # reaches loss_fn.logit_scale too
    """

    def __init__(
        self,
        weight_fn: Union[str, Callable] = "linear",
        s_max: Optional[float] = None,
        weight_params: Optional[dict] = None,
        direction: str = "both",
        normalize: str = "batch",
        field_weights: Optional[torch.Tensor] = None,
        learn_logit_scale: bool = True,
        init_logit_scale: float = 1 / 0.07,
        max_logit_scale: Optional[float] = 100.0,
        impl: str = "auto",
        logit_scale: Optional[nn.Parameter] = None,
        distributed: bool = False,
        process_group=None,
    ):
        super().__init__()
        if not callable(weight_fn) and weight_fn not in KINDS:
            raise ValueError(f"weight_fn: expected one of {tuple(KINDS)} or a callable, got {weight_fn!r}")
        if direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {direction!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
        check_impl(impl)
        if max_logit_scale is not None and not (
                isinstance(max_logit_scale, (int, float)) and math.isfinite(max_logit_scale) and max_logit_scale > 0):
            raise ValueError(f"max_logit_scale: expected a finite number > 0 or None, got {max_logit_scale!r}")
        if logit_scale is None and not (isinstance(init_logit_scale, (int, float))
                                        and math.isfinite(init_logit_scale) and init_logit_scale > 0):
            raise ValueError(f"init_logit_scale: expected a finite number > 0, got {init_logit_scale!r}")
        if logit_scale is None and max_logit_scale is not None and init_logit_scale > max_logit_scale:
            raise ValueError(
                f"init_logit_scale: {init_logit_scale} exceeds max_logit_scale={max_logit_scale}")
        if weight_params is not None and not isinstance(weight_params, dict):
            raise ValueError(f"weight_params: expected a dict or None, got {type(weight_params).__name__}")
        self.weight_fn = weight_fn
        self.s_max = s_max
        self.weight_params = dict(weight_params or {})
        if not callable(weight_fn):
            # Fail at construction, not at the first batch with scores.
            # Check the kind and its parameters on a score that is valid for this s_max.
            probe = float(s_max) if isinstance(s_max, (int, float)) and not isinstance(s_max, bool) else 1.0
            score_to_weight(torch.tensor([probe], dtype=torch.float64), weight_fn,
                            s_max if s_max is not None else 1.0, **self.weight_params)
        self.direction = direction
        self.normalize = normalize
        self.impl = impl
        self.distributed = bool(distributed)
        self.process_group = process_group
        self.max_logit_scale = None if max_logit_scale is None else float(max_logit_scale)
        if field_weights is not None:
            try:
                field_weights = torch.as_tensor(field_weights, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError) as e:
                raise ValueError(f"field_weights: expected an [F_L, F_R] array of numbers, got {field_weights!r}") from e
            if field_weights.dim() != 2 or not bool(torch.isfinite(field_weights).all()) \
                    or bool((field_weights < 0).any()) or not bool((field_weights > 0).any()):
                raise ValueError("field_weights: expected an [F_L, F_R] array of finite non-negative numbers, "
                                 f"not all zero; got {field_weights.tolist()}")
            self.register_buffer("field_weights", field_weights)
        else:
            self.field_weights = None
        if logit_scale is not None:
            if not isinstance(logit_scale, torch.Tensor) or logit_scale.numel() != 1 \
                    or not logit_scale.is_floating_point():
                raise ValueError(f"logit_scale: expected a 0-dim floating Parameter (the log of the "
                                 f"scale), got {type(logit_scale).__name__}")
            self.logit_scale = logit_scale  # shared, not copied
            return
        log_scale = torch.tensor(math.log(init_logit_scale), dtype=torch.float32)
        if learn_logit_scale:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale)

    def scale(self) -> torch.Tensor:
        """The multiplier s = exp(logit_scale), clamped to max_logit_scale (0-dim tensor)."""
        s = self.logit_scale.exp()
        if self.max_logit_scale is not None:
            s = s.clamp(max=self.max_logit_scale)
        return s

    def weights_from_scores(self, scores) -> torch.Tensor:
        """Per-pair weights from graded scores with this module's weight_fn, s_max and params."""
        return score_to_weight(scores, self.weight_fn, self.s_max, **self.weight_params)

    def forward(
        self,
        lhs: torch.Tensor,
        rhs: torch.Tensor,
        scores=None,
        weights: Optional[torch.Tensor] = None,
        lhs_groups: Optional[torch.Tensor] = None,
        rhs_groups: Optional[torch.Tensor] = None,
        extra_lhs_groups: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Loss of one batch. Give either `scores` (turned into weights) or `weights`, or neither."""
        if scores is not None and weights is not None:
            raise ValueError("scores, weights: give one of them, not both")
        if scores is not None:
            weights = self.weights_from_scores(scores)
            if isinstance(lhs, torch.Tensor):
                weights = weights.to(lhs.device)
        if self.distributed:
            if extra_lhs_groups is not None:
                raise ValueError("extra_lhs_groups: not supported with distributed=True (the gathered "
                                 "columns' query ids come from lhs_groups of every rank)")
            from .distributed import gathered_gcl_loss

            return gathered_gcl_loss(lhs, rhs, self.scale(), weights=weights, field_weights=self.field_weights,
                                     lhs_groups=lhs_groups, rhs_groups=rhs_groups, direction=self.direction,
                                     normalize=self.normalize, impl=self.impl, group=self.process_group)
        return gcl_loss(lhs, rhs, self.scale(), weights=weights, field_weights=self.field_weights,
                        lhs_groups=lhs_groups, rhs_groups=rhs_groups, direction=self.direction,
                        normalize=self.normalize, impl=self.impl, extra_lhs_groups=extra_lhs_groups)

    def extra_repr(self) -> str:
        return (f"weight_fn={getattr(self.weight_fn, '__name__', self.weight_fn)!s}, s_max={self.s_max}, "
                f"direction={self.direction}, normalize={self.normalize}, impl={self.impl}, "
                f"max_logit_scale={self.max_logit_scale}, distributed={self.distributed}")
