"""Benchmark: weighted multi-field search through qdrant_plugin, against exact search.

For each corpus size: documents with 2 fields x 128 dims drawn from a shared
low-dimensional latent (``qdrant_plugin.synth``: the structure of real embeddings, not
i.i.d. Gaussian vectors), queries from the same model, weights title 0.1 / image 0.9.
Implementations, named in one place (IMPLS):

    edge-hnsw   MultiFieldIndex on the embedded Qdrant Edge store, HNSW on the concatenated vector
    edge-raw    the engine call alone: the same store's EdgeShard.query with the vector and
                parameters edge-hnsw sends (built outside the timer), timed interleaved with
                edge-hnsw query by query; plugin overhead = edge-hnsw / edge-raw
    edge-exact  the same store, exact=True (a full scan inside Qdrant)
    edge-hnsw-int8
                MultiFieldIndex(..., quantization="int8") on its own store, built in the same
                run: the graph walk reads int8 codes of the concatenated vector, then
                oversampling x 10 candidates are rescored with the float32 vectors
                (--oversampling, default the plugin's). With edge-raw also selected, it is
                timed interleaved with its own raw engine call, reported as edge-raw-int8.
                A non-default --oversampling is appended to the name (edge-hnsw-int8-os1.5).
    edge-prefetch
                design (b) of issue 6, on the edge-hnsw store (built with index_fields=True, so
                each field also has its own HNSW graph): ONE engine call, a QueryRequest with a
                Prefetch per weighted field (Nearest q_f on that field's graph, limit K, hnsw_ef
                max(ef, K)) and an outer Nearest [w_t q_t; w_i q_i] on `_concat`, which Qdrant
                evaluates only on the union of the prefetched points: exact rescoring by
                sum_f w_f cos(q_f, d_f). Named edge-prefetch-K, K from --prefetch. Timed
                interleaved with edge-hnsw (and edge-raw if selected), query by query.
    local       MultiFieldIndex on qdrant-client local mode (pure Python/numpy, exact)
    numpy       brute force: one float32 matrix-vector product and a partial sort

Reported per implementation: ingest throughput including the index build (upsert +
optimize), single-query latency p50 / p99 through the public API (one query at a time,
as a service answers them), queries per second at that concurrency (1 / mean latency),
and recall@10 against exact float64 top-10.

    python benchmarks/bench_qdrant.py --sizes 100000
    python benchmarks/bench_qdrant.py --sizes 100000,1000000 --queries 500 --impls edge-hnsw,edge-exact,numpy
    python benchmarks/bench_qdrant.py --sizes 100000 --ef 48,64,80,96 --impls edge-hnsw-int8,edge-raw
    python benchmarks/bench_qdrant.py --sizes 100000 --impls edge-hnsw,edge-raw,edge-prefetch --prefetch 20,50,100 --ef 80

Prints a table and appends one CSV row per (size, implementation, ef) to
benchmarks/results/bench_qdrant.csv with the machine, versions, load average, the
exact command line and a timestamp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np

from qdrant_plugin import MultiFieldIndex
from qdrant_plugin.schema import DEFAULT_HNSW_EF_CONSTRUCT, DEFAULT_HNSW_M, DEFAULT_OVERSAMPLING
from qdrant_plugin.synth import latent_embeddings

from _common import append_csv, check_csv_header, command_line, loadavg, machine, package_versions

IMPLS = ("edge-hnsw", "edge-raw", "edge-exact", "edge-hnsw-int8", "edge-prefetch", "local", "numpy")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bench_qdrant.csv")
COLUMNS = [
    "timestamp", "impl", "n_docs", "fields", "dim", "latent_dim", "noise", "weights", "hnsw_m",
    "hnsw_ef_construct", "ef", "n_queries", "upsert_s", "build_s", "ingest_docs_per_s", "p50_ms",
    "p99_ms", "qps", "recall_at_10", "cpu", "cores", "loadavg_start", "loadavg_end", "python",
    "numpy", "qdrant_edge_py", "qdrant_client", "command",
]


def exact_top10(doc_concat: np.ndarray, q_concat: np.ndarray, k: int = 10, block: int = 256) -> np.ndarray:
    """Exact top-k ids by the weighted score (float32 scores, float64 re-rank of a short list)."""
    out = np.empty((q_concat.shape[0], k), dtype=np.int64)
    for s in range(0, q_concat.shape[0], block):
        qb = q_concat[s:s + block]
        sc = qb @ doc_concat.T
        cand = np.argpartition(-sc, 4 * k, axis=1)[:, :4 * k]
        for r in range(qb.shape[0]):
            c = cand[r]
            exact = doc_concat[c].astype(np.float64) @ qb[r].astype(np.float64)
            out[s + r] = c[np.argsort(-exact, kind="stable")[:k]]
    return out


def latency_stats(lat: List[float]) -> Dict[str, float]:
    a = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "qps": float(1e3 / a.mean())}


def recall(found: List[List[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def time_index(index: MultiFieldIndex, queries: Dict[str, np.ndarray], weights, n_q: int, **kw):
    """Single-query latencies through the public API, after a short warm-up."""
    for i in range(min(20, n_q)):
        index.search({f: v[i] for f, v in queries.items()}, field_weights=weights, limit=10, **kw)
    lat, found = [], []
    for i in range(n_q):
        q = {f: v[i] for f, v in queries.items()}
        t = time.perf_counter()
        hits = index.search(q, field_weights=weights, limit=10, **kw)
        lat.append(time.perf_counter() - t)
        found.append([int(h.id) for h in hits])
    return lat, found


def time_paired(index: MultiFieldIndex, queries: Dict[str, np.ndarray], weights, n_q: int, ef: int):
    """edge-hnsw and edge-raw latencies, interleaved in one process on one store.

    At step i the plugin answers query i and the raw engine call query (i + n/2) mod n, in
    alternating order: every query is run once by each, and neither call follows the same
    query (whose graph path would still be in the CPU caches) by the other.
    Returns (plugin latencies, raw latencies, plugin ids, raw ids, median per-query ratio).
    """
    import qdrant_edge as qe

    from qdrant_plugin.schema import ID_KEY

    from qdrant_plugin.backends.edge import edge_quantization_params

    shard = index.backend.shard
    qs = [{f: v[i] for f, v in queries.items()} for i in range(n_q)]
    rows = [index._plan(q, weights, batch=False)[1][0].tolist() for q in qs]
    using = index.schema.main_vector
    osr = index.oversampling if index.schema.quantization else None
    params = qe.SearchParams(hnsw_ef=max(ef, 10), exact=False,
                             quantization=edge_quantization_params(False, osr))

    def raw(i):
        req = qe.QueryRequest(limit=10, query=qe.Query.Nearest(rows[i], using=using), filter=None,
                              params=params, with_payload=True, with_vector=False)
        return [int(p.payload[ID_KEY]) for p in shard.query(req)]

    def plug(i):
        return [int(h.id) for h in index.search(qs[i], field_weights=weights, limit=10, ef=ef)]

    for i in range(min(20, n_q)):
        plug(i), raw(i)
    lat = {"p": [0.0] * n_q, "r": [0.0] * n_q}
    found = {"p": [None] * n_q, "r": [None] * n_q}
    for i in range(n_q):
        calls = [("p", plug, i), ("r", raw, (i + n_q // 2) % n_q)]
        for k, fn, j in (calls if i % 2 == 0 else calls[::-1]):
            t = time.perf_counter()
            found[k][j] = fn(j)
            lat[k][j] = time.perf_counter() - t
    ratio = float(np.median(np.asarray(lat["p"]) / np.asarray(lat["r"])))
    return lat["p"], lat["r"], found["p"], found["r"], ratio


def time_interleaved(index: MultiFieldIndex, queries: Dict[str, np.ndarray], weights, n_q: int, ef: int,
                     prefetch: List[int], with_raw: bool):
    """edge-hnsw, edge-raw (optional) and edge-prefetch-K latencies, interleaved on one store.

    At step i, contender c answers query (i + c * n / C) mod n, and the contenders' order
    rotates with i: every query is run once by each, no contender follows another on the same
    query (whose graph path would still be in the CPU caches), and load drifts hit all alike.
    Query rows are built outside the timer, request objects inside (as the plugin does).
    Returns {name: (latencies, ids)}.
    """
    import qdrant_edge as qe

    from qdrant_plugin.schema import ID_KEY

    shard = index.backend.shard
    names = list(index.fields)
    qs = [{f: v[i] for f, v in queries.items()} for i in range(n_q)]
    rows = [index._plan(q, weights, batch=False)[1][0].tolist() for q in qs]
    per_field = [{f: queries[f][i].tolist() for f in names if weights.get(f, 0.0) > 0} for i in range(n_q)]
    using = index.schema.main_vector
    params = qe.SearchParams(hnsw_ef=max(ef, 10), exact=False)

    def plug(i):
        return [int(h.id) for h in index.search(qs[i], field_weights=weights, limit=10, ef=ef)]

    def raw(i):
        req = qe.QueryRequest(limit=10, query=qe.Query.Nearest(rows[i], using=using), filter=None,
                              params=params, with_payload=True, with_vector=False)
        return [int(p.payload[ID_KEY]) for p in shard.query(req)]

    def make_prefetch(k):
        pparams = qe.SearchParams(hnsw_ef=max(ef, k), exact=False)

        def run(i):
            pf = [qe.Prefetch(limit=k, query=qe.Query.Nearest(v, using=f), params=pparams)
                  for f, v in per_field[i].items()]
            req = qe.QueryRequest(limit=10, prefetches=pf, query=qe.Query.Nearest(rows[i], using=using),
                                  with_payload=True, with_vector=False)
            return [int(p.payload[ID_KEY]) for p in shard.query(req)]
        return run

    fns = [("edge-hnsw", plug)] + ([("edge-raw", raw)] if with_raw else [])
    fns += [(f"edge-prefetch-{k}", make_prefetch(k)) for k in prefetch]
    for i in range(min(20, n_q)):
        for _, fn in fns:
            fn(i)
    c = len(fns)
    lat = {name: [0.0] * n_q for name, _ in fns}
    found = {name: [None] * n_q for name, _ in fns}
    for i in range(n_q):
        for r in range(c):
            slot = (r + i) % c
            name, fn = fns[slot]
            j = (i + slot * n_q // c) % n_q
            t = time.perf_counter()
            found[name][j] = fn(j)
            lat[name][j] = time.perf_counter() - t
    return {name: (lat[name], found[name]) for name, _ in fns}


def ingest(index: MultiFieldIndex, docs: Dict[str, np.ndarray], batch: int) -> Dict[str, float]:
    n = next(iter(docs.values())).shape[0]
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        e = min(n, s + batch)
        index.upsert([str(i) for i in range(s, e)], {f: v[s:e] for f, v in docs.items()})
    t1 = time.perf_counter()
    index.optimize()
    index.flush()
    t2 = time.perf_counter()
    return {"upsert_s": t1 - t0, "build_s": t2 - t1, "ingest_docs_per_s": n / (t2 - t0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000", help="comma-separated corpus sizes")
    ap.add_argument("--dim", type=int, default=128, help="dims per field (2 fields: title, image)")
    ap.add_argument("--latent-dim", type=int, default=24)
    ap.add_argument("--noise", type=float, default=0.3)
    ap.add_argument("--queries", type=int, default=1000, help="queries timed per implementation")
    ap.add_argument("--slow-queries", type=int, default=200,
                    help="queries timed for the exact implementations (edge-exact, local)")
    ap.add_argument("--weights", default="title=0.1,image=0.9")
    ap.add_argument("--m", type=int, default=DEFAULT_HNSW_M)
    ap.add_argument("--ef-construct", type=int, default=DEFAULT_HNSW_EF_CONSTRUCT)
    ap.add_argument("--ef", default="32,64,96,128", help="comma-separated HNSW ef values to sweep")
    ap.add_argument("--oversampling", type=float, default=DEFAULT_OVERSAMPLING,
                    help="edge-hnsw-int8: candidates per hit rescored with the float32 vectors")
    ap.add_argument("--prefetch", default="20,50,100",
                    help="edge-prefetch: comma-separated per-field prefetch depths K")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--local-max", type=int, default=100000, help="skip local mode above this size")
    ap.add_argument("--batch", type=int, default=2048, help="documents per upsert call")
    ap.add_argument("--workdir", default=None, help="where stores are built (default: a temp dir, removed)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --workdir: time queries on a store built by an earlier run (ingest not re-measured)")
    ap.add_argument("--out", default=RESULTS)
    a = ap.parse_args(argv)

    impls = [s for s in a.impls.split(",") if s]
    bad = sorted(set(impls) - set(IMPLS))
    if bad:
        ap.error(f"--impls: unknown {bad}; choose from {IMPLS}")
    weights = {k: float(v) for k, v in (p.split("=") for p in a.weights.split(","))}
    fields = {"title": a.dim, "image": a.dim}
    efs = [int(x) for x in a.ef.split(",")]
    prefetch = [int(x) for x in a.prefetch.split(",") if x]
    if "edge-prefetch" in impls and (not prefetch or min(prefetch) < 10):
        ap.error(f"--prefetch: expected comma-separated depths >= 10 (the hits per query), got {a.prefetch!r}")
    command = command_line(argv)
    mach = {**machine(), **package_versions({"numpy": "numpy", "qdrant_edge_py": "qdrant-edge-py",
                                             "qdrant_client": "qdrant-client"})}
    check_csv_header(a.out, COLUMNS)  # a mismatch fails now, not after the measurements
    work = a.workdir or tempfile.mkdtemp(prefix="bench_qdrant_")
    rows = []
    print(f"# {command}\n# {mach['cpu']}, {mach['cores']} cores, load {loadavg()}; python {mach['python']}, "
          f"qdrant-edge-py {mach['qdrant_edge_py']}, qdrant-client {mach['qdrant_client']}", flush=True)
    try:
        for n in [int(x) for x in a.sizes.split(",")]:
            load0 = loadavg()
            t = time.perf_counter()
            docs = latent_embeddings(n, fields, a.latent_dim, a.noise, seed=0)
            queries = latent_embeddings(a.queries, fields, a.latent_dim, a.noise, seed=1)
            names = list(fields)
            doc_concat = np.concatenate([docs[f] for f in names], axis=1)
            q_concat = np.concatenate([weights.get(f, 0.0) * queries[f] for f in names], axis=1).astype(np.float32)
            truth = exact_top10(doc_concat, q_concat)
            print(f"# n={n}: data + exact top-10 in {time.perf_counter() - t:.1f}s", flush=True)
            base = {"n_docs": n, "fields": "+".join(f"{f}:{d}" for f, d in fields.items()), "dim": a.dim,
                    "latent_dim": a.latent_dim, "noise": a.noise, "weights": a.weights, "loadavg_start": load0}

            def emit(impl, extra):
                row = {**base, "impl": impl, **extra, "loadavg_end": loadavg()}
                rows.append(row)
                print(f"{impl:>14} n={n:<8} ef={str(row.get('ef', '')):>4} "
                      f"ingest={row.get('ingest_docs_per_s', float('nan')):>9.0f} docs/s "
                      f"(build {row.get('build_s', float('nan')):6.1f}s)  p50={row['p50_ms']:7.3f} ms  "
                      f"p99={row['p99_ms']:7.3f} ms  qps={row['qps']:8.1f}  recall@10={row['recall_at_10']:.4f}",
                      flush=True)

            if "numpy" in impls:
                lat, found = [], []
                for i in range(a.queries):
                    t = time.perf_counter()
                    sc = doc_concat @ q_concat[i]
                    top = np.argpartition(-sc, 10)[:10]
                    top = top[np.argsort(-sc[top])]
                    lat.append(time.perf_counter() - t)
                    found.append(top.tolist())
                emit("numpy", {**latency_stats(lat), "recall_at_10": recall(found, truth), "n_queries": a.queries})

            variants = []  # (quantization, HNSW impl name, raw impl name), one store each
            if {"edge-hnsw", "edge-exact", "edge-prefetch"} & set(impls) or impls == ["edge-raw"]:
                variants.append((None, "edge-hnsw", "edge-raw"))
            if "edge-hnsw-int8" in impls:
                tag = "" if a.oversampling == DEFAULT_OVERSAMPLING else f"-os{a.oversampling:g}"
                variants.append(("int8", "edge-hnsw-int8" + tag, "edge-raw-int8" + tag))
            for quant, hnsw_name, raw_name in variants:
                # edge-prefetch needs a graph per field; edge-hnsw then runs on the same store
                per_field = quant is None and "edge-prefetch" in impls
                path = os.path.join(work, f"edge_{n}_m{a.m}_efc{a.ef_construct}_l{a.latent_dim}_s{a.noise}"
                                          + (f"_{quant}" if quant else "") + ("_pf" if per_field else ""))
                opts = dict(hnsw_m=a.m, hnsw_ef_construct=a.ef_construct, quantization=quant or "none",
                            oversampling=a.oversampling, index_fields=per_field)
                if a.reuse and a.workdir and os.path.isdir(path):
                    idx = MultiFieldIndex(path, "bench", fields, **opts)
                    if idx.count() != n:
                        raise SystemExit(f"--reuse: {path} holds {idx.count()} documents, expected {n}")
                    ing = {}
                    print(f"# {hnsw_name}: reusing {path}", flush=True)
                else:
                    shutil.rmtree(path, ignore_errors=True)
                    idx = MultiFieldIndex(path, "bench", fields, **opts)
                    ing = ingest(idx, docs, a.batch)
                    print(f"# {hnsw_name} ingest: upsert {ing['upsert_s']:.1f}s + build {ing['build_s']:.1f}s",
                          flush=True)
                common = {**ing, "hnsw_m": a.m, "hnsw_ef_construct": a.ef_construct}
                timed = quant is not None or "edge-hnsw" in impls
                for ef in efs:
                    if per_field:
                        res = time_interleaved(idx, queries, weights, a.queries, ef, prefetch, "edge-raw" in impls)
                        for name, (lat, found) in res.items():
                            emit(name, {**common, **latency_stats(lat), "ef": ef,
                                        "recall_at_10": recall(found, truth), "n_queries": a.queries})
                    elif "edge-raw" in impls:
                        lat, lat_raw, found, found_raw, ratio = time_paired(idx, queries, weights, a.queries, ef)
                        if timed:
                            emit(hnsw_name, {**common, **latency_stats(lat), "ef": ef,
                                             "recall_at_10": recall(found, truth), "n_queries": a.queries})
                        emit(raw_name, {**common, **latency_stats(lat_raw), "ef": ef,
                                        "recall_at_10": recall(found_raw, truth), "n_queries": a.queries})
                        print(f"{'':>10} ef={ef}: {hnsw_name} / raw engine call, median per-query ratio "
                              f"{ratio:.2f}", flush=True)
                    elif timed:
                        lat, found = time_index(idx, queries, weights, a.queries, ef=ef)
                        emit(hnsw_name, {**common, **latency_stats(lat), "ef": ef,
                                         "recall_at_10": recall(found, truth), "n_queries": a.queries})
                if quant is None and "edge-exact" in impls:
                    nq = min(a.slow_queries, a.queries)
                    lat, found = time_index(idx, queries, weights, nq, exact=True)
                    emit("edge-exact", {**common, **latency_stats(lat), "recall_at_10": recall(found, truth[:nq]),
                                        "n_queries": nq})
                idx.close()
                if not a.workdir:
                    shutil.rmtree(path, ignore_errors=True)

            if "local" in impls:
                if n > a.local_max:
                    print(f"# local mode skipped for n={n} (> --local-max {a.local_max})", flush=True)
                else:
                    idx = MultiFieldIndex(":memory:", "bench", fields)
                    ing = ingest(idx, docs, a.batch)
                    nq = min(a.slow_queries, a.queries)
                    lat, found = time_index(idx, queries, weights, nq)
                    emit("local", {**ing, **latency_stats(lat), "recall_at_10": recall(found, truth[:nq]),
                                   "n_queries": nq})
                    idx.close()
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
        if rows:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            full = [{**mach, **r, "timestamp": stamp, "command": command} for r in rows]
            # rows carry a few working keys (paired ratios, ...) that are not CSV columns
            n = append_csv(a.out, COLUMNS, [{c: r.get(c, "") for c in COLUMNS} for r in full])
            print(f"# appended {n} rows to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
