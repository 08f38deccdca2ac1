"""`gcl-train`: train a two-tower model on MarqoGS-format data with the GCL loss.

    gcl-train --data demo_out/data --model tiny --epochs 2 --batch-size 64 \\
              --weight-fn linear --field-mode mean --out runs/tiny-gcl

Several GPUs or machines: `torchrun --nproc_per_node N $(which gcl-train) ...` (see
`gcl_train.training.distributed`). The argument parsing only: every option's default and
choices come from
`gcl_train.training.TrainConfig` (and `gcl_kernels`' constants); the loop is
`gcl_train.training.train`. Run it again with the same `--out` to resume a killed run from
its newest checkpoint. Exit status: see `gcl_train.cli.common`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from gcl_kernels import DIRECTIONS, IMPLS, NORMALIZATIONS, WEIGHT_KINDS

from ..data import DOC_FIELD_NAMES, SPLITS, MarqoGSDataset
from ..models import FIELD_MODES, TEXT_TOWERS
from ..training import PRECISIONS, SCORE_COLUMNS, ConfigConflict, TrainConfig, train
from ..training.config import FINE_TUNE_OPTIM, SCRATCH_OPTIM
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    ConfigArguments,
    add_progress_flags,
    fail,
    key_values_type,
    setup_logging,
)

PROG = "gcl-train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a two-tower (text / image) model with Generalized Contrastive Learning on "
                    "MarqoGS-format data; resumable. The method: docs/method.md; the trainer: "
                    "docs/training.md.")
    c = ConfigArguments(p, TrainConfig)
    p.set_defaults(_config_args=c)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="MarqoGS subset root (corpus_*.json, split CSVs)")
    c.add(g, "--split", "split", "training split (or the alias in_domain)")
    c.add(g, "--image-root", "image_root", "where relative image_local paths live", show_default="--data")
    c.add(g, "--score-column", "score_column", "the graded score column", choices=SCORE_COLUMNS)
    c.add(g, "--prefetch", "prefetch", "batches prepared ahead in a background thread (0: inline)", type=int)
    c.add(g, "--shuffle-buffer", "shuffle_buffer", "bounded shuffle buffer, in pairs", type=int)
    g = p.add_argument_group("model")
    c.add(g, "--model", "model", "tiny | small | an open_clip architecture (ViT-B-32) | a JSON config file | a "
          "local Hugging Face / sentence-transformers folder | an open_clip hub folder | a gcl checkpoint")
    c.add(g, "--pretrained", "pretrained", "local open_clip weights: a state dict, an OpenAI CLIP state dict, "
          ".safetensors or a hub folder (never downloaded; docs/pretrained.md)")
    c.add(g, "--text-towers", "text_towers", "Hugging Face text models: shared (queries and titles through one "
          "text tower) or separate (a query tower and a document tower, both from the model's weights; twice "
          "the text-tower parameters and optimizer state)", choices=TEXT_TOWERS)
    c.add(g, "--lock-image", "lock_image", "freeze the image tower", action="store_true")
    c.add(g, "--lock-text", "lock_text", "freeze the text tower (both, with --text-towers separate)",
          action="store_true")
    c.add(g, "--init-logit-scale", "init_logit_scale", "initial logit scale multiplier", type=float,
          show_default="the model's, 1/0.07 for CLIP")
    c.add(g, "--max-logit-scale", "max_logit_scale", "upper clamp of the logit scale multiplier", type=float)
    g = p.add_argument_group("loss")
    c.add(g, "--weight-fn", "weight_fn", "score_to_weight kind; 'constant' is the CE (CLIP) baseline",
          choices=WEIGHT_KINDS)
    c.add(g, "--weight-params", "weight_params", "score_to_weight parameters, e.g. gamma=2 or k=10,c=0.5",
          type=key_values_type("--weight-params"))
    c.add(g, "--s-max", "s_max", "score scale", type=float, show_default="the split's largest score")
    c.add(g, "--field-mode", "field_mode", "mean: one fused document vector; pairs: a softmax per field",
          choices=FIELD_MODES)
    c.add(g, "--field-weights", "field_weights", "document field weights",
          type=key_values_type("--field-weights", allowed=DOC_FIELD_NAMES, positive_sum=True, noun="weight",
                               non_negative=True))
    c.add(g, "--direction", "direction", "which softmax directions", choices=DIRECTIONS)
    c.add(g, "--normalize", "normalize", "divide by the batch size or by the sum of weights",
          choices=NORMALIZATIONS)
    c.add(g, "--no-groups", "use_groups", "do not mask same-query / same-product pairs as negatives",
          action="store_false", show_default="masked")
    c.add(g, "--loss-impl", "loss_impl", "loss implementation (auto: Triton on CUDA, chunked elsewhere)",
          choices=IMPLS)
    g = p.add_argument_group("optimisation")
    c.add(g, "--epochs", "epochs", "passes over the training split", type=int)
    c.add(g, "--max-steps", "max_steps", "total optimiser steps; overrides --epochs", type=int)
    c.add(g, "--batch-size", "batch_size", "pairs per optimiser step; under torchrun the global batch, "
          "split evenly over the processes", type=int)
    c.add(g, "--micro-batch-size", "micro_batch_size", "gradient cache: encode the batch this many rows at a "
          "time (memory of M rows, every pair of the batch still a negative; one extra forward pass)",
          type=int, show_default="off")
    c.add(g, "--lr", "lr", "AdamW learning rate", type=float,
          show_default=f"{SCRATCH_OPTIM[0]:g} from scratch, {FINE_TUNE_OPTIM[0]:g} from pretrained weights")
    c.add(g, "--wd", "weight_decay", "AdamW weight decay", type=float,
          show_default=f"{SCRATCH_OPTIM[1]:g} from scratch, {FINE_TUNE_OPTIM[1]:g} from pretrained weights")
    c.add(g, "--warmup", "warmup_steps", "linear warmup steps", type=int)
    c.add(g, "--min-lr-ratio", "min_lr_ratio", "cosine decay ends at lr * this", type=float)
    c.add(g, "--grad-clip", "grad_clip", "gradient norm clip (0 disables)", type=float)
    c.add(g, "--precision", "precision", "auto: bf16 autocast on CUDA, fp32 on CPU", choices=PRECISIONS)
    c.add(g, "--device", "device", "auto | cpu | cuda | cuda:N")
    c.add(g, "--seed", "seed", "seed of the initialisation, the shuffle and dropout", type=int)
    g.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, usually the number of cores)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory (checkpoints, logs, model.pt)")
    c.add(g, "--save-every", "save_every", "checkpoint every N steps (0: at the end only)", type=int)
    c.add(g, "--keep", "keep_checkpoints", "checkpoints kept", type=int)
    c.add(g, "--resume", "resume", "auto (newest checkpoint in --out) | never | a checkpoint file")
    c.add(g, "--stop-after", "stop_after", "checkpoint and exit after N steps in this invocation "
          "(time-sliced jobs)", type=int)
    c.add(g, "--log-every", "log_every", "steps between log.jsonl lines", type=int)
    c.add(g, "--dist-timeout", "dist_timeout_minutes", "under torchrun: minutes a process waits for the "
          "others (e.g. while rank 0 evaluates)", type=float)
    add_progress_flags(g)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-splits", default="",
                   help="comma-separated splits to evaluate at the end, or 'all' (those present) "
                        "(default: none)")
    c.add(g, "--eval-every", "eval_every", "also evaluate every N steps (0: at the end only)", type=int)
    c.add(g, "--eval-queries", "eval_queries", "test queries per split", type=int)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` for parsed arguments (validated)."""
    if args.eval_splits.strip() == "all":
        # the splits present in the data (a training-only copy may lack the cold-start ones)
        eval_splits = tuple(MarqoGSDataset(args.data).available_splits()) if os.path.isdir(args.data) else SPLITS
    else:
        eval_splits = tuple(s.strip() for s in args.eval_splits.split(",") if s.strip())
    values = args._config_args.values(args)
    if values["grad_clip"] is not None and values["grad_clip"] <= 0:
        values["grad_clip"] = None
    cfg = TrainConfig(data=args.data, out=args.out, eval_splits=eval_splits, progress=not args.quiet, **values)
    return cfg.validate()


def _format_loss(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; returns the exit status (`gcl_train.cli.common`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.quiet)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            parser.error(f"--threads: expected a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        return fail(PROG, e, EXIT_USAGE)
    try:
        result = train(cfg)
    except ConfigConflict as e:
        return fail(PROG, e, EXIT_USAGE)
    except (ValueError, FloatingPointError, RuntimeError) as e:
        return fail(PROG, e, EXIT_ERROR)
    except OSError as e:  # disk full, permissions, a file where a directory should be
        return fail(PROG, f"{e.strerror or e}: {e.filename}" if e.filename else e, EXIT_ERROR)
    state = "finished" if result.finished else "stopped (run again to resume)"
    print(f"{state} at step {result.step}/{result.total_steps} in {result.seconds:.1f}s; "
          f"loss {_format_loss(result.first_loss)} -> {_format_loss(result.last_loss)}")
    if result.model_path:
        print(f"model: {result.model_path}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    for e in result.evals[-1:]:
        print("eval:", json.dumps(e["metrics"]))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
