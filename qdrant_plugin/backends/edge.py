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

Disk space: the engine writes its files through ``mmap``, so a full disk kills the process
with SIGBUS (no error, no message). Every create, open, upsert and optimize first checks
that the filesystem has room for an estimate of the write, plus the holes in the segments'
preallocated files (the engine may fill them at any time: on tmpfs a reopen does), plus
:data:`ENGINE_HEADROOM_BYTES`, and raises :class:`InsufficientSpaceError` naming the store,
the free bytes and the estimate before writing anything. Space taken by another process
between the check and the write is not covered.

Leftovers: a kill during ``optimize()`` leaves the half-built segment in
``shard/temp_segments/segment_builder_*`` (hundreds of MB that the engine never reclaims);
the next open removes it, holding the collection's lock, so no live writer is disturbed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any, List, Optional

import numpy as np

from .._io import DirLock, atomic_write_json, free_bytes, human_bytes, read_json, sparse_bytes, used_bytes
from ..errors import CorruptFileError, ForeignCollectionError, InsufficientSpaceError, SchemaMismatchError
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
# Room the engine may take at once beyond the data itself: it preallocates files of 32 MiB
# (WAL segments, payload pages, vector chunks; measured with qdrant-edge 0.9).
ENGINE_FILE_BYTES = 32 * 2 ** 20
ENGINE_HEADROOM_BYTES = ENGINE_FILE_BYTES
# Where the engine builds a segment during optimize(); a kill leaves these behind.
TEMP_SEGMENTS_DIR = "temp_segments"
SEGMENT_BUILDER_PREFIX = "segment_builder_"

log = logging.getLogger(__name__)


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

    def __init__(self, location: str, collection: str, disk_check: bool = True):
        self.disk_check = bool(disk_check)
        self.removed_leftovers: List[str] = []
        self.location = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.collection = check_collection_name(collection)
        if os.path.exists(self.location) and not os.path.isdir(self.location):
            raise ValueError(f"location: {location!r} exists and is not a directory")
        self.root = os.path.join(self.location, self.collection)
        self.schema_path = os.path.join(self.root, SCHEMA_FILE)
        self.shard_path = os.path.join(self.root, SHARD_DIR)
        self._lock: Optional[DirLock] = None
        self._shard = None
        self._schema: Optional[IndexSchema] = None

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
        obj = read_json(self.schema_path, what=f"the schema file of collection {self.collection!r},",
                        recover="the data under shard/ is untouched: restore the file from a backup "
                                "(it is small JSON written when the collection was created)")
        if obj is None:
            if os.path.isdir(self.shard_path) and os.listdir(self.shard_path):
                raise ForeignCollectionError(
                    f"{self.root} holds Qdrant data without a {SCHEMA_FILE}: not created by this "
                    f"plugin, refusing to use or overwrite it"
                )
            return None
        if not isinstance(obj, dict):
            raise CorruptFileError(
                f"the schema file of collection {self.collection!r}, {self.schema_path}, holds a JSON "
                f"{type(obj).__name__}, expected an object; restore it from a backup"
            )
        return IndexSchema.from_json(obj, where=self.schema_path)

    # -- disk space ------------------------------------------------------------------------
    def check_space(self, nbytes: int, what: str, headroom: int = ENGINE_HEADROOM_BYTES) -> None:
        """Refuse a write of about ``nbytes`` that the filesystem cannot take (see the module doc).

        Needed: ``nbytes``, plus the holes in the segments' preallocated files (the engine
        may fill them at any time, a reopen included), plus ``headroom`` for a file the
        engine preallocates in one step (:data:`ENGINE_HEADROOM_BYTES`).
        """
        if not self.disk_check:
            return
        where = self.root if os.path.isdir(self.root) else self.location
        while not os.path.isdir(where):
            where = os.path.dirname(where)
        free = free_bytes(where)
        holes = sparse_bytes(os.path.join(self.shard_path, "segments"))
        need = int(nbytes) + holes + headroom
        if free < need:
            raise InsufficientSpaceError(
                f"{self.describe()}: not enough free disk space for {what}: needs about "
                f"{human_bytes(need)} ({need} bytes: {human_bytes(nbytes)} estimated for the write, "
                f"{human_bytes(holes)} the engine's preallocated segment files may still take, "
                f"{human_bytes(headroom)} for a new engine file), but only "
                f"{human_bytes(free)} ({free} bytes) is free there. Nothing was written. The engine "
                f"maps its files into memory, and a full disk would kill the process with SIGBUS "
                f"mid-write; free some space or move the store, then run again (an interrupted "
                f"ingest resumes). MultiFieldIndex(..., disk_check=False) skips this check."
            )

    def _shard_create_bytes(self, schema: IndexSchema) -> int:
        # A new shard fills a 32 MiB payload page and about 1 MiB per named vector at once
        # (measured on tmpfs, where the engine's preallocation is real; on ext4 it is sparse).
        return ENGINE_FILE_BYTES + 2 ** 20 * (len(schema.vector_dims()) + 2)

    def optimize_bytes(self, n: Optional[int] = None) -> int:
        """Estimated disk bytes ``optimize()`` needs: the optimiser writes a new segment with
        every point's vectors and payload, then the graphs (and int8 codes) on top.

        Measured with 20,000 points, 2 x 128 dims, m=32: the segments grew by 2,335 bytes per
        point (2,048 of vectors); this estimate gives 3,472.
        """
        schema = self._schema
        n = self.count() if n is None else n
        graphed = [schema.main_vector] + (list(schema.field_names) if schema.index_fields else [])
        graphed = list(dict.fromkeys(graphed))
        per_point = sum(schema.vector_dims().values()) * 4 * 5 // 4 + 512
        per_point += len(graphed) * (2 * schema.hnsw_m * 4 + 64) * 5 // 4
        if schema.quantization == "int8":
            per_point += schema.main_dim
        return n * per_point

    def _clean_leftovers(self) -> None:
        """Remove half-built segments an interrupted optimize() left (we hold the lock)."""
        tmp = os.path.join(self.shard_path, TEMP_SEGMENTS_DIR)
        try:
            entries = list(os.scandir(tmp))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.name.startswith(SEGMENT_BUILDER_PREFIX) and e.is_dir(follow_symlinks=False):
                size = used_bytes(e.path)
                shutil.rmtree(e.path, ignore_errors=True)
                self.removed_leftovers.append(e.path)
                log.warning("%s: removed %s (%s), a segment an interrupted optimize() was building",
                            self.describe(), e.path, human_bytes(size))

    def create(self, schema: IndexSchema) -> None:
        self._acquire()
        qe = _qe()
        self.check_space(self._shard_create_bytes(schema), "creating the collection")
        # Schema first: a crash after it but before the shard leaves a schema with no
        # shard, which open() completes; the reverse would leave anonymous data.
        atomic_write_json(self.schema_path, schema.to_json())
        try:
            self._shard = qe.EdgeShard.create(self.shard_path, edge_config(schema))
        except BaseException:
            # Nothing half-made stays behind: the collection did not exist before this call.
            shutil.rmtree(self.shard_path, ignore_errors=True)
            try:
                os.unlink(self.schema_path)
            except FileNotFoundError:
                pass
            raise
        self._schema = schema

    def open(self, schema: IndexSchema) -> None:
        self._acquire()
        qe = _qe()
        self._schema = schema
        self._clean_leftovers()
        if not os.path.isdir(os.path.join(self.shard_path, "segments")):
            self.check_space(self._shard_create_bytes(schema), "creating the collection's shard")
            self._shard = qe.EdgeShard.create(self.shard_path, edge_config(schema))
            return
        # Loading maps the segments' files, and on some filesystems (tmpfs) the engine then
        # allocates their preallocated space: a reopen on a full disk died with SIGBUS.
        self.check_space(0, "opening the collection", headroom=0)
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

    def _check_on_disk(self) -> None:
        # The engine keeps writing into mapped files of a deleted directory without an error.
        if not os.path.isdir(self.shard_path):
            raise RuntimeError(
                f"{self.describe()}: the shard directory {self.shard_path} is gone (removed while the "
                f"collection was open); nothing was written"
            )

    def upsert(self, point_ids, vectors, present, payloads) -> None:
        self._check_on_disk()
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
        self._check_on_disk()
        self.check_space(self.optimize_bytes(), "optimize() (building the HNSW index copies the segments)")
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
