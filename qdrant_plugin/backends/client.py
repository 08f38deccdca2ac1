"""qdrant-client backends: local mode (``":memory:"``) and a Qdrant server or cluster (``http(s)://``).

Local mode is qdrant-client's pure-Python engine: exact search, no HNSW, nothing to tune;
it is the congruence reference for the embedded store. The remote backend talks REST to
a server with an optional API key, TLS from the URL scheme, a request timeout, and
retries with exponential backoff on transient failures (``qdrant_plugin.retry``). The
API key is never logged and is scrubbed from every error this module raises.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Dict, List, Optional
from urllib.parse import urlsplit

import numpy as np

from ..errors import ForeignCollectionError, QdrantUnavailableError, SchemaMismatchError
from ..retry import RetryPolicy, call_with_retry
from ..schema import SCALAR_QUANTILE, IndexSchema
from .base import Backend, RawHits, RawRecord
from .edge import check_collection_name

METADATA_KEY = "gcl_schema"


def parse_server_url(url: str) -> Dict[str, Any]:
    """Split and check ``http(s)://host[:port][/prefix]``; the result never holds credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"location: expected http(s)://host[:port], got {safe_url(url)!r}")
    if parts.username or parts.password:
        raise ValueError("location: put credentials in api_key=, not in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"location: unexpected query or fragment in {safe_url(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"location: invalid port in {safe_url(url)!r}") from None
    port = port or 6333
    prefix = parts.path.rstrip("/") or None
    return {"https": parts.scheme == "https", "host": parts.hostname, "port": port, "prefix": prefix,
            "display": f"{parts.scheme}://{parts.hostname}:{port}{prefix or ''}"}


def safe_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = p.netloc.rsplit("@", 1)[-1]
    return f"{p.scheme}://{netloc}{p.path}"


class ClientBackend(Backend):
    """One collection through ``qdrant_client.QdrantClient`` (local ``":memory:"`` or remote)."""

    def __init__(
        self,
        location: str,
        collection: str,
        api_key: Optional[str] = None,
        timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        wait_timeout: float = 3600.0,
    ):
        from qdrant_client import QdrantClient

        self.collection = check_collection_name(collection)
        self._api_key = api_key
        self._wait_timeout = wait_timeout
        if location == ":memory:":
            self.kind = "local"
            self._display = "qdrant-client local mode (:memory:)"
            if api_key is not None:
                raise ValueError("api_key: only used with a Qdrant server URL, not with ':memory:'")
            self._retry = None
            self.client = QdrantClient(location=":memory:")
        else:
            self.kind = "remote"
            if api_key is not None and (not isinstance(api_key, str) or not api_key):
                raise ValueError("api_key: expected a non-empty string or None")
            if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
                raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
            u = parse_server_url(location)
            self._display = f"Qdrant server {u['display']}"
            self._retry = retry or RetryPolicy()
            with warnings.catch_warnings():
                # qdrant-client warns about a key over plain http; we warn once ourselves below.
                warnings.simplefilter("ignore")
                self.client = QdrantClient(
                    host=u["host"], port=u["port"], https=u["https"], prefix=u["prefix"],
                    api_key=api_key, timeout=max(1, math.ceil(timeout)), check_compatibility=False,
                )
            if api_key is not None and not u["https"] and u["host"] not in ("localhost", "127.0.0.1", "::1"):
                warnings.warn(
                    f"api_key is sent in clear text to {u['display']}; use an https:// URL",
                    UserWarning, stacklevel=4,
                )

    def describe(self) -> str:
        return self._display

    def _scrub(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _call(self, what: str, fn):
        if self._retry is None:
            return fn()

        def give_up(e: BaseException, attempts: int) -> BaseException:
            return QdrantUnavailableError(
                f"could not reach {self._display} to {what} after {attempts} attempt(s): "
                f"{type(e).__name__}: {self._scrub(str(e))}"
            )

        try:
            return call_with_retry(fn, self._retry, f"{self._display}: {what}", give_up)
        except QdrantUnavailableError:
            raise
        except Exception as e:
            raise RuntimeError(
                f"{self._display} refused to {what}: {type(e).__name__}: {self._scrub(str(e))}"
            ) from None

    # -- schema --------------------------------------------------------------------------
    def read_schema(self) -> Optional[IndexSchema]:
        c = self.collection
        if not self._call("check the collection", lambda: self.client.collection_exists(c)):
            return None
        info = self._call("read the collection", lambda: self.client.get_collection(c))
        meta = info.config.metadata or {}
        if METADATA_KEY not in meta:
            raise ForeignCollectionError(
                f"collection {c!r} on {self._display} was not created by this plugin (no "
                f"{METADATA_KEY!r} metadata); refusing to use or overwrite it"
            )
        return IndexSchema.from_json(meta[METADATA_KEY], where=f"collection {c!r} metadata")

    def create(self, schema: IndexSchema) -> None:
        from qdrant_client import models

        quant = None
        if schema.quantization == "int8":
            # always_ram rather than the newer memory=Pinned: older servers know only always_ram.
            quant = models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=SCALAR_QUANTILE, always_ram=True))
        vectors = {}
        for name, dim in schema.vector_dims().items():
            graphed = name == schema.main_vector or schema.index_fields
            vectors[name] = models.VectorParams(
                size=dim, distance=models.Distance.DOT,
                hnsw_config=None if graphed else models.HnswConfigDiff(m=0),
                quantization_config=quant if name == schema.quantized_vector else None,
            )
        c = self.collection
        try:
            self._call("create the collection", lambda: self.client.create_collection(
                c, vectors_config=vectors,
                hnsw_config=models.HnswConfigDiff(m=schema.hnsw_m, ef_construct=schema.hnsw_ef_construct),
                metadata={METADATA_KEY: schema.to_json()},
            ))
        except RuntimeError:
            # A retried create whose first try went through reports a conflict; the
            # collection is fine if its schema is ours.
            stored = self.read_schema()
            if stored != schema:
                raise
        self.open(schema)

    def open(self, schema: IndexSchema) -> None:
        c = self.collection
        info = self._call("read the collection", lambda: self.client.get_collection(c))
        vp = info.config.params.vectors
        have = {k: v.size for k, v in vp.items()} if isinstance(vp, dict) else {}
        if have != schema.vector_dims():
            raise SchemaMismatchError(
                f"collection {c!r} on {self._display}: stored vectors {have} do not match its "
                f"schema metadata {schema.vector_dims()}"
            )

    # -- data ----------------------------------------------------------------------------
    def upsert(self, point_ids, vectors, present, payloads) -> None:
        from qdrant_client import models

        names = list(vectors)
        rows = {n: vectors[n].tolist() for n in names}
        points = [
            models.PointStruct(
                id=pid,
                vector={n: rows[n][i] for n in names if present[n] is None or present[n][i]},
                payload=payloads[i],
            )
            for i, pid in enumerate(point_ids)
        ]
        c = self.collection
        self._call(f"upsert {len(points)} points", lambda: self.client.upsert(c, points=points, wait=True))

    def query(self, using, vectors, limit, flt, exact, ef, oversampling=None) -> RawHits:
        from qdrant_client import models

        # Local mode is always an exact scan (float32, quantisation unused) and warns about
        # search params it ignores.
        params = None
        if self.kind != "local":
            quant = None
            if oversampling is not None:
                quant = (models.QuantizationSearchParams(ignore=True) if exact else
                         models.QuantizationSearchParams(rescore=True, oversampling=float(oversampling)))
            params = models.SearchParams(hnsw_ef=ef, exact=bool(exact), quantization=quant)
        reqs = [
            models.QueryRequest(query=row, using=using, limit=limit, filter=flt, params=params,
                                with_payload=True, with_vector=False)
            for row in np.asarray(vectors, dtype=np.float32).tolist()
        ]
        c = self.collection
        res = self._call(f"search ({len(reqs)} queries)",
                         lambda: self.client.query_batch_points(c, requests=reqs))
        return [[(str(p.id), float(p.score), dict(p.payload or {})) for p in r.points] for r in res]

    def count(self, flt=None) -> int:
        c = self.collection
        return int(self._call("count points", lambda: self.client.count(c, count_filter=flt, exact=True)).count)

    def delete(self, point_ids) -> None:
        from qdrant_client import models

        c = self.collection
        sel = models.PointIdsList(points=list(point_ids))
        self._call(f"delete {len(sel.points)} points", lambda: self.client.delete(c, points_selector=sel, wait=True))

    def retrieve(self, point_ids, with_vectors) -> List[RawRecord]:
        c = self.collection
        recs = self._call("retrieve points", lambda: self.client.retrieve(
            c, ids=list(point_ids), with_payload=True, with_vectors=bool(with_vectors)))
        return [RawRecord.from_point(r, with_vectors) for r in recs]

    def create_payload_index(self, key, kind) -> None:
        if self.kind == "local":
            return  # local mode scans payloads; an index would only raise a warning there
        from qdrant_client import models

        types = {"keyword": models.PayloadSchemaType.KEYWORD, "integer": models.PayloadSchemaType.INTEGER,
                 "float": models.PayloadSchemaType.FLOAT, "bool": models.PayloadSchemaType.BOOL}
        c = self.collection
        self._call(f"index payload key {key!r}", lambda: self.client.create_payload_index(
            c, field_name=key, field_schema=types[kind], wait=True))

    def optimize(self) -> None:
        """Wait until the server has indexed everything (collection status green)."""
        if self.kind == "local":
            return
        from qdrant_client import models

        c = self.collection
        deadline = time.monotonic() + self._wait_timeout
        while True:
            info = self._call("read the collection", lambda: self.client.get_collection(c))
            if info.status == models.CollectionStatus.GREEN:
                return
            if info.status == models.CollectionStatus.RED:
                raise RuntimeError(f"collection {c!r} on {self._display} is in status red (failed optimisation)")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"collection {c!r} on {self._display} still {info.status} after {self._wait_timeout:.0f}s"
                )
            time.sleep(1.0)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing must not mask the caller's own error
            pass
