"""`gcl-qdrant`: ingest, search and evaluate through a Qdrant index (`qdrant_plugin`).

    # a MarqoGS corpus encoded with a trained checkpoint
    gcl-qdrant ingest --store ./qdrant_store --collection products \\
        --data marqo_gs_wfash_1m --corpus 1 --checkpoint runs/gcl/model.pt
    # precomputed embeddings: one .npy per field plus the ids (no model, no torch needed)
    gcl-qdrant ingest --store ./qdrant_store --collection products \\
        --vectors title=title.npy --vectors image=image.npy --ids ids.json
    gcl-qdrant search "red linen summer dress" --checkpoint runs/gcl/model.pt \\
        --store ./qdrant_store --collection products --weights image=0.9,title=0.1
    gcl-qdrant eval --data marqo_gs_wfash_1m --checkpoint runs/gcl/model.pt --out eval_qdrant

The application over the library: the model-aware parts (encode a corpus with a
checkpoint, encode query text, the evaluation protocol) live here in `gcl_train`;
`qdrant_plugin` itself imports nothing from `gcl_train`. torch and the models are imported
only by the commands that need them.

`--store` is a directory (embedded Qdrant Edge, the default), `:memory:` or a server URL;
a server's API key is read from the environment variable named by `--api-key-env`
(default QDRANT_API_KEY), never from the command line, so it stays out of shell history
and process lists. An interrupted `ingest` resumes when run again with the same
arguments. Exit status (see `gcl_train.cli.common`): 0 ok, 1 error, 2 usage, 3 eval
outside tolerance.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from qdrant_plugin import (
    CollectionNotFoundError,
    ForeignCollectionError,
    MultiFieldIndex,
    QdrantUnavailableError,
    SchemaMismatchError,
    StoreLockedError,
)
from qdrant_plugin import __version__ as PLUGIN_VERSION
from qdrant_plugin.errors import CorruptFileError, DuplicateIdError, InsufficientSpaceError
from qdrant_plugin.ids import ON_DUPLICATE, ids_from_json
from qdrant_plugin.ingest import ArraySource, BatchSource, file_fingerprint, ingest
from qdrant_plugin.ingest import Batch as IngestBatch
from qdrant_plugin.retriever import QdrantRetriever

from ..data import DOC_FIELD_NAMES, MarqoGSDataset, doc_field
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TOLERANCE,
    add_progress_flags,
    documents_for_model,
    fail,
    finite_float,
    key_values,
    setup_logging,
)

PROG = "gcl-qdrant"
log = logging.getLogger(PROG)
DEFAULT_STORE = "./qdrant_store"


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, LookupError, SchemaMismatchError, ForeignCollectionError,
               StoreLockedError, QdrantUnavailableError, CollectionNotFoundError, CorruptFileError,
               DuplicateIdError, InsufficientSpaceError, RuntimeError)


def _filter(pairs: Sequence[str], raw_json: Optional[str]) -> Optional[Dict[str, Any]]:
    out: Dict[str, Any] = {}
    for p in pairs or ():
        if "=" not in p:
            raise ValueError(f"--filter: expected key=value, got {p!r}")
        k, v = p.split("=", 1)
        if k in out:
            raise ValueError(f"--filter: {k!r} is given twice; use --filter-json with a list of values")
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


def _remote(a) -> Dict[str, Any]:
    if not a.store.startswith(("http://", "https://")):
        return {}
    return {"api_key": os.environ.get(a.api_key_env) or None, "timeout": a.timeout, "retries": a.retries}


def _index_options(a) -> Dict[str, Any]:
    kw: Dict[str, Any] = {}
    for opt in ("hnsw_m", "hnsw_ef_construct", "quantization"):
        if getattr(a, opt, None) is not None:
            kw[opt] = getattr(a, opt)
    return kw


def _open(a, fields=None, **kw):
    return MultiFieldIndex(a.store, a.collection, fields, disk_check=not a.no_disk_check, **_remote(a), **kw)


# ----------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------

def _read_ids(path: str) -> List[str]:
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--ids: {path} is not valid JSON ({e})") from None
        return ids_from_json(values, where=f"--ids {path}")
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


def array_source(vector_args: Sequence[str], ids_path: str, payloads_path: Optional[str]):
    """`--vectors field=path.npy` (repeated) + `--ids` as a `qdrant_plugin.ingest.ArraySource`."""
    vectors, fp = {}, {"kind": "npy"}
    for spec in vector_args:
        if "=" not in spec:
            raise ValueError(f"--vectors: expected field=path.npy, got {spec!r}")
        f, p = spec.split("=", 1)
        if f in vectors:
            raise ValueError(f"--vectors: field {f!r} given twice")
        try:
            vectors[f] = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"--vectors {f}: {p} is not a plain .npy array ({e})") from None
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


def _plain_payload(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The corpus record's scalar values that Qdrant stores as they are (non-finite
    floats, nested values and image bytes are left out)."""
    out = {}
    for k, v in doc.items():
        if v is None or isinstance(v, (str, bool, int)):
            out[k] = v
        elif isinstance(v, float) and np.isfinite(v):
            out[k] = v
    return out


class CorpusSource(BatchSource):
    """A MarqoGS corpus file encoded field by field with a checkpoint.

    Missing titles and absent or unreadable images are missing fields (`present` False);
    a product with no usable field is skipped and counted in `unusable`.
    """

    def __init__(self, data: str, corpus: str, encoder, checkpoint: str, image_root: Optional[str] = None,
                 fields: Sequence[str] = DOC_FIELD_NAMES):
        self.ds = MarqoGSDataset(data, image_root=image_root)
        self.corpus = corpus if corpus.startswith("corpus_") else f"corpus_{corpus}"
        self.path = self.ds.corpus_path(self.corpus)
        self.encoder = encoder
        self.fields = [doc_field(f) for f in fields]  # ValueError naming the known fields
        self.unusable = 0
        self.n = sum(1 for _ in self.ds.iter_corpus(self.corpus))  # a bar with a total, the disk check
        self.fingerprint = {"kind": "corpus", "corpus": file_fingerprint(self.path),
                            "checkpoint": file_fingerprint(checkpoint), "fields": list(fields)}

    def _encode(self, chunk) -> IngestBatch:
        from ..evaluation import encode_fields

        vecs, present = encode_fields([doc for _, doc in chunk], self.fields, self.encoder, self.ds,
                                      role="document")  # titles through the document tower, if any
        if vecs.shape[2] == 0:
            vecs = np.zeros((len(chunk), len(self.fields), self.encoder.dim), np.float32)
        keep = present.any(axis=1)
        self.unusable += int((~keep).sum())
        rows = np.flatnonzero(keep)
        return IngestBatch(ids=[chunk[i][0] for i in rows],
                           vectors={f.name: vecs[rows, j] for j, f in enumerate(self.fields)},
                           payloads=[_plain_payload(chunk[i][1]) for i in rows],
                           present={f.name: present[rows, j] for j, f in enumerate(self.fields)})

    def batches(self, batch_size: int, skip: int) -> Iterator[IngestBatch]:
        buf: List[Tuple[str, Dict[str, Any]]] = []
        b = 0
        for pid, doc in self.ds.iter_corpus(self.corpus):
            buf.append((pid, doc))
            if len(buf) == batch_size:
                if b >= skip:
                    yield self._encode(buf)
                b += 1
                buf = []
        if buf and b >= skip:
            yield self._encode(buf)


# ----------------------------------------------------------------------------------------
# subcommands
# ----------------------------------------------------------------------------------------

def _encoder(a):
    from ..models import Encoder

    return Encoder.from_checkpoint(a.checkpoint, device=a.device, batch_size=a.encode_batch)


def cmd_ingest(a) -> int:
    if a.vectors:
        if not a.ids:
            raise ValueError("--ids: required with --vectors")
        if a.data or a.checkpoint:
            raise ValueError("give --vectors ... --ids, or --data ROOT --checkpoint PATH, not both")
        src, dims = array_source(a.vectors, a.ids, a.payloads)
    else:
        if not (a.data and a.checkpoint):
            raise ValueError("give --vectors FIELD=PATH.npy ... --ids PATH, or --data ROOT --checkpoint PATH")
        enc = _encoder(a)
        if a.fields is None:  # the fields the model encodes: a text-only model has titles only
            fields = [f for f, w in enc.bundle.default_field_weights.items() if w > 0]
        else:
            fields = [f.strip() for f in a.fields.split(",") if f.strip()]
        src = CorpusSource(a.data, a.corpus, enc, a.checkpoint, a.image_root, fields)
        dims = {f: enc.dim for f in fields}
    kw: Dict[str, Any] = {"mode": a.mode, **_index_options(a)}
    if a.fused_weights:
        kw["fused_weights"] = key_values(a.fused_weights, "--fused-weights", noun="weight")
    with _open(a, dims, **kw) as index:
        rep = ingest(index, src, batch_size=a.batch_size, state_dir=a.state_dir, optimize=not a.no_optimize,
                     progress=not a.quiet, checkpoint_seconds=a.checkpoint_seconds, on_duplicate=a.on_duplicate)
        total = index.count()
    print(rep.summary())
    if getattr(src, "unusable", 0):
        print(f"{src.unusable} products had no usable field and were skipped")
    print(f"collection {a.collection!r} now holds {total} documents")
    return EXIT_OK


def cmd_search(a) -> int:
    weights = key_values(a.weights, "--weights", noun="weight") if a.weights else None
    flt = _filter(a.filter, a.filter_json)
    if a.query is not None:
        if a.vector:
            raise ValueError("give query text or --vector, not both")
        if not a.checkpoint:
            raise ValueError("--checkpoint: needed to encode query text (the model that encoded the "
                             "collection), or pass --vector PATH.npy")
        query: Any = _encoder(a).encode_text([a.query])[0]
    elif a.vector:
        if len(a.vector) == 1 and "=" not in a.vector[0]:
            query = np.load(a.vector[0], allow_pickle=False).reshape(-1)
        else:
            query = {}
            for spec in a.vector:
                if "=" not in spec:
                    raise ValueError(f"--vector: expected PATH.npy or field=PATH.npy, got {spec!r}")
                f, p = spec.split("=", 1)
                if f in query:
                    raise ValueError(f"--vector: field {f!r} given twice")
                query[f] = np.load(p, allow_pickle=False).reshape(-1)
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
    return EXIT_OK


def cmd_eval(a) -> int:
    from ..evaluation import EvalConfig, evaluate
    from ..evaluation.cache import file_digest
    from ..fileio import atomic_write_json

    if not (a.checkpoint or a.embeddings):
        raise ValueError("give --checkpoint (the model to evaluate) and/or --embeddings (precomputed "
                         "tables, e.g. a gcl-eval --out directory's embeddings/)")
    ds = MarqoGSDataset(a.data, image_root=a.image_root)
    cfg = EvalConfig(n_queries=a.n_queries, top_k=a.top_k,
                     ks=tuple(k for k in (1, 5, 10, 100, 1000) if k <= a.top_k) or (a.top_k,))
    splits = "all" if a.splits == "all" else [s.strip() for s in a.splits.split(",") if s.strip()]
    encoder = _encoder(a) if a.checkpoint else None
    cfg = documents_for_model(cfg, encoder)
    encoder_id = f"checkpoint sha256:{file_digest(a.checkpoint)}" if a.checkpoint else None
    exact_dir = os.path.join(a.out, "exact")
    exact = evaluate(ds, splits, encoder=encoder, embeddings=a.embeddings, config=cfg, out_dir=exact_dir,
                     progress=not a.quiet, encoder_id=encoder_id, resume=True, label="exact search")
    # the index run reuses the exact run's corpus embeddings: same vectors, only retrieval differs
    tables = a.embeddings or os.path.join(exact_dir, "embeddings")
    store = a.store if a.store != DEFAULT_STORE else os.path.join(a.out, "qdrant_store")
    kw = _index_options(a)
    if store.startswith(("http://", "https://")):
        kw.update(_remote(a))
    retriever = QdrantRetriever(store, prefix=a.collection + "_", ef=a.ef, progress=not a.quiet, **kw)
    try:
        via_index = evaluate(ds, splits, encoder=encoder, embeddings=tables, config=cfg, retriever=retriever,
                             out_dir=os.path.join(a.out, "index"), progress=not a.quiet, encoder_id=encoder_id,
                             label="Qdrant index")
    finally:
        retriever.close()
    metric = "ndcg@10"
    rows, worst = [], 0.0
    for split, r in exact.results.items():
        e = r.metrics[metric]
        i = via_index.results[split].metrics[metric]
        worst = max(worst, abs(i - e))
        rows.append({"split": split, "name": r.name, "n_queries": r.n_queries, "n_docs": r.n_docs,
                     f"{metric}_exact": e, f"{metric}_index": i, "diff": i - e})
    summary = {"metric": metric, "store": store if not store.startswith("http") else "server",
               "tolerance": a.tolerance, "max_abs_diff": worst, "within_tolerance": worst <= a.tolerance,
               "splits": rows, "plugin_version": PLUGIN_VERSION}
    atomic_write_json(os.path.join(a.out, "qdrant_eval.json"), summary, indent=1, sort_keys=True)
    print(f"NDCG@10, exact search vs the Qdrant index (HNSW), {cfg.n_queries if cfg.n_queries > 0 else 'all'} "
          f"queries per split")
    print(f"{'split':<22} {'queries':>7} {'docs':>7} {'exact':>8} {'index':>8} {'diff':>8}")
    for r in rows:
        print(f"{r['name']:<22} {r['n_queries']:>7} {r['n_docs']:>7} {r[f'{metric}_exact']:8.4f} "
              f"{r[f'{metric}_index']:8.4f} {r['diff']:+8.4f}")
    print(f"max |diff| {worst:.4f} (tolerance {a.tolerance}); wrote {os.path.join(a.out, 'qdrant_eval.json')}")
    return EXIT_OK if worst <= a.tolerance else EXIT_TOLERANCE


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, collection_default: Optional[str] = "products") -> None:
    g = p.add_argument_group("store")
    g.add_argument("--store", default=DEFAULT_STORE,
                   help="a directory (embedded store), ':memory:' or http(s)://host:port (default: %(default)s)")
    g.add_argument("--collection", default=collection_default, help="collection name (default: %(default)s)")
    g.add_argument("--api-key-env", default="QDRANT_API_KEY",
                   help="environment variable holding the server API key (default: %(default)s)")
    g.add_argument("--timeout", type=finite_float, default=10.0,
                   help="server request timeout, seconds (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3,
                   help="retries of transient server failures (default: %(default)s)")
    g.add_argument("--no-disk-check", action="store_true",
                   help="embedded store: skip the free-space check before writes (default: check)")
    p.add_argument("--device", default="cpu", help="encoder device (default: %(default)s)")
    p.add_argument("--encode-batch", type=int, default=64,
                   help="values per encoder forward pass (default: %(default)s)")
    add_progress_flags(p)


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW graph degree (default: the plugin's, 32)")
    p.add_argument("--hnsw-ef-construct", type=int, default=None,
                   help="HNSW build beam (default: the plugin's, 200)")
    p.add_argument("--quantization", choices=("none", "int8"), default=None,
                   help="int8: also store int8 codes of the searched vector (faster HNSW search, rescored "
                        "with the float32 vectors; fixed at creation) (default: none)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Ingest, search and evaluate GCL embeddings through a "
                                 "Qdrant index (docs/qdrant.md).")
    ap.add_argument("--version", action="version", version=f"{PROG} {PLUGIN_VERSION}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="upsert a corpus (encoded or precomputed) in resumable batches",
                       description="Upsert a corpus in resumable batches: a MarqoGS corpus encoded with a "
                                   "checkpoint (--data, --checkpoint) or precomputed vectors (--vectors, --ids).")
    _common(p)
    p.add_argument("--data", help="MarqoGS (or synthetic) data root with corpus_N.json")
    p.add_argument("--corpus", default="1", help="corpus number or name (default: %(default)s)")
    p.add_argument("--image-root", default=None, help="where relative image paths live (default: --data)")
    p.add_argument("--checkpoint", help="gcl_train checkpoint that encodes the corpus")
    p.add_argument("--fields", default=None,
                   help=f"corpus fields to index, from {list(DOC_FIELD_NAMES)} (default: the model's: "
                        f"{','.join(DOC_FIELD_NAMES)}, or title for a text-only model)")
    p.add_argument("--vectors", action="append", metavar="FIELD=PATH.npy", help="precomputed [N, D] field vectors")
    p.add_argument("--ids", help="ids for --vectors: a JSON list (strings; integers are read as their decimal "
                                 "string) or one id per line")
    p.add_argument("--payloads", help="JSON lines, one payload per id (with --vectors)")
    p.add_argument("--mode", choices=("weighted", "fused"), default=None,
                   help="weighted: query-time field weights; fused: weights fixed at ingest "
                        "(default: weighted for a new collection)")
    p.add_argument("--fused-weights", default=None, help="e.g. image=0.9,title=0.1 (mode fused)")
    _index_args(p)
    p.add_argument("--batch-size", type=int, default=256,
                   help="documents per batch, the unit of resume (default: %(default)s)")
    p.add_argument("--state-dir", default=None, help="where the resume marker lives (default: next to the store)")
    p.add_argument("--checkpoint-seconds", type=finite_float, default=5.0,
                   help="flush and record progress at most this often (default: %(default)s)")
    p.add_argument("--on-duplicate", choices=ON_DUPLICATE, default="error",
                   help="an id given twice: error (nothing written), report (first kept, counted) or last "
                        "(last kept) (default: %(default)s)")
    p.add_argument("--no-optimize", action="store_true", help="skip the index build at the end (default: build)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("search", help="ranked results with payloads",
                       description="Ranked search: query text encoded with --checkpoint, or query vectors.")
    _common(p)
    p.add_argument("query", nargs="?", help="query text (encoded with --checkpoint)")
    p.add_argument("--checkpoint", help="gcl_train checkpoint to encode the query text (the one that "
                                        "encoded the collection)")
    p.add_argument("--vector", action="append", metavar="[FIELD=]PATH.npy",
                   help="query vector(s) instead of text: one for all fields, or one per field")
    p.add_argument("--weights", default=None,
                   help="field weights, e.g. image=0.9,title=0.1 (default: the collection's, equal weights)")
    p.add_argument("--limit", type=int, default=10, help="hits returned (default: %(default)s)")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE", help="payload match (repeatable)")
    p.add_argument("--filter-json", default=None, help='e.g. \'{"price": {"lt": 50}}\'')
    p.add_argument("--exact", action="store_true", help="exact scan instead of HNSW (default: HNSW)")
    p.add_argument("--ef", type=int, default=None, help="HNSW beam width (default: the plugin's, 80)")
    p.add_argument("--oversampling", type=finite_float, default=None,
                   help="int8 index: candidates per hit rescored with the float32 vectors (default: 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit (default: a table)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", help="the four-split evaluation, exact search vs the index (NDCG@10)",
                       description="The evaluation protocol (docs/evaluation.md) twice, exact search and "
                                   "through the Qdrant index, and their NDCG@10 difference per split.")
    _common(p, collection_default="eval")
    p.add_argument("--data", required=True, help="MarqoGS (or synthetic) data root")
    p.add_argument("--image-root", default=None, help="where relative image paths live (default: --data)")
    p.add_argument("--checkpoint", help="gcl_train checkpoint (encodes what --embeddings does not supply)")
    p.add_argument("--embeddings", help="precomputed tables directory, e.g. a gcl-eval --out directory's "
                                        "embeddings/ (no corpus is encoded again)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--splits", default="all", help="'all' or comma-separated split names (default: all)")
    p.add_argument("--n-queries", type=int, default=2000, help="test queries per split (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=1000, help="documents retrieved per query (default: %(default)s)")
    p.add_argument("--ef", type=int, default=None, help="HNSW beam width (default: the plugin's, 80)")
    _index_args(p)
    p.add_argument("--tolerance", type=finite_float, default=0.005,
                   help="allowed |NDCG@10 index - exact| (default: %(default)s)")
    p.set_defaults(func=cmd_eval)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `gcl-qdrant` console script; returns the exit status."""
    try:  # a crash inside the engine prints a traceback instead of nothing
        if not faulthandler.is_enabled():
            faulthandler.enable()
    except (AttributeError, ValueError, OSError):  # stderr without a file descriptor (captured)
        pass
    ap = build_parser()
    a = ap.parse_args(argv)
    setup_logging(a.quiet)
    try:
        return a.func(a)
    except USER_ERRORS as e:
        return fail(f"{PROG} {a.command}", f"{type(e).__name__}: {e}", EXIT_ERROR)


if __name__ == "__main__":
    sys.exit(main())
