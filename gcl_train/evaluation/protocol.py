"""The protocol: one split (`evaluate_split`), or several with reports (`evaluate`).

For each split: pick the test queries and their graded ground truth (`ground_truth`),
embed the queries and the split's whole corpus (`encoding`, or precomputed
`embeddings`), retrieve the top k documents per query (`retrieval`), score the run with
`gcl_train.metrics.ranking_metrics`, and write the reports (`report`). docs/evaluation.md
describes the protocol and its departures from the reference.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from ..data.marqo_gs import SPLIT_CORPUS, SPLIT_NAMES, SPLITS, MarqoGSDataset, resolve_split
from ..fileio import atomic_write
from ..metrics import chance_metrics, ranking_metrics
from .config import EvalConfig, EvalReport, SplitResult
from .embeddings import EmbeddingTable, _as_tables
from .encoding import embed_corpus, encode_records
from .ground_truth import ground_truth_for_split
from .protocols import EncoderProtocol, RetrieverLike
from .report import write_reports
from .retrieval import ExactRetriever, _search

log = logging.getLogger(__name__)


def evaluate_split(
    dataset: Union[MarqoGSDataset, str],
    split: str,
    encoder: Optional[EncoderProtocol] = None,
    embeddings=None,
    config: Optional[EvalConfig] = None,
    retriever: Optional[RetrieverLike] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    _cache: Optional[Dict[str, Tuple[EmbeddingTable, Counter]]] = None,
) -> SplitResult:
    """Run the protocol on one split and return its metrics (writes nothing but caches).

    Args:
        dataset: a `MarqoGSDataset` or its root directory.
        split: "query_0_product_id_0" (or "in_domain", "novel_query", "novel_corpus",
            "zero_shot").
        encoder: `EncoderProtocol`; needed for whatever `embeddings` does not supply.
        embeddings: precomputed tables: a directory or a mapping name ->
            `EmbeddingTable` / (ids, vectors) ("queries", "corpus_1", "corpus_2").
        config: `EvalConfig` (default: the paper's protocol).
        retriever: a `RetrieverProtocol` (`index` is called first when it has one) or a
            `SearchFn`; default `ExactRetriever`.
        out_dir: where corpus embeddings are cached (`out_dir/embeddings/`).

    Example:
        >>> # evaluate_split("marqo_gs_wfash_1m", "in_domain", encoder=my_encoder).metrics["ndcg@10"]
    """
    t0 = time.perf_counter()
    ds = dataset if isinstance(dataset, MarqoGSDataset) else MarqoGSDataset(dataset)
    config = (config or EvalConfig()).validate()
    split = resolve_split(split)
    corpus = SPLIT_CORPUS[split]
    tables = _as_tables(embeddings)
    cache = _cache if _cache is not None else {}

    qrels, qvalues, source, notes = ground_truth_for_split(ds, split, config, progress)
    qkeys = list(qrels)
    counts: Counter = Counter()

    # queries
    if "queries" in tables:
        qvec = tables["queries"].lookup(qkeys, "queries")
        qvec = qvec / np.maximum(np.linalg.norm(qvec, axis=1, keepdims=True), 1e-12)
        q_ok = np.ones(len(qkeys), bool)
    else:
        if encoder is None:
            raise ValueError("encoder: needed to embed queries (no 'queries' table in embeddings)")
        parts, oks = [], []
        for s in range(0, len(qkeys), config.batch_size):
            recs = [qvalues[k] for k in qkeys[s: s + config.batch_size]]
            v, ok = encode_records(recs, config.left, encoder, ds, config.check_images, counts)
            parts.append(v)
            oks.append(ok)
        dims = {p.shape[1] for p in parts if p.shape[1]}
        d = dims.pop() if dims else 1
        qvec = np.concatenate([p if p.shape[1] else np.zeros((p.shape[0], d), np.float32) for p in parts]) \
            if parts else np.zeros((0, d), np.float32)
        q_ok = np.concatenate(oks) if oks else np.zeros(0, bool)
    if not q_ok.all():
        notes.append(f"{int((~q_ok).sum())} queries had no usable field and retrieved nothing")

    # corpus
    for what, n in sorted(counts.items()):
        notes.append(f"queries: {n} x {what}")
    doc_counts: Counter = Counter()
    if corpus in tables:
        table = tables[corpus]
    elif corpus in cache:
        table, doc_counts = cache[corpus]
    else:
        if encoder is None:
            raise ValueError(f"encoder: needed to embed {corpus} (no {corpus!r} table in embeddings)")
        emb_dir = os.path.join(out_dir, "embeddings") if out_dir else None
        table = embed_corpus(ds, corpus, encoder, config.right, config.batch_size, config.check_images,
                             emb_dir, config.dtype, progress, doc_counts)
        cache[corpus] = (table, doc_counts)
    n_unusable = doc_counts.get("unusable documents", 0)
    for what, n in sorted(doc_counts.items()):
        if what != "unusable documents" and n:
            notes.append(f"{corpus}: {n} x {what}")
    if n_unusable:
        notes.append(f"{corpus}: {n_unusable} documents had no usable field and were left out of the index")

    # retrieval
    if retriever is None:
        r = ExactRetriever(table.ids, table.vectors, config.query_block, config.doc_block, progress=progress)
    else:
        r = retriever
        if hasattr(r, "index"):
            r.index(table.ids, table.vectors, corpus=corpus)
    sel = np.flatnonzero(q_ok)
    run: Dict[str, Dict[str, float]] = {k: {} for k in qkeys}
    if len(sel):
        ids, scores = _search(r, np.ascontiguousarray(qvec[sel], dtype=np.float32), config.top_k)
        for row, qi in enumerate(sel.tolist()):
            run[qkeys[qi]] = {str(d): float(s) for d, s in zip(ids[row], scores[row])}

    metrics = ranking_metrics(qrels, run, ks=config.ks)
    corpus_ids = table.index_of()
    missing_gt = sum(1 for q in qrels for d in qrels[q] if d not in corpus_ids)
    if missing_gt:
        notes.append(f"{missing_gt} ground-truth documents are not in the index ({corpus})")
    return SplitResult(
        split=split, name=SPLIT_NAMES[split], corpus=corpus, gt_source=source, n_queries=len(qkeys),
        n_docs=len(table.ids), n_docs_unusable=n_unusable, n_gt_docs_not_in_corpus=missing_gt,
        metrics=metrics, chance=chance_metrics(qrels, max(len(table.ids), 1), config.ks) if qrels else {},
        seconds=time.perf_counter() - t0, notes=notes, qrels=qrels, run=run,
    )


def evaluate(
    dataset: Union[MarqoGSDataset, str],
    splits: Union[str, Sequence[str]] = "all",
    encoder: Optional[EncoderProtocol] = None,
    embeddings=None,
    config: Optional[EvalConfig] = None,
    retriever: Optional[RetrieverLike] = None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    resume: bool = False,
    save_runs: bool = False,
) -> EvalReport:
    """Run the protocol on one split or all four and write the reports.

    Args:
        dataset, encoder, embeddings, config, retriever: as `evaluate_split`.
        splits: "all" (those present), one split, or a list (names or aliases).
        out_dir: writes `metrics.json`, `metrics.csv`, `ndcg_at_k.png`, per-split
            `splits/<split>.json` and `qrels/<split>.json` (and `runs/<split>.json`
            with save_runs), plus cached corpus embeddings in `embeddings/`.
        resume: reuse finished `splits/<split>.json` and cached corpus embeddings from
            an earlier run into the same `out_dir` with the same config (the caller
            vouches that the encoder is the same).

    Returns:
        `EvalReport`; `report.table()` prints the summary.

    Example:
        >>> # evaluate("marqo_gs_wfash_1m", "all", encoder=Encoder.from_checkpoint("ck.pt"), out_dir="eval")
    """

    ds = dataset if isinstance(dataset, MarqoGSDataset) else MarqoGSDataset(dataset)
    config = (config or EvalConfig()).validate()
    if splits == "all":
        split_list = ds.available_splits()
        if not split_list:
            raise FileNotFoundError(f"dataset: no split files ({', '.join(SPLITS)}) in {ds.root}")
    else:
        split_list = [resolve_split(s) for s in ([splits] if isinstance(splits, str) else splits)]
    tables = _as_tables(embeddings)
    cache: Dict[str, Tuple[EmbeddingTable, Counter]] = {}
    if out_dir and resume:
        emb_dir = os.path.join(out_dir, "embeddings")
        for c in ("corpus_1", "corpus_2"):
            if c not in tables and os.path.isfile(os.path.join(emb_dir, c + ".npy")):
                cache[c] = (EmbeddingTable.load(emb_dir, c), Counter())
    results: Dict[str, SplitResult] = {}
    cfg_dict = config.to_dict()
    for split in tqdm(split_list, desc="splits", unit="split", disable=not progress or len(split_list) < 2):
        done = os.path.join(out_dir, "splits", split + ".json") if out_dir else None
        if resume and done and os.path.isfile(done):
            with open(done, "r", encoding="utf-8") as f:
                prev = json.load(f)
            if prev.get("config") == cfg_dict:
                results[split] = SplitResult(**prev["result"])
                log.info("%s: reusing %s", split, done)
                continue
        res = evaluate_split(ds, split, encoder, tables, config, retriever, out_dir, progress, cache)
        results[split] = res
        if out_dir:
            atomic_write(done, lambda f: json.dump({"config": cfg_dict, "result": res.to_dict()}, f, indent=1))
            atomic_write(os.path.join(out_dir, "qrels", split + ".json"), lambda f: json.dump(res.qrels, f))
            if save_runs:
                atomic_write(os.path.join(out_dir, "runs", split + ".json"), lambda f: json.dump(res.run, f))
        for note in res.notes:
            log.warning("%s: %s", split, note)
    report = EvalReport(results, config)
    if out_dir:
        report.files = write_reports(report, out_dir)
    return report

