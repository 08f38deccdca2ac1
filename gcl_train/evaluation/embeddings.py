"""Embedding tables: vectors keyed by id, on disk as `<name>.npy` + `<name>.ids.json`.

A table `<name>` is `<name>.npy` (float32 or float16 [N, D]) plus `<name>.ids.json` (a
JSON list of N strings). Tables the evaluator reads: "queries" (ids = query keys),
"corpus_1", "corpus_2" (ids = product ids); vectors are fused, one row per id.
`_RowWriter` streams rows to disk so a corpus of any size is written with flat memory.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..data.errors import DataFormatError
from ..fileio import atomic_write


@dataclass
class EmbeddingTable:
    """Vectors keyed by id: `ids[i]` owns `vectors[i]`.

    Shape:
        vectors [N, D] float32 or float16 (may be a read-only memmap).
    """

    ids: List[str]
    vectors: np.ndarray

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        v = self.vectors
        if not isinstance(v, np.ndarray) or v.ndim != 2:
            raise ValueError(f"vectors: expected a 2-D numpy array [N, D], got {getattr(v, 'shape', type(v))}")
        if v.shape[0] != len(self.ids):
            raise ValueError(f"vectors: expected {len(self.ids)} rows (one per id), got {v.shape[0]}")
        if len(set(self.ids)) != len(self.ids):
            seen, dup = set(), []
            for i in self.ids:
                if i in seen and i not in dup:
                    dup.append(i)
                seen.add(i)
            raise ValueError(f"ids: expected unique ids, got {len(self.ids) - len(seen)} repeats, e.g. {dup[:3]}")
        if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
            raise ValueError(f"vectors: expected a float array, got dtype {v.dtype}")
        self._index = None
        self._nonfinite = None

    def count_nonfinite(self, chunk_rows: int = 65536) -> int:
        """Rows holding a NaN or an infinity (read in chunks; memoised)."""
        if self._nonfinite is None:
            bad = 0
            for s in range(0, self.vectors.shape[0], chunk_rows):
                block = np.asarray(self.vectors[s: s + chunk_rows])
                bad += int((~np.isfinite(block).all(axis=1)).sum())
            self._nonfinite = bad
        return self._nonfinite

    def index_of(self) -> Dict[str, int]:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.ids)}
        return self._index

    def lookup(self, ids: Sequence[str], what: str = "ids") -> np.ndarray:
        """Rows for `ids` (KeyError naming the first few absent ids)."""
        idx = self.index_of()
        missing = [i for i in ids if i not in idx]
        if missing:
            raise KeyError(f"{what}: {len(missing)} ids have no precomputed embedding, e.g. {missing[:3]}")
        return np.asarray(self.vectors[[idx[i] for i in ids]], dtype=np.float32)

    def save(self, directory: str, name: str) -> Tuple[str, str]:
        """Write `<name>.npy` and `<name>.ids.json` atomically; returns their paths."""
        os.makedirs(directory, exist_ok=True)
        npy = os.path.join(directory, name + ".npy")
        ids = os.path.join(directory, name + ".ids.json")
        atomic_write(npy, lambda f: np.save(f, np.asarray(self.vectors)), binary=True)
        atomic_write(ids, lambda f: json.dump(self.ids, f))
        return npy, ids

    @classmethod
    def load(cls, directory: str, name: str, mmap: bool = True) -> "EmbeddingTable":
        """Read `<name>.npy` (memory-mapped) and `<name>.ids.json`."""
        npy = os.path.join(directory, name + ".npy")
        idp = os.path.join(directory, name + ".ids.json")
        for p in (npy, idp):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"embeddings: {p} not found")
        try:
            vectors = np.load(npy, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise DataFormatError(npy, 0, f"not a readable .npy array ({e})") from None
        with open(idp, "r", encoding="utf-8") as f:
            try:
                ids = json.load(f)
            except json.JSONDecodeError as e:
                raise DataFormatError(idp, e.lineno, f"invalid JSON: {e.msg}") from None
        if not isinstance(ids, list):
            raise DataFormatError(idp, 0, f"expected a JSON list of ids, got {type(ids).__name__}")
        try:
            return cls(ids, vectors)
        except ValueError as e:
            raise DataFormatError(npy, 0, str(e)) from None


def load_embeddings(directory: str) -> Dict[str, EmbeddingTable]:
    """Every `<name>.npy` + `<name>.ids.json` table in a directory."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"embeddings: not a directory: {directory}")
    out = {}
    for fn in sorted(os.listdir(directory)):
        if fn.endswith(".npy") and os.path.isfile(os.path.join(directory, fn[:-4] + ".ids.json")):
            out[fn[:-4]] = EmbeddingTable.load(directory, fn[:-4])
    return out


def _as_tables(embeddings) -> Dict[str, EmbeddingTable]:
    if embeddings is None:
        return {}
    if isinstance(embeddings, (str, os.PathLike)):
        return load_embeddings(os.fspath(embeddings))
    if not isinstance(embeddings, Mapping):
        raise ValueError(f"embeddings: expected a directory or a mapping name -> EmbeddingTable, got {type(embeddings).__name__}")
    out = {}
    for name, t in embeddings.items():
        if isinstance(t, EmbeddingTable):
            out[name] = t
        elif isinstance(t, (tuple, list)) and len(t) == 2:
            out[name] = EmbeddingTable(list(t[0]), np.asarray(t[1]))
        else:
            raise ValueError(f"embeddings[{name!r}]: expected an EmbeddingTable or (ids, vectors), got {type(t).__name__}")
    return out


class _RowWriter:
    """Append float rows to a raw temp file, then turn it into a `.npy` (flat memory)."""

    def __init__(self, directory: str, name: str, dtype: str):
        self.dir, self.name, self.dtype = directory, name, np.dtype(dtype)
        os.makedirs(directory, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".raw", dir=directory)
        self.f = os.fdopen(fd, "wb")
        self.n = 0
        self.d = None

    def append(self, rows: np.ndarray) -> None:
        if self.d is None:
            self.d = rows.shape[1]
        self.f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.n += rows.shape[0]

    def finish(self, ids: List[str]) -> EmbeddingTable:
        self.f.close()
        d = self.d or 1
        final = os.path.join(self.dir, self.name + ".npy")
        fd, tmp_npy = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp.npy", dir=self.dir)
        os.close(fd)
        try:
            mm = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=self.dtype, shape=(self.n, d))
            row_bytes = d * self.dtype.itemsize
            step = max(1, (64 << 20) // max(row_bytes, 1))
            with open(self.tmp, "rb") as raw:
                for s in range(0, self.n, step):
                    e = min(self.n, s + step)
                    mm[s:e] = np.frombuffer(raw.read((e - s) * row_bytes), dtype=self.dtype).reshape(e - s, d)
            mm.flush()
            del mm
            os.replace(tmp_npy, final)
        finally:
            for p in (tmp_npy, self.tmp):
                if os.path.exists(p):
                    os.unlink(p)
        atomic_write(os.path.join(self.dir, self.name + ".ids.json"), lambda f: json.dump(ids, f))
        return EmbeddingTable.load(self.dir, self.name)

    def abort(self):
        self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

