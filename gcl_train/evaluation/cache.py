"""What produced each artefact of an evaluation, and whether a stored one may be reused.

`evaluate(out_dir=..., resume=True)` reuses three kinds of artefacts from an earlier run
into the same directory, each only when it was made by the same producer:

    qrels/<split>.json (+ .meta.json)       the ground truth: config (left fields, source,
                                            n_queries, seed, top_k, weight column) and
                                            the split CSV / gt file it was read from
    embeddings/<corpus>.npy (+ .meta.json)  corpus embeddings: the encoder, the document
                                            fields, check_images, dtype, the corpus file
                                            and the image root
    splits/<split>.json                     a finished split: all of the above, the whole
                                            EvalConfig, the retriever, and the digests of
                                            precomputed tables used

A producer key is a plain JSON dict; `key_mismatch` names the parts that differ, and the
evaluator logs them and recomputes. Files are identified by path, size and mtime (a data
file rewritten in place changes its mtime); an encoder by the `encoder_id` its caller
gives (`gcl-eval` passes a content digest of the checkpoint); precomputed tables by a
digest of their ids and vectors. An encoder without an id cannot be checked: its
artefacts are reused on the caller's word, with a warning.

Every artefact is written data first, its `.meta.json` (or the split JSON) last, and the
marker is removed before the data is rewritten, so a run killed half-way leaves nothing
that looks finished.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ..data.errors import DataFormatError
from ..fileio import atomic_write, atomic_write_json
from .embeddings import EmbeddingTable

log = logging.getLogger(__name__)

#: Bumped when the meaning of a stored artefact changes.
CACHE_VERSION = 1
#: Temp files of a killed writer older than this are removed (a live writer touches its
#: file far more often).
STALE_TEMP_SECONDS = 600


def file_digest(path: str, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Content digest of a file, "sha256:<hex>" (streamed; flat memory).

    Example:
        >>> # file_digest("runs/tiny/model.pt")  ->  'sha256:3f1c...'
    """
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return f"{algorithm}:{h.hexdigest()}"


def file_stamp(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """{"path", "size", "mtime_ns"} of a file (None for None or an absent file)."""
    if path is None or not os.path.isfile(path):
        return None
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def table_digest(table: EmbeddingTable, chunk_rows: int = 65536) -> str:
    """Digest of a table's ids and vectors (memoised on the table; memmaps read in chunks)."""
    cached = getattr(table, "_digest", None)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    h.update(json.dumps(table.ids).encode("utf-8"))
    v = table.vectors
    h.update(f"{v.dtype.str}{v.shape}".encode())
    for s in range(0, v.shape[0], chunk_rows):
        h.update(np.ascontiguousarray(v[s: s + chunk_rows]).tobytes())
    table._digest = f"sha256:{h.hexdigest()}"
    return table._digest


def key_mismatch(old: Optional[Mapping[str, Any]], new: Mapping[str, Any], prefix: str = "") -> List[str]:
    """Names of the parts of producer key `new` that differ from `old` (empty: same producer).

    Example:
        >>> key_mismatch({"encoder": "a", "config": {"seed": 1}}, {"encoder": "b", "config": {"seed": 2}})
        ['config.seed', 'encoder']
    """
    if not isinstance(old, Mapping):
        return [prefix.rstrip(".") or "everything (no key recorded)"]
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(key_mismatch(a, b, f"{prefix}{k}."))
        else:
            out.append(f"{prefix}{k}")
    return out


def _read_json(path: str) -> Tuple[Any, Optional[str]]:
    """(object, None) or (None, why it could not be read)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, "absent"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"unreadable ({e})"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ArtefactStore:
    """The evaluator's files under `out_dir`, written atomically and keyed by producer.

    Args:
        out_dir: the evaluation's output directory.
        resume: when False nothing is read back (every artefact is recomputed and
            overwritten); when True an artefact whose producer key matches is reused.
    """

    def __init__(self, out_dir: str, resume: bool = False):
        self.out_dir = os.fspath(out_dir)
        self.resume = bool(resume)
        self.emb_dir = os.path.join(self.out_dir, "embeddings")
        self._warned_unchecked = False

    def path(self, kind: str, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.out_dir, kind, name + suffix)

    def _unchecked(self, key: Mapping[str, Any], what: str) -> None:
        if key.get("encoder", "") is None and not self._warned_unchecked:
            self._warned_unchecked = True
            log.warning("resume: the encoder has no encoder_id, so %s in %s are reused on the caller's word that "
                        "it is the encoder that made them; pass encoder_id= (gcl-eval does) to have that checked",
                        what, self.out_dir)

    # ground truth ---------------------------------------------------------------------

    def load_qrels(self, split: str, key: Mapping[str, Any]):
        """(qrels, source, notes) of an earlier run with the same producer, else None."""
        if not self.resume:
            return None
        meta, why = _read_json(self.path("qrels", split, ".meta.json"))
        if meta is None:
            if why != "absent":
                log.info("%s: recomputing the ground truth: qrels/%s.meta.json is %s", split, split, why)
            return None
        diff = key_mismatch(meta.get("key"), key)
        if diff:
            log.info("%s: recomputing the ground truth: the stored qrels were made with a different %s",
                     split, ", ".join(diff))
            return None
        qrels, why = _read_json(self.path("qrels", split))
        if not isinstance(qrels, dict) or len(qrels) != meta.get("n_queries"):
            log.info("%s: recomputing the ground truth: qrels/%s.json is %s", split, split, why or "incomplete")
            return None
        log.info("%s: reusing the ground truth in qrels/%s.json", split, split)
        return qrels, meta.get("source", "csv"), list(meta.get("notes", []))

    def save_qrels(self, split: str, key: Mapping[str, Any], qrels, source: str, notes: List[str]) -> None:
        meta_path = self.path("qrels", split, ".meta.json")
        _unlink(meta_path)
        atomic_write(self.path("qrels", split), lambda f: json.dump(qrels, f))
        atomic_write_json(meta_path, {"version": CACHE_VERSION, "key": dict(key), "source": source,
                                      "notes": list(notes), "n_queries": len(qrels)})

    # corpus embeddings ----------------------------------------------------------------

    def clean_stale_temps(self, corpus: str) -> None:
        """Remove the temp files a killed corpus writer left behind (older than STALE_TEMP_SECONDS)."""
        now = time.time()
        for p in glob.glob(os.path.join(glob.escape(self.emb_dir), f".{corpus}.*")):
            try:
                if now - os.path.getmtime(p) > STALE_TEMP_SECONDS:
                    os.unlink(p)
                    log.info("removed %s, left by an interrupted run", p)
            except OSError:
                pass

    def load_corpus(self, corpus: str, key: Mapping[str, Any]):
        """(EmbeddingTable, counts) of an earlier run with the same producer, else None."""
        if not self.resume:
            return None
        meta, why = _read_json(os.path.join(self.emb_dir, corpus + ".meta.json"))
        npy = os.path.join(self.emb_dir, corpus + ".npy")
        if meta is None:
            if why != "absent" or os.path.exists(npy):
                log.info("%s: recomputing the embeddings: %s.meta.json is %s (an unfinished or older run)",
                         corpus, corpus, why)
            return None
        diff = key_mismatch(meta.get("key"), key)
        if diff:
            log.info("%s: recomputing the embeddings: the cached ones were made with a different %s",
                     corpus, ", ".join(diff))
            return None
        stamps = {"npy": file_stamp(npy), "ids": file_stamp(os.path.join(self.emb_dir, corpus + ".ids.json"))}
        if stamps != meta.get("files"):
            log.info("%s: recomputing the embeddings: %s.npy or .ids.json changed after they were written",
                     corpus, corpus)
            return None
        try:
            table = EmbeddingTable.load(self.emb_dir, corpus)
        except (OSError, ValueError, DataFormatError) as e:
            log.info("%s: recomputing the embeddings: the cached table is unreadable (%s)", corpus, e)
            return None
        self._unchecked(key, "cached corpus embeddings")
        log.info("%s: reusing the embeddings in %s", corpus, npy)
        return table, dict(meta.get("counts", {}))

    def start_corpus(self, corpus: str) -> None:
        """Call before writing a corpus table: drops its marker and stale temp files."""
        _unlink(os.path.join(self.emb_dir, corpus + ".meta.json"))
        self.clean_stale_temps(corpus)

    def finish_corpus(self, corpus: str, key: Mapping[str, Any], table: EmbeddingTable, counts) -> None:
        stamps = {"npy": file_stamp(os.path.join(self.emb_dir, corpus + ".npy")),
                  "ids": file_stamp(os.path.join(self.emb_dir, corpus + ".ids.json"))}
        atomic_write_json(os.path.join(self.emb_dir, corpus + ".meta.json"),
                          {"version": CACHE_VERSION, "key": dict(key), "counts": dict(counts), "n": len(table.ids),
                           "files": stamps})

    # finished splits ------------------------------------------------------------------

    def load_split(self, split: str, key: Mapping[str, Any], need_run: bool = False):
        """The `SplitResult` fields of an earlier finished split with the same producer, else None."""
        if not self.resume:
            return None
        prev, why = _read_json(self.path("splits", split))
        if prev is None:
            if why != "absent":
                log.info("%s: evaluating again: splits/%s.json is %s", split, split, why)
            return None
        diff = key_mismatch(prev.get("key"), key)
        if diff:
            log.info("%s: evaluating again: the stored result was made with a different %s", split, ", ".join(diff))
            return None
        if need_run and not (prev.get("run_saved") and os.path.isfile(self.path("runs", split))):
            log.info("%s: evaluating again: --save-runs needs the run, which the earlier evaluation did not save",
                     split)
            return None
        if not isinstance(prev.get("result"), dict):
            log.info("%s: evaluating again: splits/%s.json has no result", split, split)
            return None
        self._unchecked(key, "finished splits")
        log.info("%s: reusing %s", split, self.path("splits", split))
        return prev["result"]

    def save_split(self, split: str, key: Mapping[str, Any], result: Dict[str, Any],
                   run: Optional[Mapping[str, Mapping[str, float]]]) -> None:
        """Write the run (when given) and then the split JSON; a run file of another producer is removed."""
        done = self.path("splits", split)
        run_path = self.path("runs", split)
        prev, _ = _read_json(done)
        _unlink(done)
        if run is not None:
            atomic_write(run_path, lambda f: json.dump(run, f))
            run_saved = True
        else:
            run_saved = bool(isinstance(prev, dict) and prev.get("run_saved") and not key_mismatch(prev.get("key"), key)
                             and os.path.isfile(run_path))
            if not run_saved and os.path.exists(run_path):
                _unlink(run_path)
                log.info("%s: removed runs/%s.json of an earlier evaluation by another producer", split, split)
        atomic_write_json(done, {"version": CACHE_VERSION, "key": dict(key), "config": key.get("config"),
                                 "run_saved": run_saved, "result": result}, indent=1)


__all__ = ["ArtefactStore", "file_digest", "file_stamp", "key_mismatch", "table_digest"]
