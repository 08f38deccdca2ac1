"""`train(cfg)`: wire data, model, loss and optimiser together, own resume, and run the
epochs (open_clip's `main.py`; one epoch is `loop.train_one_epoch`).

A killed run started again with the same `out` resumes from the newest checkpoint:
model, optimizer, scheduler, step, epoch and position in the epoch's shuffled stream (the
shuffle is a pure function of seed and epoch, so the stream is replayed and the consumed
examples skipped), and the torch RNG states.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch

from ..data import MarqoGSDataset, ReadStats, doc_field_specs
from ..fileio import atomic_write_json
from ..models import Encoder, ModelBundle, create_model, read_checkpoint, save_checkpoint
from .config import RESUME, ConfigConflict, TrainConfig
from .data import TrainingData, close, prefetched, steps_per_epoch
from .loop import DONE, EXHAUSTED, STOPPED, train_one_epoch
from .loss import loss_module
from .optim import build_optimizer, cosine_schedule
from .state import (
    TrainResult,
    TrainState,
    checkpoint_path,
    is_finished,
    list_checkpoints,
    model_signature,
)

log = logging.getLogger("gcl_train.train")

SUMMARY_KEYS = ("ndcg@10", "err", "rbp@0.7", "rbp@0.8", "rbp@0.9", "mrr@10", "recall@100")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


def evaluate_model(bundle: ModelBundle, cfg: TrainConfig, out_dir: str, device) -> Dict[str, Any]:
    """Run the evaluator (`gcl_train.evaluation`) on `cfg.eval_splits` with an `Encoder`.

    Documents are fused with the training field weights (image -> `image_local`, title);
    everything else is the paper's protocol (`EvalConfig` defaults) except the number of
    test queries, `cfg.eval_queries`. The evaluator writes its JSON / CSV / PNG into
    `out_dir`.

    Returns:
        {split: {"ndcg@10", "err", "rbp@0.9", ...}}.
    """
    from ..evaluate import EvalConfig, evaluate  # noqa: the evaluator package re-export

    was_training = bundle.model.training
    bundle.model.eval()
    try:
        enc = Encoder(bundle, batch_size=cfg.eval_batch_size, device=device)
        config = EvalConfig(right=doc_field_specs(cfg.field_weights), n_queries=cfg.eval_queries,
                            batch_size=cfg.eval_batch_size)
        report = evaluate(MarqoGSDataset(cfg.data, image_root=cfg.image_root), list(cfg.eval_splits),
                          encoder=enc, config=config, out_dir=out_dir, progress=cfg.progress)
    finally:
        bundle.model.train(was_training)
        if cfg.lock_image:
            bundle.model.visual.eval()
    return {s: {k: float(r.metrics[k]) for k in SUMMARY_KEYS if k in r.metrics}
            for s, r in report.results.items()}


@dataclass
class Run:
    """Everything a training run holds while it runs (what `train_one_epoch` needs)."""

    cfg: TrainConfig
    device: torch.device
    amp: bool
    bundle: ModelBundle
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    s_max: float
    total_steps: int
    ran: int = 0  # steps taken in this invocation
    last_checkpoint: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    def save(self, path: Optional[str] = None) -> str:
        """A checkpoint with the full training state; keeps the newest `keep_checkpoints`."""
        path = path or checkpoint_path(self.cfg.out, self.state.step)
        save_checkpoint(path, self.bundle, extra={
            "train_state": self.state.to_checkpoint(self.optimizer, self.scheduler),
            "config": self.cfg.to_json(), "s_max": self.s_max})
        for _, old_path in list_checkpoints(self.cfg.out)[:-self.cfg.keep_checkpoints]:
            os.unlink(old_path)
        return path

    def evaluate(self) -> None:
        """Evaluate on `eval_splits` (if any) into eval/step_N and log the result."""
        if not self.cfg.eval_splits:
            return
        step = self.state.step
        r = evaluate_model(self.bundle, self.cfg, os.path.join(self.cfg.out, "eval", f"step_{step:08d}"),
                           self.device)
        self.state.evals.append({"step": step, "metrics": r})
        with open(os.path.join(self.cfg.out, "log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "eval": r}) + "\n")


def _resume_path(cfg: TrainConfig) -> Optional[str]:
    """The checkpoint to resume from (None: start fresh); checks the run directory."""
    resume_path = None
    if cfg.resume not in RESUME:
        resume_path = str(cfg.resume)
    elif cfg.resume == "auto":
        cks = list_checkpoints(cfg.out)
        resume_path = cks[-1][1] if cks else None
    cfg_path = os.path.join(cfg.out, "config.json")
    if cfg.resume == "never" and list_checkpoints(cfg.out):
        raise ConfigConflict(f"out: {cfg.out!r} already holds checkpoints and resume='never'; "
                             f"choose a new out directory or resume='auto'")
    if resume_path is not None and os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            old = json.load(f)
        if model_signature(old) != model_signature(json.loads(json.dumps(cfg.to_json()))):
            raise ConfigConflict(
                f"resume: {cfg.out!r} was trained with a different setup "
                f"({model_signature(old)}); resume needs the same model, data, batch size, seed "
                f"and shuffle; pass another out directory or resume='never'")
    return resume_path


def train(cfg: TrainConfig, on_step: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume training) a two-tower model with the GCL loss.

    Args:
        cfg: the run's configuration (validated here).
        on_step: optional callback(step, loss) after every optimiser step.

    Returns:
        `TrainResult`; the run directory holds checkpoints, `model.pt`, logs and summary.

    Example:
        >>> cfg = TrainConfig(data="demo_out/data", out="runs/tiny", model="tiny")  # doctest: +SKIP
        >>> train(cfg).model_path  # doctest: +SKIP
        'runs/tiny/model.pt'
    """
    from tqdm.auto import tqdm

    cfg.validate()
    t_start = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    device = resolve_device(cfg.device)
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if amp and device.type != "cuda":
        log.warning("precision bf16 on %s: autocast in bfloat16 on the CPU is slow; use fp32 there", device)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    bundle = create_model(cfg.model, pretrained=cfg.pretrained, device=device, seed=cfg.seed)
    if cfg.field_weights is None:
        cfg.field_weights = bundle.default_field_weights
    if cfg.field_weights.get("image", 0) > 0 and not bundle.has_image_tower:
        raise ConfigConflict(f"field_weights: the image field has weight {cfg.field_weights['image']} but "
                             f"the model {bundle.name!r} has no image tower; pass --field-weights title=1")
    data = TrainingData(MarqoGSDataset(cfg.data, image_root=cfg.image_root), cfg.split, cfg.score_column,
                        cfg.field_weights)
    scan = data.scan(os.path.join(cfg.out, "data_scan.json"))
    s_max = float(cfg.s_max) if cfg.s_max is not None else float(scan["score_max"])
    if s_max <= 0:
        raise ValueError(f"s_max: the largest {cfg.score_column} in the split is {s_max}; "
                         f"pass a positive s_max (or another score_column)")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch(scan["usable"], cfg.batch_size)
    if cfg.resume == "auto" and is_finished(cfg.out):
        with open(os.path.join(cfg.out, "summary.json"), encoding="utf-8") as f:
            done = json.load(f)
        if done.get("total_steps") == total_steps:
            log.info("%s: already finished (%d steps); nothing to do", cfg.out, total_steps)
            return TrainResult(**done)

    resume_path = _resume_path(cfg)
    atomic_write_json(os.path.join(cfg.out, "config.json"), cfg.to_json(), default=str)

    model = bundle.model
    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if cfg.lock_image:
        model.lock_image_tower()
    if cfg.lock_text:
        model.lock_text_tower()
    loss_fn = loss_module(model, s_max, **cfg.loss_options())
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    state = TrainState()
    if resume_path is not None:
        ck = read_checkpoint(resume_path)
        train_state = ck["extra"].get("train_state")
        if not train_state or train_state.get("version") is None:
            raise ValueError(f"resume: {resume_path!r} has no training state (a final model.pt?); "
                             f"start a new run with pretrained={resume_path!r} instead")
        model.load_state_dict(ck["state_dict"])
        state = TrainState.from_checkpoint(train_state, optimizer, scheduler, resume_path)
        log.info("resumed from %s at step %d (epoch %d, %d examples in)", resume_path, state.step,
                 state.epoch, state.consumed)
    model.train()
    if cfg.lock_image:  # lock_image_tower leaves the frozen tower's modules in train mode
        model.visual.eval()
    run = Run(cfg, device, amp, bundle, loss_fn, optimizer, scheduler, state, s_max, total_steps)

    stats = ReadStats()
    bar = tqdm(total=total_steps, initial=state.step, desc=f"train {os.path.basename(cfg.out.rstrip('/'))}",
               unit="step", disable=not cfg.progress, dynamic_ncols=True)
    log_f = open(os.path.join(cfg.out, "log.jsonl"), "a", encoding="utf-8")
    try:
        while state.step < total_steps:
            batches = data.batches(bundle, cfg.batch_size, cfg.seed, state.epoch, cfg.shuffle_buffer,
                                   state.consumed, stats)
            if cfg.prefetch:
                batches = prefetched(batches, cfg.prefetch)
            try:
                ended = train_one_epoch(run, batches, bar, log_f, on_step)
            finally:
                close(batches)
            if ended == STOPPED:
                run.last_checkpoint = run.save()
                res = TrainResult.of(cfg.out, state, total_steps, False, None, run.last_checkpoint,
                                     resume_path, t_start)
                res.save()
                return res
            if ended == EXHAUSTED:
                state.end_epoch()
    finally:
        bar.close()
        log_f.close()
    state.close_history()  # stopped by max_steps inside an epoch
    if stats.n_skipped:
        log.warning("%s", stats.summary())
    run.evaluate()
    run.last_checkpoint = run.save()
    model_path = os.path.join(cfg.out, "model.pt")
    save_checkpoint(model_path, bundle, extra={"config": cfg.to_json(), "s_max": s_max, "step": state.step,
                                                "epoch_losses": state.epoch_losses, "evals": state.evals})
    res = TrainResult.of(cfg.out, state, total_steps, True, model_path, run.last_checkpoint, resume_path, t_start)
    res.save()
    return res


__all__ = ["train", "evaluate_model", "resolve_device", "Run", "SUMMARY_KEYS"]
