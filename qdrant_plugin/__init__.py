"""GCL embeddings in Qdrant: multi-field documents, weighted and ranked search.

    from qdrant_plugin import MultiFieldIndex
    index = MultiFieldIndex("./store", "products", fields={"title": 512, "image": 512})
    index.upsert(ids, {"title": T, "image": I}, payloads=None)
    hits = index.search({"title": q_t, "image": q_i}, field_weights={"title": 0.1, "image": 0.9})

``location`` picks the backend: a directory is an embedded Qdrant Edge store (the
default), ``":memory:"`` is qdrant-client's local mode, ``http(s)://host:port`` a Qdrant
server or cluster. See ``qdrant_plugin.index`` for how the weighted score is computed and
docs/qdrant.md for the measurements behind the design.
"""

from .errors import (
    CollectionNotFoundError,
    CorruptFileError,
    DuplicateIdError,
    ForeignCollectionError,
    InsufficientSpaceError,
    QdrantUnavailableError,
    SchemaMismatchError,
    StoreLockedError,
)
from .ids import point_id
from .index import Hit, MultiFieldIndex, Record
from .schema import PLUGIN_VERSION as __version__
from .schema import IndexSchema
from .vectors import brute_force

__all__ = [
    "MultiFieldIndex", "Hit", "Record", "IndexSchema", "point_id", "brute_force",
    "SchemaMismatchError", "CollectionNotFoundError", "ForeignCollectionError",
    "StoreLockedError", "QdrantUnavailableError", "CorruptFileError", "DuplicateIdError",
    "InsufficientSpaceError", "__version__",
]
