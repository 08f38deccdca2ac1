"""The evaluator's retriever protocol (``gcl_train.evaluation``) answered by a Qdrant index.

``gcl_train.evaluation`` hands a retriever each split's corpus as fused unit vectors (the
evaluation's image 0.9 / title 0.1 fusion) and asks for the top k per query. Here the
corpus goes into a one-field :class:`MultiFieldIndex` (field ``"doc"``) through the
resumable :func:`ingest`, one collection per corpus, so the NDCG the evaluator computes
is what the index returns.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .index import MultiFieldIndex
from .ingest import ArraySource, ingest

FIELD = "doc"


class QdrantRetriever:
    """``index(doc_ids, doc_vectors, corpus)`` then ``search(query_vectors, k)``.

    Args:
        location: as for :class:`MultiFieldIndex` (a directory, ``":memory:"``, a URL).
        prefix: collection name prefix; the corpus name is appended ("eval_corpus_1").
        ef: HNSW beam width (raised to k when k is larger).
        batch_size: documents per ingest batch.
        progress: tqdm bars.
        **index_kwargs: passed to :class:`MultiFieldIndex` (hnsw_m, api_key, ...).

    Example:
        >>> r = QdrantRetriever(":memory:", progress=False)
        >>> r.index(["a", "b"], np.eye(2, dtype=np.float32), corpus="c")
        >>> r.search(np.array([[0.0, 1.0]], np.float32), 1)[0]
        [['b']]
    """

    def __init__(self, location: Any, prefix: str = "eval_", ef: Optional[int] = None,
                 batch_size: int = 2048, progress: bool = True, **index_kwargs: Any):
        self.location = location
        self.prefix = prefix
        self.ef = ef
        self.batch_size = batch_size
        self.progress = progress
        self.index_kwargs = index_kwargs
        self.current: Optional[MultiFieldIndex] = None
        self.reports: Dict[str, Any] = {}

    def index(self, doc_ids: Sequence[str], doc_vectors: np.ndarray, corpus: str = "corpus") -> None:
        self.close()
        vec = np.asarray(doc_vectors)
        if vec.ndim != 2:
            raise ValueError(f"doc_vectors: expected [N, D], got shape {vec.shape}")
        idx = MultiFieldIndex(self.location, self.prefix + corpus, {FIELD: int(vec.shape[1])}, **self.index_kwargs)
        try:
            self.reports[corpus] = ingest(idx, ArraySource(list(doc_ids), {FIELD: vec}),
                                          batch_size=self.batch_size, progress=self.progress)
        except BaseException:
            idx.close()
            raise
        self.current = idx

    def search(self, query_vectors: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray]:
        if self.current is None:
            raise RuntimeError("QdrantRetriever.search: call index(...) first")
        q = np.asarray(query_vectors, dtype=np.float32)
        ef = max(self.ef or 0, int(k)) if self.ef else None
        hits = self.current.search_batch(q, limit=int(k), ef=ef)
        kk = max((len(h) for h in hits), default=0)
        scores = np.full((len(hits), kk), -np.inf, dtype=np.float32)
        ids = []
        for i, row in enumerate(hits):
            ids.append([h.id for h in row])
            scores[i, :len(row)] = [h.score for h in row]
        return ids, scores

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
