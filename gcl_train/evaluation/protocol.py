"""The protocol: one split (`evaluate_split`), or several with reports (`evaluate`).

For each split: pick the test queries and their graded ground truth (`ground_truth`),
embed the queries and the split's whole corpus (`encoding`, or precomputed
`embeddings`), retrieve the top k documents per query (`retrieval`), score the run with
`gcl_train.metrics.ranking_metrics`, and write the reports (`report`). Artefacts in the
output directory are keyed by what produced them (`cache`). docs/evaluation.md
describes the protocol and where it departs from the reference.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from ..data.errors import DataFormatError
from ..data import SPLIT_CORPUS, SPLIT_NAMES, SPLITS, MarqoGSDataset, resolve_split
from ..data.synthetic import intended_missing as synthetic_intended_missing
from ..metrics import chance_metrics, ranking_metrics
from .cache import CACHE_VERSION, ArtefactStore, file_stamp, table_digest
from .config import EvalConfig, EvalReport, SplitResult
from .embeddings import EmbeddingTable, _as_tables
from .encoding import embed_corpus, encode_records
from .ground_truth import ground_truth_for_split, query_values
from .protocols import EncoderProtocol, RetrieverLike
from .report import write_reports
from .retrieval import ExactRetriever, _search

log = logging.getLogger(__name__)

#: Appended to notes about fields the synthetic data set leaves out on purpose.
INTENDED = "(intended by the synthetic data set)"


# ----------------------------------------------------------------------------------------
# producer keys
# ----------------------------------------------------------------------------------------

def _path_or_none(fn, *args) -> Optional[str]:
    try:
        return fn(*args)
    except (FileNotFoundError, ValueError):
        return None


def _fields(specs) -> List[Dict[str, Any]]:
    return [{"key": s.key, "kind": s.kind, "weight": s.weight, "required": s.required} for s in specs]


def _gt_key(ds: MarqoGSDataset, split: str, config: EvalConfig) -> Dict[str, Any]:
    gt = _path_or_none(ds.gt_path, split, config.ground_truth) if config.ground_truth != "csv" else None
    return {
        "version": CACHE_VERSION, "ground_truth": config.ground_truth, "left": _fields(config.left),
        "weight_key": config.weight_key, "n_queries": config.n_queries, "seed": config.seed, "top_k": config.top_k,
        "data": {"pairs": file_stamp(_path_or_none(ds.csv_path, split)), "gt": file_stamp(gt)},
    }


def _corpus_key(ds: MarqoGSDataset, corpus: str, config: EvalConfig, encoder_id: Optional[str]) -> Dict[str, Any]:
    return {
        "version": CACHE_VERSION, "encoder": encoder_id, "right": _fields(config.right),
        "check_images": config.check_images, "dtype": config.dtype,
        "data": {"corpus": file_stamp(_path_or_none(ds.corpus_path, corpus)),
                 "image_root": os.path.abspath(ds.image_root)},
    }


def _retriever_id(retriever) -> str:
    if retriever is None:
        return "exact"
    t = type(retriever)
    return f"{t.__module__}.{t.__qualname__}"


def _split_key(ds: MarqoGSDataset, split: str, config: EvalConfig, encoder_id: Optional[str],
               tables: Mapping[str, EmbeddingTable], retriever) -> Dict[str, Any]:
    corpus = SPLIT_CORPUS[split]
    from_tables = "queries" in tables and corpus in tables
    return {
        "version": CACHE_VERSION,
        "encoder": "unused" if from_tables else encoder_id,
        "queries": table_digest(tables["queries"]) if "queries" in tables else "encoder",
        "corpus": table_digest(tables[corpus]) if corpus in tables else _corpus_key(ds, corpus, config, encoder_id),
        "ground_truth": _gt_key(ds, split, config),
        "retriever": _retriever_id(retriever),
        "config": config.to_dict(),
    }


# ----------------------------------------------------------------------------------------
# notes about missing fields
# ----------------------------------------------------------------------------------------

def _intended(ds: MarqoGSDataset, corpus: str) -> Dict[str, int]:
    """{count name: how many the synthetic data set leaves out on purpose} for a corpus."""
    info = synthetic_intended_missing(ds.root) or {}
    counts = info.get(corpus)
    if not isinstance(counts, dict):
        return {}
    out = {}
    for what, field in (("missing title", "title"), ("absent image file (image_local)", "image"),
                        ("missing image_local", "image")):
        n = counts.get(field)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            out[what] = n
    return out


def _field_note(where: str, what: str, n: int, intended: Mapping[str, int]) -> str:
    note = f"{where}: {n} x {what}"
    if what in intended:
        if n <= intended[what]:
            return f"{note} {INTENDED}"
        return f"{note} (the synthetic data set leaves out {intended[what]} on purpose; the rest are not intended)"
    return note


def note_level(note: str) -> int:
    """The log level of a note: INFO for what the data set intends, WARNING otherwise."""
    return logging.INFO if note.endswith(INTENDED) else logging.WARNING


# ----------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------

def _check_table(table: EmbeddingTable, name: str) -> None:
    bad = table.count_nonfinite()
    if bad:
        raise ValueError(f"embeddings[{name!r}]: {bad} of {len(table.ids)} rows hold NaN or infinite values")


def _embed_queries(qkeys, qvalues, tables, encoder, ds, config, counts) -> Tuple[np.ndarray, np.ndarray]:
    if "queries" in tables:
        qvec = tables["queries"].lookup(qkeys, "queries")
        bad = int((~np.isfinite(qvec).all(axis=1)).sum())
        if bad:
            raise ValueError(f"embeddings['queries']: {bad} of the {len(qkeys)} test queries have NaN or "
                             f"infinite vectors")
        norms = np.linalg.norm(qvec, axis=1, keepdims=True)
        return qvec / np.maximum(norms, 1e-12), norms[:, 0] > 0
    if encoder is None:
        raise ValueError("encoder: needed to embed queries (no 'queries' table in embeddings)")
    parts, oks = [], []
    for s in range(0, len(qkeys), config.batch_size):
        recs = [qvalues[k] for k in qkeys[s: s + config.batch_size]]
        v, ok = encode_records(recs, config.left, encoder, ds, config.check_images, counts, role="query")
        parts.append(v)
        oks.append(ok)
    dims = {p.shape[1] for p in parts if p.shape[1]}
    d = dims.pop() if dims else 1
    qvec = np.concatenate([p if p.shape[1] else np.zeros((p.shape[0], d), np.float32) for p in parts]) \
        if parts else np.zeros((0, d), np.float32)
    return qvec, (np.concatenate(oks) if oks else np.zeros(0, bool))


def _corpus_table(ds, corpus, tables, encoder, encoder_id, config, progress, store: Optional[ArtefactStore],
                  cache) -> Tuple[EmbeddingTable, Counter]:
    if corpus in tables:
        _check_table(tables[corpus], corpus)
        return tables[corpus], Counter()
    if corpus in cache:
        return cache[corpus]
    if encoder is None:
        raise ValueError(f"encoder: needed to embed {corpus} (no {corpus!r} table in embeddings)")
    key = _corpus_key(ds, corpus, config, encoder_id) if store else None
    loaded = store.load_corpus(corpus, key) if store else None
    if loaded is not None:
        table, counts = loaded[0], Counter(loaded[1])
    else:
        counts = Counter()
        if store:
            store.start_corpus(corpus)
        table = embed_corpus(ds, corpus, encoder, config.right, config.batch_size, config.check_images,
                             store.emb_dir if store else None, config.dtype, progress, counts)
        if store and len(table.ids):
            store.finish_corpus(corpus, key, table, counts)
    cache[corpus] = (table, counts)
    return table, counts


def _run_split(ds: MarqoGSDataset, split: str, encoder, encoder_id, tables, config: EvalConfig, retriever,
               progress: bool, store: Optional[ArtefactStore], cache) -> SplitResult:
    t0 = time.perf_counter()
    corpus = SPLIT_CORPUS[split]

    # ground truth
    gt_key = _gt_key(ds, split, config) if store else None
    loaded = store.load_qrels(split, gt_key) if store else None
    if loaded is not None:
        qrels, source, notes = loaded
        qvalues = query_values(list(qrels), config.left)
    else:
        qrels, qvalues, source, notes = ground_truth_for_split(ds, split, config, progress)
        if store:
            store.save_qrels(split, gt_key, qrels, source, notes)
    if not qrels:
        where = ds.gt_path(split, source) if source != "csv" else ds.csv_path(split)
        raise DataFormatError(where, 0, f"{split}: no test queries in the ground truth")
    qkeys = list(qrels)

    # queries
    counts: Counter = Counter()
    qvec, q_ok = _embed_queries(qkeys, qvalues, tables, encoder, ds, config, counts)
    for what, n in sorted(counts.items()):
        notes.append(_field_note("queries", what, n, {}))
    if not q_ok.all():
        notes.append(f"{int((~q_ok).sum())} queries had no usable field and retrieved nothing")

    # corpus
    table, doc_counts = _corpus_table(ds, corpus, tables, encoder, encoder_id, config, progress, store, cache)
    n_unusable = doc_counts.get("unusable documents", 0)
    intended = _intended(ds, corpus)
    for what, n in sorted(doc_counts.items()):
        if what != "unusable documents" and n:
            notes.append(_field_note(corpus, what, n, intended))
    if n_unusable:
        notes.append(f"{corpus}: {n_unusable} documents had no usable field and were left out of the index")
    if not table.ids:
        where = _path_or_none(ds.corpus_path, corpus) or corpus
        raise DataFormatError(where, 0, f"{corpus}: no usable documents to search "
                                        f"({n_unusable} without any usable field)")

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
        metrics=metrics, chance=chance_metrics(qrels, len(table.ids), config.ks),
        seconds=time.perf_counter() - t0, notes=notes, qrels=qrels, run=run,
    )


def _check_encoder_id(encoder_id) -> Optional[str]:
    if encoder_id is not None and (not isinstance(encoder_id, str) or not encoder_id.strip()):
        raise ValueError(f"encoder_id: expected a non-empty string (a digest or name of the encoder) or None, "
                         f"got {encoder_id!r}")
    return encoder_id


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
    *,
    encoder_id: Optional[str] = None,
) -> SplitResult:
    """Run the protocol on one split and return its metrics.

    Args:
        dataset: a `MarqoGSDataset` or its root directory.
        split: "query_0_product_id_0" (or "in_domain", "novel_query", "novel_corpus",
            "zero_shot").
        encoder: `EncoderProtocol`; needed for whatever `embeddings` does not supply.
        embeddings: precomputed tables: a directory or a mapping name ->
            `EmbeddingTable` / (ids, vectors) ("queries", "corpus_1", "corpus_2").
        config: `EvalConfig` (default: the reference protocol).
        retriever: a `RetrieverProtocol` (`index` is called first when it has one) or a
            `SearchFn`; default `ExactRetriever`.
        out_dir: where the ground truth (`qrels/`) and corpus embeddings (`embeddings/`)
            are written, keyed by `encoder_id` (see `evaluate`).
        encoder_id: identifies the encoder in the keys of what is written.

    Example:
        >>> # evaluate_split("marqo_gs_wfash_1m", "in_domain", encoder=my_encoder).metrics["ndcg@10"]
    """
    ds = dataset if isinstance(dataset, MarqoGSDataset) else MarqoGSDataset(dataset)
    config = (config or EvalConfig()).validate()
    store = ArtefactStore(out_dir, resume=False) if out_dir else None
    return _run_split(ds, resolve_split(split), encoder, _check_encoder_id(encoder_id), _as_tables(embeddings), config,
                      retriever, progress, store, _cache if _cache is not None else {})


def _split_list(ds: MarqoGSDataset, splits) -> List[str]:
    if splits == "all":
        out = ds.available_splits()
        if not out:
            raise FileNotFoundError(f"dataset: no split files ({', '.join(SPLITS)}) in {ds.root}")
        return out
    names = [splits] if isinstance(splits, str) else list(splits)
    out = []
    for s in names:
        s = resolve_split(s)
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError(f"splits: expected 'all', a split name or a non-empty list of them, got {splits!r}")
    return out


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
    *,
    encoder_id: Optional[str] = None,
    label: Optional[str] = None,
) -> EvalReport:
    """Run the protocol on one split or all four and write the reports.

    Args:
        dataset, encoder, embeddings, config, retriever: as `evaluate_split`.
        splits: "all" (those present), one split, or a list (names or aliases).
        out_dir: writes `metrics.json`, `metrics.csv`, `ndcg_at_k.png`, per-split
            `splits/<split>.json` and `qrels/<split>.json` (and `runs/<split>.json`
            with save_runs), plus the corpus embeddings in `embeddings/`.
        resume: reuse what an earlier run into the same `out_dir` made with the same
            producer (finished splits, ground truth, corpus embeddings); anything made
            by another encoder, config, data file or table is recomputed, with a log
            line saying why (`gcl_train.evaluation.cache`).
        save_runs: write every split's run; a split reused by `resume` whose run was not
            saved is evaluated again to get it.
        encoder_id: what identifies `encoder` (e.g. a digest of its checkpoint file);
            without it, `resume` cannot check that cached artefacts come from the same
            encoder and reuses them on the caller's word (with a warning).
        label: what was evaluated (a model or checkpoint name), for the plot's title
            and `metrics.json`.

    Returns:
        `EvalReport`; `report.table()` prints the summary.

    Example:
        >>> # evaluate("marqo_gs_wfash_1m", "all", encoder=Encoder.from_checkpoint("ck.pt"),
        >>> #          encoder_id=file_digest("ck.pt"), out_dir="eval", label="ck.pt")
    """
    ds = dataset if isinstance(dataset, MarqoGSDataset) else MarqoGSDataset(dataset)
    config = (config or EvalConfig()).validate()
    encoder_id = _check_encoder_id(encoder_id)
    split_list = _split_list(ds, splits)
    tables = _as_tables(embeddings)
    store = ArtefactStore(out_dir, resume) if out_dir else None
    cache: Dict[str, Tuple[EmbeddingTable, Counter]] = {}
    results: Dict[str, SplitResult] = {}
    for split in tqdm(split_list, desc="splits", unit="split", disable=not progress or len(split_list) < 2):
        key = _split_key(ds, split, config, encoder_id, tables, retriever) if store else None
        prev = store.load_split(split, key, need_run=save_runs) if store else None
        if prev is not None:
            try:
                results[split] = SplitResult(**{**prev, "reused": True})
                continue
            except TypeError as e:
                log.info("%s: evaluating again: the stored result does not fit (%s)", split, e)
        res = _run_split(ds, split, encoder, encoder_id, tables, config, retriever, progress, store, cache)
        results[split] = res
        if store:
            store.save_split(split, key, res.to_dict(), res.run if save_runs else None)
        for note in res.notes:
            log.log(note_level(note), "%s: %s", split, note)
    report = EvalReport(results, config, label=label)
    if out_dir:
        report.files = write_reports(report, out_dir)
    return report
