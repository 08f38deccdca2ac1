"""One epoch of training: the optimiser step (plain, gradient-cached, and/or data-parallel),
logging, periodic evaluation and checkpoints, and the stop-after-N-steps switch
(open_clip's `train_one_epoch`)."""
from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Callable, Iterator, Optional, Tuple

import torch

from .distributed import all_reduce_gradients, all_reduce_sum
from .gradcache import cached_loss_backward
from .loss import compute_loss
from .optim import clamp_logit_scale

# Test hook: after this step (and its checkpoint) the process stops and waits to be
# killed, so a test can SIGKILL a run at a known point (like qdrant_plugin.ingest.CRASH_ENV).
HOLD_ENV = "GCL_TRAIN_HOLD_AFTER_STEP"

# What `train_one_epoch` ended with.
EXHAUSTED = "exhausted"  # the epoch's stream ran out: start the next epoch
DONE = "done"            # total_steps reached
STOPPED = "stopped"      # stop_after steps taken in this invocation


def _empty_share(run) -> torch.Tensor:
    """This rank's share when its slice of the global batch has no usable pair: it still
    joins the gathers (and their backward) with zero rows."""
    d = run.bundle.embed_dim
    n_fields = 2 if run.cfg.field_mode == "pairs" else None
    q = torch.zeros(0, d, device=run.device, requires_grad=True)
    docs = torch.zeros(*((n_fields,) if n_fields else ()), 0, d, device=run.device, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64, device=run.device)
    return run.loss_fn(q, docs, weights=torch.zeros(0, device=run.device),
                       lhs_groups=empty if run.cfg.use_groups else None,
                       rhs_groups=empty if run.cfg.use_groups else None)


def _check_parameters(run) -> None:
    """FloatingPointError when the optimiser step left a non-finite parameter (an lr far
    too large, an overflow), instead of failing later on NaN embeddings."""
    params = [p for p in run.model.parameters() if p.requires_grad]
    norms = torch._foreach_norm(params) if params else []
    if norms and not bool(torch.isfinite(torch.stack(norms)).all()):
        bad = next(n for (n, p), v in zip(((n, p) for n, p in run.model.named_parameters() if p.requires_grad),
                                          norms) if not bool(torch.isfinite(v)))
        raise FloatingPointError(
            f"step {run.state.step + 1}: the optimiser step made parameter {bad!r} non-finite "
            f"(lr {run.cfg.lr:g}); lower --lr, keep --grad-clip on, or use precision fp32")


def train_step(run, batch) -> float:
    """Forward, backward (through the gradient cache when `micro_batch_size` is set),
    gradient sum over ranks, clip, step, schedule, clamp; returns the step's loss (of the
    whole global batch)."""
    cfg = run.cfg
    autocast = functools.partial(torch.autocast, run.device.type, dtype=torch.bfloat16, enabled=run.amp)
    run.optimizer.zero_grad(set_to_none=True)
    if batch is None:
        loss = _empty_share(run)
        loss.backward()
    elif cfg.micro_batch_size:
        loss = cached_loss_backward(run.model, batch.to(run.device), run.loss_fn, cfg.micro_batch_size,
                                    cfg.field_weights, cfg.field_mode, cfg.use_groups, autocast, run.device)
    else:
        batch = batch.to(run.device)
        with autocast():
            loss = compute_loss(run.model, batch, run.loss_fn, cfg.field_weights, cfg.field_mode, cfg.use_groups)
        loss.backward()
    all_reduce_gradients(run.env, run.model.parameters())
    if cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    clamp_logit_scale(run.model, cfg.max_logit_scale)
    _check_parameters(run)
    value = all_reduce_sum(run.env, float(loss.detach()), run.device)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at step {run.state.step + 1}; lower lr, check the data "
            f"({cfg.split}) or use precision='fp32'")
    return value


def train_one_epoch(run, batches: Iterator[Tuple[object, int]], bar, log_f,
                    on_step: Optional[Callable[[int, float], None]] = None) -> str:
    """Train on `batches` ((batch, consumed) pairs) until the stream ends, the run's last
    step, or `stop_after` steps in this invocation; returns EXHAUSTED, DONE or STOPPED.

    Under torchrun the ranks first agree on the global batch's number of usable pairs
    (a step needs two); every rank then takes the same decisions."""
    cfg, st = run.cfg, run.state
    t_last, pairs_since = time.time(), 0
    for batch, consumed in batches:
        n = len(batch) if batch is not None else 0
        if run.env.enabled:
            n = int(all_reduce_sum(run.env, float(n), run.device))
            if n < 2:
                st.consumed = consumed
                continue
        value = train_step(run, batch)
        st.consumed = consumed
        st.record(value)
        run.ran += 1
        pairs_since += n
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
            if log_f is not None:
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
            bar.set_postfix(loss=f"{value:.4f}", lr=f"{rec['lr']:.2e}", pairs_s=f"{rate:.0f}")
        if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < run.total_steps:
            run.evaluate()
        if cfg.save_every and st.step % cfg.save_every == 0 and st.step < run.total_steps:
            run.last_checkpoint = run.save()
        if os.environ.get(HOLD_ENV) == str(st.step):
            while True:
                time.sleep(1)
        if cfg.stop_after is not None and run.ran >= cfg.stop_after and st.step < run.total_steps:
            return STOPPED
        if st.step >= run.total_steps:
            return DONE
    return EXHAUSTED


__all__ = ["train_step", "train_one_epoch", "EXHAUSTED", "DONE", "STOPPED"]
