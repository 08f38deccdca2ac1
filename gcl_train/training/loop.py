"""One epoch of training: the optimiser step, logging, periodic evaluation and
checkpoints, and the stop-after-N-steps switch (open_clip's `train_one_epoch`)."""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Iterator, Optional, Tuple

import torch

from .loss import compute_loss
from .optim import clamp_logit_scale

# What `train_one_epoch` ended with.
EXHAUSTED = "exhausted"  # the epoch's stream ran out: start the next epoch
DONE = "done"            # total_steps reached
STOPPED = "stopped"      # stop_after steps taken in this invocation


def train_step(run, batch) -> float:
    """Forward, backward, clip, step, schedule, clamp; returns the step's loss."""
    cfg = run.cfg
    batch = batch.to(run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.amp):
        loss = compute_loss(run.model, batch, run.loss_fn, cfg.field_weights, cfg.field_mode, cfg.use_groups)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    clamp_logit_scale(run.model, cfg.max_logit_scale)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at step {run.state.step + 1}; lower lr, check the data "
            f"({cfg.split}) or use precision='fp32'")
    return value


def train_one_epoch(run, batches: Iterator[Tuple[object, int]], bar, log_f,
                    on_step: Optional[Callable[[int, float], None]] = None) -> str:
    """Train on `batches` ((batch, consumed) pairs) until the stream ends, the run's last
    step, or `stop_after` steps in this invocation; returns EXHAUSTED, DONE or STOPPED."""
    cfg, st = run.cfg, run.state
    t_last, pairs_since = time.time(), 0
    for batch, consumed in batches:
        value = train_step(run, batch)
        st.consumed = consumed
        st.record(value)
        run.ran += 1
        pairs_since += len(batch)
        bar.update(1)
        if on_step is not None:
            on_step(st.step, value)
        if st.step % cfg.log_every == 0 or st.step == run.total_steps:
            now = time.time()
            rate = pairs_since / max(now - t_last, 1e-9)
            t_last, pairs_since = now, 0
            rec = {"step": st.step, "epoch": st.epoch, "loss": value,
                   "lr": run.scheduler.get_last_lr()[0],
                   "logit_scale": float(run.loss_fn.scale().detach()),
                   "pairs_per_s": rate}
            log_f.write(json.dumps(rec) + "\n")
            log_f.flush()
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{rec['lr']:.2e}", pairs_s=f"{rate:.0f}")
        if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < run.total_steps:
            run.evaluate()
        if cfg.save_every and st.step % cfg.save_every == 0 and st.step < run.total_steps:
            run.last_checkpoint = run.save()
        if cfg.stop_after is not None and run.ran >= cfg.stop_after and st.step < run.total_steps:
            return STOPPED
        if st.step >= run.total_steps:
            return DONE
    return EXHAUSTED


__all__ = ["train_step", "train_one_epoch", "EXHAUSTED", "DONE", "STOPPED"]
