"""Caller ids to Qdrant point ids.

Qdrant point ids are unsigned ints or UUIDs; callers have their own strings (product ids).
A UUIDv5 over a fixed namespace maps each string to the same point id on every run and
every machine, so re-ingesting a document overwrites it instead of duplicating it. The
caller's string is also stored in the payload (``schema.ID_KEY``) and returned by search.
"""

from __future__ import annotations

import uuid
from typing import Iterable, List

# Fixed forever: uuid5(NAMESPACE_URL, "https://github.com/gcl/qdrant_plugin/point-id").
# Changing it would give every stored document a new point id.
POINT_ID_NAMESPACE = uuid.UUID("36a6c797-b4a4-5891-8f4a-5d683b2ee3a2")


def point_id(doc_id: str) -> str:
    """The point id (UUID string) for a caller id.

    Example:
        >>> point_id("B000123") == point_id("B000123")
        True
    """
    return str(uuid.uuid5(POINT_ID_NAMESPACE, doc_id))


def point_ids(doc_ids: Iterable[str]) -> List[str]:
    return [str(uuid.uuid5(POINT_ID_NAMESPACE, d)) for d in doc_ids]
