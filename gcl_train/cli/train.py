"""`gcl-train`: train an open_clip two-tower model on MarqoGS-format data with the GCL loss.

    gcl-train --data demo_out/data --model tiny --epochs 2 --batch-size 64 \\
              --weight-fn linear --field-mode mean --out runs/tiny-gcl

The argument parsing only; the loop is `gcl_train.train.train`. Run it again with the same
`--out` to resume a killed run from its newest checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional

from ..train import DIRECTIONS, NORMALIZATIONS, PRECISIONS, SCORE_COLUMNS, TrainConfig, train

WEIGHT_KINDS = ("constant", "linear", "power", "log", "reciprocal", "sigmoid")


def _key_values(text: str, what: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{what}: expected key=value pairs separated by commas, got {text!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {key.strip()!r} needs a number, got {value!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gcl-train",
        description="Train a two-tower (text / image) open_clip model with Generalized Contrastive "
                    "Learning on MarqoGS-format data; resumable.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig.__dataclass_fields__
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="MarqoGS subset root (corpus_*.json, split CSVs)")
    g.add_argument("--split", default=d["split"].default, help="training split (or alias in_domain)")
    g.add_argument("--image-root", default=None, help="where relative image_local paths live (default: --data)")
    g.add_argument("--score-column", default=d["score_column"].default, choices=SCORE_COLUMNS)
    g.add_argument("--prefetch", type=int, default=d["prefetch"].default,
                   help="batches prepared ahead in a background thread (0: inline)")
    g.add_argument("--shuffle-buffer", type=int, default=d["shuffle_buffer"].default,
                   help="bounded shuffle buffer, in pairs")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny",
                   help="tiny | small | an open_clip architecture (ViT-B-32) | a JSON config file")
    g.add_argument("--pretrained", default=None, help="local weights file (never downloaded)")
    g.add_argument("--lock-image", action="store_true", help="freeze the image tower")
    g.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    g.add_argument("--init-logit-scale", type=float, default=None,
                   help="initial logit scale multiplier (default: the model's, 1/0.07 for CLIP)")
    g.add_argument("--max-logit-scale", type=float, default=d["max_logit_scale"].default)
    g = p.add_argument_group("loss")
    g.add_argument("--weight-fn", default=d["weight_fn"].default, choices=WEIGHT_KINDS,
                   help="score_to_weight kind; 'constant' is the CE (CLIP) baseline")
    g.add_argument("--weight-params", type=lambda s: _key_values(s, "--weight-params"), default={},
                   help="score_to_weight parameters, e.g. gamma=2 or k=10,c=0.5")
    g.add_argument("--s-max", type=float, default=None, help="score scale (default: the split's largest score)")
    g.add_argument("--field-mode", default=d["field_mode"].default, choices=("mean", "pairs"))
    g.add_argument("--field-weights", type=lambda s: _key_values(s, "--field-weights"),
                   default={"title": 0.1, "image": 0.9}, help="document field weights, title=..,image=..")
    g.add_argument("--direction", default="both", choices=DIRECTIONS)
    g.add_argument("--normalize", default="batch", choices=NORMALIZATIONS)
    g.add_argument("--no-groups", action="store_true",
                   help="do not mask same-query / same-product pairs as negatives")
    g.add_argument("--loss-impl", default="auto", choices=("auto", "reference", "chunked", "triton"))
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"].default)
    g.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    g.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    g.add_argument("--lr", type=float, default=d["lr"].default)
    g.add_argument("--wd", type=float, default=d["weight_decay"].default, help="AdamW weight decay")
    g.add_argument("--warmup", type=int, default=d["warmup_steps"].default, help="warmup steps")
    g.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"].default)
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"].default, help="0 disables")
    g.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory (checkpoints, logs, model.pt)")
    g.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: end only)")
    g.add_argument("--keep", type=int, default=d["keep_checkpoints"].default, help="checkpoints kept")
    g.add_argument("--resume", default="auto", help="auto (newest checkpoint in --out) | never | a file")
    g.add_argument("--stop-after", type=int, default=None,
                   help="checkpoint and exit after N steps in this invocation (time-sliced jobs)")
    g.add_argument("--log-every", type=int, default=d["log_every"].default)
    g.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-splits", default="",
                   help="comma-separated splits to evaluate, or 'all' (those present); empty: none")
    g.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    g.add_argument("--eval-queries", type=int, default=d["eval_queries"].default)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` for parsed arguments (validated)."""
    from gcl_train.data import SPLITS, MarqoGSDataset

    if args.eval_splits.strip() == "all":
        # the splits present in the data (a training-only copy may lack the cold-start ones)
        eval_splits = tuple(MarqoGSDataset(args.data).available_splits()) if os.path.isdir(args.data) else SPLITS
    else:
        eval_splits = tuple(s.strip() for s in args.eval_splits.split(",") if s.strip())
    cfg = TrainConfig(
        data=args.data, out=args.out, model=args.model, pretrained=args.pretrained, split=args.split,
        image_root=args.image_root, score_column=args.score_column, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.wd,
        warmup_steps=args.warmup, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip if args.grad_clip and args.grad_clip > 0 else None,
        weight_fn=args.weight_fn, weight_params=args.weight_params, s_max=args.s_max,
        field_mode=args.field_mode, field_weights=args.field_weights, direction=args.direction,
        normalize=args.normalize, use_groups=not args.no_groups, shuffle_buffer=args.shuffle_buffer,
        seed=args.seed, device=args.device, precision=args.precision, lock_image=args.lock_image,
        lock_text=args.lock_text, init_logit_scale=args.init_logit_scale,
        max_logit_scale=args.max_logit_scale, loss_impl=args.loss_impl, save_every=args.save_every,
        keep_checkpoints=args.keep, eval_every=args.eval_every, eval_splits=eval_splits,
        eval_queries=args.eval_queries, resume=args.resume, log_every=args.log_every,
        stop_after=args.stop_after, progress=not args.no_progress, prefetch=args.prefetch,
    )
    return cfg.validate()


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point; returns the exit status (0 done or stopped on request, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            parser.error(f"--threads: expected a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        cfg = config_from_args(args)
        result = train(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"gcl-train: error: {e}", file=sys.stderr)
        return 2
    state = "finished" if result.finished else "stopped (run again to resume)"
    print(f"{state} at step {result.step}/{result.total_steps} in {result.seconds:.1f}s; "
          f"loss {result.first_loss} -> {result.last_loss}")
    if result.model_path:
        print(f"model: {result.model_path}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    for e in result.evals[-1:]:
        print("eval:", json.dumps(e["metrics"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
