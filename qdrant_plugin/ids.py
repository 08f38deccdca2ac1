"""Caller ids: validation, the mapping to Qdrant point ids, and duplicate detection.

Document ids are strings (Python ``str`` or ``numpy.str_``), non-empty and encodable as
UTF-8. Anything else (``None``, ints, floats, bools, lists) is refused rather than
converted, because a conversion silently merges ids: ``str(None)`` is ``"None"``, and
``1`` and ``"1"`` would become one document. Where ids come from a file, the reader
decides: :func:`ids_from_json` reads JSON integers as their decimal string (so ``1`` and
``"1"`` in one list are then duplicates, reported as such) and refuses the other types.

Qdrant point ids are unsigned ints or UUIDs; a UUIDv5 over a fixed namespace maps each
string to the same point id on every run and every machine, so re-ingesting a document
overwrites it instead of duplicating it. The caller's string is also stored in the
payload (``schema.ID_KEY``) and returned by search.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .errors import DuplicateIdError

# Fixed forever: uuid5(NAMESPACE_URL, "https://github.com/gcl/qdrant_plugin/point-id").
# Changing it would give every stored document a new point id.
POINT_ID_NAMESPACE = uuid.UUID("36a6c797-b4a4-5891-8f4a-5d683b2ee3a2")

# What to do with an id seen before in the same upsert / ingest.
ON_DUPLICATE = ("error", "report", "last")


def point_id(doc_id: str) -> str:
    """The point id (UUID string) for a caller id.

    Example:
        >>> point_id("B000123") == point_id("B000123")
        True
    """
    return str(uuid.uuid5(POINT_ID_NAMESPACE, doc_id))


def point_ids(doc_ids: Iterable[str]) -> List[str]:
    return [str(uuid.uuid5(POINT_ID_NAMESPACE, d)) for d in doc_ids]


def _show(values: Sequence[Any], k: int = 10) -> str:
    return f"{list(values[:k])}{'...' if len(values) > k else ''}"


def check_on_duplicate(on_duplicate: Any) -> str:
    if not isinstance(on_duplicate, str) or on_duplicate not in ON_DUPLICATE:
        raise ValueError(f"on_duplicate: expected one of {ON_DUPLICATE}, got {on_duplicate!r}")
    return on_duplicate


def check_ids(ids: Any, arg: str = "ids", allow_duplicates: bool = False) -> List[str]:
    """Check a batch of caller ids: non-empty UTF-8 strings, at least one, distinct unless
    ``allow_duplicates``.

    Raises:
        ValueError naming the argument and the position; :class:`DuplicateIdError` for
        repeated ids.
    """
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise ValueError(f"{arg}: expected a sequence of strings, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise ValueError(f"{arg}: expected a 1-D sequence of strings, got an array of shape {list(ids.shape)}")
    out = []
    for i, x in enumerate(ids):
        if isinstance(x, np.str_):
            x = str(x)
        if not isinstance(x, str) or not x:
            hint = ""
            if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
                hint = " (ids are strings: pass str(id) if the integer is the id)"
            elif x is None:
                hint = " (a missing id cannot be stored)"
            raise ValueError(f"{arg}[{i}]: expected a non-empty string, got {x!r}{hint}")
        try:
            x.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{arg}[{i}]: expected a string encodable as UTF-8, got {x!r} ({e.reason} at "
                f"position {e.start})"
            ) from None
        out.append(x)
    if len(out) == 0:
        raise ValueError(f"{arg}: expected at least one id, got an empty sequence")
    if not allow_duplicates and len(set(out)) != len(out):
        dup = [k for k, c in Counter(out).items() if c > 1]
        raise DuplicateIdError(
            f"{arg}: duplicate ids in one batch: {_show(dup)} ({len(dup)} duplicated); each document "
            f"must appear once per upsert (or pass on_duplicate='last' or 'report')"
        )
    return out


def ids_from_json(values: Any, where: str) -> List[str]:
    """Ids read from a JSON list: strings as they are, integers as their decimal string.

    Floats, bools, null, lists and objects are refused with the position: converting them
    with ``str()`` would store ``None`` as the id ``"None"`` and ``1.0`` as ``"1.0"``.

    Example:
        >>> ids_from_json(["a", 7], "ids.json")
        ['a', '7']
    """
    if not isinstance(values, list):
        raise ValueError(f"{where}: expected a JSON list of ids, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError(
                f"{where}: item {i}: expected a string or an integer id, got {type(v).__name__} {v!r}"
            )
        out.append(v if isinstance(v, str) else str(v))
    check_ids(out, arg=where, allow_duplicates=True)
    return out


def dedupe(ids: Sequence[str], on_duplicate: str) -> Tuple[np.ndarray, List[str], int]:
    """Rows of ``ids`` to keep under ``on_duplicate`` ("report": first wins; "last": last wins).

    Returns:
        ``(kept row numbers ascending, distinct repeated ids, rows dropped)``.
    """
    first = {}
    last = {}
    for i, d in enumerate(ids):
        first.setdefault(d, i)
        last[d] = i
    if len(first) == len(ids):
        return np.arange(len(ids)), [], 0
    pick = first if on_duplicate == "report" else last
    keep = np.array(sorted(pick.values()), dtype=np.int64)
    repeated = [d for d, i in first.items() if last[d] != i]
    return keep, repeated, len(ids) - len(keep)


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """128-bit keys of ids (BLAKE2b), as ``[N, 2]`` uint64: stable across runs and machines.

    Two different ids share a key with probability about ``N**2 / 2**129``, which is as
    negligible as two ids sharing a UUIDv5 point id (which would merge them in the store).
    """
    buf = b"".join(hashlib.blake2b(d.encode("utf-8"), digest_size=16).digest() for d in ids)
    return np.frombuffer(buf, dtype="<u8").reshape(-1, 2).copy() if ids else np.zeros((0, 2), "<u8")


class SeenIds:
    """The set of ids written so far in one ingest, as 128-bit keys: 16 bytes per id.

    Keys live in sorted runs whose sizes halve from the first (merged like a binary
    counter), so adding a batch costs ``O(batch * log n)`` amortised and a lookup is one
    binary search per run: millions of ids fit in tens of MB and stay fast.

    Example:
        >>> s = SeenIds(); s.add(id_keys(["a", "b"]))
        >>> s.contains(id_keys(["b", "c"])).tolist(), len(s)
        ([True, False], 2)
    """

    def __init__(self) -> None:
        self._runs: List[Tuple[np.ndarray, np.ndarray]] = []  # (hi sorted, lo aligned)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, keys: np.ndarray) -> None:
        """Add ``[M, 2]`` keys (the caller makes sure none is present yet)."""
        if len(keys) == 0:
            return
        order = np.argsort(keys[:, 0], kind="stable")
        self._runs.append((keys[order, 0].copy(), keys[order, 1].copy()))
        self._n += len(keys)
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (h1, l1), (h2, l2) = self._runs[-2], self._runs[-1]
            hi = np.concatenate([h1, h2])
            lo = np.concatenate([l1, l2])
            order = np.argsort(hi, kind="stable")
            self._runs[-2:] = [(hi[order], lo[order])]

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """``[M]`` bool: which keys were added before."""
        found = np.zeros(len(keys), dtype=bool)
        if len(keys) == 0:
            return found
        qh, ql = keys[:, 0], keys[:, 1]
        for hi, lo in self._runs:
            left = np.searchsorted(hi, qh, side="left")
            right = np.searchsorted(hi, qh, side="right")
            span = right - left
            one = span == 1
            if one.any():
                found[one] |= lo[left[one]] == ql[one]
            for j in np.flatnonzero(span > 1):  # equal high halves: vanishingly rare
                found[j] |= bool((lo[left[j]:right[j]] == ql[j]).any())
        return found

    def keys(self) -> np.ndarray:
        """Every key, ``[n, 2]`` (order unspecified)."""
        if not self._runs:
            return np.zeros((0, 2), "<u8")
        return np.stack([np.concatenate([h for h, _ in self._runs]),
                         np.concatenate([lo for _, lo in self._runs])], axis=1)


def repeated_ids(ids: Sequence[str], limit: Optional[int] = None) -> Tuple[List[str], int]:
    """Ids that occur more than once in ``ids``, in bounded memory (8 bytes per id plus the
    repeated ones): ``(first `limit` repeated ids, number of distinct repeated ids)``."""
    n = len(ids)
    if n < 2:
        return [], 0
    hi = id_keys(ids)[:, 0] if n <= 1_000_000 else np.concatenate(
        [id_keys(ids[s:s + 1_000_000])[:, 0] for s in range(0, n, 1_000_000)])
    order = np.argsort(hi, kind="stable")
    sh = hi[order]
    eq = np.flatnonzero(sh[1:] == sh[:-1])
    if len(eq) == 0:
        return [], 0
    cand = np.unique(np.concatenate([order[eq], order[eq + 1]]))
    counts = Counter(ids[int(i)] for i in cand)  # exact comparison of the candidates
    rep = [d for d, c in counts.items() if c > 1]
    return (rep if limit is None else rep[:limit]), len(rep)
