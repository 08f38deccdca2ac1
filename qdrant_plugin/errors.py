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
