"""Resumable batched ingestion into a :class:`MultiFieldIndex`.

A killed ingest, run again, resumes and ends with every document exactly once:

* exactly once: point ids are derived from the caller's ids, so re-sending a batch
  overwrites the same points instead of adding new ones;
* resume: a small JSON progress marker (written atomically) records how many batches are
  durable. It is advanced only after ``index.flush()``, so it never claims a batch the store
  could lose; a rerun skips those batches (no re-encoding) and re-sends the rest.

The marker lives in a ``state_dir`` (by default inside the embedded store's collection
directory, or ``~/.cache/gcl-qdrant/...`` for a server) under a name derived from the
source's fingerprint, so different sources resume independently. ``":memory:"`` keeps no
marker: there is nothing to resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ._io import atomic_write_json, read_json
from .index import MultiFieldIndex

log = logging.getLogger(__name__)

MARKER_FORMAT = "gcl-qdrant-ingest"
MARKER_VERSION = 1
# Test hook: exit the process right after the N-th batch of this run is sent, before it is
# flushed or recorded, the worst moment for a kill (tests/test_qdrant_ingest.py uses it).
CRASH_ENV = "GCL_QDRANT_CRASH_AFTER_BATCHES"


@dataclass
class Batch:
    """One batch for ``MultiFieldIndex.upsert``."""

    ids: List[str]
    vectors: Dict[str, np.ndarray]
    payloads: Optional[List[Dict[str, Any]]] = None
    present: Optional[Dict[str, np.ndarray]] = None


class BatchSource:
    """Where documents come from. Subclasses implement ``batches(batch_size, skip)``.

    Attributes:
        n: number of documents (None if unknown until read).
        fingerprint: JSON-able identity of the source (paths, sizes, mtimes, model): a
            marker from a different fingerprint is not resumed from.
    """

    n: Optional[int] = None
    fingerprint: Dict[str, Any] = {}

    def batches(self, batch_size: int, skip: int) -> Iterator[Batch]:
        """Yield batches ``skip, skip+1, ...`` of ``batch_size`` documents; skipping must be cheap."""
        raise NotImplementedError


class ArraySource(BatchSource):
    """Documents already embedded: ids plus ``{field: [N, D_f]}`` arrays (memmaps are fine).

    Example:
        >>> src = ArraySource(["a", "b"], {"t": np.eye(2)})
        >>> [b.ids for b in src.batches(1, skip=1)]
        [['b']]
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, Any],
        payloads: Optional[Sequence[Mapping[str, Any]]] = None,
        present: Optional[Mapping[str, Any]] = None,
        fingerprint: Optional[Mapping[str, Any]] = None,
    ):
        self.ids = [str(i) for i in ids]
        self.vectors = dict(vectors)
        self.n = len(self.ids)
        for f, v in self.vectors.items():
            if np.shape(v)[0] != self.n:
                raise ValueError(f"vectors[{f!r}]: expected {self.n} rows (one per id), got {np.shape(v)[0]}")
        if payloads is not None and len(payloads) != self.n:
            raise ValueError(f"payloads: expected {self.n} entries (one per id), got {len(payloads)}")
        self.payloads = payloads
        self.present = dict(present) if present is not None else None
        self.fingerprint = dict(fingerprint) if fingerprint is not None else content_fingerprint(self.ids, self.vectors)

    def batches(self, batch_size: int, skip: int) -> Iterator[Batch]:
        for s in range(skip * batch_size, self.n, batch_size):
            e = min(self.n, s + batch_size)
            yield Batch(
                ids=self.ids[s:e],
                vectors={f: np.asarray(v[s:e]) for f, v in self.vectors.items()},
                payloads=None if self.payloads is None else [dict(p or {}) for p in self.payloads[s:e]],
                present=None if self.present is None else {f: np.asarray(m[s:e]) for f, m in self.present.items()},
            )


def content_fingerprint(ids: Sequence[str], vectors: Mapping[str, Any], sample: int = 64) -> Dict[str, Any]:
    """A cheap identity for in-memory data: all ids plus shapes and a sample of rows."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode("utf-8"))
        h.update(b"\0")
    n = len(ids)
    rows = np.unique(np.linspace(0, max(n - 1, 0), num=min(sample, n), dtype=np.int64)) if n else []
    for f in sorted(vectors):
        v = vectors[f]
        h.update(f"{f}:{tuple(np.shape(v))}".encode())
        if len(rows):
            h.update(np.ascontiguousarray(np.asarray(v[rows], dtype=np.float32)).tobytes())
    return {"kind": "arrays", "n": n, "sha256": h.hexdigest()}


def file_fingerprint(path: str) -> Dict[str, Any]:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def default_state_dir(index: MultiFieldIndex) -> Optional[str]:
    """Where ingest markers of ``index`` live by default (None for ``":memory:"``)."""
    b = index.backend
    if index.kind == "edge":
        return os.path.join(b.root, "ingest")
    if index.kind == "remote":
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", b.describe().replace("Qdrant server ", ""))
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "gcl-qdrant", safe, index.collection)
    return None


@dataclass
class IngestReport:
    """What one ``ingest`` call did."""

    n_documents: int
    n_batches: int
    skipped_batches: int
    written_batches: int
    seconds: float
    optimize_seconds: float
    marker: Optional[str]
    resumed: bool

    def summary(self) -> str:
        return (f"{self.n_documents} documents in {self.n_batches} batches: {self.skipped_batches} already done, "
                f"{self.written_batches} written; {self.seconds:.1f}s (index build {self.optimize_seconds:.1f}s)")


def ingest(
    index: MultiFieldIndex,
    source: BatchSource,
    batch_size: int = 1024,
    state_dir: Optional[str] = None,
    optimize: bool = True,
    progress: bool = True,
    checkpoint_seconds: float = 5.0,
) -> IngestReport:
    """Upsert every document of ``source`` in batches, resuming an interrupted earlier run.

    Args:
        index: the target index.
        source: a :class:`BatchSource` (e.g. :class:`ArraySource`).
        batch_size: documents per batch (also the unit of resume).
        state_dir: where the progress marker lives (default: :func:`default_state_dir`).
        optimize: build the HNSW index at the end (embedded store) / wait for the server.
        progress: show a tqdm bar.
        checkpoint_seconds: flush and advance the marker at most this often (and at the end);
            a kill loses at most this much work, which the rerun repeats.

    Returns:
        :class:`IngestReport`.

    Example:
        >>> idx = MultiFieldIndex(":memory:", "c", fields={"t": 2})
        >>> ingest(idx, ArraySource(["a", "b", "c"], {"t": np.eye(3)[:, :2] + 1}), batch_size=2,
        ...        progress=False).written_batches
        2
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    t0 = time.perf_counter()
    fp = {
        "source": source.fingerprint,
        "collection": index.collection,
        "schema": {k: v for k, v in index.schema.to_json().items() if k != "plugin_version"},
    }
    key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    sdir = state_dir if state_dir is not None else default_state_dir(index)
    marker = os.path.join(sdir, f"ingest-{key}.json") if sdir else None

    done, optimized = 0, False
    state = read_json(marker) if marker else None
    if state is not None:
        if (state.get("format") == MARKER_FORMAT and state.get("fingerprint") == fp
                and state.get("batch_size") == batch_size):
            done = int(state.get("batches_done", 0))
            optimized = bool(state.get("optimized", False))
        else:
            log.warning("ingest marker %s does not match this source or batch size; starting over "
                        "(upserts are idempotent, nothing is duplicated)", marker)
    resumed = done > 0

    n_total = source.n
    n_batches = None if n_total is None else -(-n_total // batch_size)

    def save(batches_done: int, complete: bool, opt: bool) -> None:
        if marker is None:
            return
        atomic_write_json(marker, {
            "format": MARKER_FORMAT, "version": MARKER_VERSION, "fingerprint": fp,
            "batch_size": batch_size, "batches_done": batches_done, "n_documents": n_total,
            "complete": complete, "optimized": opt, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    bar = tqdm(total=n_total, initial=min(done * batch_size, n_total or 0), unit="doc",
               desc=f"ingest {index.collection}", disable=not progress)
    written = 0
    recorded = done
    last = time.monotonic()
    n_docs = min(done * batch_size, n_total) if n_total is not None else done * batch_size
    try:
        for batch in source.batches(batch_size, done):
            if batch.ids:  # a corpus batch may have no usable document at all
                index.upsert(batch.ids, batch.vectors, batch.payloads, batch.present)
            written += 1
            n_docs += len(batch.ids)
            bar.update(len(batch.ids))
            if crash_after and written >= crash_after:
                os._exit(75)
            if marker and time.monotonic() - last >= checkpoint_seconds:
                index.flush()
                recorded = done + written
                save(recorded, False, False)
                last = time.monotonic()
    finally:
        bar.close()
    total_batches = done + written
    if n_batches is not None and total_batches != n_batches:
        raise RuntimeError(
            f"source yielded {total_batches} batches, expected {n_batches} for {n_total} documents"
        )
    index.flush()
    save(total_batches, True, optimized)
    t_opt = 0.0
    if optimize and not (optimized and written == 0):
        t1 = time.perf_counter()
        index.optimize()
        index.flush()
        t_opt = time.perf_counter() - t1
        save(total_batches, True, True)
    return IngestReport(
        n_documents=n_total if n_total is not None else n_docs,
        n_batches=total_batches, skipped_batches=done, written_batches=written,
        seconds=time.perf_counter() - t0, optimize_seconds=t_opt, marker=marker, resumed=resumed,
    )
