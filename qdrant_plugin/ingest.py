"""Resumable batched ingestion into a :class:`MultiFieldIndex`.

A killed ingest, run again, resumes and ends with every document exactly once:

* exactly once: point ids are derived from the caller's ids, so re-sending a batch
  overwrites the same points instead of adding new ones;
* resume: a small JSON progress marker (written atomically) records how many batches are
  durable. It is advanced only after ``index.flush()``, so it never claims a batch the store
  could lose; a rerun skips those batches (no re-encoding) and re-sends the rest.

Duplicate ids: two documents with one id would silently become one point (the later
overwrites the earlier), so ``ingest`` tracks every id it writes, in bounded memory (a
128-bit key per id: 16 MB per million), and by default refuses a repeated id
(``on_duplicate="error"``); ``"report"`` keeps the first document of each id and
``"last"`` the last, and both count the repeats and list them in the report. The keys of
the recorded batches are kept next to the marker (``ingest-<key>.ids``, appended before
the marker advances), so a resumed ingest still knows the ids written before the kill,
and the re-sent batches after the marker are not mistaken for duplicates.

The marker lives in a ``state_dir`` (by default inside the embedded store's collection
directory, or ``~/.cache/gcl-qdrant/...`` for a server) under a name derived from the
source's fingerprint, so different sources resume independently. ``":memory:"`` keeps no
marker: there is nothing to resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from ._io import atomic_write_json, human_bytes, read_json
from .errors import CorruptFileError, DuplicateIdError
from .ids import SeenIds, check_ids, check_on_duplicate, id_keys, repeated_ids
from .index import MultiFieldIndex

log = logging.getLogger(__name__)

MARKER_FORMAT = "gcl-qdrant-ingest"
# 2: the marker records how many id keys of the .ids file are durable (duplicate checks
# across a resume). A version-1 marker is not resumed from: the ingest starts over.
MARKER_VERSION = 2
# Test hook: exit the process right after the N-th batch of this run is sent, before it is
# flushed or recorded, the worst moment for a kill (tests/test_qdrant_ingest.py uses it).
CRASH_ENV = "GCL_QDRANT_CRASH_AFTER_BATCHES"
# Repeated ids listed in the report (all are counted).
REPORT_IDS = 100
_KEY_BYTES = 16


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
        n: number of documents, or None if unknown until read. A source that knows it
            (``n``, or its own ``__len__``) gets a progress bar with a total and an ETA,
            a check that it yields as many batches as it should, and, on an embedded
            store, a disk-space check for the whole ingest before anything is written.
        fingerprint: JSON-able identity of the source (paths, sizes, mtimes, model): a
            marker from a different fingerprint is not resumed from.
    """

    n: Optional[int] = None
    fingerprint: Dict[str, Any] = {}

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError(f"{type(self).__name__}: the number of documents is not known in advance")
        return self.n

    def __bool__(self) -> bool:  # a source of unknown length is still a source
        return True

    def all_ids(self) -> Optional[Sequence[str]]:
        """Every id in order, if the source has them at hand without reading its documents
        (lets ``ingest`` refuse repeated ids before writing anything); None otherwise."""
        return None

    def batches(self, batch_size: int, skip: int) -> Iterator[Batch]:
        """Yield batches ``skip, skip+1, ...`` of ``batch_size`` documents; skipping must be cheap."""
        raise NotImplementedError


def source_length(source: Any) -> Optional[int]:
    """The number of documents ``source`` will yield, or None if it does not know."""
    n = getattr(source, "n", None)
    if n is None:
        try:
            n = len(source)
        except TypeError:
            return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"source: expected its length (n or len()) to be an int >= 0 or None, got {n!r}")
    return int(n)


class ArraySource(BatchSource):
    """Documents already embedded: ids plus ``{field: [N, D_f]}`` arrays (memmaps are fine).

    Ids must be strings (see :mod:`qdrant_plugin.ids`); they are checked here, so a
    ``None`` or an int is refused before the ingest starts.

    Example:
        >>> src = ArraySource(["a", "b"], {"t": np.eye(2)})
        >>> [b.ids for b in src.batches(1, skip=1)], len(src)
        ([['b']], 2)
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: Mapping[str, Any],
        payloads: Optional[Sequence[Mapping[str, Any]]] = None,
        present: Optional[Mapping[str, Any]] = None,
        fingerprint: Optional[Mapping[str, Any]] = None,
    ):
        empty = isinstance(ids, (list, tuple, np.ndarray)) and len(ids) == 0  # an empty corpus is fine
        self.ids = [] if empty else check_ids(ids, allow_duplicates=True)
        if not isinstance(vectors, Mapping):
            raise ValueError(f"vectors: expected a mapping of field name to [N, D] array, got {type(vectors).__name__}")
        self.vectors = dict(vectors)
        self.n = len(self.ids)
        for f, v in self.vectors.items():
            shape = np.shape(v)
            if len(shape) != 2:
                raise ValueError(f"vectors[{f!r}]: expected a 2-D array [N, D], got shape {list(shape)}")
            if shape[0] != self.n:
                raise ValueError(f"vectors[{f!r}]: expected {self.n} rows (one per id), got {shape[0]}")
            if np.iscomplexobj(v):
                raise ValueError(f"vectors[{f!r}]: expected real numbers, got a complex array")
        if payloads is not None and len(payloads) != self.n:
            raise ValueError(f"payloads: expected {self.n} entries (one per id), got {len(payloads)}")
        self.payloads = payloads
        self.present = dict(present) if present is not None else None
        if self.present is not None:
            for f, m in self.present.items():
                if np.shape(m) != (self.n,):
                    raise ValueError(f"present[{f!r}]: expected shape [{self.n}], got {list(np.shape(m))}")
        self.fingerprint = dict(fingerprint) if fingerprint is not None else content_fingerprint(self.ids, self.vectors)

    def all_ids(self) -> Sequence[str]:
        return self.ids

    def batches(self, batch_size: int, skip: int) -> Iterator[Batch]:
        for s in range(skip * batch_size, self.n, batch_size):
            e = min(self.n, s + batch_size)
            yield Batch(
                ids=self.ids[s:e],
                vectors={f: np.asarray(v[s:e]) for f, v in self.vectors.items()},
                payloads=None if self.payloads is None else [p if p is None else dict(p) if isinstance(p, Mapping) else p
                                                             for p in self.payloads[s:e]],
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
    """What one ``ingest`` call did.

    ``duplicates`` counts the documents whose id had already been seen in this ingest
    (resumed runs included); ``duplicate_ids`` lists the first ``REPORT_IDS`` such ids.
    With ``on_duplicate="report"`` those documents were skipped (the first one of each id
    is stored), with ``"last"`` they overwrote the earlier one.
    """

    n_documents: int
    n_batches: int
    skipped_batches: int
    written_batches: int
    seconds: float
    optimize_seconds: float
    marker: Optional[str]
    resumed: bool
    duplicates: int = 0
    duplicate_ids: List[str] = field(default_factory=list)
    on_duplicate: str = "error"

    def summary(self) -> str:
        out = (f"{self.n_documents} documents in {self.n_batches} batches: {self.skipped_batches} already done, "
               f"{self.written_batches} written; {self.seconds:.1f}s (index build {self.optimize_seconds:.1f}s)")
        if self.duplicates:
            kept = "the first kept, later ones skipped" if self.on_duplicate == "report" else "the last one kept"
            more = "..." if self.duplicates > len(self.duplicate_ids) else ""
            out += (f"; {self.duplicates} documents repeated an earlier id ({kept}), so the collection got "
                    f"{self.n_documents - self.duplicates} distinct ones: {self.duplicate_ids[:10]}{more}")
        return out


class _Progress:
    """Marker + id-key file of one ingest: what is durable, and the ids written so far."""

    def __init__(self, marker: Optional[str]):
        self.marker = marker
        self.keys_path = None if marker is None else marker[:-len(".json")] + ".ids"
        self.seen = SeenIds()
        self.pending: List[np.ndarray] = []
        self.recorded_keys = 0
        self.duplicates = 0
        self.duplicate_ids: List[str] = []

    def recover_hint(self) -> str:
        return (f"delete {self.marker} (and {os.path.basename(self.keys_path)} next to it) to restart the "
                f"ingest from the first batch: re-sending documents is safe, upserts overwrite")

    def read_marker(self) -> Optional[Dict[str, Any]]:
        if self.marker is None:
            return None
        state = read_json(self.marker, what="the ingest progress marker", recover=self.recover_hint())
        if state is None:
            return None
        if not isinstance(state, dict):
            raise CorruptFileError(
                f"the ingest progress marker {self.marker} holds a JSON {type(state).__name__}, expected an "
                f"object; {self.recover_hint()}"
            )
        return state

    def load_keys(self, count: int) -> None:
        """Read the first ``count`` durable id keys (and drop any tail written after them)."""
        if count == 0:
            if self.keys_path and os.path.exists(self.keys_path):
                os.truncate(self.keys_path, 0)
            return
        want = count * _KEY_BYTES
        try:
            size = os.path.getsize(self.keys_path)
        except FileNotFoundError:
            size = -1
        if size < want:
            what = "is missing" if size < 0 else f"holds {size // _KEY_BYTES} ids"
            raise CorruptFileError(
                f"the ingest id file {self.keys_path} {what}, but the marker {self.marker} records "
                f"{count}; {self.recover_hint()}"
            )
        with open(self.keys_path, "rb") as f:
            for s in range(0, want, 1 << 24):
                chunk = f.read(min(1 << 24, want - s))
                self.seen.add(np.frombuffer(chunk, dtype="<u8").reshape(-1, 2).copy())
        if size > want:
            os.truncate(self.keys_path, want)
        self.recorded_keys = count

    def flush_keys(self) -> int:
        """Append the keys written since the last checkpoint, durably; returns the total."""
        if self.keys_path is None or not self.pending:
            self.pending = []
            return self.recorded_keys
        data = np.concatenate(self.pending).astype("<u8").tobytes()
        os.makedirs(os.path.dirname(self.keys_path), exist_ok=True)
        with open(self.keys_path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.recorded_keys += len(data) // _KEY_BYTES
        self.pending = []
        return self.recorded_keys


def _check_checkpoint_seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"checkpoint_seconds: expected a number of seconds >= 0, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < 0:
        raise ValueError(
            f"checkpoint_seconds: expected a finite number of seconds >= 0 (0: record progress after "
            f"every batch), got {v!r}"
        )
    return f


def ingest(
    index: MultiFieldIndex,
    source: BatchSource,
    batch_size: int = 1024,
    state_dir: Optional[str] = None,
    optimize: bool = True,
    progress: bool = True,
    checkpoint_seconds: float = 5.0,
    on_duplicate: str = "error",
) -> IngestReport:
    """Upsert every document of ``source`` in batches, resuming an interrupted earlier run.

    Args:
        index: the target index.
        source: a :class:`BatchSource` (e.g. :class:`ArraySource`).
        batch_size: documents per batch (also the unit of resume).
        state_dir: where the progress marker lives (default: :func:`default_state_dir`).
        optimize: build the HNSW index at the end (embedded store) / wait for the server.
        progress: show a tqdm bar (with a total and an ETA when the source knows its length).
        checkpoint_seconds: flush and advance the marker at most this often (and at the end);
            a kill loses at most this much work, which the rerun repeats. 0: every batch.
        on_duplicate: an id that occurs again in this ingest (in one batch or across
            batches, a resumed run included): "error" (default) refuses it before its
            batch is written (a source that lists its ids, like :class:`ArraySource`, is
            checked before anything is written); "report" keeps the first document of each
            id and skips the rest; "last" writes every one, so the last wins. Both count
            them in the report (``duplicates``, ``duplicate_ids``) and log a warning.

    Returns:
        :class:`IngestReport`.

    Raises:
        DuplicateIdError: a repeated id with ``on_duplicate="error"``.
        InsufficientSpaceError: the embedded store's disk has no room (checked for the
            whole ingest up front when the source knows its length, and before each batch).
        CorruptFileError: an unreadable marker (the message says how to restart).

    Example:
        >>> idx = MultiFieldIndex(":memory:", "c", fields={"t": 2})
        >>> ingest(idx, ArraySource(["a", "b", "c"], {"t": np.eye(3)[:, :2] + 1}), batch_size=2,
        ...        progress=False).written_batches
        2
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    batch_size = int(batch_size)
    checkpoint_seconds = _check_checkpoint_seconds(checkpoint_seconds)
    on_duplicate = check_on_duplicate(on_duplicate)
    for arg, v in (("optimize", optimize), ("progress", progress)):
        if not isinstance(v, bool):
            raise ValueError(f"{arg}: expected True or False, got {v!r}")
    if not callable(getattr(source, "batches", None)):
        raise ValueError(f"source: expected a BatchSource (with batches(batch_size, skip)), got {type(source).__name__}")
    if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
        raise ValueError(f"state_dir: expected a directory path or None, got {state_dir!r}")
    if state_dir is not None and os.path.exists(state_dir) and not os.path.isdir(state_dir):
        raise ValueError(f"state_dir: {os.fspath(state_dir)!r} exists and is not a directory")
    t0 = time.perf_counter()
    n_total = source_length(source)
    if not isinstance(getattr(source, "fingerprint", None), Mapping):
        raise ValueError(
            f"source.fingerprint: expected a dict identifying the source (paths, sizes, mtimes), got "
            f"{getattr(source, 'fingerprint', None)!r}: markers of different sources must not mix"
        )
    fp = {
        "source": dict(source.fingerprint),
        "collection": index.collection,
        "schema": {k: v for k, v in index.schema.to_json().items() if k != "plugin_version"},
    }
    try:
        key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    except (TypeError, ValueError) as e:
        raise ValueError(f"source.fingerprint: expected JSON-compatible values, got {source.fingerprint!r} ({e})") from None
    sdir = os.fspath(state_dir) if state_dir is not None else default_state_dir(index)
    marker = os.path.join(sdir, f"ingest-{key}.json") if sdir else None
    prog = _Progress(marker)

    done, optimized, complete = 0, False, False
    state = prog.read_marker()
    if state is not None:
        if (state.get("format") == MARKER_FORMAT and state.get("version") == MARKER_VERSION
                and state.get("fingerprint") == fp and state.get("batch_size") == batch_size):
            try:
                done = int(state["batches_done"])
                optimized = bool(state.get("optimized", False))
                complete = bool(state.get("complete", False))
                keys = int(state["ids_recorded"])
                dups = int(state.get("duplicates", 0))
                dup_ids = [str(d) for d in state.get("duplicate_ids", [])]
                if done < 0 or keys < 0 or dups < 0:
                    raise ValueError("negative counts")
            except (KeyError, TypeError, ValueError) as e:
                raise CorruptFileError(
                    f"the ingest progress marker {marker} is damaged ({type(e).__name__}: {e}); "
                    f"{prog.recover_hint()}"
                ) from None
            if n_total is not None and done > -(-n_total // batch_size):
                raise CorruptFileError(
                    f"the ingest progress marker {marker} records {done} batches done, but the source has "
                    f"only {-(-n_total // batch_size)}; {prog.recover_hint()}"
                )
            if not complete:
                prog.load_keys(keys)
            prog.recorded_keys = keys
            prog.duplicates, prog.duplicate_ids = dups, dup_ids
        else:
            log.warning("ingest marker %s does not match this source, batch size or plugin version; "
                        "starting over (upserts are idempotent, nothing is duplicated)", marker)
            prog.load_keys(0)
    elif prog.keys_path and os.path.exists(prog.keys_path):
        prog.load_keys(0)  # an id file without its marker records nothing
    resumed = done > 0
    n_batches = None if n_total is None else -(-n_total // batch_size)

    # Refuse repeated ids before writing anything where the source lists them.
    if on_duplicate == "error" and not complete:
        all_ids = getattr(source, "all_ids", None)
        listed = all_ids() if callable(all_ids) else None
        if listed is not None:
            rep, count = repeated_ids(listed, limit=10)
            if count:
                raise DuplicateIdError(
                    f"source: {count} id(s) occur more than once, e.g. {rep}; nothing was written. Each "
                    f"id is one document (a repeat would overwrite the earlier one): fix the ids, or pass "
                    f"on_duplicate='report' (keep the first) or 'last' (keep the last)"
                )

    def save(batches_done: int, is_complete: bool, opt: bool) -> None:
        if marker is None:
            return
        keys = prog.flush_keys()
        atomic_write_json(marker, {
            "format": MARKER_FORMAT, "version": MARKER_VERSION, "fingerprint": fp,
            "batch_size": batch_size, "batches_done": batches_done, "n_documents": n_total,
            "complete": is_complete, "optimized": opt, "ids_recorded": keys,
            "duplicates": prog.duplicates, "duplicate_ids": prog.duplicate_ids,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    start_docs = min(done * batch_size, n_total) if n_total is not None else done * batch_size
    if index.kind == "edge" and n_total is not None and n_total > start_docs:
        remaining = n_total - start_docs
        per_doc = 3 * 4 * sum(index.schema.vector_dims().values()) + 256
        need = remaining * per_doc
        if optimize:
            need += index.backend.optimize_bytes(index.count() + remaining)
        index.backend.check_space(
            need, f"ingesting {remaining} documents ({human_bytes(need)} estimated from the vector sizes "
                  f"{'and the index build ' if optimize else ''}without payloads)")

    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    bar = tqdm(total=n_total, initial=start_docs, unit="doc",
               desc=f"ingest {index.collection}", disable=not progress, dynamic_ncols=True)
    written = 0
    recorded = done
    last = time.monotonic()
    n_docs = start_docs
    b = done
    try:
        for batch in source.batches(batch_size, done):
            if n_batches is not None and b >= n_batches:
                raise RuntimeError(
                    f"source: yielded a batch {b} beyond the {n_batches} batches its {n_total} documents "
                    f"fill at batch_size {batch_size}; it was not written (its length is wrong)"
                )
            _write_batch(index, batch, b, batch_size, prog, on_duplicate)
            written += 1
            b += 1
            n_docs += len(batch.ids)
            bar.update(len(batch.ids))
            if crash_after and written >= crash_after:
                os._exit(75)
            if marker and time.monotonic() - last >= checkpoint_seconds:
                index.flush()
                recorded = done + written
                save(recorded, False, False)
                last = time.monotonic()
    except Exception:
        # Record the batches that did go in, so that a rerun (after freeing disk space, or
        # fixing the source) skips them; best effort: the error is what the caller needs.
        if marker and done + written > recorded:
            try:
                index.flush()
                save(done + written, False, False)
            except Exception as e2:  # pragma: no cover - disk trouble on top of the error
                log.warning("could not record ingest progress after the error: %s", e2)
        raise
    finally:
        bar.close()
    total_batches = done + written
    if n_batches is not None and total_batches != n_batches:
        raise RuntimeError(
            f"source yielded {total_batches} batches, expected {n_batches} for {n_total} documents"
        )
    index.flush()
    save(total_batches, True, optimized)
    if prog.duplicates:
        log.warning("ingest %s: %d documents repeated an earlier id (%s), e.g. %s", index.collection,
                    prog.duplicates, "first kept" if on_duplicate == "report" else "last kept",
                    prog.duplicate_ids[:10])
    t_opt = 0.0
    if optimize and not (optimized and written == 0):
        log.info("ingest %s: building the HNSW index over %d documents (minutes for a million; no "
                 "progress is reported while the engine builds)", index.collection, index.count())
        t1 = time.perf_counter()
        index.optimize()
        index.flush()
        t_opt = time.perf_counter() - t1
        save(total_batches, True, True)
    return IngestReport(
        n_documents=n_total if n_total is not None else n_docs,
        n_batches=total_batches, skipped_batches=done, written_batches=written,
        seconds=time.perf_counter() - t0, optimize_seconds=t_opt, marker=marker, resumed=resumed,
        duplicates=prog.duplicates, duplicate_ids=list(prog.duplicate_ids), on_duplicate=on_duplicate,
    )


def _write_batch(index: MultiFieldIndex, batch: Batch, b: int, batch_size: int, prog: _Progress,
                 on_duplicate: str) -> None:
    """Check one batch's ids against everything written so far in this ingest, then write it."""
    where = f"batch {b} (source documents from {b * batch_size})"
    if isinstance(batch.ids, (list, tuple, np.ndarray)) and len(batch.ids) == 0:
        return  # a corpus batch may have no usable document at all
    try:
        ids = check_ids(batch.ids, arg="ids", allow_duplicates=True)
    except ValueError as e:
        raise type(e)(f"{where}: {e}") from None
    keys = id_keys(ids)
    seen = prog.seen.contains(keys)
    first, last = {}, {}
    for i, d in enumerate(ids):
        first.setdefault(d, i)
        last[d] = i
    first_occ = np.zeros(len(ids), dtype=bool)
    first_occ[list(first.values())] = True
    repeat = seen | ~first_occ  # rows whose id was written before, here or in an earlier batch
    if repeat.any():
        rep = list(dict.fromkeys(ids[i] for i in np.flatnonzero(repeat)))
        if on_duplicate == "error":
            raise DuplicateIdError(
                f"{where}: id(s) {rep[:10]}{'...' if len(rep) > 10 else ''} occur earlier in this ingest "
                f"({len(rep)} repeated); this batch was not written (the ones before it were, and are "
                f"recorded for a resume). Each id is one document: fix the source, or pass "
                f"on_duplicate='report' (keep the first) or 'last' (keep the last)"
            )
        prog.duplicates += int(repeat.sum())
        room = REPORT_IDS - len(prog.duplicate_ids)
        if room > 0:
            have = set(prog.duplicate_ids)
            prog.duplicate_ids.extend([d for d in rep if d not in have][:room])
        if on_duplicate == "report":
            keep = np.flatnonzero(first_occ & ~seen)
        else:
            keep = np.array(sorted(last.values()), dtype=np.int64)
    else:
        keep = None
    try:
        index._write(ids, batch.vectors, batch.payloads, batch.present, keep)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{where}, rows numbered within the batch: {e}") from None
    new_keys = keys[first_occ & ~seen]
    prog.seen.add(new_keys)
    if prog.keys_path is not None:
        prog.pending.append(new_keys)
