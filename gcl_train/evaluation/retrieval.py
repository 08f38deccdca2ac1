"""Retrieval: exact blocked inner-product top-k, and the call into any retriever."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from .protocols import RetrieverLike


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


def _search(retriever: RetrieverLike, query_vectors: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray]:
    if hasattr(retriever, "search"):
        ids, scores = retriever.search(query_vectors, k)
    elif callable(retriever):
        ids, scores = retriever(query_vectors, k)
    else:
        raise ValueError(f"retriever: expected an object with .search(query_vectors, k) or a callable, got {type(retriever).__name__}")
    n = query_vectors.shape[0]
    if len(ids) != n:
        raise ValueError(f"retriever: expected {n} result lists, got {len(ids)}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != n:
        raise ValueError(f"retriever: expected scores [Q={n}, k], got shape {scores.shape}")
    for row, got in enumerate(ids):
        m = len(got)
        if m > scores.shape[1]:
            raise ValueError(f"retriever: query {row} has {m} ids but {scores.shape[1]} scores")
        if not np.isfinite(scores[row, :m]).all():
            raise ValueError(f"retriever: query {row} has NaN or infinite scores")
    return ids, scores
