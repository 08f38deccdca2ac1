"""``gcl-qdrant``: ingest, search and evaluate through a Qdrant index.

    # a corpus encoded with a trained checkpoint (MarqoGS or synthetic layout)
    gcl-qdrant ingest --store ./qdrant_store --collection products \\
        --data marqo_gs_wfash_1m --corpus 1 --checkpoint runs/gcl/model.pt
    # precomputed embeddings: one .npy per field plus the ids
    gcl-qdrant ingest --store ./qdrant_store --collection products \\
        --vectors title=title.npy --vectors image=image.npy --ids ids.json
    gcl-qdrant search "red linen summer dress" --checkpoint runs/gcl/model.pt \\
        --store ./qdrant_store --collection products --weights image=0.9,title=0.1
    gcl-qdrant eval --data marqo_gs_wfash_1m --checkpoint runs/gcl/model.pt --out eval_qdrant

``--store`` is a directory (embedded Qdrant Edge, the default), ``:memory:`` or a server
URL; a server's API key is read from the environment variable named by ``--api-key-env``
(default QDRANT_API_KEY), never from the command line, so it stays out of shell history
and process lists. An interrupted ``ingest`` resumes when run again with the same
arguments. Exit status: 0 ok, 1 error, 2 usage (argparse), 3 eval outside tolerance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__
from .errors import (
    CollectionNotFoundError,
    ForeignCollectionError,
    QdrantUnavailableError,
    SchemaMismatchError,
    StoreLockedError,
)
from .index import MultiFieldIndex
from .ingest import ArraySource, Batch, BatchSource, file_fingerprint, ingest

log = logging.getLogger("gcl-qdrant")

# Document fields read from a MarqoGS corpus record: field -> (record keys, kind).
CORPUS_FIELDS = {"title": (("title",), "txt"), "image": (("image_local", "image"), "img")}
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, LookupError, SchemaMismatchError,
               ForeignCollectionError, StoreLockedError, QdrantUnavailableError, CollectionNotFoundError)


def _kv_floats(arg: str, text: str) -> Dict[str, float]:
    out = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" not in part:
            raise ValueError(f"{arg}: expected name=number pairs like image=0.9,title=0.1, got {text!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise ValueError(f"{arg}: {k.strip()!r} has a non-numeric weight {v!r}") from None
    return out


def _filter(pairs: Sequence[str], raw_json: Optional[str]) -> Optional[Dict[str, Any]]:
    out: Dict[str, Any] = {}
    for p in pairs or ():
        if "=" not in p:
            raise ValueError(f"--filter: expected key=value, got {p!r}")
        k, v = p.split("=", 1)
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            val = v
        if isinstance(val, float):
            raise ValueError(f"--filter {k}: floats match by range; use --filter-json '{{\"{k}\": {{\"gte\": {v}, \"lte\": {v}}}}}'")
        out[k] = val
    if raw_json:
        try:
            extra = json.loads(raw_json)
        except json.JSONDecodeError as e:
            raise ValueError(f"--filter-json: invalid JSON: {e}") from None
        if not isinstance(extra, dict):
            raise ValueError("--filter-json: expected a JSON object")
        out.update(extra)
    return out or None


def _api_key(a) -> Optional[str]:
    if not a.store.startswith(("http://", "https://")):
        return None
    return os.environ.get(a.api_key_env) or None


def _open(a, fields=None, **kw) -> MultiFieldIndex:
    remote = {}
    if a.store.startswith(("http://", "https://")):
        remote = {"api_key": _api_key(a), "timeout": a.timeout, "retries": a.retries}
    return MultiFieldIndex(a.store, a.collection, fields, **remote, **kw)


# ----------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------

def _read_ids(path: str) -> List[str]:
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            ids = json.load(f)
        if not isinstance(ids, list):
            raise ValueError(f"--ids: {path} must hold a JSON list of ids")
        return [str(i) for i in ids]
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n")]


def _read_payloads(path: str, n: int) -> List[Dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"--payloads: {path}:{ln}: invalid JSON ({e.msg})") from None
    if len(out) != n:
        raise ValueError(f"--payloads: {path} has {len(out)} records, expected {n} (one per id)")
    return out


def array_source(vector_args: Sequence[str], ids_path: str, payloads_path: Optional[str]) -> Tuple[ArraySource, Dict[str, int]]:
    """``--vectors field=path.npy`` (repeated) + ``--ids`` as an :class:`ArraySource`."""
    vectors, fp = {}, {"kind": "npy"}
    for spec in vector_args:
        if "=" not in spec:
            raise ValueError(f"--vectors: expected field=path.npy, got {spec!r}")
        f, p = spec.split("=", 1)
        if f in vectors:
            raise ValueError(f"--vectors: field {f!r} given twice")
        vectors[f] = np.load(p, mmap_mode="r")
        if vectors[f].ndim != 2:
            raise ValueError(f"--vectors {f}: expected a 2-D array [N, D] in {p}, got shape {vectors[f].shape}")
        fp[f] = file_fingerprint(p)
    ids = _read_ids(ids_path)
    fp["ids"] = file_fingerprint(ids_path)
    payloads = None
    if payloads_path:
        payloads = _read_payloads(payloads_path, len(ids))
        fp["payloads"] = file_fingerprint(payloads_path)
    src = ArraySource(ids, vectors, payloads, fingerprint=fp)
    return src, {f: int(v.shape[1]) for f, v in vectors.items()}


class CorpusSource(BatchSource):
    """A MarqoGS corpus file encoded field by field with a checkpoint.

    Missing titles and absent or unreadable images are missing fields (``present`` False);
    a product with no usable field is skipped and counted in ``unusable``.
    """

    def __init__(self, data: str, corpus: str, encoder, checkpoint: str, image_root: Optional[str] = None,
                 fields: Sequence[str] = ("title", "image")):
        from gcl_train.data import MarqoGSDataset

        self.ds = MarqoGSDataset(data, image_root=image_root)
        self.corpus = corpus if corpus.startswith("corpus_") else f"corpus_{corpus}"
        self.path = self.ds.corpus_path(self.corpus)
        self.encoder = encoder
        unknown = sorted(set(fields) - set(CORPUS_FIELDS))
        if unknown:
            raise ValueError(f"--fields: unknown {unknown}; corpus fields are {list(CORPUS_FIELDS)}")
        self.fields = list(fields)
        self.n = None
        self.unusable = 0
        self.fingerprint = {"kind": "corpus", "corpus": file_fingerprint(self.path),
                            "checkpoint": file_fingerprint(checkpoint), "fields": self.fields}

    def _value(self, doc: Dict[str, Any], field: str):
        from gcl_train.data import is_missing

        keys, kind = CORPUS_FIELDS[field]
        for k in keys:
            v = doc.get(k)
            if is_missing(v):
                continue
            if kind == "txt":
                return str(v)
            if not self.ds.image_available(v):
                return None
            try:
                return self.ds.load_image(v)
            except (OSError, ValueError):
                return None
        return None

    def batches(self, batch_size: int, skip: int) -> Iterator[Batch]:
        buf: List[Tuple[str, Dict[str, Any]]] = []
        b = 0

        def encode(chunk):
            n = len(chunk)
            dim = self.encoder.dim
            vecs = {f: np.zeros((n, dim), np.float32) for f in self.fields}
            present = {f: np.zeros(n, bool) for f in self.fields}
            for f in self.fields:
                vals = [self._value(doc, f) for _, doc in chunk]
                rows = [i for i, v in enumerate(vals) if v is not None]
                if rows:
                    kind = CORPUS_FIELDS[f][1]
                    vecs[f][rows] = self.encoder([vals[i] for i in rows], kind)
                    present[f][rows] = True
            keep = np.zeros(n, bool)
            for m in present.values():
                keep |= m
            self.unusable += int((~keep).sum())
            rows = np.flatnonzero(keep)
            payloads = [{k: v for k, v in chunk[i][1].items()
                         if isinstance(v, (str, int, float, bool)) or v is None} for i in rows]
            return Batch(ids=[chunk[i][0] for i in rows], vectors={f: v[rows] for f, v in vecs.items()},
                         payloads=payloads, present={f: m[rows] for f, m in present.items()})

        for pid, doc in self.ds.iter_corpus(self.corpus):
            buf.append((pid, doc))
            if len(buf) == batch_size:
                if b >= skip:
                    yield encode(buf)
                b += 1
                buf = []
        if buf and b >= skip:
            yield encode(buf)


# ----------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------

def _encoder(a):
    from gcl_train.models import Encoder

    return Encoder.from_checkpoint(a.checkpoint, device=a.device, batch_size=a.encode_batch)


def cmd_ingest(a) -> int:
    if a.vectors:
        if not a.ids:
            raise ValueError("--ids: required with --vectors")
        src, dims = array_source(a.vectors, a.ids, a.payloads)
    else:
        if not (a.data and a.checkpoint):
            raise ValueError("give --vectors FIELD=PATH.npy ... --ids PATH, or --data ROOT --checkpoint PATH")
        enc = _encoder(a)
        fields = [f.strip() for f in a.fields.split(",") if f.strip()]
        src = CorpusSource(a.data, a.corpus, enc, a.checkpoint, a.image_root, fields)
        dims = {f: enc.dim for f in fields}
    kw: Dict[str, Any] = {"mode": a.mode}
    if a.fused_weights:
        kw["fused_weights"] = _kv_floats("--fused-weights", a.fused_weights)
    if a.hnsw_m is not None:
        kw["hnsw_m"] = a.hnsw_m
    if a.hnsw_ef_construct is not None:
        kw["hnsw_ef_construct"] = a.hnsw_ef_construct
    if a.quantization is not None:
        kw["quantization"] = a.quantization
    with _open(a, dims, **kw) as index:
        rep = ingest(index, src, batch_size=a.batch_size, state_dir=a.state_dir, optimize=not a.no_optimize,
                     progress=not a.quiet, checkpoint_seconds=a.checkpoint_seconds)
        total = index.count()
    print(rep.summary())
    if isinstance(src, CorpusSource) and src.unusable:
        print(f"{src.unusable} products had no usable field and were skipped")
    print(f"collection {a.collection!r} now holds {total} documents")
    return 0


def cmd_search(a) -> int:
    weights = _kv_floats("--weights", a.weights) if a.weights else None
    flt = _filter(a.filter, a.filter_json)
    if a.query is not None:
        if a.vector:
            raise ValueError("give query text or --vector, not both")
        if not a.checkpoint:
            raise ValueError("--checkpoint: needed to encode query text (or pass --vector)")
        query: Any = _encoder(a).encode_text([a.query])[0]
    elif a.vector:
        if len(a.vector) == 1 and "=" not in a.vector[0]:
            query = np.load(a.vector[0]).reshape(-1)
        else:
            query = {}
            for spec in a.vector:
                if "=" not in spec:
                    raise ValueError(f"--vector: expected PATH.npy or field=PATH.npy, got {spec!r}")
                f, p = spec.split("=", 1)
                query[f] = np.load(p).reshape(-1)
    else:
        raise ValueError("give query text (with --checkpoint) or --vector PATH.npy")
    with _open(a) as index:
        hits = index.search(query, field_weights=weights, limit=a.limit, filter=flt, exact=a.exact, ef=a.ef,
                            oversampling=a.oversampling)
    if a.json:
        for h in hits:
            print(json.dumps({"id": h.id, "score": h.score, "payload": h.payload}, ensure_ascii=False))
    else:
        width = max([len(h.id) for h in hits] + [2])
        print(f"{'#':>3}  {'id':<{width}}  {'score':>8}  payload")
        for i, h in enumerate(hits, 1):
            print(f"{i:>3}  {h.id:<{width}}  {h.score:8.4f}  {json.dumps(h.payload, ensure_ascii=False)}")
    return 0


def cmd_eval(a) -> int:
    from gcl_train.data import MarqoGSDataset
    from gcl_train.evaluate import EvalConfig, evaluate

    from ._io import atomic_write_json
    from .retriever import QdrantRetriever

    ds = MarqoGSDataset(a.data, image_root=a.image_root)
    cfg = EvalConfig(n_queries=a.n_queries, top_k=a.top_k, ks=tuple(k for k in (1, 5, 10, 100, 1000) if k <= a.top_k) or (a.top_k,))
    splits = "all" if a.splits == "all" else [s.strip() for s in a.splits.split(",") if s.strip()]
    encoder = _encoder(a) if a.checkpoint else None
    exact_dir = os.path.join(a.out, "exact")
    exact = evaluate(ds, splits, encoder=encoder, embeddings=a.embeddings, config=cfg, out_dir=exact_dir,
                     progress=not a.quiet)
    # the index run reuses the corpus embeddings of the exact run: same vectors, only retrieval differs
    tables = a.embeddings or os.path.join(exact_dir, "embeddings")
    store = a.store if a.store != DEFAULT_STORE else os.path.join(a.out, "qdrant_store")
    kw: Dict[str, Any] = {}
    if a.hnsw_m is not None:
        kw["hnsw_m"] = a.hnsw_m
    if a.hnsw_ef_construct is not None:
        kw["hnsw_ef_construct"] = a.hnsw_ef_construct
    if a.quantization is not None:
        kw["quantization"] = a.quantization
    if store.startswith(("http://", "https://")):
        kw.update(api_key=_api_key(a), timeout=a.timeout, retries=a.retries)
    retriever = QdrantRetriever(store, prefix=a.collection + "_", ef=a.ef, progress=not a.quiet, **kw)
    try:
        via_index = evaluate(ds, splits, encoder=encoder, embeddings=tables, config=cfg,
                             retriever=retriever, out_dir=os.path.join(a.out, "index"), progress=not a.quiet)
    finally:
        retriever.close()
    rows, worst = [], 0.0
    for split, r in exact.results.items():
        e = r.metrics["ndcg@10"]
        i = via_index.results[split].metrics["ndcg@10"]
        worst = max(worst, abs(i - e))
        rows.append({"split": split, "name": r.name, "n_queries": r.n_queries, "n_docs": r.n_docs,
                     "ndcg@10_exact": e, "ndcg@10_index": i, "diff": i - e})
    summary = {"store": store if not store.startswith("http") else "server", "tolerance": a.tolerance,
               "max_abs_diff": worst, "within_tolerance": worst <= a.tolerance, "splits": rows,
               "plugin_version": __version__}
    atomic_write_json(os.path.join(a.out, "qdrant_eval.json"), summary)
    print(f"{'split':<22} {'queries':>7} {'docs':>7} {'exact':>8} {'index':>8} {'diff':>8}")
    for r in rows:
        print(f"{r['name']:<22} {r['n_queries']:>7} {r['n_docs']:>7} {r['ndcg@10_exact']:8.4f} "
              f"{r['ndcg@10_index']:8.4f} {r['diff']:+8.4f}")
    print(f"max |diff| {worst:.4f} (tolerance {a.tolerance}); wrote {os.path.join(a.out, 'qdrant_eval.json')}")
    return 0 if worst <= a.tolerance else 3


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------

DEFAULT_STORE = "./qdrant_store"


def _common(p: argparse.ArgumentParser, collection_default: Optional[str] = "products") -> None:
    g = p.add_argument_group("store")
    g.add_argument("--store", default=DEFAULT_STORE,
                   help="a directory (embedded store), ':memory:' or http(s)://host:port (default %(default)s)")
    g.add_argument("--collection", default=collection_default, help="collection name (default %(default)s)")
    g.add_argument("--api-key-env", default="QDRANT_API_KEY",
                   help="environment variable holding the server API key (default %(default)s)")
    g.add_argument("--timeout", type=float, default=10.0, help="server request timeout, seconds")
    g.add_argument("--retries", type=int, default=3, help="retries of transient server failures")
    p.add_argument("--device", default="cpu", help="encoder device")
    p.add_argument("--encode-batch", type=int, default=64, help="values per encoder forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gcl-qdrant", description="Ingest, search and evaluate GCL embeddings through a Qdrant index.")
    ap.add_argument("--version", action="version", version=f"gcl-qdrant {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="upsert a corpus (encoded or precomputed) in resumable batches")
    _common(p)
    p.add_argument("--data", help="MarqoGS (or synthetic) data root with corpus_N.json")
    p.add_argument("--corpus", default="1", help="corpus number or name (default %(default)s)")
    p.add_argument("--image-root", default=None, help="where relative image paths live (default: --data)")
    p.add_argument("--checkpoint", help="gcl_train checkpoint that encodes the corpus (or the query)")
    p.add_argument("--fields", default="title,image", help="corpus fields to index (default %(default)s)")
    p.add_argument("--vectors", action="append", metavar="FIELD=PATH.npy", help="precomputed [N, D] field vectors")
    p.add_argument("--ids", help="ids for --vectors: a JSON list or one id per line")
    p.add_argument("--payloads", help="JSON lines, one payload per id (with --vectors)")
    p.add_argument("--mode", choices=("weighted", "fused"), default=None,
                   help="weighted: query-time weights (default for a new collection); fused: fixed")
    p.add_argument("--fused-weights", default=None, help="e.g. image=0.9,title=0.1 (mode fused)")
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--hnsw-ef-construct", type=int, default=None)
    p.add_argument("--quantization", choices=("none", "int8"), default=None,
                   help="int8: also store int8 codes of the searched vector (faster HNSW search, "
                        "rescored with the float32 vectors; fixed at creation)")
    p.add_argument("--batch-size", type=int, default=256, help="documents per batch (the unit of resume)")
    p.add_argument("--state-dir", default=None, help="where the resume marker lives (default: next to the store)")
    p.add_argument("--checkpoint-seconds", type=float, default=5.0,
                   help="flush and record progress at most this often (default %(default)s)")
    p.add_argument("--no-optimize", action="store_true", help="skip the index build at the end")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="ranked results with payloads")
    _common(p)
    p.add_argument("query", nargs="?", help="query text (encoded with --checkpoint)")
    p.add_argument("--checkpoint", help="gcl_train checkpoint to encode the query text")
    p.add_argument("--vector", action="append", metavar="[FIELD=]PATH.npy",
                   help="query vector(s) instead of text: one for all fields, or one per field")
    p.add_argument("--weights", default=None, help="field weights, e.g. image=0.9,title=0.1")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload match (repeatable)")
    p.add_argument("--filter-json", default=None, help='e.g. \'{"price": {"lt": 50}}\'')
    p.add_argument("--exact", action="store_true", help="exact scan instead of HNSW")
    p.add_argument("--ef", type=int, default=None, help="HNSW beam width")
    p.add_argument("--oversampling", type=float, default=None,
                   help="int8 index: candidates per hit rescored with the float32 vectors (default 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="the four-split evaluation, exact vs through the index")
    _common(p, collection_default="eval")
    p.add_argument("--data", required=True, help="MarqoGS (or synthetic) data root")
    p.add_argument("--image-root", default=None)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="gcl_train checkpoint")
    src.add_argument("--embeddings", help="precomputed tables directory (see gcl_train.evaluate)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--splits", default="all")
    p.add_argument("--n-queries", type=int, default=2000)
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--ef", type=int, default=None)
    p.add_argument("--hnsw-m", type=int, default=None)
    p.add_argument("--hnsw-ef-construct", type=int, default=None)
    p.add_argument("--quantization", choices=("none", "int8"), default=None,
                   help="int8: build the evaluation collections with int8 codes (see ingest)")
    p.add_argument("--tolerance", type=float, default=0.005, help="allowed |NDCG@10 index - exact|")
    p.set_defaults(func=cmd_eval)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``gcl-qdrant`` console script; returns the exit status."""
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if a.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return a.func(a)
    except USER_ERRORS as e:
        print(f"gcl-qdrant {a.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
