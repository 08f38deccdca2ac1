"""Errors raised by the Qdrant plugin.

Each subclasses the built-in exception a caller would already catch for that kind of
problem (bad argument, missing thing, connection trouble), so ``except ValueError`` keeps
working while tests and callers can be specific.
"""

from __future__ import annotations


class SchemaMismatchError(ValueError):
    """A collection exists with a different schema (fields, dims, mode, fused weights)."""


class CollectionNotFoundError(LookupError):
    """The collection does not exist and no schema was given to create it."""


class ForeignCollectionError(ValueError):
    """A collection of that name exists but was not created by this plugin."""


class StoreLockedError(RuntimeError):
    """An embedded store directory is already open by another index or process."""


class QdrantUnavailableError(ConnectionError):
    """A Qdrant server could not be reached after all retries."""


class CorruptFileError(ValueError):
    """A file the plugin wrote (schema, ingest marker) is unreadable; the message names it
    and says how to recover."""


class DuplicateIdError(ValueError):
    """The same document id appears more than once in one upsert or one ingest."""


class InsufficientSpaceError(OSError):
    """Not enough free disk space for a write to the embedded store.

    Raised before the write: the engine maps its files into memory, and a full disk would
    otherwise kill the process with SIGBUS in the middle of the write.
    """
