"""`TrainConfig`: every option a training run depends on, declared once.

The CLI (`gcl_train.cli.train`) takes its defaults and choices from here and from
`gcl_kernels`' constants; `config.json` in the run directory is `TrainConfig.to_json()`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from gcl_kernels import DIRECTIONS, IMPLS, NORMALIZATIONS, WEIGHT_KINDS, score_to_weight

from ..data import resolve_split
from ..models import FIELD_MODES, field_weight_vector
from ..models.factory import check_text_towers

PRECISIONS = ("auto", "fp32", "bf16")
# AdamW defaults (lr, weight decay): from scratch, and fine-tuning pretrained weights
SCRATCH_OPTIM = (5e-4, 0.1)
FINE_TUNE_OPTIM = (2e-5, 0.01)
RESUME = ("auto", "never")
SCORE_COLUMNS = ("score_linear", "score_reciprocal", "no_score")


class ConfigConflict(ValueError):
    """The options conflict with what is already in the run directory (exit status 2)."""


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as `config.json` in the run directory).

    Data: `data` (MarqoGS root), `split` (default the in-domain training split),
    `image_root`, `score_column`. Loss: `weight_fn` (a `score_to_weight` kind; "constant"
    is the CE baseline), `weight_params`, `s_max` (default: the largest score in the
    split), `field_mode` ("mean" fuses title and image into one vector, "pairs" gives each
    field pair its own softmax), `field_weights` (None: the model's default, image 0.9 /
    title 0.1, or title 1 for a text-only model; resolved by `train`), `direction`,
    `normalize`, `use_groups`.
    Optimisation: AdamW `lr` and `weight_decay` (None: 5e-4 and 0.1 for a model trained
    from scratch, 2e-5 and 0.01 when it starts from pretrained weights; resolved by
    `train`), `warmup_steps` then cosine to
    `lr * min_lr_ratio`, `grad_clip`, `precision` ("auto": bf16 autocast on CUDA, fp32 on
    CPU), learnable logit scale clamped at `max_logit_scale`, `lock_image` / `lock_text`
    (with separate text towers `lock_text` freezes both).
    Model: `text_towers` ("shared": queries and titles through one text tower;
    "separate": a Hugging Face text model gets a query tower and a document tower, both
    from the model's weights; open_clip models take only "shared").
    Input: `prefetch` batches built ahead in a background thread (0: inline).
    Run: `epochs` or `max_steps`, `save_every` steps, `keep_checkpoints`, `eval_every`
    steps (0: only at the end when `eval_splits` is set), `resume`.
    Scale: `micro_batch_size` M turns on the gradient cache (the batch is encoded M rows
    at a time; every pair of the batch stays a negative); under torchrun `batch_size` is
    the global batch and each of the N ranks encodes batch_size / N rows;
    `dist_timeout_minutes` bounds how long a rank waits for the others (e.g. while
    rank 0 evaluates).
    """

    data: str
    out: str
    model: Any = "tiny"
    pretrained: Optional[str] = None
    text_towers: str = "shared"
    split: str = "query_0_product_id_0"
    image_root: Optional[str] = None
    score_column: str = "score_linear"
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 64
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0
    weight_fn: str = "linear"
    weight_params: Dict[str, float] = field(default_factory=dict)
    s_max: Optional[float] = None
    field_mode: str = "mean"
    field_weights: Optional[Dict[str, float]] = None
    direction: str = "both"
    normalize: str = "batch"
    use_groups: bool = True
    shuffle_buffer: int = 10000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    lock_image: bool = False
    lock_text: bool = False
    init_logit_scale: Optional[float] = None
    max_logit_scale: float = 100.0
    loss_impl: str = "auto"
    save_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_splits: Tuple[str, ...] = ()
    eval_queries: int = 2000
    eval_batch_size: int = 128
    resume: str = "auto"
    log_every: int = 10
    prefetch: int = 2
    stop_after: Optional[int] = None
    progress: bool = True
    micro_batch_size: Optional[int] = None
    dist_timeout_minutes: float = 120.0

    def validate(self) -> "TrainConfig":
        """Check every option; raises ValueError naming the option."""

        def pos_int(name, v, allow_none=False, allow_zero=False):
            if v is None and allow_none:
                return
            lo = 0 if allow_zero else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")

        def num(name, v, lo=None, lo_open=False, allow_none=False):
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ValueError(f"{name}: expected a value {'>' if lo_open else '>='} {lo}, got {v!r}")

        if not isinstance(self.data, str) or not os.path.isdir(self.data):
            raise ValueError(f"data: expected a MarqoGS data directory, got {self.data!r} (not a directory)")
        if not isinstance(self.out, str) or not self.out:
            raise ValueError(f"out: expected a run directory path, got {self.out!r}")
        self.split = resolve_split(self.split)
        try:
            self.eval_splits = tuple(resolve_split(s) for s in self.eval_splits)
        except ValueError as e:
            raise ValueError(f"eval_splits: {e}") from None
        check_text_towers(self.text_towers)
        if self.score_column not in SCORE_COLUMNS:
            raise ValueError(f"score_column: expected one of {SCORE_COLUMNS}, got {self.score_column!r}")
        pos_int("epochs", self.epochs)
        pos_int("max_steps", self.max_steps, allow_none=True)
        pos_int("stop_after", self.stop_after, allow_none=True)
        pos_int("batch_size", self.batch_size)
        if self.batch_size < 2:
            raise ValueError(f"batch_size: contrastive training needs >= 2 pairs per batch, got {self.batch_size}")
        num("lr", self.lr, 0, lo_open=True, allow_none=True)
        num("weight_decay", self.weight_decay, 0, allow_none=True)
        pos_int("warmup_steps", self.warmup_steps, allow_zero=True)
        num("min_lr_ratio", self.min_lr_ratio, 0)
        if self.min_lr_ratio > 1:
            raise ValueError(f"min_lr_ratio: expected a value in [0, 1], got {self.min_lr_ratio}")
        num("grad_clip", self.grad_clip, 0, lo_open=True, allow_none=True)
        num("s_max", self.s_max, 0, lo_open=True, allow_none=True)
        if self.field_mode not in FIELD_MODES:
            raise ValueError(f"field_mode: expected one of {FIELD_MODES}, got {self.field_mode!r}")
        if self.field_weights is not None:
            field_weight_vector(self.field_weights)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {self.direction!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {self.normalize!r}")
        if self.loss_impl not in IMPLS:
            raise ValueError(f"loss_impl: expected one of {IMPLS}, got {self.loss_impl!r}")
        pos_int("shuffle_buffer", self.shuffle_buffer)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        num("init_logit_scale", self.init_logit_scale, 0, lo_open=True, allow_none=True)
        num("max_logit_scale", self.max_logit_scale, 1, lo_open=True)
        pos_int("save_every", self.save_every, allow_zero=True)
        pos_int("keep_checkpoints", self.keep_checkpoints)
        pos_int("eval_every", self.eval_every, allow_zero=True)
        pos_int("eval_queries", self.eval_queries)
        pos_int("eval_batch_size", self.eval_batch_size)
        pos_int("log_every", self.log_every)
        pos_int("prefetch", self.prefetch, allow_zero=True)
        pos_int("micro_batch_size", self.micro_batch_size, allow_none=True)
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError(f"micro_batch_size: {self.micro_batch_size} is larger than the batch "
                             f"(batch_size {self.batch_size}); the gradient cache encodes the batch in "
                             f"micro-batches no larger than it")
        num("dist_timeout_minutes", self.dist_timeout_minutes, 0, lo_open=True)
        if self.resume not in RESUME and not os.path.isfile(str(self.resume)):
            raise ValueError(f"resume: expected one of {RESUME} or a checkpoint file, got {self.resume!r}")
        if self.lock_image and self.lock_text:
            raise ValueError("lock_image, lock_text: both towers frozen leaves only the logit scale to train")
        self._check_weight_fn()
        return self

    def _check_weight_fn(self) -> None:
        if self.weight_fn not in WEIGHT_KINDS:
            raise ValueError(f"weight_fn: expected one of {tuple(WEIGHT_KINDS)}, got {self.weight_fn!r}")
        try:
            score_to_weight(torch.tensor([1.0, 2.0]), self.weight_fn, s_max=2.0, **self.weight_params)
        except ValueError as e:
            raise ValueError(f"weight_fn: {e}") from None
        except TypeError as e:
            raise ValueError(f"weight_params: not accepted by weight_fn {self.weight_fn!r}: {e}") from None

    def loss_options(self) -> Dict[str, Any]:
        """The keyword arguments of `gcl_train.training.loss.loss_module`, from this config."""
        return dict(weight_fn=self.weight_fn, weight_params=self.weight_params, direction=self.direction,
                    normalize=self.normalize, field_mode=self.field_mode, field_weights=self.field_weights,
                    max_logit_scale=self.max_logit_scale, impl=self.loss_impl)

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_splits"] = list(self.eval_splits)
        return d


__all__ = ["TrainConfig", "ConfigConflict", "PRECISIONS", "RESUME", "SCORE_COLUMNS", "SCRATCH_OPTIM",
           "FINE_TUNE_OPTIM"]
