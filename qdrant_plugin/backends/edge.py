"""The embedded backend: the real Qdrant engine in process, through ``qdrant-edge-py``.

Layout of a collection under the store directory ``location``::

    <location>/<collection>/gcl_schema.json   the schema (written first, atomically)
    <location>/<collection>/shard/            the Qdrant Edge shard (WAL + segments)
    <location>/<collection>/.lock             flock held while the collection is open

Durability: every update goes through the shard's write-ahead log; ``flush()`` persists
segments and ``close()`` flushes. One open handle per collection: a second open (same
process or another) gets :class:`StoreLockedError` instead of the engine's WAL error.
Vectors are indexed when ``optimize()`` runs (Qdrant Edge runs no background optimizer);
until then a search is an exact scan, so it is correct, only slower.
"""

from __future__ import annotations

import os
import re
from typing import Any, List, Optional

import numpy as np

from .._io import DirLock, atomic_write_json, read_json
from ..errors import ForeignCollectionError, SchemaMismatchError
from ..filters import to_edge_filter
from ..schema import SCALAR_QUANTILE, IndexSchema
from .base import Backend, RawHits, RawRecord

SCHEMA_FILE = "gcl_schema.json"
SHARD_DIR = "shard"
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
# Vectors below this many KB per segment are not worth a graph; 10 MB is Qdrant's default.
INDEXING_THRESHOLD_KB = 10_000
# A filtered search whose matching vectors total less than this many KB scans them exactly
# instead of walking the graph (Qdrant's default).
FULL_SCAN_THRESHOLD_KB = 10_000


def check_collection_name(collection: Any) -> str:
    if not isinstance(collection, str) or not _COLLECTION_RE.match(collection) or collection in (".", ".."):
        raise ValueError(
            f"collection: expected a name of letters, digits, '_', '.', '-' (no path separators), "
            f"got {collection!r}"
        )
    return collection


_QE = None


def _qe():
    global _QE
    if _QE is None:
        try:
            import qdrant_edge
        except ImportError as e:  # pragma: no cover - the extra is installed in CI
            raise ImportError("the embedded store needs qdrant-edge-py: pip install 'gcl[qdrant]'") from e
        _QE = qdrant_edge
    return _QE


def edge_config(schema: IndexSchema) -> Any:
    qe = _qe()
    graph = qe.HnswIndexConfig(
        m=schema.hnsw_m, ef_construct=schema.hnsw_ef_construct, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
    )
    # m=0 keeps a vector out of the graph build: searched by an exact scan instead.
    no_graph = qe.HnswIndexConfig(
        m=0, ef_construct=schema.hnsw_ef_construct, full_scan_threshold=FULL_SCAN_THRESHOLD_KB
    )
    quant = None
    if schema.quantization == "int8":
        # Pinned: the codes are what every graph hop reads; evicting them would make the
        # search read pages back from disk.
        quant = qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=SCALAR_QUANTILE, memory=qe.Memory.Pinned
        )
    vectors = {}
    for name, dim in schema.vector_dims().items():
        graphed = name == schema.main_vector or schema.index_fields
        vectors[name] = qe.EdgeVectorParams(
            size=dim, distance=qe.Distance.Dot, hnsw_config=None if graphed else no_graph,
            quantization_config=quant if name == schema.quantized_vector else None,
        )
    return qe.EdgeConfig(
        vectors=vectors,
        hnsw_config=graph,
        # Hits carry payloads: reading them from cold mmap storage doubled query latency.
        payload_memory=qe.Memory.Cached,
        optimizers=qe.EdgeOptimizersConfig(
            default_segment_number=1, indexing_threshold=INDEXING_THRESHOLD_KB
        ),
    )


def edge_quantization_params(exact: bool, oversampling: Optional[float]) -> Any:
    """Search parameters for a vector with a quantised copy (None when it has none)."""
    if oversampling is None:
        return None
    qe = _qe()
    if exact:
        return qe.QuantizationSearchParams(ignore=True)
    return qe.QuantizationSearchParams(rescore=True, oversampling=float(oversampling))


def _point_id_of(point) -> Any:
    """``str(point.id)``, deferred: a function rather than an inline lambda so that each
    callable captures its own point, not the comprehension's last one."""
    return lambda: str(point.id)


class EdgeBackend(Backend):
    kind = "edge"

    def __init__(self, location: str, collection: str):
        self.location = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.collection = check_collection_name(collection)
        if os.path.exists(self.location) and not os.path.isdir(self.location):
            raise ValueError(f"location: {location!r} exists and is not a directory")
        self.root = os.path.join(self.location, self.collection)
        self.schema_path = os.path.join(self.root, SCHEMA_FILE)
        self.shard_path = os.path.join(self.root, SHARD_DIR)
        self._lock: Optional[DirLock] = None
        self._shard = None

    def describe(self) -> str:
        return f"embedded store {self.root}"

    def _acquire(self) -> None:
        if self._lock is None:
            os.makedirs(self.root, exist_ok=True)
            self._lock = DirLock(self.root, f"collection {self.collection!r} in {self.location}")

    def read_schema(self) -> Optional[IndexSchema]:
        if not os.path.isdir(self.root):
            return None
        self._acquire()
        obj = read_json(self.schema_path)
        if obj is None:
            if os.path.isdir(self.shard_path) and os.listdir(self.shard_path):
                raise ForeignCollectionError(
                    f"{self.root} holds Qdrant data without a {SCHEMA_FILE}: not created by this "
                    f"plugin, refusing to use or overwrite it"
                )
            return None
        if not isinstance(obj, dict):
            raise SchemaMismatchError(f"{self.schema_path}: expected a JSON object")
        return IndexSchema.from_json(obj, where=self.schema_path)

    def create(self, schema: IndexSchema) -> None:
        self._acquire()
        qe = _qe()
        # Schema first: a crash after it but before the shard leaves a schema with no
        # shard, which open() completes; the reverse would leave anonymous data.
        atomic_write_json(self.schema_path, schema.to_json())
        self._shard = qe.EdgeShard.create(self.shard_path, edge_config(schema))

    def open(self, schema: IndexSchema) -> None:
        self._acquire()
        qe = _qe()
        if not os.path.isdir(os.path.join(self.shard_path, "segments")):
            self._shard = qe.EdgeShard.create(self.shard_path, edge_config(schema))
            return
        try:
            # Passing the config makes the engine check it against the segments on disk.
            self._shard = qe.EdgeShard.load(self.shard_path, edge_config(schema))
        except Exception as e:
            msg = str(e)
            if "incompatible" in msg.lower():
                raise SchemaMismatchError(
                    f"{self.root}: the shard on disk does not match {SCHEMA_FILE}: {msg}"
                ) from None
            raise RuntimeError(f"could not open {self.describe()}: {msg}") from None

    @property
    def shard(self):
        if self._shard is None:
            raise RuntimeError(f"{self.describe()} is closed")
        return self._shard

    def upsert(self, point_ids, vectors, present, payloads) -> None:
        qe = _qe()
        names = list(vectors)
        rows = {n: vectors[n].tolist() for n in names}
        pts = []
        for i, pid in enumerate(point_ids):
            vec = {n: rows[n][i] for n in names if present[n] is None or present[n][i]}
            pts.append(qe.Point(pid, vec, payloads[i]))
        self.shard.update(qe.UpdateOperation.upsert_points(pts))

    def query(self, using, vectors, limit, flt, exact, ef, oversampling=None) -> RawHits:
        qe = _qe()
        ef_filter = to_edge_filter(flt)
        params = qe.SearchParams(hnsw_ef=ef, exact=bool(exact),
                                 quantization=edge_quantization_params(exact, oversampling))
        reqs = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(row, using=using),
                filter=ef_filter,
                params=params,
                with_payload=True,
                with_vector=False,
            )
            for row in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        if len(reqs) == 1:
            results = [self.shard.query(reqs[0])]
        else:
            results = self.shard.query_batch(qe.QueryBatchRequest(reqs))
        # p.id is read only if asked for (see RawHits): building the UUID costs more than the
        # rest. p.payload is a fresh dict on every access, so it needs no copy.
        return [[(_point_id_of(p), float(p.score), p.payload or {}) for p in res] for res in results]

    def count(self, flt=None) -> int:
        qe = _qe()
        return int(self.shard.count(qe.CountRequest(exact=True, filter=to_edge_filter(flt))))

    def delete(self, point_ids) -> None:
        qe = _qe()
        self.shard.update(qe.UpdateOperation.delete_points(list(point_ids)))

    def retrieve(self, point_ids, with_vectors) -> List[RawRecord]:
        recs = self.shard.retrieve(list(point_ids), with_payload=True, with_vector=bool(with_vectors))
        return [RawRecord.from_point(r, with_vectors) for r in recs]

    def create_payload_index(self, key, kind) -> None:
        qe = _qe()
        types = {
            "keyword": qe.PayloadSchemaType.Keyword,
            "integer": qe.PayloadSchemaType.Integer,
            "float": qe.PayloadSchemaType.Float,
            "bool": qe.PayloadSchemaType.Bool,
        }
        self.shard.update(qe.UpdateOperation.create_field_index(key, types[kind]))

    def optimize(self) -> None:
        self.shard.optimize()

    def flush(self) -> None:
        self.shard.flush()

    def close(self) -> None:
        try:
            if self._shard is not None:
                self._shard.close()
        finally:
            self._shard = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
