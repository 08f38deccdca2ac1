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
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..data import MarqoGSDataset, ReadStats, doc_field_specs
from ..fileio import atomic_write_json
from ..models import CorruptCheckpointError, Encoder, ModelBundle, create_model, read_checkpoint, save_checkpoint
from .config import FINE_TUNE_OPTIM, RESUME, SCRATCH_OPTIM, ConfigConflict, TrainConfig
from .data import TrainingData, close, prefetched, steps_per_epoch
from .distributed import (
    DistEnv,
    agree,
    all_gather_objects,
    broadcast_object,
    broadcast_parameters,
    check_same_config,
    env_from_torchrun,
    init_distributed,
    shard_bounds,
    shutdown,
)
from .loop import EXHAUSTED, STOPPED, train_one_epoch
from .loss import loss_module
from .optim import build_optimizer, cosine_schedule
from .state import (
    TrainResult,
    TrainState,
    RunLock,
    checkpoint_path,
    clean_stale_temps,
    is_finished,
    list_checkpoints,
    model_signature,
    rng_state,
    training_differences,
)

log = logging.getLogger("gcl_train.training")

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
    from ..evaluation import EvalConfig, evaluate

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
    env: DistEnv = field(default_factory=DistEnv)
    ran: int = 0  # steps taken in this invocation
    last_checkpoint: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    def save(self, path: Optional[str] = None) -> str:
        """A checkpoint with the full training state; keeps the newest `keep_checkpoints`.

        Every rank calls it (it gathers their RNG states); rank 0 alone writes."""
        path = path or checkpoint_path(self.cfg.out, self.state.step)
        rng_ranks = all_gather_objects(self.env, rng_state()) if self.env.enabled else None
        if self.env.is_main:
            save_checkpoint(path, self.bundle, extra={
                "train_state": self.state.to_checkpoint(self.optimizer, self.scheduler, rng_ranks),
                "config": self.cfg.to_json(), "s_max": self.s_max})
            for _, old_path in list_checkpoints(self.cfg.out)[:-self.cfg.keep_checkpoints]:
                os.unlink(old_path)
        return path

    def evaluate(self) -> None:
        """Evaluate on `eval_splits` (if any) into eval/step_N and log the result (rank 0;
        the other ranks go on and wait for it at the next collective)."""
        if not self.cfg.eval_splits or not self.env.is_main:
            return
        step = self.state.step
        r = evaluate_model(self.bundle, self.cfg, os.path.join(self.cfg.out, "eval", f"step_{step:08d}"),
                           self.device)
        self.state.evals.append({"step": step, "metrics": r})
        with open(os.path.join(self.cfg.out, "log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "eval": r}) + "\n")


def _finished_run(cfg: TrainConfig, total_steps: int) -> Optional[Dict[str, Any]]:
    """The summary of a finished run in `cfg.out` made with this configuration (None:
    not finished, or finished with fewer steps); ConfigConflict when it was made with
    other training options (it is never passed off as this run)."""
    if cfg.resume != "auto" or not is_finished(cfg.out):
        return None
    with open(os.path.join(cfg.out, "summary.json"), encoding="utf-8") as f:
        done = json.load(f)
    cfg_path = os.path.join(cfg.out, "config.json")
    saved = None
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            saved = json.load(f)
    diff = training_differences(saved or {}, json.loads(json.dumps(cfg.to_json())))
    if diff:
        raise ConfigConflict(
            f"out: {cfg.out!r} holds a finished run trained with other options ({', '.join(diff)}: e.g. "
            f"{diff[0]} {(saved or {}).get(diff[0])!r} there, {cfg.to_json().get(diff[0])!r} now); pass "
            f"another --out, or delete that run directory to train it again")
    return done if done.get("total_steps") == total_steps else None


def _resume_candidates(cfg: TrainConfig) -> List[str]:
    """The checkpoints to resume from, newest first (empty: start fresh); checks the run
    directory. With --resume FILE only that file."""
    if cfg.resume not in RESUME:
        candidates = [str(cfg.resume)]
    elif cfg.resume == "auto":
        candidates = [p for _, p in reversed(list_checkpoints(cfg.out))]
    else:
        candidates = []
    cfg_path = os.path.join(cfg.out, "config.json")
    if cfg.resume == "never" and list_checkpoints(cfg.out):
        raise ConfigConflict(f"out: {cfg.out!r} already holds checkpoints and resume='never'; "
                             f"choose a new out directory or resume='auto'")
    if candidates and os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            old = json.load(f)
        was, now = model_signature(old), model_signature(json.loads(json.dumps(cfg.to_json())))
        if was != now:
            diff = ", ".join(f"{k} {was[k]!r} there, {now[k]!r} now" for k in was if was[k] != now[k])
            raise ConfigConflict(
                f"resume: {cfg.out!r} was trained with a different setup ({diff}; {was}); resume needs the "
                f"same model, text towers, data, batch size, seed and shuffle; pass another out directory or "
                f"resume='never'")
    return candidates


def train(cfg: TrainConfig, on_step: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume training) a two-tower model with the GCL loss.

    Under torchrun (WORLD_SIZE > 1 in the environment) every process calls this with the
    same configuration; see `gcl_train.training.distributed`.

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
    env = env_from_torchrun()
    device = init_distributed(env, resolve_device(cfg.device) if _valid_device(cfg.device) else
                              torch.device("cpu"), cfg.dist_timeout_minutes)
    try:
        return _train(cfg, env, device, on_step)
    finally:
        shutdown(env)


def _valid_device(spec) -> bool:
    try:
        resolve_device(spec)
    except (ValueError, TypeError):
        return False
    return True


def _setup(env: DistEnv, fn, *args):
    """Run a set-up step on every rank; if any rank fails, every rank raises."""
    try:
        out = fn(*args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        agree(env, e)
        raise
    agree(env, None)
    return out


def _on_rank0(env: DistEnv, fn, *args, share: bool = True):
    """Run a set-up step on rank 0 alone (the others wait for it, and fail with it); with
    `share`, every rank gets rank 0's result."""
    out = _setup(env, fn, *args) if env.is_main else _setup(env, lambda: None)
    return broadcast_object(env, out) if share else out


def _check_setup(cfg: TrainConfig, env: DistEnv) -> None:
    cfg.validate()
    resolve_device(cfg.device)
    if env.enabled:
        if cfg.batch_size % env.world:
            raise ValueError(f"batch_size: the global batch {cfg.batch_size} must divide evenly over "
                             f"{env.world} processes (each encodes batch_size / {env.world} rows)")
        per_rank = cfg.batch_size // env.world
        if per_rank < 1:
            raise ValueError(f"batch_size: {cfg.batch_size} leaves no rows for each of {env.world} processes")
        if cfg.micro_batch_size is not None and cfg.micro_batch_size > per_rank:
            raise ValueError(f"micro_batch_size: {cfg.micro_batch_size} is larger than each process's slice "
                             f"of the batch ({cfg.batch_size} / {env.world} = {per_rank})")


def _train(cfg: TrainConfig, env: DistEnv, device: torch.device,
           on_step: Optional[Callable[[int, float], None]]) -> TrainResult:
    _setup(env, _check_setup, cfg, env)
    check_same_config(env, cfg.to_json())
    t_start = time.time()
    lock = _on_rank0(env, _open_run_dir, cfg.out, share=False)
    try:
        return _train_locked(cfg, env, device, on_step, t_start)
    finally:
        if lock is not None:
            lock.release()


def _open_run_dir(out: str) -> RunLock:
    """Create the run directory, lock it, and remove temp files a killed run left."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out: cannot create the run directory {out!r}: {e.strerror or e}") from None
    if not os.path.isdir(out):
        raise ValueError(f"out: {out!r} is not a directory")
    lock = RunLock(out)
    for p in clean_stale_temps(out):
        log.info("removed %s, left by a run killed while writing it", p)
    return lock


def _train_locked(cfg: TrainConfig, env: DistEnv, device: torch.device,
                  on_step: Optional[Callable[[int, float], None]], t_start: float) -> TrainResult:
    from tqdm.auto import tqdm

    main = env.is_main
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if amp and device.type != "cuda" and main:
        log.warning("precision bf16 on %s: autocast in bfloat16 on the CPU is slow; use fp32 there", device)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    bundle = _setup(env, create_model, cfg.model, cfg.pretrained, device, cfg.seed, cfg.text_towers)
    if cfg.field_weights is None:
        cfg.field_weights = bundle.default_field_weights
    lr, wd = FINE_TUNE_OPTIM if bundle.pretrained else SCRATCH_OPTIM
    cfg.lr = lr if cfg.lr is None else cfg.lr
    cfg.weight_decay = wd if cfg.weight_decay is None else cfg.weight_decay
    if cfg.field_weights.get("image", 0) > 0 and not bundle.has_image_tower:
        raise ConfigConflict(f"field_weights: the image field has weight {cfg.field_weights['image']} but "
                             f"the model {bundle.name!r} has no image tower; pass --field-weights title=1")
    data = TrainingData(MarqoGSDataset(cfg.data, image_root=cfg.image_root), cfg.split, cfg.score_column,
                        cfg.field_weights)
    # rank 0 scans (and caches) the split and reads the run directory; the others get its answers
    scan = _on_rank0(env, data.scan, os.path.join(cfg.out, "data_scan.json"))
    s_max = float(cfg.s_max) if cfg.s_max is not None else float(scan["score_max"])
    if cfg.s_max is not None and float(scan["score_max"]) > s_max and cfg.weight_fn != "constant":
        raise ConfigConflict(f"s_max: {s_max:g} is below the largest {cfg.score_column} in {cfg.split}, "
                             f"{scan['score_max']:g}: weights would exceed 1; leave --s-max out (it defaults to "
                             f"the largest score) or pass at least {scan['score_max']:g}")
    if s_max <= 0:
        raise ValueError(f"s_max: the largest {cfg.score_column} in the split is {s_max}; "
                         f"pass a positive s_max (or another score_column)")
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch(scan["usable"], cfg.batch_size)
    done = _on_rank0(env, _finished_run, cfg, total_steps)
    if done is not None:
        if main:
            log.info("%s: already finished (%d steps); nothing to do", cfg.out, total_steps)
        return TrainResult(**done)

    candidates = _on_rank0(env, _resume_candidates, cfg)
    if main:
        atomic_write_json(os.path.join(cfg.out, "config.json"), cfg.to_json(), default=str)

    model = bundle.model
    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if cfg.lock_image:
        model.lock_image_tower()
    if cfg.lock_text:
        model.lock_text_tower()
    broadcast_parameters(env, model)  # every replica starts from rank 0's weights
    loss_fn = loss_module(model, s_max, distributed=env.enabled, **cfg.loss_options())
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    state = TrainState()
    resume_path = None
    if candidates:
        state, resume_path = _setup(env, _resume, model, optimizer, scheduler, candidates, env,
                                    cfg.resume == "auto")
        if main:
            log.info("resumed from %s at step %d (epoch %d, %d examples in)", resume_path, state.step,
                     state.epoch, state.consumed)
    elif env.enabled:
        torch.manual_seed(cfg.seed + 1_000_003 * env.rank)  # each rank's own dropout stream
    model.train()
    if cfg.lock_image:  # lock_image_tower leaves the frozen tower's modules in train mode
        model.visual.eval()
    run = Run(cfg, device, amp, bundle, loss_fn, optimizer, scheduler, state, s_max, total_steps, env)

    stats = ReadStats()
    shard = (lambda n: shard_bounds(n, env)) if env.enabled else None
    bar = tqdm(total=total_steps, initial=state.step, desc=f"train {os.path.basename(cfg.out.rstrip('/'))}",
               unit="step", disable=not (cfg.progress and main), dynamic_ncols=True)
    log_f = open(os.path.join(cfg.out, "log.jsonl"), "a", encoding="utf-8") if main else None
    try:
        while state.step < total_steps:
            batches = data.batches(bundle, cfg.batch_size, cfg.seed, state.epoch, cfg.shuffle_buffer,
                                   state.consumed, stats, shard=shard)
            if cfg.prefetch:
                batches = prefetched(batches, cfg.prefetch)
            ran_before = run.ran
            try:
                ended = train_one_epoch(run, batches, bar, log_f, on_step)
            finally:
                close(batches)
            if ended == STOPPED:
                run.last_checkpoint = run.save()
                res = TrainResult.of(cfg.out, state, total_steps, False, None, run.last_checkpoint,
                                     resume_path, t_start)
                if main:
                    res.save()
                return res
            if ended == EXHAUSTED:
                if run.ran == ran_before and not state.history:
                    raise ValueError(
                        f"data: a whole epoch of {cfg.split} gave no batch with two usable pairs "
                        f"(every document field with a positive weight, {cfg.field_weights}, was missing or "
                        f"unreadable); check the images and --image-root, or the field weights\n"
                        f"{stats.summary()}")
                state.end_epoch()
    finally:
        bar.close()
        if log_f is not None:
            log_f.close()
    state.close_history()  # stopped by max_steps inside an epoch
    run.evaluate()
    run.last_checkpoint = run.save()
    model_path = os.path.join(cfg.out, "model.pt")
    res = TrainResult.of(cfg.out, state, total_steps, True, model_path, run.last_checkpoint, resume_path, t_start)
    if main:
        save_checkpoint(model_path, bundle, extra={"config": cfg.to_json(), "s_max": s_max, "step": state.step,
                                                    "epoch_losses": state.epoch_losses, "evals": state.evals})
        res.save()
    agree(env, None)  # the others wait until rank 0 has written the final model
    return res


def _resume(model, optimizer, scheduler, candidates: List[str], env: DistEnv,
            fall_back: bool) -> Tuple[TrainState, str]:
    """Load the newest intact checkpoint of `candidates` (newest first): a damaged or
    truncated newest one is reported and the previous one used (with `fall_back`)."""
    for k, path in enumerate(candidates):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"resume: rank {env.rank} cannot read {path!r}; under torchrun --out must be on a file system "
                f"every process can read (rank 0 writes the checkpoints there)")
        try:
            ck = read_checkpoint(path)
        except CorruptCheckpointError as e:
            if not fall_back or k + 1 == len(candidates):
                raise CorruptCheckpointError(
                    f"{e}; no intact checkpoint to resume from" + ("" if not fall_back else
                    " (the older ones are damaged too); start a new run directory")) from None
            log.warning("%s; resuming from the previous checkpoint %s instead", e, candidates[k + 1])
            continue
        train_state = ck["extra"].get("train_state")
        if not train_state or train_state.get("version") is None:
            raise ValueError(f"resume: {path!r} has no training state (a final model.pt?); "
                             f"start a new run with pretrained={path!r} instead")
        model.load_state_dict(ck["state_dict"])
        return TrainState.from_checkpoint(train_state, optimizer, scheduler, path, env.rank, env.world), path
    raise AssertionError("no candidates")


__all__ = ["train", "evaluate_model", "resolve_device", "Run", "SUMMARY_KEYS"]
