"""`gcl-eval`: the paper's evaluation protocol from the command line.

    gcl-eval DATA_ROOT --out eval_dir --checkpoint model.pt            # a trained model
    gcl-eval DATA_ROOT --out eval_dir --embeddings emb_dir             # precomputed vectors
    gcl-eval DATA_ROOT --out eval_dir --model random                   # the chance baseline

Field flags take the reference evaluation's syntax, e.g.
`--left-keys "['query']" --right-keys "['image_local', 'title']"
--img-or-txt "[['txt'], ['img', 'txt']]" --left-weights "[1]" --right-weights "[0.9, 0.1]"`
(comma-separated lists work too). Writes metrics.json, metrics.csv and ndcg_at_k.png.
"""
from __future__ import annotations

import argparse
import ast
import logging
import sys
from typing import Optional, Sequence

from ..data.errors import DataFormatError
from ..data.fields import DEFAULT_LEFT, DEFAULT_RIGHT, _as_list, parse_field_specs
from ..data.marqo_gs import SPLIT_ALIASES, SPLITS, MarqoGSDataset
from ..evaluation import GT_SOURCES, EvalConfig, RandomEncoder, evaluate
from ..metrics import REFERENCE_KS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gcl-eval", description="Evaluate retrieval on MarqoGS splits (GCL_SPEC section 5).")
    ap.add_argument("data", help="a MarqoGS subset root (e.g. marqo_gs_wfash_1m/) or a synthetic one")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--image-root", default=None, help="where relative image_local paths live (default: DATA)")
    ap.add_argument("--splits", default="all",
                    help=f"'all' or comma-separated names from {list(SPLITS)} or {list(SPLIT_ALIASES)}")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a gcl_train checkpoint (gcl_train.models.save_checkpoint)")
    src.add_argument("--model", help="an architecture name for gcl_train.models.create_model "
                                     "(untrained unless --pretrained), or 'random' for the chance baseline")
    src.add_argument("--embeddings", help="a directory of precomputed tables (<name>.npy + <name>.ids.json)")
    ap.add_argument("--pretrained", default=None, help="local weights for --model")
    ap.add_argument("--device", default="cpu", help="encoder (and retrieval) device, e.g. cuda")
    ap.add_argument("--left-keys", default=None)
    ap.add_argument("--right-keys", default=None)
    ap.add_argument("--img-or-txt", default=None, help="[[left kinds], [right kinds]]")
    ap.add_argument("--left-weights", default=None)
    ap.add_argument("--right-weights", default=None)
    ap.add_argument("--top-q", type=int, default=2000, help="test queries per split (-1: all)")
    ap.add_argument("--top-k", type=int, default=1000, help="documents retrieved per query")
    ap.add_argument("--ks", default=None, help=f"metric cut-offs (default {list(REFERENCE_KS)})")
    ap.add_argument("--weight-key", default="score_linear")
    ap.add_argument("--gt", choices=GT_SOURCES, default="test", help="ground truth: gt_test, gt_dev, or rebuilt from the CSV")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--query-block", type=int, default=1024)
    ap.add_argument("--doc-block", type=int, default=65536)
    ap.add_argument("--float16", action="store_true", help="store corpus embeddings as float16")
    ap.add_argument("--no-check-images", action="store_true", help="skip the per-document image file check")
    ap.add_argument("--resume", action="store_true", help="reuse finished splits and cached embeddings in --out")
    ap.add_argument("--save-runs", action="store_true", help="also write runs/<split>.json")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def _specs(ap, keys, kinds, weights, default, side: int):
    if keys is None and kinds is None and weights is None:
        return default
    try:
        keys = _as_list("keys", keys) if keys is not None else [s.key for s in default]
        if kinds is None:
            if keys != [s.key for s in default]:
                ap.error("--img-or-txt is needed when the field keys change")
            kinds = [s.kind for s in default]
        if weights is None and keys == [s.key for s in default]:
            weights = [s.weight for s in default]
        return parse_field_specs(keys, kinds, weights)
    except ValueError as e:
        ap.error(f"{'left' if side == 0 else 'right'} fields: {e}")


def _build_config(ap, a) -> EvalConfig:
    kinds = (None, None)
    if a.img_or_txt is not None:
        try:
            kinds = ast.literal_eval(a.img_or_txt)
            assert isinstance(kinds, (list, tuple)) and len(kinds) == 2
        except (ValueError, SyntaxError, AssertionError):
            ap.error(f"--img-or-txt: expected [[left kinds], [right kinds]], got {a.img_or_txt!r}")
    left = _specs(ap, a.left_keys, kinds[0], a.left_weights, DEFAULT_LEFT, 0)
    right = _specs(ap, a.right_keys, kinds[1], a.right_weights, DEFAULT_RIGHT, 1)
    ks = REFERENCE_KS
    if a.ks:
        try:
            ks = tuple(int(k) for k in a.ks.replace("[", "").replace("]", "").split(",") if k.strip())
        except ValueError:
            ap.error(f"--ks: expected comma-separated ints, got {a.ks!r}")
    ks = tuple(k for k in ks if k <= a.top_k) or (a.top_k,)
    cfg = EvalConfig(left=left, right=right, n_queries=a.top_q, seed=a.seed, top_k=a.top_k, ks=ks,
                     weight_key=a.weight_key, ground_truth=a.gt, batch_size=a.batch_size,
                     query_block=a.query_block, doc_block=a.doc_block, check_images=not a.no_check_images,
                     dtype="float16" if a.float16 else "float32")
    try:
        return cfg.validate()
    except ValueError as e:
        ap.error(str(e))


def _encoder(ap, a):
    if a.embeddings:
        return None
    if a.model == "random":
        return RandomEncoder(dim=64, seed=a.seed)
    from .. import models  # lazy: torch and open_clip only when a model is needed

    if a.checkpoint:
        return models.Encoder.from_checkpoint(a.checkpoint, device=a.device, batch_size=a.batch_size,
                                              progress=not a.quiet)
    bundle = models.create_model(a.model, pretrained=a.pretrained, device=a.device)
    return models.Encoder(bundle, batch_size=a.batch_size, device=a.device, progress=not a.quiet)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `gcl-eval` console script; returns the exit status."""
    ap = _parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = _build_config(ap, a)
    splits = "all" if a.splits == "all" else [s.strip() for s in a.splits.split(",") if s.strip()]
    try:
        ds = MarqoGSDataset(a.data, image_root=a.image_root)
        encoder = _encoder(ap, a)
        report = evaluate(ds, splits, encoder=encoder, embeddings=a.embeddings, config=config, out_dir=a.out,
                          progress=not a.quiet, resume=a.resume, save_runs=a.save_runs)
    except (DataFormatError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"gcl-eval: error: {e}", file=sys.stderr)
        return 1
    print(report.table())
    for name, path in report.files.items():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
