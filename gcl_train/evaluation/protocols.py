"""The contracts between the evaluator and what plugs into it (`typing.Protocol`).

An encoder turns field values into vectors (and may tell queries from documents, for a
model with a query tower and a document tower); a retriever answers top-k searches over a
corpus it may be given first; a field says which record keys hold a value and of what
kind. `gcl_train.models.Encoder` is an encoder, `ExactRetriever` and
`qdrant_plugin.QdrantRetriever` are retrievers, `gcl_train.data.FieldSpec` and
`gcl_train.data.DocField` are fields. Nothing here needs to be subclassed: any object
with the right methods fits (structural typing).
"""
from __future__ import annotations

from typing import Callable, List, Literal, Protocol, Sequence, Tuple, Union, runtime_checkable

import numpy as np

from ..data.fields import ROLES


#: "txt": values are str; "img": values are RGB PIL images.
Kind = Literal["txt", "img"]

#: Whose values an encoder call holds: the queries' ("left") or the documents' ("right");
#: the values are `gcl_train.data.fields.ROLES`.
Role = Literal["query", "document"]


@runtime_checkable
class EncoderProtocol(Protocol):
    """`encoder(values, kind) -> np.ndarray [N, D]`, one row per value.

    `kind` is "txt" (values are str) or "img" (values are RGB PIL images). Rows need not
    be normalised; the evaluator normalises them. Every call for one evaluation must
    return the same D, and finite values.
    """

    def __call__(self, values: list, kind: Kind) -> np.ndarray: ...


@runtime_checkable
class RoleAwareEncoderProtocol(EncoderProtocol, Protocol):
    """An encoder that also says which tower encodes a value: `encode_as(values, kind,
    role) -> np.ndarray [N, D]`, with `role` "query" or "document".

    Optional and backward compatible: `encode_fields` / `encode_records` /
    `embed_corpus` are told the role of what they encode (the evaluator passes "query"
    for the query specs and "document" for the document specs; the Qdrant ingest and the
    demo pass "document"), and call `encoder.encode_as(values, kind, role)` when the
    encoder has that method, else the plain `encoder(values, kind)`, so a plain callable
    encodes queries and documents alike, as before. The same contract as `__call__`
    holds (one row per value, one D for the whole evaluation, finite values);
    `encode_as(values, kind, "query")` should equal `encoder(values, kind)`.
    `gcl_train.models.Encoder` implements it: with a Hugging Face model trained with
    `text_towers="separate"`, document titles go through the document tower.

    Example:
        >>> class TwoTowers:
        ...     def __call__(self, values, kind): return self.encode_as(values, kind, "query")
        ...     def encode_as(self, values, kind, role): ...  # the query or the document tower
    """

    def encode_as(self, values: list, kind: Kind, role: Role) -> np.ndarray: ...


@runtime_checkable
class RetrieverProtocol(Protocol):
    """`search(query_vectors [Q, D] float32, k) -> (Q lists of doc ids, scores [Q, k'])`.

    Each list holds at most k ids, best first; `scores` has one row per query (k' may be
    below k for a small corpus).
    """

    def search(self, query_vectors: np.ndarray, k: int) -> Tuple[List[List[str]], np.ndarray]: ...


@runtime_checkable
class IndexingRetrieverProtocol(RetrieverProtocol, Protocol):
    """A retriever that is handed each split's corpus before it is searched.

    `index(doc_ids, doc_vectors [N, D], corpus=name)` is called once per split, with the
    fused unit vectors of the usable documents of `corpus` ("corpus_1" / "corpus_2").
    """

    def index(self, doc_ids: Sequence[str], doc_vectors: np.ndarray, corpus: str) -> None: ...


#: A plain callable `retriever(query_vectors, k)` with the result of `search`.
SearchFn = Callable[[np.ndarray, int], Tuple[List[List[str]], np.ndarray]]

#: What `evaluate(retriever=...)` accepts.
RetrieverLike = Union[RetrieverProtocol, SearchFn]


@runtime_checkable
class FieldLike(Protocol):
    """One input field: the record keys that may hold its value, tried in order, and its kind.

    `gcl_train.data.DocField` (keys ("image_local", "image")) and
    `gcl_train.data.FieldSpec` (keys (key,)) fit.
    """

    @property
    def keys(self) -> Sequence[str]: ...

    @property
    def kind(self) -> str: ...


__all__ = [
    "EncoderProtocol", "FieldLike", "IndexingRetrieverProtocol", "Kind", "ROLES", "RetrieverLike",
    "RetrieverProtocol", "Role", "RoleAwareEncoderProtocol", "SearchFn",
]
