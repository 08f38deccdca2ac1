"""Benchmark: ranking metrics on MarqoGS-sized runs (20,000 queries x 1000 results).

Setup (one factory for every implementation): each query has ~100 graded ground-truth
documents (relevance 1..100, as MarqoGS gt files) and a run of `--k` scored documents
drawn from a shared pool of product ids, ~10% of them relevant. Implementations, named in
one place (IMPLS):

    ours         gcl_train.metrics.ranking_metrics: ndcg/map/mrr/recall/precision at
                 1, 5, 10, 100, 1000, ERR, RBP@0.7/0.8/0.9 (vectorised numpy)
    pytrec_eval  pytrec_eval.RelevanceEvaluator for ndcg_cut, map_cut, recall, P,
                 recip_rank (the trec_eval part only; no ERR / RBP) plus the mean
    reference    the reference evaluation's per-query Python loops for ERR and RBP
                 (marqo-ai/GCL evals/eval_gs_v1.py), on --ref-queries queries, reported
                 per query and extrapolated

    python benchmarks/bench_metrics.py
    python benchmarks/bench_metrics.py --queries 20000 --k 1000 --repeats 3 --impls ours,pytrec_eval,reference

Prints a table (median wall seconds with min..max over repeats) and appends one CSV row
per implementation to benchmarks/results/bench_metrics.csv with the machine, versions,
load average, the exact command line and a timestamp. The machine is shared: compare
ratios from one run, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from gcl_train.metrics import ranking_metrics, reference_err, reference_rbp

from _common import append_csv, check_csv_header, command_line, git_revision, loadavg, machine, package_versions

IMPLS = ("ours", "pytrec_eval", "reference")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_metrics.csv")
COLUMNS = ["timestamp", "impl", "n_queries", "k", "qrels_per_query", "repeats", "median_s", "min_s", "max_s",
           "queries_per_s", "note", "cpu", "cores", "loadavg_start", "loadavg_end", "python", "numpy",
           "pytrec_eval", "revision", "command"]


def machine_info() -> Dict[str, str]:
    """The machine and version columns of bench_metrics.csv."""
    return {**machine(), **package_versions({"numpy": "numpy", "pytrec_eval": "pytrec-eval-terrier"}),
            "revision": git_revision(dirty=True) or "?"}


def make_case(n_queries: int, k: int, n_rel: int, seed: int = 0) -> Tuple[dict, dict]:
    """qrels {q: {doc: 1..100}} with n_rel docs per query, run {q: {doc: score}} with k docs."""
    rng = np.random.default_rng(seed)
    pool = [f"id-{i}" for i in range(max(200_000, 2 * k))]
    qrels, run = {}, {}
    for q in range(n_queries):
        docs = rng.choice(len(pool), k + n_rel, replace=False)
        rel_docs = docs[:n_rel]
        rels = np.sort(rng.integers(1, 101, n_rel))[::-1]
        qrels[f"q{q}"] = {pool[d]: int(r) for d, r in zip(rel_docs, rels)}
        # about 10% of the run is relevant, the rest from the pool
        n_hit = min(n_rel, k // 10)
        ret = np.concatenate([rel_docs[:n_hit], docs[n_rel: n_rel + k - n_hit]])
        scores = rng.random(len(ret))
        run[f"q{q}"] = {pool[d]: float(s) for d, s in zip(ret, scores)}
    return qrels, run


def run_ours(qrels, run):
    return ranking_metrics(qrels, run)


def run_pytrec(qrels, run):
    import pytrec_eval

    ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.1,5,10,100,1000", "map_cut.1,5,10,100,1000",
                                                "recall.1,5,10,100,1000", "P.1,5,10,100,1000", "recip_rank"})
    res = ev.evaluate(run)
    names = next(iter(res.values())).keys()
    return {n: float(np.mean([r[n] for r in res.values()])) for n in names}


def run_reference(qrels, run):
    out = {"err": 0.0, "rbp@0.7": 0.0, "rbp@0.8": 0.0, "rbp@0.9": 0.0}
    for q, qd in qrels.items():
        out["err"] += reference_err(qd, run.get(q, {}))
        for p in (0.7, 0.8, 0.9):
            out[f"rbp@{p:g}"] += reference_rbp(qd, run.get(q, {}), p)
    return {k: v / len(qrels) for k, v in out.items()}


FUNCS: Dict[str, Callable] = {"ours": run_ours, "pytrec_eval": run_pytrec, "reference": run_reference}


def time_it(fn, repeats: int) -> Tuple[List[float], dict]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--qrels-per-query", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-queries", type=int, default=1000, help="queries for the slow reference loops")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args(argv)
    impls = [i.strip() for i in a.impls.split(",") if i.strip()]
    for i in impls:
        if i not in IMPLS:
            ap.error(f"--impls: unknown implementation {i!r}; choose from {IMPLS}")
    if not a.no_csv:
        check_csv_header(RESULTS, COLUMNS)
    info = machine_info()
    load0 = loadavg()
    t = time.perf_counter()
    qrels, run = make_case(a.queries, a.k, a.qrels_per_query)
    print(f"setup: {a.queries} queries x {a.k} results, {a.qrels_per_query} qrels each "
          f"({time.perf_counter() - t:.1f} s); {info['cpu']}, {info['cores']} cores, load {load0}")
    rows, results = [], {}
    for impl in impls:
        note = ""
        if impl == "reference":
            sub = list(qrels)[: a.ref_queries]
            q_sub = {q: qrels[q] for q in sub}
            r_sub = {q: run[q] for q in sub}
            times, out = time_it(lambda: run_reference(q_sub, r_sub), a.repeats)
            scale = a.queries / len(sub)
            note = f"ERR+RBP only; measured on {len(sub)} queries, times scaled x{scale:g}"
            times = [x * scale for x in times]
            results[impl] = (out, q_sub, r_sub)
        else:
            times, out = time_it(lambda: FUNCS[impl](qrels, run), a.repeats)
            results[impl] = (out, None, None)
            if impl == "pytrec_eval":
                note = "trec_eval measures only (no ERR / RBP)"
        med = statistics.median(times)
        rows.append({"impl": impl, "median_s": med, "min_s": min(times), "max_s": max(times),
                     "queries_per_s": a.queries / med, "note": note})
    # the numbers must agree before the times mean anything
    if "ours" in results and "pytrec_eval" in results:
        o, p = results["ours"][0], results["pytrec_eval"][0]
        for k in (10, 1000):
            assert abs(o[f"ndcg@{k}"] - p[f"ndcg_cut_{k}"]) < 1e-9 and abs(o[f"map@{k}"] - p[f"map_cut_{k}"]) < 1e-9
    if "reference" in results:
        ref, q_sub, r_sub = results["reference"]
        mine = ranking_metrics(q_sub, r_sub, ks=(10,))
        for name in ref:
            assert abs(ref[name] - mine[name]) < 1e-9, (name, ref[name], mine[name])
    load1 = loadavg()
    width = max(len(r["impl"]) for r in rows)
    print(f"{'impl'.ljust(width)}  median s (min..max)      queries/s  note")
    for r in rows:
        print(f"{r['impl'].ljust(width)}  {r['median_s']:8.2f} ({r['min_s']:.2f}..{r['max_s']:.2f})"
              f"  {r['queries_per_s']:10.0f}  {r['note']}")
    if not a.no_csv:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        common = {"timestamp": stamp, "n_queries": a.queries, "k": a.k, "qrels_per_query": a.qrels_per_query,
                  "repeats": a.repeats, "loadavg_start": load0, "loadavg_end": load1,
                  "command": "python " + command_line(argv), **info}
        n = append_csv(RESULTS, COLUMNS, [{**common, **{k: (f"{v:.4f}" if isinstance(v, float) else v)
                                                      for k, v in r.items()}} for r in rows])
        print(f"appended {n} rows to {os.path.relpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
