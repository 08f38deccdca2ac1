"""What a run directory holds and what resume restores: `TrainState` (saved in every
checkpoint), `TrainResult` (`summary.json`), and the checkpoint files themselves.

Run directory layout (`TrainConfig.out`):

    config.json                  the training config (resolved)
    data_scan.json               rows, usable rows, max score of the training split (cached)
    checkpoints/step_XXXXXXXX.pt periodic checkpoints with the full training state
    model.pt                     the final model (no optimizer state), for Encoder / Qdrant
    log.jsonl                    one JSON line per logged step (loss, lr, throughput)
    eval/step_XXXXXXXX/          periodic evaluation output (evaluator's JSON/CSV/PNG)
    summary.json                 final step, loss curve summary, timing
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..fileio import atomic_write_json
from .config import TrainConfig

STATE_VERSION = 1
_STEP_RE = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> Dict[str, Any]:
    """The torch RNG states (CPU, and every CUDA device when there is one)."""
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@dataclass
class TrainState:
    """Where a run stands: what a checkpoint saves and resume restores (with the model,
    optimizer and scheduler state dicts).

    Attributes:
        step: optimiser steps taken.
        epoch: the current epoch.
        consumed: examples of this epoch's shuffled stream already used (the resume point).
        epoch_losses: mean loss of each finished epoch.
        history: per-step losses of the current epoch.
        first_loss, last_loss: the run's first and latest step loss.
        evals: periodic evaluation results ({"step", "metrics"}).
    """

    step: int = 0
    epoch: int = 0
    consumed: int = 0
    epoch_losses: List[float] = field(default_factory=list)
    history: List[float] = field(default_factory=list)
    first_loss: Optional[float] = None
    last_loss: Optional[float] = None
    evals: List[Dict[str, Any]] = field(default_factory=list)

    def record(self, loss: float) -> None:
        """Account one optimiser step with this loss."""
        self.step += 1
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        self.history.append(loss)

    def end_epoch(self) -> None:
        """Close the current epoch (its mean loss) and start the next from its beginning."""
        self.epoch_losses.append(sum(self.history) / len(self.history) if self.history else float("nan"))
        self.history = []
        self.epoch += 1
        self.consumed = 0

    def close_history(self) -> None:
        """Turn the current epoch's step losses into its mean (a run may stop mid-epoch)."""
        if self.history:
            self.epoch_losses.append(sum(self.history) / len(self.history))
            self.history = []

    def to_checkpoint(self, optimizer, scheduler, rng_ranks: Optional[List[Dict[str, Any]]] = None
                      ) -> Dict[str, Any]:
        """The `train_state` entry of a checkpoint (format version `STATE_VERSION`).

        `rng_ranks` holds every rank's RNG states under torchrun (rank 0's are also
        stored as "rng", which is all a single-process run has)."""
        d = dataclasses.asdict(self)
        rng = rng_ranks[0] if rng_ranks else rng_state()
        d.update(version=STATE_VERSION, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                 rng=rng, world_size=len(rng_ranks) if rng_ranks else 1)
        if rng_ranks and len(rng_ranks) > 1:
            d["rng_ranks"] = rng_ranks
        return d

    @classmethod
    def from_checkpoint(cls, d: Mapping[str, Any], optimizer, scheduler, path: str,
                        rank: int = 0, world: int = 1) -> "TrainState":
        """Restore optimizer, scheduler and this rank's RNG states and return the state.

        Raises:
            ValueError for a checkpoint without a training state (e.g. a final model.pt),
            or one written by a run with a different number of processes.
        """
        if not isinstance(d, Mapping) or d.get("version") != STATE_VERSION:
            raise ValueError(f"resume: {path!r} has no training state (a final model.pt?); "
                             f"start a new run with pretrained={path!r} instead")
        saved_world = int(d.get("world_size", 1))
        if saved_world != world:
            raise ValueError(
                f"resume: {path!r} was written by a run on {saved_world} process(es), this one has {world}; "
                f"the data order would not change, but each process's random state cannot be carried "
                f"over exactly, so resume with {saved_world} process(es) (torchrun --nproc_per_node / "
                f"--nnodes), or start a new run directory with --pretrained {path}")
        optimizer.load_state_dict(d["optimizer"])
        scheduler.load_state_dict(d["scheduler"])
        set_rng_state(d["rng_ranks"][rank] if "rng_ranks" in d else d["rng"])
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class TrainResult:
    """What `train` returns (also written to `summary.json`)."""

    out: str
    step: int
    total_steps: int
    finished: bool
    model_path: Optional[str]
    checkpoint: Optional[str]
    first_loss: Optional[float]
    last_loss: Optional[float]
    epoch_losses: List[float]
    resumed_from: Optional[str]
    seconds: float
    evals: List[Dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, out: str, state: TrainState, total_steps: int, finished: bool, model_path: Optional[str],
           checkpoint: Optional[str], resumed_from: Optional[str], t_start: float) -> "TrainResult":
        return cls(out=out, step=state.step, total_steps=total_steps, finished=finished,
                   model_path=model_path, checkpoint=checkpoint, first_loss=state.first_loss,
                   last_loss=state.last_loss, epoch_losses=list(state.epoch_losses),
                   resumed_from=resumed_from, seconds=time.time() - t_start, evals=list(state.evals))

    def save(self) -> None:
        atomic_write_json(os.path.join(self.out, "summary.json"), dataclasses.asdict(self), default=str)


def checkpoint_path(out: str, step: int) -> str:
    return os.path.join(out, "checkpoints", f"step_{step:08d}.pt")


def list_checkpoints(out: str) -> List[Tuple[int, str]]:
    """(step, path) of the run's periodic checkpoints, oldest first."""
    found = []
    for p in glob.glob(os.path.join(out, "checkpoints", "step_*.pt")):
        m = _STEP_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


# Options added after runs were already written: a config.json without one had the default.
ADDED_OPTIONS: Dict[str, Any] = {"text_towers": TrainConfig.text_towers}


def _option(cfg_json: Mapping[str, Any], key: str) -> Any:
    return cfg_json.get(key, ADDED_OPTIONS.get(key))


def model_signature(cfg_json: Mapping[str, Any]) -> Dict[str, Any]:
    """The options a resumed run must share with the run it continues."""
    return {k: _option(cfg_json, k) for k in ("model", "pretrained", "text_towers", "data", "split", "batch_size",
                                              "seed", "shuffle_buffer", "field_mode", "score_column")}


# Options that change how a run is watched, not what it trains: a finished run directory
# is reused when everything else is the same.
RUN_ONLY_OPTIONS = frozenset({
    "progress", "stop_after", "log_every", "prefetch", "save_every", "keep_checkpoints", "eval_every",
    "eval_splits", "eval_queries", "eval_batch_size", "resume", "dist_timeout_minutes", "device",
})


def training_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> List[str]:
    """The training options on which two configs (`TrainConfig.to_json()`) differ."""
    keys = (set(saved) | set(current)) - RUN_ONLY_OPTIONS
    return sorted(k for k in keys if _option(saved, k) != _option(current, k))


class RunLock:
    """An exclusive, non-blocking `flock` on `<out>/.lock` while a run writes its directory:
    a second trainer on the same directory is refused instead of interleaving checkpoints.
    The OS drops the lock when the holder dies, so a killed run never leaves it behind."""

    def __init__(self, out: str):
        import errno
        import fcntl

        self.path = os.path.join(out, ".lock")
        self.fd: Optional[int] = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"out: another gcl-train process is writing to {out!r}; wait for it to "
                                 f"finish (or stop it), or pass another --out") from None
            raise

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def clean_stale_temps(out: str) -> List[str]:
    """Remove the temp files a killed run left while writing a checkpoint or a report
    (`fileio.atomic_write` names them `.<name>.<random>.tmp`); returns what was removed.
    Only call it while holding the run directory's lock."""
    removed = []
    for d in (out, os.path.join(out, "checkpoints")):
        for p in glob.glob(os.path.join(d, ".*.tmp")):
            try:
                os.unlink(p)
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def is_finished(out: str) -> bool:
    """True when `out` holds a finished run (a `summary.json` with finished=true and model.pt)."""
    p = os.path.join(out, "summary.json")
    if not (os.path.isfile(p) and os.path.isfile(os.path.join(out, "model.pt"))):
        return False
    with open(p, encoding="utf-8") as f:
        return bool(json.load(f).get("finished"))


__all__ = ["STATE_VERSION", "TrainState", "TrainResult", "checkpoint_path", "list_checkpoints",
           "model_signature", "training_differences", "clean_stale_temps", "RunLock", "is_finished", "rng_state",
           "set_rng_state"]
