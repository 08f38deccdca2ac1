"""Ranking metrics, vectorised over queries (docs/evaluation.md).

`ranking_metrics(qrels, run, ks)` pads every query's ranked list into one [Q, K] relevance
matrix and computes all metrics with numpy cumulative sums, so 20,000 queries x 1000
results take seconds instead of minutes of per-query Python.

Definitions (matching `trec_eval` as wrapped by `pytrec_eval`, and the reference
evaluation's own ERR / RBP code in marqo-ai/GCL `evals/eval_gs_v1.py`):

* Ranking: a query's run is ordered by score descending; equal scores are ordered by
  document id descending (trec_eval's rule), so results do not depend on dict order.
* Relevant: relevance >= 1 (trec_eval's default `relevance_level`).
* ``precision@k`` = relevant in top k / k (trec_eval ``P_k``; the divisor is k even when
  fewer than k documents were retrieved).
* ``recall@k`` = relevant in top k / relevant in qrels (``recall_k``).
* ``map@k`` = sum over relevant documents at ranks i <= k of precision@i, divided by the
  number of relevant documents in qrels (``map_cut_k``).
* ``ndcg@k`` = DCG@k / ideal DCG@k with gain = relevance and discount log2(rank + 1); the
  ideal ranking is the qrels sorted by relevance (``ndcg_cut_k``).
* ``mrr@k`` = 1 / rank of the first relevant document within the top k, else 0 (the
  reference's beir ``MRR@k``; with k >= the run length it equals trec_eval ``recip_rank``).
* ``err`` = sum_r R_r / r * prod_{i<r} (1 - R_i) over the whole ranked list, with
  R = (2^rel - 1) / 2^max_rel and max_rel the query's largest qrels relevance.
* ``rbp@p`` = (1 - p) * sum_r (rel_r / max_rel) * p^(r-1) over the whole ranked list.

Averages run over the queries of `qrels`; a query with no run scores 0 everywhere (as
`trec_eval -c`), run queries absent from qrels are ignored. A query whose qrels hold no
relevant document scores 0 (trec_eval does the same for the ratios it cannot form).
"""
from __future__ import annotations

import math
from itertools import repeat
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

DEFAULT_KS = (1, 5, 10, 100, 1000)
DEFAULT_RBP_PS = (0.7, 0.8, 0.9)
#: The cut-offs the reference evaluation reports (its NDCG@k curve).
REFERENCE_KS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 20, 30, 40, 50, 60, 70, 80, 90, 100, 200, 500, 1000)
CUT_METRICS = ("ndcg", "map", "mrr", "recall", "precision")


def _check_ks(ks) -> Tuple[int, ...]:
    if isinstance(ks, int):
        ks = (ks,)
    try:
        ks = tuple(ks)
    except TypeError:
        raise ValueError(f"ks: expected a sequence of positive ints, got {ks!r}") from None
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise ValueError(f"ks: expected a non-empty sequence of positive ints, got {ks!r}")
    return tuple(sorted(set(int(k) for k in ks)))


def _check_ps(ps) -> Tuple[float, ...]:
    ps = tuple(ps)
    for p in ps:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise ValueError(f"rbp_ps: expected persistence values in (0, 1), got {ps!r}")
    return ps


def metric_names(ks=DEFAULT_KS, rbp_ps=DEFAULT_RBP_PS) -> Tuple[str, ...]:
    """The keys `ranking_metrics` returns, in order."""
    ks = _check_ks(ks)
    names = [f"{m}@{k}" for m in CUT_METRICS for k in ks]
    names.append("err")
    names += [f"rbp@{p:g}" for p in _check_ps(rbp_ps)]
    return tuple(names)


def _ordered(run_q: Mapping[str, float], scores: np.ndarray) -> np.ndarray:
    """Indices of a query's run by score desc, ties by doc id desc (trec_eval's order)."""
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    if len(s) > 1 and bool((s[1:] == s[:-1]).any()):
        docs = list(run_q)
        order = np.array(sorted(range(len(docs)), key=lambda i: (-scores[i], _Desc(docs[i]))), dtype=np.int64)
    return order


class _Desc:
    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v

    def __lt__(self, other):
        return self.v > other.v

    def __eq__(self, other):
        return self.v == other.v


def build_arrays(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    max_k: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pad a run into the arrays `metrics_from_arrays` takes.

    Args:
        qrels: {query: {doc: relevance >= 0}}.
        run: {query: {doc: score}}.
        max_k: keep only the top `max_k` of each ranked list (None: all). ERR and RBP see
            only what is kept.

    Shape:
        returns ranked [Q, K] float64 relevance of the retrieved documents in rank
        order (0 past each list's end), n_ret [Q] int, ideal [Q, R] float64 qrels
        relevances sorted descending (0-padded), max_rel [Q] float64.
    """
    if not isinstance(qrels, Mapping):
        raise ValueError(f"qrels: expected a mapping {{query: {{doc: relevance}}}}, got {type(qrels).__name__}")
    if not isinstance(run, Mapping):
        raise ValueError(f"run: expected a mapping {{query: {{doc: score}}}}, got {type(run).__name__}")
    queries = list(qrels)
    nq = len(queries)
    rel_lists = []
    n_ret = np.zeros(nq, dtype=np.int64)
    ideal_lists = []
    for qi, q in enumerate(queries):
        qd = qrels[q]
        if not isinstance(qd, Mapping):
            raise ValueError(f"qrels[{q!r}]: expected a mapping {{doc: relevance}}, got {type(qd).__name__}")
        ideal_lists.append(sorted(qd.values(), reverse=True))
        rd = run.get(q)
        if not rd:
            rel_lists.append(())
            continue
        if not isinstance(rd, Mapping):
            raise ValueError(f"run[{q!r}]: expected a mapping {{doc: score}}, got {type(rd).__name__}")
        n = len(rd)
        neg = -np.fromiter(rd.values(), dtype=np.float64, count=n)
        if np.isnan(neg).any():
            raise ValueError(f"run[{q!r}]: scores contain NaN")
        sorted_neg = np.sort(neg)
        if n > 1 and bool((sorted_neg[1:] == sorted_neg[:-1]).any()):
            order = _ordered(rd, -neg)
            rels = np.fromiter(map(qd.get, rd.keys(), repeat(0)), dtype=np.float64, count=n)[order]
        else:
            # distinct scores: only the judged documents need a rank, found by binary search
            # (touching every retrieved document in Python is what makes per-query code slow)
            rels = np.zeros(n, dtype=np.float64)
            common = [d for d in qd if d in rd]
            if common:
                pos = np.searchsorted(sorted_neg, [-rd[d] for d in common])
                rels[pos] = [qd[d] for d in common]
        if max_k is not None:
            rels = rels[:max_k]
        rel_lists.append(rels)
        n_ret[qi] = len(rels)
    k_max = int(n_ret.max()) if nq else 0
    ranked = np.zeros((nq, max(k_max, 1)), dtype=np.float64)
    for qi, rl in enumerate(rel_lists):
        if len(rl):
            ranked[qi, : len(rl)] = rl
    r_max = max((len(x) for x in ideal_lists), default=0)
    ideal = np.zeros((nq, max(r_max, 1)), dtype=np.float64)
    for qi, il in enumerate(ideal_lists):
        if il:
            ideal[qi, : len(il)] = il
    if (ideal < 0).any():
        raise ValueError("qrels: relevances must be >= 0")
    max_rel = ideal[:, 0].copy()
    return ranked, n_ret, ideal, max_rel


def metrics_from_arrays(
    ranked: np.ndarray,
    ideal: np.ndarray,
    ks=DEFAULT_KS,
    rbp_ps=DEFAULT_RBP_PS,
    max_rel: Optional[np.ndarray] = None,
) -> Dict[str, np.ndarray]:
    """Per-query metrics from padded relevance arrays (see `build_arrays`).

    Shape:
        ranked [Q, K], ideal [Q, R] (descending), max_rel [Q] (default ideal[:, 0]);
        returns {metric: [Q] float64}.
    """
    ks = _check_ks(ks)
    ps = _check_ps(rbp_ps)
    ranked = np.asarray(ranked, dtype=np.float64)
    ideal = np.asarray(ideal, dtype=np.float64)
    if ranked.ndim != 2 or ideal.ndim != 2 or ranked.shape[0] != ideal.shape[0]:
        raise ValueError(f"ranked, ideal: expected [Q, K] and [Q, R] arrays, got {ranked.shape} and {ideal.shape}")
    nq, kk = ranked.shape
    if max_rel is None:
        max_rel = ideal[:, 0] if ideal.shape[1] else np.zeros(nq)
    max_rel = np.asarray(max_rel, dtype=np.float64)
    out: Dict[str, np.ndarray] = {}

    is_rel = ranked >= 1
    num_rel = (ideal >= 1).sum(axis=1).astype(np.float64)
    safe_num_rel = np.where(num_rel > 0, num_rel, 1.0)
    ranks = np.arange(1, kk + 1, dtype=np.float64)
    hits = np.cumsum(is_rel, axis=1, dtype=np.int32)  # relevant in top i
    ap_terms = np.cumsum(np.where(is_rel, hits / ranks, 0.0), axis=1)
    disc = 1.0 / np.log2(ranks + 1.0)
    idisc = 1.0 / np.log2(np.arange(2, ideal.shape[1] + 2, dtype=np.float64))
    first = np.where(is_rel.any(axis=1), is_rel.argmax(axis=1) + 1, 0)
    rr = np.where(first > 0, 1.0 / np.maximum(first, 1), 0.0)

    for k in ks:
        kc = min(k, kk)
        h = hits[:, kc - 1].astype(np.float64)
        ic = min(k, ideal.shape[1])
        idcg = ideal[:, :ic] @ idisc[:ic]  # relevances are >= 0, so the gains are the grades
        dcg = ranked[:, :kc] @ disc[:kc]
        out[f"ndcg@{k}"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0)
        out[f"map@{k}"] = np.where(num_rel > 0, ap_terms[:, kc - 1] / safe_num_rel, 0.0)
        out[f"mrr@{k}"] = np.where((first > 0) & (first <= k), rr, 0.0)
        out[f"recall@{k}"] = np.where(num_rel > 0, h / safe_num_rel, 0.0)
        out[f"precision@{k}"] = h / k

    # ERR: R = (2^rel - 1) / 2^max_rel, written to stay finite for large grades
    mr = max_rel[:, None]
    stop = np.clip(np.exp2(ranked - mr) - np.exp2(-mr), 0.0, 1.0)
    go_on = np.cumprod(1.0 - stop, axis=1)
    go_on[:, 1:] = go_on[:, :-1].copy()
    go_on[:, 0] = 1.0
    out["err"] = (go_on * stop) @ (1.0 / ranks)

    safe_max = np.where(max_rel > 0, max_rel, 1.0)
    for p in ps:
        val = (1.0 - p) * (ranked @ (p ** (ranks - 1.0))) / safe_max
        out[f"rbp@{p:g}"] = np.where(max_rel > 0, val, 0.0)
    return out


def ranking_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    ks=DEFAULT_KS,
    rbp_ps=DEFAULT_RBP_PS,
    per_query: bool = False,
):
    """Mean ranking metrics of a run against graded qrels.

    Args:
        qrels: {query: {doc: int relevance >= 0}}; relevance >= 1 counts as relevant.
        run: {query: {doc: score}}, higher is better.
        ks: cut-offs for ndcg, map, mrr, recall, precision.
        rbp_ps: RBP persistence values.
        per_query: also return the [Q] per-query arrays (in qrels order).

    Returns:
        {"ndcg@k", "map@k", "mrr@k", "recall@k", "precision@k" for each k, "err",
        "rbp@0.7", "rbp@0.8", "rbp@0.9"} -> float (definitions in the module
        docstring); with per_query=True, (means, {metric: np.ndarray [Q]}).

    Example:
        >>> m = ranking_metrics({"q": {"a": 2, "b": 1}}, {"q": {"a": 0.9, "c": 0.5, "b": 0.1}}, ks=(1, 3))
        >>> round(m["ndcg@3"], 4), m["precision@1"], m["mrr@3"]
        (0.9502, 1.0, 1.0)
    """
    ks = _check_ks(ks)
    ps = _check_ps(rbp_ps)
    ranked, _n_ret, ideal, max_rel = build_arrays(qrels, run)
    per = metrics_from_arrays(ranked, ideal, ks, ps, max_rel)
    means = {name: (float(per[name].mean()) if len(per[name]) else 0.0) for name in metric_names(ks, ps)}
    return (means, per) if per_query else means


def chance_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    n_docs: int,
    ks=DEFAULT_KS,
) -> Dict[str, float]:
    """Expected precision@k, recall@k and ndcg@k of a uniformly random ranking of a
    corpus of `n_docs` documents (every position holds a uniform random document, so
    E[DCG@k] = mean relevance of the corpus times the summed discounts; exact).

    Example:
        >>> round(chance_metrics({"q": {"a": 1}}, n_docs=10, ks=(5,))["recall@5"], 3)
        0.5
    """
    ks = _check_ks(ks)
    if isinstance(n_docs, bool) or not isinstance(n_docs, (int, np.integer)) or n_docs < 1:
        raise ValueError(f"n_docs: expected a positive int, got {n_docs!r}")
    out = {f"{m}@{k}": 0.0 for m in ("ndcg", "recall", "precision") for k in ks}
    nq = len(qrels)
    if nq == 0:
        return out
    for q, qd in qrels.items():
        rels = sorted((r for r in qd.values() if r > 0), reverse=True)
        n_rel = len(rels)
        mean_rel = sum(rels) / n_docs
        for k in ks:
            kk = min(k, n_docs)
            disc = sum(1.0 / math.log2(i + 1) for i in range(1, kk + 1))
            idcg = sum(r / math.log2(i + 2) for i, r in enumerate(rels[:k]))
            if n_rel:
                out[f"ndcg@{k}"] += (mean_rel * disc / idcg) / nq
                out[f"recall@{k}"] += (kk / n_docs) / nq
            out[f"precision@{k}"] += (n_rel / n_docs) * kk / k / nq
    return out


# ----------------------------------------------------------------------------------------
# the reference evaluation's loops (oracle for tests and benchmarks)
# ----------------------------------------------------------------------------------------

def reference_err(qrels_q: Mapping[str, int], run_q: Mapping[str, float]) -> float:
    """ERR of one query, transcribed from `calculate_individual_err` in marqo-ai/GCL
    `evals/eval_gs_v1.py`: per-document Python, for checking `ranking_metrics` against.

    The run is sorted by score only (Python's stable sort keeps dict order among equal
    scores), so compare with `ranking_metrics` on runs without ties.

    Example:
        >>> reference_err({"a": 1}, {"a": 0.9})
        0.5
    """
    err, p_stop = 0.0, 1.0
    docs = sorted(run_q.items(), key=lambda x: x[1], reverse=True)
    max_rel = max(qrels_q.values())
    for rank, (doc, _) in enumerate(docs, start=1):
        rel = qrels_q.get(doc, 0)
        r = (2 ** rel - 1) / (2 ** max_rel)
        err += p_stop * r / rank
        p_stop *= 1 - r
    return err


def reference_rbp(qrels_q: Mapping[str, int], run_q: Mapping[str, float], p: float) -> float:
    """RBP@p of one query, transcribed from the same reference evaluation (see `reference_err`).

    Example:
        >>> round(reference_rbp({"a": 2, "b": 1}, {"b": 0.9, "a": 0.1}, 0.5), 4)
        0.5
    """
    docs = sorted(run_q.items(), key=lambda x: x[1], reverse=True)
    max_rel = max(qrels_q.values())
    return (1 - p) * sum(qrels_q.get(d, 0) / max_rel * p ** (rank - 1) for rank, (d, _) in enumerate(docs, start=1))
