"""The contract every storage backend implements.

A backend stores points (a UUID string id, named vectors, a JSON payload) in one
collection and answers nearest-neighbour queries on one named vector. It knows nothing
about fields, weights or caller ids: :class:`qdrant_plugin.MultiFieldIndex` turns those
into named vectors and point ids, so every backend gives the same answers for the same
points (tested in ``tests/test_qdrant_congruence.py``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..schema import IndexSchema

# (point id, score, payload) per hit, one list per query. The point id may come as a
# zero-argument callable returning it: qdrant-edge builds a uuid.UUID object on every id
# access (about half the cost of turning a hit into Python), and the caller never needs it
# when the payload carries the document id.
RawHits = List[List[Tuple[Union[str, Callable[[], str]], float, Dict[str, Any]]]]

PAYLOAD_INDEX_KINDS = ("keyword", "integer", "float", "bool")


@dataclass
class RawRecord:
    point_id: str
    payload: Dict[str, Any]
    vectors: Optional[Dict[str, np.ndarray]]

    @classmethod
    def from_point(cls, point, with_vectors: bool) -> "RawRecord":
        """From a retrieved point of either engine (both have .id, .payload, .vector)."""
        vecs = None
        if with_vectors:
            vecs = {k: np.asarray(v, dtype=np.float32) for k, v in (point.vector or {}).items()}
        return cls(str(point.id), dict(point.payload or {}), vecs)


class Backend(abc.ABC):
    """One collection in one store. Methods raise clear errors; none drops data."""

    kind: str = "?"

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, safe to print (never contains credentials)."""

    @abc.abstractmethod
    def read_schema(self) -> Optional[IndexSchema]:
        """The stored schema, or None if the collection does not exist."""

    @abc.abstractmethod
    def create(self, schema: IndexSchema) -> None:
        """Create the collection (it must not exist)."""

    @abc.abstractmethod
    def open(self, schema: IndexSchema) -> None:
        """Attach to the existing collection whose stored schema is ``schema``."""

    @abc.abstractmethod
    def upsert(
        self,
        point_ids: Sequence[str],
        vectors: Mapping[str, np.ndarray],
        present: Mapping[str, np.ndarray],
        payloads: Sequence[Dict[str, Any]],
    ) -> None:
        """Insert or overwrite points. ``present[name][i]`` False leaves vector ``name`` out of point i."""

    @abc.abstractmethod
    def query(
        self,
        using: str,
        vectors: np.ndarray,
        limit: int,
        flt: Any,
        exact: bool,
        ef: Optional[int],
        oversampling: Optional[float] = None,
    ) -> RawHits:
        """Top ``limit`` points by dot product with each row of ``vectors`` on named vector ``using``.

        ``oversampling`` is given (a number >= 1) only when ``using`` has a quantised copy:
        search the quantised vectors for ``oversampling * limit`` candidates and rescore
        them with the originals; with ``exact`` the quantised copy is ignored.
        """

    @abc.abstractmethod
    def count(self, flt: Any = None) -> int: ...

    @abc.abstractmethod
    def delete(self, point_ids: Sequence[str]) -> None: ...

    @abc.abstractmethod
    def retrieve(self, point_ids: Sequence[str], with_vectors: bool) -> List[RawRecord]: ...

    @abc.abstractmethod
    def create_payload_index(self, key: str, kind: str) -> None: ...

    def check_space(self, nbytes: int, what: str) -> None:
        """Raise :class:`~qdrant_plugin.errors.InsufficientSpaceError` before a write of about
        ``nbytes`` that the store's disk cannot take (a no-op where the server owns the disk)."""

    def optimize(self) -> None:
        """Build or finish building the vector indexes (blocking)."""

    def flush(self) -> None:
        """Make every acknowledged write durable."""

    @abc.abstractmethod
    def close(self) -> None: ...
