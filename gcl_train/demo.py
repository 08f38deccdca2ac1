"""`python -m gcl_train.demo` (`make demo`): GCL against CE on synthetic MarqoGS, end to end.

One command on a fresh CPU machine, with embedded defaults:

1. data      write a synthetic MarqoGS data set (`gcl_train.data.synthetic`) to OUT/data
2. gcl       train a small two-tower model with GCL (score weights, "linear") -> OUT/runs/gcl
3. ce        train the same model for the same steps with constant weights (the
             CLIP / cross-entropy baseline) -> OUT/runs/ce
4. eval      the paper's protocol on the four splits for both models -> OUT/eval/{gcl,ce}
5. compare   NDCG@10 / ERR / RBP per split, GCL vs CE -> OUT/comparison.{json,csv,png}
6. qdrant    ingest corpus_1 (title and image vectors from the GCL model) into an embedded
             Qdrant store (`qdrant_plugin.MultiFieldIndex`) -> OUT/qdrant, and run a weighted
             query (image 0.9, title 0.1), printing the ranked results

Every stage skips work already done (the data set has a metadata file, training resumes
from its checkpoints, the evaluator reuses finished splits, ingestion resumes from its
marker), so a killed demo continues where it stopped. Everything is seeded: the same
seed on the same machine and thread count gives the same numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .fileio import atomic_write, atomic_write_json
from .cli.common import add_progress_flags
from .data import doc_field_specs
from .training import TrainConfig, is_finished, train

log = logging.getLogger("gcl_train.demo")

SUMMARY = (("ndcg@10", "NDCG@10"), ("err", "ERR"), ("rbp@0.9", "RBP@0.9"))
WEIGHT_FNS = {"gcl": "linear", "ce": "constant"}

# The embedded defaults. On 2 CPU cores the whole demo takes about 10 minutes, most of it
# the two training runs; `--quick` is a 2-minute smoke version.
DEFAULTS = dict(queries=250, docs_per_query=100, image_size=32, model="tiny", epochs=4,
                batch_size=64, lr=1e-3, warmup=100, eval_queries=2000, seed=0)
QUICK = dict(queries=40, docs_per_query=40, epochs=1, eval_queries=50)


def _banner(i: int, n: int, what: str) -> None:
    print(f"\n== [{i}/{n}] {what}", flush=True)


def stage_data(root: str, args) -> Dict[str, Any]:
    """Write the synthetic data set unless the same one is already there."""
    from gcl_train.data.synthetic import write_dataset

    want = {"n_queries": args.queries, "docs_per_query": args.docs_per_query, "seed": args.seed,
            "image_size": args.image_size}
    meta_path = os.path.join(root, "synthetic_meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if all(meta.get(k) == v for k, v in want.items()):
            print(f"data: reusing {root} ({meta.get('n_pairs')} pairs)")
            return meta
        raise SystemExit(f"demo: {root} holds a different synthetic data set ({ {k: meta.get(k) for k in want} }); "
                         f"remove it or pass another --out")
    info = write_dataset(root, n_queries=args.queries, docs_per_query=args.docs_per_query, seed=args.seed,
                         image_size=args.image_size, progress=not args.quiet)
    print(f"data: wrote {info.n_pairs} pairs, {info.n_products} products to {root} in {info.seconds:.1f}s")
    with open(meta_path, encoding="utf-8") as f:
        return json.load(f)


def train_config(args, data: str, out: str, weight_fn: str) -> TrainConfig:
    return TrainConfig(
        data=data, out=out, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup, weight_fn=weight_fn, seed=args.seed,
        save_every=args.save_every, progress=not args.quiet, log_every=20,
    )


def stage_train(args, data: str, out: str, name: str):
    cfg = train_config(args, data, out, WEIGHT_FNS[name])
    if is_finished(out):
        print(f"{name}: reusing the finished run in {out}")
    res = train(cfg)
    print(f"{name}: {res.step} steps, loss {res.first_loss:.3f} -> {res.last_loss:.3f}, "
          f"{res.seconds:.0f}s; model {res.model_path}")
    return res


def stage_eval(args, data: str, model_path: str, out_dir: str, name: str):
    from gcl_train.data import MarqoGSDataset
    from gcl_train.evaluation import EvalConfig, evaluate
    from gcl_train.evaluation.cache import file_digest
    from gcl_train.models import Encoder

    enc = Encoder.from_checkpoint(model_path, batch_size=256)
    config = EvalConfig(right=doc_field_specs(), n_queries=args.eval_queries, ground_truth=args.ground_truth)
    report = evaluate(MarqoGSDataset(data), "all", encoder=enc, config=config, out_dir=out_dir,
                      progress=not args.quiet, resume=True, encoder_id=f"sha256:{file_digest(model_path)}",
                      label=f"{name.upper()} ({WEIGHT_FNS[name]} weights), {args.model} model")
    return report


def comparison(reports: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per split: GCL and CE summary metrics and the relative change."""
    rows = []
    gcl, ce = reports["gcl"], reports["ce"]
    for split, r in gcl.results.items():
        c = ce.results[split]
        row: Dict[str, Any] = {"split": split, "name": r.name, "queries": r.n_queries, "docs": r.n_docs,
                               "noisy": bool(getattr(r, "noisy", False))}
        for key, _ in SUMMARY:
            g, b = float(r.metrics[key]), float(c.metrics[key])
            row[f"gcl_{key}"], row[f"ce_{key}"] = g, b
            row[f"rel_{key}"] = (g - b) / b if b > 0 else float("nan")
        row["chance_ndcg@10"] = float(r.chance.get("ndcg@10", float("nan")))
        rows.append(row)
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = ["split", "queries"]
    for _, label in SUMMARY:
        head += [f"{label} CE", f"{label} GCL", "change"]
    lines = [head]
    for r in rows:
        line = [r["name"], str(r["queries"]) + ("*" if r.get("noisy") else "")]
        for key, _ in SUMMARY:
            line += [f"{r[f'ce_{key}']:.4f}", f"{r[f'gcl_{key}']:.4f}", f"{100 * r[f'rel_{key}']:+.1f}%"]
        lines.append(line)
    widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(l, widths)) for l in lines)
    if any(r.get("noisy") for r in rows):
        table += "\n* fewer than 100 test queries: a noisy estimate (differences of a few points are not significant)"
    return table


def write_comparison(out: str, rows: List[Dict[str, Any]], meta: Dict[str, Any]) -> Dict[str, str]:
    paths = {k: os.path.join(out, f"comparison.{k}") for k in ("json", "csv", "png")}
    atomic_write_json(paths["json"], {"rows": rows, **meta}, default=str)

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write(paths["csv"], write_csv)
    atomic_write(paths["png"], lambda f: _plot(rows, f), binary=True)
    return paths


def _plot(rows, f) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.0), dpi=100)
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(SUMMARY):
        ax = fig.add_subplot(1, len(SUMMARY), i + 1)
        ax.bar(x - 0.2, [r[f"ce_{key}"] for r in rows], 0.4, label="CE (constant weights)")
        ax.bar(x + 0.2, [r[f"gcl_{key}"] for r in rows], 0.4, label="GCL (linear weights)")
        if key == "ndcg@10":
            ax.scatter(x, [r["chance_ndcg@10"] for r in rows], marker="_", s=400, color="black", zorder=3,
                       label="chance (random ranking)")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['name'].replace('_', chr(10))}\n{r['queries']} q{'*' if r.get('noisy') else ''}"
                            for r in rows], fontsize=7)
        ax.set_title(label)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.suptitle("GCL vs CE on the synthetic MarqoGS data, same model and budget"
                 + (" (* fewer than 100 queries: noisy)" if any(r.get("noisy") for r in rows) else ""),
                 fontsize=10)
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 0.93))
    fig.savefig(f, format="png")


def stage_qdrant(args, data: str, model_path: str, out: str) -> None:
    """Embed corpus_1's titles and images, ingest them, and run one weighted query."""
    import numpy as np

    from gcl_train.data import DOC_FIELDS, MarqoGSDataset
    from gcl_train.evaluation import encode_fields
    from gcl_train.evaluation.cache import file_digest
    from gcl_train.metrics import ranking_metrics
    from gcl_train.models import Encoder
    from qdrant_plugin import MultiFieldIndex
    from qdrant_plugin.ingest import ArraySource, ingest

    ds = MarqoGSDataset(data)
    enc = Encoder.from_checkpoint(model_path, batch_size=256, progress=not args.quiet)
    docs = list(ds.iter_corpus("corpus_1"))
    names = [f.name for f in DOC_FIELDS]
    vec_path = os.path.join(out, "qdrant_vectors", "corpus_1.npz")
    stamp = {"model_sha256": file_digest(model_path), "corpus": ds.corpus_path("corpus_1"), "n": len(docs),
             "fields": names}
    cached = None
    if os.path.isfile(vec_path):
        z = np.load(vec_path, allow_pickle=False)
        if json.loads(str(z["stamp"])) == stamp:
            cached = {"vectors": z["vectors"], "present": z["present"]}
    if cached is None:
        vectors, present = encode_fields([d for _, d in docs], DOC_FIELDS, enc, ds, role="document")
        atomic_write(vec_path, lambda f: np.savez(f, vectors=vectors, present=present, stamp=json.dumps(stamp)),
                     binary=True)
    else:
        vectors, present = cached["vectors"], cached["present"]
    keep = np.flatnonzero(present.any(axis=1))  # a product with neither a title nor an image is left out
    ids = [docs[i][0] for i in keep]
    payloads = [{"title": str(docs[i][1].get("title") or ""), "product_id": docs[i][0]} for i in keep]
    store = os.path.join(out, "qdrant")
    with MultiFieldIndex(store, "gcl_corpus_1", fields={n: enc.dim for n in names}) as index:
        rep = ingest(index, ArraySource(ids, {n: vectors[keep, j] for j, n in enumerate(names)}, payloads,
                                        present={n: present[keep, j] for j, n in enumerate(names)},
                                        fingerprint=stamp),
                     batch_size=512, progress=not args.quiet)
        print(f"qdrant: {rep.summary()}; {index.count()} documents in {store}"
              + (f" ({len(docs) - len(keep)} products with no title and no image left out)"
                 if len(keep) < len(docs) else ""))
        gt = ds.ground_truth("in_domain", "test")
        query = max(gt, key=lambda q: (len(gt[q]), q))  # a query with many judged documents
        q = enc([query], "txt")[0]
        weights = {f.name: f.weight for f in DOC_FIELDS}
        hits = index.search({n: q for n in names}, field_weights=weights, limit=10)
        rel = gt[query]
        print(f'qdrant: query "{query}" (weights ' + ", ".join(f"{k} {v}" for k, v in weights.items())
              + "); relevance from the ground truth (1..100, - = not judged):")
        for rank, h in enumerate(hits, 1):
            print(f"  {rank:2d}. {h.score:.4f}  rel {str(rel.get(h.id, '-')):>3}  {h.payload.get('title', '')[:70]}")
        m = ranking_metrics({query: rel}, {query: {h.id: h.score for h in hits}}, ks=(10,))
        print(f"qdrant: NDCG@10 of this list {m['ndcg@10']:.4f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gcl_train.demo", description=__doc__.split("\n")[0])

    def preset(flag, key, help, **kw):
        quick = f"; --quick: {QUICK[key]}" if key in QUICK else ""
        p.add_argument(flag, default=None, help=f"{help} (default: {DEFAULTS[key]}{quick})", **kw)

    p.add_argument("--out", default="demo_out", help="everything goes here (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a 2-minute smoke version (tiny data, 1 epoch)")
    preset("--queries", "queries", "synthetic queries", type=int)
    preset("--docs-per-query", "docs_per_query", "judged documents per synthetic query", type=int)
    preset("--image-size", "image_size", "synthetic image side, pixels", type=int)
    preset("--model", "model", "tiny | small | an open_clip architecture")
    preset("--epochs", "epochs", "training epochs of each arm", type=int)
    preset("--batch-size", "batch_size", "pairs per step", type=int)
    preset("--lr", "lr", "AdamW learning rate", type=float)
    preset("--warmup", "warmup", "warmup steps", type=int)
    preset("--eval-queries", "eval_queries", "test queries per split", type=int)
    preset("--seed", "seed", "seed of the data, the training and the query sample", type=int)
    p.add_argument("--ground-truth", choices=("csv", "test"), default="csv",
                   help="csv: rebuilt from each split's CSV with the weighted query sample, as the reference "
                        "evaluation does (docs/evaluation.md); test: the data set's gt_test.json files "
                        "(default: %(default)s)")
    p.add_argument("--save-every", type=int, default=100, help="training checkpoint interval, steps (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 leaves the second core to the batch prefetch thread "
                        "and degrades gracefully when other work shares the machine (0: torch's default) "
                        "(default: %(default)s)")
    p.add_argument("--skip-qdrant", action="store_true", help="stop after the comparison")
    add_progress_flags(p)
    return p


def resolve_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    base = dict(DEFAULTS, **(QUICK if args.quick else {}))
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns 0."""
    args = resolve_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    out = os.path.abspath(args.out)
    data = os.path.join(out, "data")
    n = 5 if args.skip_qdrant else 6
    print(f"GCL demo -> {out}  (model {args.model}, {args.epochs} epochs, batch {args.batch_size}, "
          f"seed {args.seed}, torch threads {torch.get_num_threads()})")

    _banner(1, n, "synthetic MarqoGS data")
    meta = stage_data(data, args)
    runs = {}
    for i, name in enumerate(("gcl", "ce"), start=2):
        _banner(i, n, f"train {name.upper()} (score_to_weight kind {WEIGHT_FNS[name]!r})")
        runs[name] = stage_train(args, data, os.path.join(out, "runs", name), name)
    _banner(4, n, "evaluate both models on the four splits")
    reports = {}
    for name in ("gcl", "ce"):
        reports[name] = stage_eval(args, data, runs[name].model_path, os.path.join(out, "eval", name), name)
        print(f"{name}: {reports[name].files.get('json')}")
    _banner(5, n, "GCL vs CE")
    rows = comparison(reports)
    paths = write_comparison(out, rows, {
        "data": {k: meta.get(k) for k in ("n_queries", "n_products", "n_pairs", "docs_per_query", "seed")},
        "train": {k: getattr(args, k) for k in ("model", "epochs", "batch_size", "lr", "warmup", "seed")},
        "steps": {k: r.step for k, r in runs.items()},
        "train_seconds": {k: r.seconds for k, r in runs.items()},
        "eval_files": {k: r.files for k, r in reports.items()},
    })
    print(format_table(rows))
    print("(change = (GCL - CE) / CE; chance NDCG@10 "
          + ", ".join(f"{r['name']} {r['chance_ndcg@10']:.4f}" for r in rows) + ")")
    for k, pth in paths.items():
        print(f"comparison {k}: {pth}")
    for name in ("gcl", "ce"):
        for k, pth in reports[name].files.items():
            print(f"{name} eval {k}: {pth}")
    if not args.skip_qdrant:
        _banner(6, n, "embedded Qdrant: ingest corpus_1 with the GCL model, weighted search")
        try:
            stage_qdrant(args, data, runs["gcl"].model_path, out)
        except ImportError as e:
            print(f"qdrant: skipped, the plugin is not importable here ({e})")
    print(f"\ndemo done in {time.time() - t0:.0f}s; outputs under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
