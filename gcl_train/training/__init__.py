"""GCL training, split the way open_clip splits `open_clip_train`:

- `config`: `TrainConfig`, every option, declared once;
- `data`: the split as a deterministic shuffled stream of `Example`s, cut into `Batch`es;
- `loss`: encode a batch and apply the GCL loss with the model's logit scale;
- `optim`: AdamW and the warmup + cosine schedule;
- `state`: `TrainState` (what a checkpoint saves and resume restores), the run directory;
- `loop`: one epoch (`train_one_epoch`);
- `main`: `train(cfg)`, which wires them and owns resume.

    from gcl_train.training import TrainConfig, train
    result = train(TrainConfig(data="demo_out/data", out="runs/tiny"))
"""
from .config import PRECISIONS, RESUME, SCORE_COLUMNS, ConfigConflict, TrainConfig
from .data import Batch, Example, TrainingData, make_batch, prefetched, shuffled, steps_per_epoch
from .loss import compute_loss, embed, loss_module
from .main import evaluate_model, resolve_device, train
from .optim import build_optimizer, clamp_logit_scale, cosine_schedule
from .state import TrainResult, TrainState, is_finished, list_checkpoints

__all__ = [
    "TrainConfig", "ConfigConflict", "PRECISIONS", "RESUME", "SCORE_COLUMNS", "Example", "Batch",
    "TrainingData", "make_batch", "prefetched", "shuffled", "steps_per_epoch", "loss_module", "embed",
    "compute_loss", "build_optimizer", "cosine_schedule", "clamp_logit_scale", "TrainState",
    "TrainResult", "is_finished", "list_checkpoints", "train", "evaluate_model", "resolve_device",
]
