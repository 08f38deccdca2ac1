"""Ground truth: relevance rescaling, weighted query sampling, qrels from a split CSV or
a gt file (the reference evaluation's procedure)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..data.errors import DataFormatError
from ..data.fields import DEFAULT_LEFT, FieldSpecs, check_field_specs
from ..data import (
    QUERY_KEY_SEPARATOR,
    MarqoGSDataset,
    ReadStats,
    iter_pairs,
    query_key,
    resolve_split,
    split_query_key,
)
from .config import EvalConfig


def rescale_relevance(s: float, lo: float, hi: float) -> int:
    """The reference rescaling int((s - lo) / (hi - lo) * 99 + 1); 1 when hi == lo."""
    if hi == lo:
        return 1
    return int((s - lo) / (hi - lo) * 99 + 1)


def sample_queries(keys: Sequence[str], weights: Sequence[float], n: int, seed: int = 1) -> List[str]:
    """Draw `n` keys without replacement, probability proportional to `weights`.

    Uses `numpy.random.RandomState(seed).choice(len(keys), n, replace=False, p=w / w.sum())`
    on the keys as given (pandas' `DataFrame.sample(n, weights, random_state=seed)` does
    the same); returns them sorted by weight, largest first. n = -1 or n >= len(keys)
    returns all keys.
    """
    w = np.asarray(weights, dtype=np.float64)
    if len(keys) != len(w):
        raise ValueError(f"weights: expected {len(keys)} values (one per key), got {len(w)}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights: expected finite values >= 0")
    if n == -1 or n >= len(keys):
        chosen = np.arange(len(keys))
    else:
        if (w > 0).sum() < n:
            raise ValueError(f"n: cannot draw {n} queries without replacement, only {(w > 0).sum()} have weight > 0")
        chosen = np.random.RandomState(seed).choice(len(keys), size=n, replace=False, p=w / w.sum())
    order = sorted(chosen.tolist(), key=lambda i: -w[i])
    return [keys[i] for i in order]


def _ref_sort_key(values: Sequence[str]) -> str:
    return "".join(str(v) + QUERY_KEY_SEPARATOR for v in values)


def ground_truth_from_csv(
    path: str,
    left: FieldSpecs = DEFAULT_LEFT,
    weight_key: str = "score_linear",
    n_queries: int = 2000,
    top_k: int = 1000,
    seed: int = 1,
    progress: bool = True,
    stats: Optional[ReadStats] = None,
) -> Tuple[Dict[str, Dict[str, int]], Dict[str, Dict[str, Any]]]:
    """Rebuild the reference ground truth from a split CSV in three streaming passes.

    Returns:
        qrels {query key: {product_id: relevance 1..100}} (sampled queries, largest
        summed relevance first) and {query key: {left key: value}}.
    """

    left = check_field_specs("left", left)
    lkeys = [s.key for s in left]
    required = ("product_id",) + tuple(k for k in lkeys if k != "product_id") + (weight_key,)
    stats = stats if stats is not None else ReadStats()

    def rows(desc, st):
        return tqdm(iter_pairs(path, required=required, stats=st, columns=required), desc=desc, unit="row",
                    disable=not progress)

    lo, hi = math.inf, -math.inf
    for rec in rows("gt pass 1/3 (score range)", stats):
        s = rec.get(weight_key)
        s = _as_float(path, rec.line, weight_key, s)
        lo, hi = min(lo, s), max(hi, s)
    if lo == math.inf:
        raise DataFormatError(path, 0, f"no usable rows with {weight_key!r} (see: {stats.summary()})")
    sums: Dict[str, float] = {}
    values: Dict[str, Dict[str, Any]] = {}
    sortkey: Dict[str, str] = {}
    for rec in rows("gt pass 2/3 (query weights)", ReadStats()):
        vals = [rec.get(k) for k in lkeys]
        key = query_key(vals)
        if key not in sums:
            sums[key] = 0.0
            values[key] = dict(zip(lkeys, vals))
            sortkey[key] = _ref_sort_key(vals)
        sums[key] += rescale_relevance(_as_float(path, rec.line, weight_key, rec.get(weight_key)), lo, hi)
    keys = sorted(sums, key=lambda k: sortkey[k])  # pandas groupby order
    chosen = sample_queries(keys, [sums[k] for k in keys], n_queries, seed)
    wanted = set(chosen)
    docs: Dict[str, List[Tuple[int, str]]] = {k: [] for k in chosen}
    for rec in rows("gt pass 3/3 (documents)", ReadStats()):
        key = query_key([rec.get(k) for k in lkeys])
        if key in wanted:
            docs[key].append((rescale_relevance(_as_float(path, rec.line, weight_key, rec.get(weight_key)), lo, hi), rec.product_id))
    qrels: Dict[str, Dict[str, int]] = {}
    for key in chosen:
        ranked = sorted(docs[key], key=lambda t: -t[0])[:top_k]
        qrels[key] = {pid: rel for rel, pid in ranked}
    return qrels, {k: values[k] for k in chosen}


def _as_float(path, line, col, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DataFormatError(path, line, f"column {col!r}: expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise DataFormatError(path, line, f"column {col!r}: expected a finite number, got {v!r}")
    return f


def ground_truth_for_split(
    dataset: MarqoGSDataset, split: str, config: EvalConfig, progress: bool = True
) -> Tuple[Dict[str, Dict[str, int]], Dict[str, Dict[str, Any]], str, List[str]]:
    """(qrels, query field values, source used, notes) for a split under `config`."""
    split = resolve_split(split)
    notes: List[str] = []
    if config.ground_truth in ("test", "dev"):
        try:
            gt = dataset.ground_truth(split, config.ground_truth)
        except FileNotFoundError:
            notes.append(f"no {split}_gt_{config.ground_truth}.json; ground truth rebuilt from the CSV")
        else:
            keys = list(gt)
            n = config.queries_for(config.ground_truth)
            chosen = sample_queries(keys, [sum(gt[k].values()) for k in keys], n, config.seed) \
                if n != -1 and n < len(keys) else keys
            qrels = {}
            for k in chosen:
                top = sorted(gt[k].items(), key=lambda t: -t[1])[: config.top_k]
                qrels[k] = dict(top)
            return qrels, query_values(chosen, config.left), config.ground_truth, notes
    stats = ReadStats()
    qrels, values = ground_truth_from_csv(
        dataset.csv_path(split), config.left, config.weight_key, config.queries_for("csv"), config.top_k,
        config.seed, progress, stats,
    )
    if stats.n_skipped:
        notes.append(stats.summary())
    return qrels, values, "csv", notes


def query_values(keys: Sequence[str], left: FieldSpecs) -> Dict[str, Dict[str, Any]]:
    """{query key: {left key: value}}: the left field values a query key stands for."""
    lkeys = [s.key for s in left]
    return {k: dict(zip(lkeys, split_query_key(k, len(lkeys)))) for k in keys}
