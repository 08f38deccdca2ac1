"""`gcl-eval`: the paper's evaluation protocol from the command line (docs/evaluation.md).

    gcl-eval DATA_ROOT --out eval_dir --checkpoint model.pt            # a trained model
    gcl-eval DATA_ROOT --out eval_dir --embeddings emb_dir             # precomputed vectors
    gcl-eval DATA_ROOT --out eval_dir --model random                   # the chance baseline

Field flags take the reference evaluation's syntax, e.g.
`--left-keys "['query']" --right-keys "['image_local', 'title']"
--img-or-txt "[['txt'], ['img', 'txt']]" --left-weights "[1]" --right-weights "[0.9, 0.1]"`
(comma-separated lists work too). Writes metrics.json, metrics.csv and ndcg_at_k.png.
Defaults and choices come from `gcl_train.evaluation.EvalConfig`; exit codes follow
`gcl_train.cli.common` (2: a wrong command line, 1: the run failed).
"""
from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import uuid
from typing import Optional, Sequence, Tuple

from ..data.errors import DataFormatError
from ..data.fields import DEFAULT_LEFT, DEFAULT_RIGHT, FieldSpecs, _as_list, parse_field_specs
from ..data import SPLIT_ALIASES, SPLITS, MarqoGSDataset, resolve_split
from ..evaluation import CSV_QUERIES, GT_SOURCES, EvalConfig, RandomEncoder, evaluate, file_digest
from ..metrics import REFERENCE_KS
from .common import (EXIT_OK, ConfigArguments, add_progress_flags, documents_for_model, fail, int_at_least,
                     positive_int, setup_logging)

PROG = "gcl-eval"
DTYPES = ("float32", "float16")
RANDOM_DIM = 64

log = logging.getLogger(__name__)


def _int_list(text: str) -> Tuple[int, ...]:
    """An argparse `type=`: "[1, 5, 10]" or "1,5,10" -> (1, 5, 10), every value a positive int."""
    try:
        values = tuple(int(v) for v in _as_list("--ks", text))
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return values


_query_count = int_at_least(1, also=-1, what="a positive int or -1 (all)")


def _ref_list(values) -> str:
    return repr(list(values))


def build_parser() -> argparse.ArgumentParser:
    """The `gcl-eval` argument parser."""
    return _parser()[0]


def _parser() -> Tuple[argparse.ArgumentParser, ConfigArguments]:
    ap = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate retrieval on MarqoGS splits with the reference evaluation's protocol "
                    "(docs/evaluation.md; the method: docs/method.md).")
    cfg = ConfigArguments(ap, EvalConfig)

    g = ap.add_argument_group("data")
    g.add_argument("data", help="a MarqoGS subset root (e.g. marqo_gs_wfash_1m/) or a synthetic one")
    g.add_argument("--image-root", default=None,
                   help="where relative image_local paths live (default: DATA)")
    g.add_argument("--splits", default="all",
                   help=f"'all' (the splits present) or comma-separated names from {list(SPLITS)} "
                        f"or {list(SPLIT_ALIASES)} (default: all)")

    g = ap.add_argument_group("what to evaluate (one of)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a gcl_train checkpoint (gcl_train.models.save_checkpoint); "
                                          "its content digest identifies the encoder for --resume")
    src.add_argument("--model", help="an architecture name for gcl_train.models.create_model "
                                     "(untrained unless --pretrained), or 'random' for the chance baseline")
    src.add_argument("--embeddings", help="a directory of precomputed tables (<name>.npy + <name>.ids.json: "
                                          "queries, corpus_1, corpus_2; docs/evaluation.md)")
    g.add_argument("--pretrained", default=None, help="local weights for --model (default: none)")
    g.add_argument("--device", default="cpu", help="encoder device, e.g. cuda; exact retrieval runs on the CPU "
                                                   "(default: cpu)")
    g.add_argument("--label", default=None,
                   help="what is evaluated, for the plot title and metrics.json "
                        "(default: the --checkpoint, --model or --embeddings value)")

    g = ap.add_argument_group("protocol (docs/evaluation.md)")
    cfg.add(g, "--gt", "ground_truth", choices=GT_SOURCES,
            help="ground truth: 'csv' rebuilds it from the split CSV (relevance = --weight-key rescaled "
                 "to 1..100, --top-q queries sampled by summed relevance), as the reference does without "
                 "a gt file; 'test' / 'dev' read <split>_gt_test.json / _gt_dev.json and take all of their "
                 "queries unless --top-q is given")
    cfg.add(g, "--top-q", "n_queries", type=_query_count, metavar="N",
            show_default=f"{CSV_QUERIES} with --gt csv, every query of a gt file",
            help="test queries per split, sampled without replacement with probability proportional to "
                 "their summed relevance (-1: all)")
    cfg.add(g, "--seed", "seed", type=int, help="query sampling seed (numpy RandomState, as pandas' sample)")
    cfg.add(g, "--top-k", "top_k", type=positive_int, help="documents retrieved per query, and ground-truth depth")
    cfg.add(g, "--ks", "ks", type=_int_list, default=None,
            show_default="the reference's cut-offs " + ", ".join(str(k) for k in REFERENCE_KS) + " up to --top-k",
            help="metric cut-offs")
    cfg.add(g, "--weight-key", "weight_key", help="the CSV score column that becomes graded relevance")

    g = ap.add_argument_group("fields (the reference's syntax; docs/method.md, multi-field)")
    g.add_argument("--left-keys", default=None,
                   help=f"query record keys (default: {_ref_list(s.key for s in DEFAULT_LEFT)})")
    g.add_argument("--right-keys", default=None,
                   help=f"document record keys (default: {_ref_list(s.key for s in DEFAULT_RIGHT)})")
    g.add_argument("--img-or-txt", default=None,
                   help="[[left kinds], [right kinds]], needed when the keys change (default: "
                        f"{_ref_list([[s.kind for s in DEFAULT_LEFT], [s.kind for s in DEFAULT_RIGHT]])})")
    g.add_argument("--left-weights", default=None,
                   help=f"query field weights (default: {_ref_list(s.weight for s in DEFAULT_LEFT)}; "
                        "all 1 for other keys)")
    g.add_argument("--right-weights", default=None,
                   help=f"document field weights; missing fields get 0 and the rest are renormalised "
                        f"(default: {_ref_list(s.weight for s in DEFAULT_RIGHT)}; all 1 for other keys)")

    g = ap.add_argument_group("compute")
    cfg.add(g, "--batch-size", "batch_size", type=positive_int, help="values per encoder call")
    cfg.add(g, "--query-block", "query_block", type=positive_int, help="queries per block of exact retrieval")
    cfg.add(g, "--doc-block", "doc_block", type=positive_int, help="documents per block of exact retrieval")
    cfg.add(g, "--dtype", "dtype", choices=DTYPES, help="storage dtype of the cached corpus embeddings")
    g.add_argument("--float16", dest="dtype", action="store_const", const="float16",
                   help="same as --dtype float16")
    g.add_argument("--no-check-images", dest="check_images", action="store_false",
                   help="skip the per-document image file check (absent files then fail to load and "
                        "count as unreadable)")

    g = ap.add_argument_group("output")
    g.add_argument("--out", required=True, help="output directory (metrics.json, metrics.csv, ndcg_at_k.png, "
                                                "splits/, qrels/, embeddings/, runs/)")
    g.add_argument("--resume", action="store_true",
                   help="reuse finished splits, ground truth and corpus embeddings in --out that the same "
                        "encoder, config and data files made; anything else is recomputed (the log says why)")
    g.add_argument("--save-runs", action="store_true",
                   help="also write runs/<split>.json (reused splits whose run was not saved are evaluated again)")
    add_progress_flags(g)
    ap.set_defaults(check_images=True)
    return ap, cfg


def _specs(ap, keys, kinds, weights, default: FieldSpecs, side: str) -> FieldSpecs:
    if keys is None and kinds is None and weights is None:
        return default
    try:
        keys = _as_list("keys", keys) if keys is not None else [s.key for s in default]
        if kinds is None:
            if keys != [s.key for s in default]:
                ap.error(f"--img-or-txt is needed when the {side} field keys change")
            kinds = [s.kind for s in default]
        if weights is None and keys == [s.key for s in default]:
            weights = [s.weight for s in default]
        return parse_field_specs(keys, kinds, weights)
    except ValueError as e:
        ap.error(f"{side} fields: {e}")


def _build_config(ap: argparse.ArgumentParser, cfg_args: ConfigArguments, a: argparse.Namespace) -> EvalConfig:
    """The validated `EvalConfig` of the parsed options (usage errors exit 2)."""
    kinds = (None, None)
    if a.img_or_txt is not None:
        try:
            kinds = ast.literal_eval(a.img_or_txt)
            if not (isinstance(kinds, (list, tuple)) and len(kinds) == 2):
                raise ValueError
        except (ValueError, SyntaxError):
            ap.error(f"--img-or-txt: expected [[left kinds], [right kinds]], got {a.img_or_txt!r}")
    left = _specs(ap, a.left_keys, kinds[0], a.left_weights, DEFAULT_LEFT, "left")
    right = _specs(ap, a.right_keys, kinds[1], a.right_weights, DEFAULT_RIGHT, "right")
    values = cfg_args.values(a)
    if values["ks"] is None:
        values["ks"] = tuple(k for k in REFERENCE_KS if k <= a.top_k) or (a.top_k,)
    elif max(values["ks"]) > a.top_k:
        ap.error(f"--ks: cut-offs above --top-k {a.top_k} ({[k for k in values['ks'] if k > a.top_k]}) would "
                 f"score a run that was cut at {a.top_k}; raise --top-k or drop them")
    cfg = EvalConfig(left=left, right=right, check_images=a.check_images, **values)
    try:
        return cfg.validate()
    except ValueError as e:
        ap.error(str(e))


def _splits(ap, text: str):
    if text.strip() == "all":
        return "all"
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        ap.error(f"--splits: expected 'all' or comma-separated split names, got {text!r}")
    try:
        return [resolve_split(s) for s in names]
    except ValueError as e:
        ap.error(f"--splits: {e}")


def _encoder(a: argparse.Namespace):
    """(encoder or None, encoder_id, label) for the parsed options."""
    if a.embeddings:
        return None, None, a.label or a.embeddings
    if a.model == "random":
        return RandomEncoder(dim=RANDOM_DIM, seed=a.seed), f"random dim={RANDOM_DIM} seed={a.seed}", \
            a.label or "random (chance baseline)"
    from .. import models  # lazy: torch and open_clip only when a model is needed

    if a.checkpoint:
        encoder_id = f"checkpoint {file_digest(a.checkpoint)} device={a.device}"
        enc = models.Encoder.from_checkpoint(a.checkpoint, device=a.device, batch_size=a.batch_size,
                                             progress=not a.quiet)
        return enc, encoder_id, a.label or a.checkpoint
    if a.pretrained:
        encoder_id = f"model {a.model} pretrained {file_digest(a.pretrained)} device={a.device}"
    else:
        # fresh random weights differ between runs: an id no other run has, so nothing is reused
        encoder_id = f"model {a.model} untrained {uuid.uuid4().hex}"
        log.info("%s: untrained weights are drawn anew each run; --resume will not reuse anything", a.model)
    bundle = models.create_model(a.model, pretrained=a.pretrained, device=a.device)
    enc = models.Encoder(bundle, batch_size=a.batch_size, device=a.device, progress=not a.quiet)
    return enc, encoder_id, a.label or a.model + (f" ({a.pretrained})" if a.pretrained else " (untrained)")


def _for_model(config: EvalConfig, encoder, a: argparse.Namespace) -> EvalConfig:
    """Without document-field options (--right-keys etc. choose them), a text-only model is
    evaluated on titles alone (`documents_for_model`)."""
    given = any(v is not None for v in (a.right_keys, a.right_weights, a.img_or_txt))
    return config if given else documents_for_model(config, encoder, hint="pass --right-keys to choose")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `gcl-eval` console script; returns the exit status."""
    ap, cfg_args = _parser()
    a = ap.parse_args(argv)
    setup_logging(a.quiet)
    config = _build_config(ap, cfg_args, a)
    splits = _splits(ap, a.splits)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        ap.error(f"--out: {a.out} exists and is not a directory")
    try:
        ds = MarqoGSDataset(a.data, image_root=a.image_root)
        encoder, encoder_id, label = _encoder(a)
        config = _for_model(config, encoder, a)
        report = evaluate(ds, splits, encoder=encoder, embeddings=a.embeddings, config=config, out_dir=a.out,
                          progress=not a.quiet, resume=a.resume, save_runs=a.save_runs, encoder_id=encoder_id,
                          label=label)
    except KeyError as e:  # str(KeyError) quotes its message
        return fail(PROG, e.args[0] if e.args else e)
    except (DataFormatError, OSError, ValueError, RuntimeError) as e:
        return fail(PROG, e)
    print(report.table())
    for path in report.files.values():
        print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
