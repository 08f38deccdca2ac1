"""Optimisation: AdamW with open_clip's weight-decay split, and the learning-rate schedule."""
from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with open_clip's split: no weight decay on gains, biases, norms, logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def cosine_schedule(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup to the base lr, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clamp_logit_scale(model: torch.nn.Module, max_logit_scale: float) -> None:
    """CLIP's clamp after each step: keeps exp(logit_scale) in [1, max_logit_scale]."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(max_logit_scale))


__all__ = ["build_optimizer", "cosine_schedule", "clamp_logit_scale"]
