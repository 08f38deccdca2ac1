"""The paper's evaluation protocol on MarqoGS splits (GCL_SPEC section 5).

For each split: pick the test queries and their graded ground truth, embed the queries and
the split's whole corpus, retrieve the top k (1000) documents per query, and score the
run with `gcl_train.metrics.ranking_metrics`. Outputs `metrics.json`, `metrics.csv`
(one row per split, every metric) and `ndcg_at_k.png`.

Protocol details, as the reference evaluation (marqo-ai/GCL `evals/eval_gs_v1.py`) does them:

* Ground truth (`EvalConfig.ground_truth`):
  "test" / "dev" read `<split>_gt_test.json` / `_gt_dev.json` and use its queries and
  relevances (falling back to "csv" with a warning when the file is absent; if the file
  has more than `n_queries` queries they are sampled as below, in file order).
  "csv" rebuilds it from the split CSV in three streaming passes: relevance is the
  `weight_key` column (score_linear) rescaled per file to
  int((s - min) / (max - min) * 99 + 1) (all 1 when the column has one value);
  `n_queries` queries (2000; -1 for all) are drawn without replacement with probability
  proportional to their summed relevance by `numpy.random.RandomState(seed).choice`
  over the query keys in sorted order (seed 1), which is what pandas' `sample(...,
  weights=..., random_state=1)` does in the reference, so the same queries come out;
  each query keeps its `top_k` documents by relevance.
* Query keys are the query text (one left field) or the reference's join of the left
  field values with `_{!@#~}_`; the same keys index precomputed query embeddings.
* Embeddings: every field of `left` / `right` is encoded, L2-normalised, and fused by the
  field weights with missing fields at weight 0 and the rest renormalised (numpy twin
  `gcl_train.data.fuse_embeddings`). Documents without any present field are counted
  (`n_docs_unusable`) and left out of the index.
* Retrieval: exact inner-product (cosine) top k over the split's corpus, in query x
  document blocks so memory stays O(block * (D + k)), or any `Retriever`.

Encoder protocol (what `encoder=` must be):

    encoder(values: list, kind: str) -> np.ndarray [N, D]

`kind` is "txt" (values are str) or "img" (values are RGB PIL images). Rows need not be
normalised; the evaluator normalises. `gcl_train.models.Encoder` implements it.

Precomputed embeddings (what `embeddings=` may be): a directory, or a mapping from table
name to `EmbeddingTable` / (ids, vectors). Tables: "queries" (ids = query keys),
"corpus_1", "corpus_2" (ids = product ids); vectors are fused, one row per id. On disk a
table `<name>` is `<name>.npy` (float32 or float16 [N, D]) plus `<name>.ids.json` (a JSON
list of N strings). Anything not supplied is encoded with `encoder`. With `out_dir`, the
corpus embeddings the evaluator computes are written in this format to
`out_dir/embeddings/`, so a later run can pass that folder back.

Retriever protocol (what `retriever=` may be): an object with
`search(query_vectors [Q, D] float32, k) -> (ids: Q lists of doc ids, scores [Q, k'])`
and optionally `index(doc_ids, doc_vectors, corpus=name)`, called once per split before
searching; or a plain callable `retriever(query_vectors, k)` with the same result.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .data.errors import DataFormatError
from .data.fields import (
    DEFAULT_LEFT,
    DEFAULT_RIGHT,
    FieldSpecs,
    check_field_specs,
    fuse_embeddings,
    is_missing,
)
from .data.marqo_gs import (
    QUERY_KEY_SEPARATOR,
    SPLIT_CORPUS,
    SPLIT_NAMES,
    SPLITS,
    MarqoGSDataset,
    ReadStats,
    iter_pairs,
    query_key,
    resolve_split,
    split_query_key,
)
from .fileio import atomic_write
from .metrics import REFERENCE_KS, chance_metrics, metric_names, ranking_metrics

log = logging.getLogger(__name__)

Encoder = Callable[[list, str], np.ndarray]
GT_SOURCES = ("test", "dev", "csv")
SUMMARY_METRICS = ("ndcg@10", "err", "rbp@0.9")


# ----------------------------------------------------------------------------------------
# configuration and results
# ----------------------------------------------------------------------------------------

@dataclass
class EvalConfig:
    """Protocol settings (defaults: the paper's).

    Args:
        left: query fields (default: query text).
        right: document fields (default: image 0.9, title 0.1).
        n_queries: test queries per split (-1: all).
        seed: sampling seed.
        top_k: documents retrieved per query, and ground-truth depth.
        ks: metric cut-offs (default: the reference's 1..1000 list).
        weight_key: the CSV score column turned into relevance.
        ground_truth: "test", "dev" or "csv" (see the module docstring).
        batch_size: values per encoder call.
        query_block, doc_block: block sizes of exact retrieval.
        check_images: treat absent image files as missing fields (one stat per doc).
        dtype: storage dtype of corpus embeddings ("float32" or "float16").
    """

    left: FieldSpecs = DEFAULT_LEFT
    right: FieldSpecs = DEFAULT_RIGHT
    n_queries: int = 2000
    seed: int = 1
    top_k: int = 1000
    ks: Tuple[int, ...] = REFERENCE_KS
    weight_key: str = "score_linear"
    ground_truth: str = "test"
    batch_size: int = 256
    query_block: int = 1024
    doc_block: int = 65536
    check_images: bool = True
    dtype: str = "float32"

    def validate(self) -> "EvalConfig":
        self.left = check_field_specs("left", self.left)
        self.right = check_field_specs("right", self.right)
        for name in ("top_k", "batch_size", "query_block", "doc_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if isinstance(self.n_queries, bool) or not isinstance(self.n_queries, int) or (
            self.n_queries < 1 and self.n_queries != -1
        ):
            raise ValueError(f"n_queries: expected a positive int or -1 (all), got {self.n_queries!r}")
        if self.ground_truth not in GT_SOURCES:
            raise ValueError(f"ground_truth: expected one of {GT_SOURCES}, got {self.ground_truth!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype: expected 'float32' or 'float16', got {self.dtype!r}")
        ks = tuple(sorted(set(int(k) for k in self.ks)))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks: expected positive cut-offs, got {self.ks!r}")
        self.ks = ks
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["left"] = [asdict(s) for s in self.left]
        d["right"] = [asdict(s) for s in self.right]
        d["ks"] = list(self.ks)
        return d


@dataclass
class SplitResult:
    """Metrics and counts of one split (`qrels` / `run` stay in memory, not in JSON)."""

    split: str
    name: str
    corpus: str
    gt_source: str
    n_queries: int
    n_docs: int
    n_docs_unusable: int
    n_gt_docs_not_in_corpus: int
    metrics: Dict[str, float]
    chance: Dict[str, float]
    seconds: float
    notes: List[str] = field(default_factory=list)
    qrels: Dict[str, Dict[str, int]] = field(default_factory=dict, repr=False)
    run: Dict[str, Dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("qrels", "run")}
        return d


@dataclass
class EvalReport:
    """All evaluated splits; `files` lists what was written."""

    results: Dict[str, SplitResult]
    config: EvalConfig
    files: Dict[str, str] = field(default_factory=dict)

    def table(self, metrics: Sequence[str] = ("ndcg@10",) + SUMMARY_METRICS[1:] + ("recall@1000",)) -> str:
        """A fixed-width text table: one row per split."""
        cols = ["split", "queries", "docs"] + list(metrics)
        rows = [cols]
        for r in self.results.values():
            rows.append([r.name, str(r.n_queries), str(r.n_docs)] + [f"{r.metrics.get(m, float('nan')):.4f}" for m in metrics])
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


# ----------------------------------------------------------------------------------------
# embeddings on disk
# ----------------------------------------------------------------------------------------

@dataclass
class EmbeddingTable:
    """Vectors keyed by id: `ids[i]` owns `vectors[i]`.

    Shape:
        vectors [N, D] float32 or float16 (may be a read-only memmap).
    """

    ids: List[str]
    vectors: np.ndarray

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        v = self.vectors
        if not isinstance(v, np.ndarray) or v.ndim != 2:
            raise ValueError(f"vectors: expected a 2-D numpy array [N, D], got {getattr(v, 'shape', type(v))}")
        if v.shape[0] != len(self.ids):
            raise ValueError(f"vectors: expected {len(self.ids)} rows (one per id), got {v.shape[0]}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids: expected unique ids")
        self._index = None

    def index_of(self) -> Dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index

    def lookup(self, ids: Sequence[str], what: str = "ids") -> np.ndarray:
        """Rows for `ids` (KeyError naming the first few absent ids)."""
        idx = self.index_of()
        missing = [i for i in ids if i not in idx]
        if missing:
            raise KeyError(f"{what}: {len(missing)} ids have no precomputed embedding, e.g. {missing[:3]}")
        return np.asarray(self.vectors[[idx[i] for i in ids]], dtype=np.float32)

    def save(self, directory: str, name: str) -> Tuple[str, str]:
        """Write `<name>.npy` and `<name>.ids.json` atomically; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        npy = os.path.join(directory, name + ".npy")
        ids = os.path.join(directory, name + ".ids.json")
        atomic_write(npy, lambda f: np.save(f, np.asarray(self.vectors)), binary=True)
        atomic_write(ids, lambda f: json.dump(self.ids, f))
        return npy, ids

    @classmethod
    def load(cls, directory: str, name: str, mmap: bool = True) -> "EmbeddingTable":
        """Read `<name>.npy` (memory-mapped) and `<name>.ids.json`."""
        npy = os.path.join(directory, name + ".npy")
        idp = os.path.join(directory, name + ".ids.json")
        for p in (npy, idp):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"embeddings: {p} not found")
        vectors = np.load(npy, mmap_mode="r" if mmap else None)
        with open(idp, "r", encoding="utf-8") as f:
            try:
                ids = json.load(f)
            except json.JSONDecodeError as e:
                raise DataFormatError(idp, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(ids, list):
            raise DataFormatError(idp, 0, f"expected a JSON list of ids, got {type(ids).__name__}")
        try:
            return cls(ids, vectors)
        except ValueError as e:
            raise DataFormatError(npy, 0, str(e)) from None


def load_embeddings(directory: str) -> Dict[str, EmbeddingTable]:
    """Every `<name>.npy` + `<name>.ids.json` table in a directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"embeddings: not a directory: {directory}")
    out = {}
    for fn in sorted(os.listdir(directory)):
        if fn.endswith(".npy") and os.path.isfile(os.path.join(directory, fn[:-4] + ".ids.json")):
            out[fn[:-4]] = EmbeddingTable.load(directory, fn[:-4])
    return out


def _as_tables(embeddings) -> Dict[str, EmbeddingTable]:
    if embeddings is None:
        return {}
    if isinstance(embeddings, (str, os.PathLike)):
        return load_embeddings(os.fspath(embeddings))
    if not isinstance(embeddings, Mapping):
        raise ValueError(f"embeddings: expected a directory or a mapping name -> EmbeddingTable, got {type(embeddings).__name__}")
    out = {}
    for name, t in embeddings.items():
        if isinstance(t, EmbeddingTable):
            out[name] = t
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            out[name] = EmbeddingTable(list(t[0]), np.asarray(t[1]))
        else:
            raise ValueError(f"embeddings[{name!r}]: expected an EmbeddingTable or (ids, vectors), got {type(t).__name__}")
    return out


class _RowWriter:
    """Append float rows to a raw temp file, then turn it into a `.npy` (flat memory)."""

    def __init__(self, directory: str, name: str, dtype: str):
        self.dir, self.name, self.dtype = directory, name, np.dtype(dtype)
        os.makedirs(directory, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".raw", dir=directory)
        self.f = os.fdopen(fd, "wb")
        self.n = 0
        self.d = None

    def append(self, rows: np.ndarray) -> None:
        if self.d is None:
            self.d = rows.shape[1]
        self.f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.n += rows.shape[0]

    def finish(self, ids: List[str]) -> EmbeddingTable:
        self.f.close()
        d = self.d or 1
        final = os.path.join(self.dir, self.name + ".npy")
        fd, tmp_npy = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp.npy", dir=self.dir)
        os.close(fd)
        try:
            mm = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=self.dtype, shape=(self.n, d))
            row_bytes = d * self.dtype.itemsize
            step = max(1, (64 << 20) // max(row_bytes, 1))
            with open(self.tmp, "rb") as raw:
                for s in range(0, self.n, step):
                    e = min(self.n, s + step)
                    mm[s:e] = np.frombuffer(raw.read((e - s) * row_bytes), dtype=self.dtype).reshape(e - s, d)
            mm.flush()
            del mm
            os.replace(tmp_npy, final)
        finally:
            for p in (tmp_npy, self.tmp):
                if os.path.exists(p):
                    os.unlink(p)
        atomic_write(os.path.join(self.dir, self.name + ".ids.json"), lambda f: json.dump(ids, f))
        return EmbeddingTable.load(self.dir, self.name)

    def abort(self):
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


# ----------------------------------------------------------------------------------------
# encoding
# ----------------------------------------------------------------------------------------

class RandomEncoder:
    """A chance baseline: every distinct value gets its own random unit vector.

    Deterministic for (seed, kind, value); images hash their pixels. Retrieval with it is
    a uniformly random ranking, so its metrics should match `metrics.chance_metrics`.

    Example:
        >>> enc = RandomEncoder(dim=8)
        >>> bool((enc(["a"], "txt") == enc(["a"], "txt")).all()), enc(["a", "b"], "txt").shape
        (True, (2, 8))
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self.dim, self.seed = dim, int(seed)

    def __call__(self, values: list, kind: str) -> np.ndarray:
        import hashlib

        out = np.empty((len(values), self.dim), np.float32)
        for i, v in enumerate(values):
            raw = v.encode("utf-8") if isinstance(v, str) else (v.tobytes() if hasattr(v, "tobytes") else repr(v).encode())
            h = hashlib.blake2b(raw, digest_size=8, key=f"{self.seed}:{kind}".encode()).digest()
            x = np.random.default_rng(int.from_bytes(h, "little")).standard_normal(self.dim)
            out[i] = x / np.linalg.norm(x)
        return out


def _call_encoder(encoder: Encoder, values: list, kind: str) -> np.ndarray:
    out = np.asarray(encoder(values, kind), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(values):
        raise ValueError(f"encoder: expected an array [N={len(values)}, D] for kind {kind!r}, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"encoder: returned NaN or infinite values for kind {kind!r}")
    return out


def encode_records(
    records: Sequence[Mapping[str, Any]],
    specs: FieldSpecs,
    encoder: Encoder,
    dataset: Optional[MarqoGSDataset] = None,
    check_images: bool = True,
    counts: Optional[Counter] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Fused unit vectors for a batch of records (dicts of field values).

    Missing fields (see `gcl_train.data.is_missing`; for images also an absent or
    undecodable file) get weight 0 and the rest are renormalised.

    Shape:
        returns vectors [N, D] float32 (zero rows for unusable records) and usable [N] bool.
    """
    n = len(records)
    f = len(specs)
    present = np.zeros((n, f), dtype=bool)
    per_field: List[Optional[np.ndarray]] = []
    dim = None
    for j, spec in enumerate(specs):
        vals, rows = [], []
        for i, rec in enumerate(records):
            v = rec.get(spec.key)
            if is_missing(v):
                if counts is not None:
                    counts[f"missing {spec.key}"] += 1
                continue
            if spec.kind == "img":
                if dataset is None:
                    raise ValueError("dataset: needed to load images (field kind 'img')")
                if check_images and not dataset.image_available(v):
                    if counts is not None:
                        counts[f"absent image file ({spec.key})"] += 1
                    continue
                try:
                    v = dataset.load_image(v)
                except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
                    if counts is not None:
                        counts[f"unreadable image ({spec.key})"] += 1
                    log.debug("unreadable image %r: %s", rec.get(spec.key), e)
                    continue
            else:
                v = str(v)
            vals.append(v)
            rows.append(i)
        if vals:
            emb = _call_encoder(encoder, vals, spec.kind)
            if dim is None:
                dim = emb.shape[1]
            elif emb.shape[1] != dim:
                raise ValueError(f"encoder: field {spec.key!r} gave dimension {emb.shape[1]}, others {dim}")
            full = np.zeros((n, emb.shape[1]), dtype=np.float32)
            full[rows] = emb
            present[rows, j] = True
            per_field.append(full)
        else:
            per_field.append(None)
    if dim is None:
        return np.zeros((n, 0), dtype=np.float32), np.zeros(n, dtype=bool)
    stacked = np.stack([p if p is not None else np.zeros((n, dim), np.float32) for p in per_field], axis=1)
    w = np.array([s.weight for s in specs], dtype=np.float64)[None, :] * present
    wsum = w.sum(axis=1, keepdims=True)
    usable = wsum[:, 0] > 0
    w = np.where(wsum > 0, w / np.where(wsum > 0, wsum, 1.0), 0.0)
    return fuse_embeddings(stacked, w), usable


def _batches(it: Iterable, size: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def embed_corpus(
    dataset: MarqoGSDataset,
    corpus: str,
    encoder: Encoder,
    specs: FieldSpecs = DEFAULT_RIGHT,
    batch_size: int = 256,
    check_images: bool = True,
    out_dir: Optional[str] = None,
    dtype: str = "float32",
    progress: bool = True,
    counts: Optional[Counter] = None,
) -> EmbeddingTable:
    """Stream a corpus file and encode every usable product into one table.

    With `out_dir`, rows go to disk as they are made and the result is a memory-mapped
    `out_dir/<corpus>.npy` (+ ids), so memory stays flat; otherwise it is in memory.
    Products with no usable field are counted in `counts["unusable documents"]`.
    """
    from tqdm.auto import tqdm

    specs = check_field_specs("specs", specs)
    counts = counts if counts is not None else Counter()
    ids: List[str] = []
    writer = _RowWriter(out_dir, corpus, dtype) if out_dir else None
    chunks: List[np.ndarray] = []
    bar = tqdm(desc=f"encode {corpus}", unit="doc", disable=not progress)
    try:
        for batch in _batches(dataset.iter_corpus(corpus), batch_size):
            vecs, usable = encode_records([doc for _, doc in batch], specs, encoder, dataset, check_images, counts)
            bad = int((~usable).sum())
            if bad:
                counts["unusable documents"] += bad
            keep = np.flatnonzero(usable)
            ids.extend(batch[i][0] for i in keep)
            if len(keep):
                if writer:
                    writer.append(vecs[keep])
                else:
                    chunks.append(vecs[keep].astype(dtype))
            bar.update(len(batch))
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        bar.close()
    if writer:
        return writer.finish(ids)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=dtype)
    return EmbeddingTable(ids, vectors)


# ----------------------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------------------

def _topk_rows(s: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Row-wise top k of a score matrix, sorted descending (ties: lower column first)."""
    if k < s.shape[1]:
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(s.shape[1]), s.shape).copy()
    vals = np.take_along_axis(s, idx, axis=1)
    # lexsort: by score descending, then column ascending, so equal scores order deterministically
    order = np.lexsort((idx, -vals), axis=1)
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


class ExactRetriever:
    """Exact inner-product top-k over a corpus, in blocks (bounded memory).

    Memory beyond the corpus: O(query_block * (doc_block + 2k)) scores. Vectors should be
    unit rows (cosine similarity). numpy on the CPU; `device="cuda"` uses torch there.

    Example:
        >>> r = ExactRetriever(["a", "b"], np.eye(2, dtype=np.float32))
        >>> r.search(np.array([[0.0, 1.0]], np.float32), 1)[0]
        [['b']]
    """

    def __init__(self, doc_ids: Sequence[str], doc_vectors: np.ndarray, query_block: int = 1024,
                 doc_block: int = 65536, device: str = "cpu", progress: bool = False):
        if len(doc_ids) != doc_vectors.shape[0]:
            raise ValueError(f"doc_vectors: expected {len(doc_ids)} rows (one per id), got {doc_vectors.shape[0]}")
        for name, v in (("query_block", query_block), ("doc_block", doc_block)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.doc_ids = list(doc_ids)
        self.doc_vectors = doc_vectors
        self.query_block = query_block
        self.doc_block = doc_block
        self.device = str(device)
        self.progress = progress

    def _doc_block(self, ds: int) -> np.ndarray:
        return np.array(self.doc_vectors[ds: ds + self.doc_block], dtype=np.float32, copy=True)

    def search(self, query_vectors: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray]:
        """Top-k doc ids and scores per query (k capped at the corpus size).

        Shape:
            query_vectors [Q, D]; returns Q lists of k ids and scores [Q, k] float32.
        """
        from tqdm.auto import tqdm

        q = np.asarray(query_vectors, dtype=np.float32)
        n = len(self.doc_ids)
        if q.ndim != 2 or (n and q.shape[1] != self.doc_vectors.shape[1]):
            raise ValueError(f"query_vectors: expected [Q, D={self.doc_vectors.shape[1]}], got {q.shape}")
        k = min(int(k), n)
        if k == 0 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])], np.zeros((q.shape[0], 0), np.float32)
        if self.device != "cpu":
            all_s, all_i = self._search_torch(q, k)
        else:
            all_s = np.empty((q.shape[0], k), np.float32)
            all_i = np.empty((q.shape[0], k), np.int64)
            n_qb = math.ceil(q.shape[0] / self.query_block)
            n_db = math.ceil(n / self.doc_block)
            single = self._doc_block(0) if n_db == 1 else None
            bar = tqdm(total=n_qb * n_db, desc="retrieve", unit="block", disable=not self.progress)
            for qs in range(0, q.shape[0], self.query_block):
                qb = q[qs: qs + self.query_block]
                best_s = best_i = None
                for ds in range(0, n, self.doc_block):
                    block = single if single is not None else self._doc_block(ds)
                    ts, ti = _topk_rows(qb @ block.T, k)
                    ti += ds
                    if best_s is None:
                        best_s, best_i = ts, ti
                    else:
                        best_s, pos = _topk_rows(np.concatenate([best_s, ts], axis=1), k)
                        best_i = np.take_along_axis(np.concatenate([best_i, ti], axis=1), pos, axis=1)
                    bar.update(1)
                all_s[qs: qs + len(qb)] = best_s
                all_i[qs: qs + len(qb)] = best_i
            bar.close()
        ids = [[self.doc_ids[j] for j in row] for row in all_i.tolist()]
        return ids, all_s

    def _search_torch(self, q: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        dev = torch.device(self.device)
        n = len(self.doc_ids)
        all_s = np.empty((q.shape[0], k), np.float32)
        all_i = np.empty((q.shape[0], k), np.int64)
        with torch.no_grad():
            for qs in range(0, q.shape[0], self.query_block):
                qt = torch.from_numpy(q[qs: qs + self.query_block]).to(dev)
                best_s = best_i = None
                for ds in range(0, n, self.doc_block):
                    dt = torch.from_numpy(self._doc_block(ds)).to(dev)
                    ts, ti = torch.topk(qt @ dt.T, min(k, dt.shape[0]), dim=1)
                    ti = ti + ds
                    if best_s is None:
                        best_s, best_i = ts, ti
                    else:
                        best_s, pos = torch.topk(torch.cat([best_s, ts], 1), k, dim=1)
                        best_i = torch.gather(torch.cat([best_i, ti], 1), 1, pos)
                all_s[qs: qs + qt.shape[0]] = best_s.cpu().numpy()
                all_i[qs: qs + qt.shape[0]] = best_i.cpu().numpy()
        return all_s, all_i


def _search(retriever, query_vectors: np.ndarray, k: int):
    if hasattr(retriever, "search"):
        ids, scores = retriever.search(query_vectors, k)
    elif callable(retriever):
        ids, scores = retriever(query_vectors, k)
    else:
        raise ValueError(f"retriever: expected an object with .search(query_vectors, k) or a callable, got {type(retriever).__name__}")
    scores = np.asarray(scores, dtype=np.float64)
    if len(ids) != query_vectors.shape[0]:
        raise ValueError(f"retriever: expected {query_vectors.shape[0]} result lists, got {len(ids)}")
    return ids, scores


# ----------------------------------------------------------------------------------------
# ground truth and query sampling
# ----------------------------------------------------------------------------------------

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
    from tqdm.auto import tqdm

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
    lkeys = [s.key for s in config.left]
    notes: List[str] = []
    if config.ground_truth in ("test", "dev"):
        try:
            gt = dataset.ground_truth(split, config.ground_truth)
        except FileNotFoundError:
            notes.append(f"no {split}_gt_{config.ground_truth}.json; ground truth rebuilt from the CSV")
            log.warning("%s: %s", split, notes[-1])
        else:
            keys = list(gt)
            chosen = sample_queries(keys, [sum(gt[k].values()) for k in keys], config.n_queries, config.seed) \
                if config.n_queries != -1 and config.n_queries < len(keys) else keys
            qrels = {}
            for k in chosen:
                top = sorted(gt[k].items(), key=lambda t: -t[1])[: config.top_k]
                qrels[k] = dict(top)
            values = {k: dict(zip(lkeys, split_query_key(k, len(lkeys)))) for k in chosen}
            return qrels, values, config.ground_truth, notes
    stats = ReadStats()
    qrels, values = ground_truth_from_csv(
        dataset.csv_path(split), config.left, config.weight_key, config.n_queries, config.top_k,
        config.seed, progress, stats,
    )
    if stats.n_skipped:
        notes.append(stats.summary())
    return qrels, values, "csv", notes


# ----------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------

def evaluate_split(
    dataset: Union[MarqoGSDataset, str],
    split: str,
    encoder: Optional[Encoder] = None,
    embeddings=None,
    config: Optional[EvalConfig] = None,
    retriever=None,
    out_dir: Optional[str] = None,
    progress: bool = True,
    _cache: Optional[Dict[str, Tuple[EmbeddingTable, Counter]]] = None,
) -> SplitResult:
    """Run the protocol on one split and return its metrics (writes nothing but caches).

    Args:
        dataset: a `MarqoGSDataset` or its root directory.
        split: "query_0_product_id_0" (or "in_domain", "novel_query", "novel_corpus",
            "zero_shot").
        encoder: `encoder(values, kind) -> [N, D]` (module docstring); needed for
            whatever `embeddings` does not supply.
        embeddings: precomputed tables (module docstring).
        config: `EvalConfig` (default: the paper's protocol).
        retriever: `Retriever` (module docstring); default `ExactRetriever`.
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
    encoder: Optional[Encoder] = None,
    embeddings=None,
    config: Optional[EvalConfig] = None,
    retriever=None,
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
    from tqdm.auto import tqdm

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


# ----------------------------------------------------------------------------------------
# reports
# ----------------------------------------------------------------------------------------

def _versions() -> Dict[str, str]:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch",):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def write_reports(report: EvalReport, out_dir: str) -> Dict[str, str]:
    """Write `metrics.json`, `metrics.csv` and `ndcg_at_k.png` atomically; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    names = list(metric_names(report.config.ks))
    payload = {
        "config": report.config.to_dict(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": {r.name: {m: r.metrics.get(m) for m in SUMMARY_METRICS} for r in report.results.values()},
        "splits": {s: r.to_dict() for s, r in report.results.items()},
    }
    paths = {
        "json": os.path.join(out_dir, "metrics.json"),
        "csv": os.path.join(out_dir, "metrics.csv"),
        "png": os.path.join(out_dir, "ndcg_at_k.png"),
    }
    atomic_write(paths["json"], lambda f: json.dump(payload, f, indent=1))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["split", "name", "corpus", "gt_source", "n_queries", "n_docs", "n_docs_unusable"] + names)
        for s, r in report.results.items():
            w.writerow([s, r.name, r.corpus, r.gt_source, r.n_queries, r.n_docs, r.n_docs_unusable]
                       + [repr(float(r.metrics.get(m, float("nan")))) for m in names])

    atomic_write(paths["csv"], write_csv)
    atomic_write(paths["png"], lambda f: _plot_ndcg(report, f), binary=True)
    return paths


def _plot_ndcg(report: EvalReport, f) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ks = list(report.config.ks)
    for r in report.results.values():
        ax.plot(ks, [r.metrics.get(f"ndcg@{k}", float("nan")) for k in ks], marker="o", ms=3, label=r.name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("NDCG@k")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("NDCG@k per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f, format="png")
