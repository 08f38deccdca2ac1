"""``MultiFieldIndex``: multi-field documents in Qdrant, ranked by weighted field similarity.

How a weighted search is answered (measured choice, see docs/qdrant.md): each point
stores its L2-normalised field vectors as named vectors plus, with several fields, one
extra named vector (Dot distance):

* ``mode="weighted"``: ``_concat = [d_1; ...; d_F]``. A query ``{f: q_f}`` with weights
  ``w_f`` becomes ``[w_1 q_1; ...; w_F q_F]``, whose dot product with ``_concat`` is
  exactly ``sum_f w_f cos(q_f, d_f)``: one HNSW search ranks by the weighted sum, the score
  is exact, and weights can change on every query. A field with weight 0 (or absent from
  the query) contributes zeros.
* ``mode="fused"``: ``_fused = normalise(sum_f a_f d_f)`` with the weights ``a_f`` fixed at
  build time, the document fusion the evaluation uses; a query is one vector and the
  score is ``cos(q, _fused)``.

Per-field vectors serve single-field search in fused mode (and get their own HNSW graph
with ``index_fields=True``), and come back from ``retrieve(..., with_vectors=True)``.

``quantization="int8"`` (opt-in) also keeps an int8 copy of the main vector (``_concat``,
``_fused``, or a one-field collection's field): the graph search compares int8 codes,
then ``oversampling x limit`` candidates are rescored with the float32 vectors, so the
returned scores are still exact and only the candidate set can differ. Per-field graphs
(``index_fields=True``) stay float32.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .backends import Backend, open_backend
from .backends.base import PAYLOAD_INDEX_KINDS
from .errors import CollectionNotFoundError, SchemaMismatchError
from .filters import to_filter
from .ids import check_ids, check_on_duplicate, dedupe, point_ids
from .schema import (
    DEFAULT_HNSW_EF,
    DEFAULT_OVERSAMPLING,
    ID_KEY,
    IndexSchema,
    validate_fields,
    validate_oversampling,
)
from .vectors import (
    check_field_weights,
    check_payloads,
    doc_vectors,
    query_fields,
    weighted_query,
    weighted_row,
)

log = logging.getLogger(__name__)

# Points per backend request: bounds the size of one REST body / one WAL record.
DEFAULT_WRITE_BATCH = 512
# Queries per backend request in search_batch.
QUERY_BATCH = 256


class Hit(NamedTuple):
    """One search result: the caller's id, the weighted score, the caller's payload."""

    id: str
    score: float
    payload: Dict[str, Any]


class Record(NamedTuple):
    """A stored document: id, payload and (if asked for) its unit field vectors."""

    id: str
    payload: Dict[str, Any]
    vectors: Optional[Dict[str, np.ndarray]]


def write_bytes(vecs: Mapping[str, np.ndarray], mask: Mapping[str, Optional[np.ndarray]],
                payload_bytes: int, n: int) -> int:
    """Disk bytes an upsert may take on the embedded store: a generous estimate.

    Measured with qdrant-edge 0.9 (20,000 points, 2 x 128 dims): the write-ahead log took
    1.3x the float32 vector bytes and the segment 1.07x, plus about 200 bytes of bookkeeping
    per point; payloads go to both. 3x and 256 bytes leave room for the engine's growth steps.
    """
    vec = 0
    for name, v in vecs.items():
        m = mask.get(name)
        rows = v.shape[0] if m is None else int(m.sum())
        vec += rows * v.shape[1] * 4
    return 3 * vec + 3 * payload_bytes + 256 * n


def _check_int(arg: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{arg}: expected an int >= {lo}, got {v!r}")
    return int(v)


class MultiFieldIndex:
    """Documents with several embedded fields in one Qdrant collection.

    Args:
        location: a directory (embedded Qdrant Edge store, the default kind), ``":memory:"``
            (qdrant-client local mode), or ``http(s)://host:port`` (a Qdrant server or cluster).
        collection: collection name (letters, digits, ``_ . -``).
        fields: ``{name: dim}`` to create the collection, or to check an existing one
            against; None opens an existing collection with its stored schema.
        mode: "weighted" (query-time weights, default) or "fused" (weights fixed at build).
        fused_weights: ``{field: weight}`` for mode "fused" (default: equal).
        hnsw_m, hnsw_ef_construct: HNSW graph parameters (fixed at creation).
        index_fields: also build an HNSW graph per field (single-field search without the
            concatenated graph; costs build time).
        quantization: None (default: unquantised on create, the stored setting on reopen),
            ``"int8"`` (int8 scalar quantisation of the main vector: about +1 byte per
            dimension per point; 2.5x faster search at 100k docs, same recall, see
            docs/qdrant.md), or
            ``"none"`` (insist on an unquantised store). Fixed at creation. qdrant-client
            local mode stores the setting but searches exactly, so it has no effect there.
        ef: default HNSW beam width at search time.
        oversampling: default candidates per hit rescored after a quantised search
            (a number >= 1; ignored without quantisation and by ``exact=True``).
        api_key, timeout, retries, backoff: for a server: API key (never logged), request
            timeout in seconds, retries of transient failures, first backoff delay in seconds.
        write_batch_size: points per write request.
        disk_check: embedded store: before each create, upsert and optimize, check that the
            disk has room for an estimate of the write (plus 32 MiB for the engine's
            preallocated files) and raise :class:`InsufficientSpaceError` otherwise, instead
            of the engine dying with SIGBUS on a full disk. False skips the check.

    Example:
        >>> import numpy as np
        >>> index = MultiFieldIndex(":memory:", "products", fields={"title": 4, "image": 4})
        >>> index.upsert(["a", "b"], {"title": np.eye(4)[:2], "image": np.eye(4)[2:]})
        2
        >>> index.search({"title": [1, 0, 0, 0], "image": [0, 0, 1, 0]},
        ...              field_weights={"title": 0.1, "image": 0.9}, limit=1)[0].id
        'a'
        >>> index.close()
    """

    def __init__(
        self,
        location: Any,
        collection: str,
        fields: Optional[Mapping[str, int]] = None,
        *,
        mode: Optional[str] = None,
        fused_weights: Optional[Mapping[str, float]] = None,
        hnsw_m: Optional[int] = None,
        hnsw_ef_construct: Optional[int] = None,
        index_fields: Optional[bool] = None,
        quantization: Optional[str] = None,
        ef: int = DEFAULT_HNSW_EF,
        oversampling: float = DEFAULT_OVERSAMPLING,
        api_key: Optional[str] = None,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        write_batch_size: int = DEFAULT_WRITE_BATCH,
        disk_check: bool = True,
    ):
        self.ef = _check_int("ef", ef)
        self.oversampling = validate_oversampling(oversampling)
        self.write_batch_size = _check_int("write_batch_size", write_batch_size)
        self._backend: Optional[Backend] = None
        backend = open_backend(location, collection, api_key=api_key, timeout=timeout,
                               retries=retries, backoff=backoff, disk_check=disk_check)
        try:
            stored = backend.read_schema()
            explicit = {
                "mode": mode is not None, "fused_weights": fused_weights is not None,
                "hnsw_m": hnsw_m is not None, "hnsw_ef_construct": hnsw_ef_construct is not None,
                "index_fields": index_fields is not None,
                "quantization": quantization is not None,
            }
            if stored is None:
                if fields is None:
                    raise CollectionNotFoundError(
                        f"collection {collection!r} does not exist in {backend.describe()}; pass "
                        f"fields={{name: dim, ...}} to create it"
                    )
                schema = IndexSchema.build(fields, mode or "weighted", fused_weights, hnsw_m,
                                           hnsw_ef_construct, index_fields, quantization)
                backend.create(schema)
            else:
                if mode is not None and mode != stored.mode:
                    raise SchemaMismatchError(
                        f"collection {collection!r} exists with mode {stored.mode!r}, requested {mode!r}; "
                        f"existing data is never dropped implicitly: use another collection name"
                    )
                want = stored.fields if fields is None else validate_fields(fields)
                if dict(want) != dict(stored.fields):
                    raise SchemaMismatchError(
                        f"collection {collection!r} exists with a different schema: fields: stored "
                        f"{dict(stored.fields)}, requested {dict(want)}. Existing data is never "
                        f"dropped implicitly: open it with fields=None to use the stored schema, "
                        f"or use another collection name."
                    )
                fw = fused_weights
                if fw is None and stored.fused_weights is not None:
                    fw = dict(stored.fused_weights)
                requested = IndexSchema.build(
                    dict(want), stored.mode, fw,
                    stored.hnsw_m if hnsw_m is None else hnsw_m,
                    stored.hnsw_ef_construct if hnsw_ef_construct is None else hnsw_ef_construct,
                    stored.index_fields if index_fields is None else index_fields,
                    stored.quantization if quantization is None else quantization,
                )
                requested.check_compatible(stored, collection, explicit)
                schema = stored
                backend.open(schema)
        except BaseException:
            backend.close()
            raise
        self._backend = backend
        self.schema: IndexSchema = schema
        self.collection = collection
        self.kind = backend.kind

    # -- basics ----------------------------------------------------------------------------
    @property
    def fields(self) -> Dict[str, int]:
        """``{field: dim}`` in storage order."""
        return dict(self.schema.fields)

    @property
    def mode(self) -> str:
        return self.schema.mode

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError(f"MultiFieldIndex {self.collection!r} is closed")
        return self._backend

    def __repr__(self) -> str:
        where = self._backend.describe() if self._backend is not None else "closed"
        q = "" if self.schema.quantization is None else f", quantization={self.schema.quantization!r}"
        return (f"MultiFieldIndex(collection={self.collection!r}, {where}, fields={self.fields}, "
                f"mode={self.mode!r}{q})")

    def __enter__(self) -> "MultiFieldIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Flush and release the store (idempotent)."""
        if self._backend is not None:
            b, self._backend = self._backend, None
            b.close()

    def flush(self) -> None:
        """Make every write so far durable on disk (embedded store)."""
        self.backend.flush()

    def optimize(self) -> None:
        """Build the HNSW index now (embedded store) or wait for the server to finish indexing.

        Searches are correct before this (an exact scan), only slower.
        """
        self.backend.optimize()

    # -- writes ----------------------------------------------------------------------------
    def upsert(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, Any],
        payloads: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
        present: Optional[Mapping[str, Any]] = None,
        on_duplicate: str = "error",
    ) -> int:
        """Insert or overwrite documents; returns how many were written.

        The whole batch is checked (ids, vectors, payloads, and free disk space on the
        embedded store) before anything is written, so a refused batch writes nothing.
        Re-upserting an id overwrites its point (ids map to point ids deterministically).
        The batch goes to the engine in requests of ``write_batch_size`` points: if the
        engine itself fails in the middle (a server going away), the requests before it
        stay written, and repeating the call is safe.

        Args:
            ids: N non-empty strings (your own ids; ints, None and other types are refused).
            vectors: ``{field: [N, D_f]}`` for every field (normalised here).
            payloads: None or N dicts of JSON values (str, int in the signed 64-bit range,
                finite float, bool, None, lists and dicts of those; filterable).
            present: optional ``{field: [N] bool}``: False marks a missing field of a
                document (cosine 0 in weighted mode, weight 0 in the fused vector).
            on_duplicate: an id repeated in ``ids``: "error" (default) refuses the batch,
                "report" keeps the first row and logs the repeated ids, "last" keeps the
                last row.

        Shape:
            vectors[f]: [N, D_f] numpy / torch / nested lists.
        """
        on_duplicate = check_on_duplicate(on_duplicate)
        ids = check_ids(ids, allow_duplicates=on_duplicate != "error")
        keep = None
        if on_duplicate != "error":
            keep, repeated, dropped = dedupe(ids, on_duplicate)
            if dropped == 0:
                keep = None
            elif on_duplicate == "report":
                log.warning("upsert: %d repeated id(s) %s: kept the first row of each, skipped %d row(s)",
                            len(repeated), repeated[:10], dropped)
        return self._write(ids, vectors, payloads, present, keep)

    def _write(self, ids: List[str], vectors: Any, payloads: Any, present: Any,
               keep: Optional[np.ndarray] = None) -> int:
        """Validate a batch of checked ids and write its rows ``keep`` (all if None).

        Every row is validated, kept or not, so error messages number rows as the caller
        passed them; ``ingest`` uses ``keep`` to drop ids it has already written.
        """
        n = len(ids)
        pls, payload_bytes = check_payloads(payloads, n)
        vecs, mask = doc_vectors(self.schema, vectors, n, present)
        if keep is not None:
            ids = [ids[i] for i in keep]
            pls = [pls[i] for i in keep]
            vecs = {k: v[keep] for k, v in vecs.items()}
            mask = {k: (None if m is None else m[keep]) for k, m in mask.items()}
            n = len(ids)
            if n == 0:
                return 0
        b = self.backend
        b.check_space(write_bytes(vecs, mask, payload_bytes, n), f"upsert of {n} documents")
        pids = point_ids(ids)
        for i, d in enumerate(ids):
            pls[i][ID_KEY] = d
        step = self.write_batch_size
        for s in range(0, n, step):
            e = min(n, s + step)
            b.upsert(
                pids[s:e],
                {k: v[s:e] for k, v in vecs.items()},
                {k: (None if m is None else m[s:e]) for k, m in mask.items()},
                pls[s:e],
            )
        return n

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents by your ids (absent ids are ignored)."""
        ids = list(dict.fromkeys(check_ids(ids, allow_duplicates=True)))
        self.backend.delete(point_ids(ids))

    def create_payload_index(self, key: str, kind: str = "keyword") -> None:
        """Index a payload key for fast filtering (a no-op in local mode, which scans)."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"key: expected a non-empty payload key, got {key!r}")
        if kind not in PAYLOAD_INDEX_KINDS:
            raise ValueError(f"kind: expected one of {PAYLOAD_INDEX_KINDS}, got {kind!r}")
        self.backend.create_payload_index(key, kind)

    # -- reads -----------------------------------------------------------------------------
    def count(self, filter: Any = None) -> int:
        """Number of documents (matching ``filter``, if given)."""
        return self.backend.count(to_filter(filter))

    def retrieve(self, ids: Sequence[str], with_vectors: bool = False) -> List[Record]:
        """The stored documents among ``ids``, in that order (absent ids are skipped).

        With ``with_vectors``, each record has its unit field vectors (missing fields absent).
        """
        ids = list(dict.fromkeys(check_ids(ids, allow_duplicates=True)))
        pids = point_ids(ids)
        recs = {r.point_id: r for r in self.backend.retrieve(pids, with_vectors)}
        out = []
        fields = set(self.schema.field_names)
        for d, p in zip(ids, pids):
            r = recs.get(p)
            if r is None:
                continue
            payload = dict(r.payload)
            payload.pop(ID_KEY, None)
            vecs = None
            if with_vectors:
                vecs = {k: v for k, v in (r.vectors or {}).items() if k in fields}
            out.append(Record(d, payload, vecs))
        return out

    def _plan(self, query: Any, field_weights: Any, batch: bool) -> Tuple[str, np.ndarray, float]:
        """(named vector, query rows, score multiplier) for a search."""
        s = self.schema
        if not batch and s.mode == "weighted" and len(s.fields) > 1:
            row = weighted_row(s, query, field_weights)
            if row is not None:
                return s.main_vector, row, 1.0
        q, shared = query_fields(s, query, batch)
        if len(s.fields) == 1:
            (f,) = s.field_names
            w = check_field_weights(s, field_weights, [f])
            return f, q[f], w[f]
        if s.mode == "fused":
            if shared:
                if field_weights is not None:
                    w = check_field_weights(s, field_weights, list(s.field_names))
                    tot = sum(w.values())
                    fixed = dict(s.fused_weights)
                    if any(abs(w.get(f, 0.0) / tot - fixed[f]) > 1e-6 for f in fixed):
                        raise ValueError(
                            f"field_weights: this index fuses fields with weights fixed at build "
                            f"time {fixed}; got {dict(field_weights)}. Omit field_weights, or use "
                            f"mode='weighted' for query-time weights"
                        )
                return s.main_vector, q[s.field_names[0]], 1.0
            if len(q) != 1:
                raise ValueError(
                    f"query: a fused index ranks by one query vector against the fused document "
                    f"vector (or one field's vector); got fields {list(q)}. Pass a single vector, "
                    f"or use mode='weighted' to combine several query fields"
                )
            (f,) = q
            w = check_field_weights(s, field_weights, [f])
            return f, q[f], w[f]
        fields = list(q)
        w = check_field_weights(s, field_weights, fields)
        if len(w) == 1 and s.index_fields:
            (f,) = w
            return f, q[f], w[f]
        return s.main_vector, weighted_query(s, q, w), 1.0

    def _run(self, using, rows, scale, limit, filter, exact, ef, oversampling) -> List[List[Hit]]:
        limit = _check_int("limit", limit)
        ef = self.ef if ef is None else _check_int("ef", ef)
        if not isinstance(exact, bool):
            raise ValueError(f"exact: expected True or False, got {exact!r}")
        osr = self.oversampling if oversampling is None else validate_oversampling(oversampling)
        if using != self.schema.quantized_vector:
            osr = None  # tells the backend this vector has no quantised copy
        flt = to_filter(filter)
        out: List[List[Hit]] = []
        for s in range(0, rows.shape[0], QUERY_BATCH):
            raw = self.backend.query(using, rows[s:s + QUERY_BATCH], limit, flt, exact, max(ef, limit), osr)
            for hits in raw:
                res = []
                for pid, score, payload in hits:
                    doc = payload.pop(ID_KEY, None)
                    if doc is None:
                        doc = pid() if callable(pid) else pid
                    res.append(Hit(doc, score * scale, payload))
                out.append(res)
        return out

    def search(
        self,
        query: Any,
        field_weights: Optional[Mapping[str, float]] = None,
        limit: int = 10,
        filter: Any = None,
        exact: bool = False,
        ef: Optional[int] = None,
        oversampling: Optional[float] = None,
    ) -> List[Hit]:
        """The top ``limit`` documents by ``sum_f w_f * cos(q_f, d_f)``.

        Args:
            query: ``{field: [D_f]}``, or one vector ``[D]`` standing for every field
                (fused mode: the one query vector).
            field_weights: ``{field: w >= 0}``, at least one > 0; default: equal weights
                over the query's fields. Fused mode: fixed at build time (omit).
            limit: number of hits.
            filter: payload filter: ``{"key": value}``, ``{"key": [v1, v2]}``,
                ``{"key": {"gte": a, "lt": b}}``, or a ``qdrant_client.models.Filter``.
            exact: scan every document (float32 vectors, quantised copies unused) instead
                of the HNSW graph.
            ef: HNSW beam width for this call (default: the index's ``ef``).
            oversampling: quantised index only: candidates per hit rescored with the
                float32 vectors for this call (default: the index's ``oversampling``).

        Returns:
            ``[Hit(id, score, payload)]`` by decreasing score.
        """
        using, rows, scale = self._plan(query, field_weights, batch=False)
        return self._run(using, rows, scale, limit, filter, exact, ef, oversampling)[0]

    def search_batch(
        self,
        queries: Any,
        field_weights: Optional[Mapping[str, float]] = None,
        limit: int = 10,
        filter: Any = None,
        exact: bool = False,
        ef: Optional[int] = None,
        oversampling: Optional[float] = None,
    ) -> List[List[Hit]]:
        """``search`` for Q queries at once (one planned request per 256 queries).

        Shape:
            queries: ``{field: [Q, D_f]}`` or ``[Q, D]``; returns Q hit lists.
        """
        using, rows, scale = self._plan(queries, field_weights, batch=True)
        return self._run(using, rows, scale, limit, filter, exact, ef, oversampling)
