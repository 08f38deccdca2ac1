"""Encoding records into field vectors and fused unit vectors; corpus embedding.

`encode_fields` is the one place records become per-field vectors plus a present mask
(the evaluator, the Qdrant ingest and the demo share it); `encode_records` fuses them
with the field weights; `embed_corpus` streams a corpus file through both.
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..data.fields import DEFAULT_RIGHT, FieldSpecs, check_field_specs, fuse_embeddings, is_missing
from ..data import MarqoGSDataset
from .embeddings import EmbeddingTable, _RowWriter
from .protocols import ROLES, EncoderProtocol, FieldLike

log = logging.getLogger(__name__)


class RandomEncoder:
    """A chance baseline: every distinct value gets its own random unit vector.

    Deterministic for (seed, kind, value); images hash their pixels. Retrieval with it is
    a uniformly random ranking, so its metrics should match `metrics.chance_metrics`.

    Example:
        >>> enc = RandomEncoder(dim=8)
        >>> bool((enc(["a"], "txt") == enc(["a"], "txt")).all()), enc(["a", "b"], "txt").shape
        (True, (2, 8))
    """

    def __init__(self, dim: int = 64, seed: int = 0):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self.dim, self.seed = dim, int(seed)

    def __call__(self, values: list, kind: str) -> np.ndarray:
        out = np.empty((len(values), self.dim), np.float32)
        for i, v in enumerate(values):
            raw = v.encode("utf-8") if isinstance(v, str) else (v.tobytes() if hasattr(v, "tobytes") else repr(v).encode())
            h = hashlib.blake2b(raw, digest_size=8, key=f"{self.seed}:{kind}".encode()).digest()
            x = np.random.default_rng(int.from_bytes(h, "little")).standard_normal(self.dim)
            out[i] = x / np.linalg.norm(x)
        return out


def _check_role(role: Optional[str]) -> Optional[str]:
    if role is not None and role not in ROLES:
        raise ValueError(f"role: expected one of {ROLES} or None, got {role!r}")
    return role


def _call_encoder(encoder: EncoderProtocol, values: list, kind: str, role: Optional[str] = None) -> np.ndarray:
    """`encoder.encode_as(values, kind, role)` when a role is given and the encoder has
    that method (`RoleAwareEncoderProtocol`), else `encoder(values, kind)`; checked."""
    encode_as = getattr(encoder, "encode_as", None) if role is not None else None
    raw = encode_as(values, kind, role) if callable(encode_as) else encoder(values, kind)
    out = np.asarray(raw, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(values):
        raise ValueError(f"encoder: expected an array [N={len(values)}, D] for kind {kind!r}, got shape {out.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"encoder: returned NaN or infinite values for kind {kind!r}")
    return out


def _field_value(rec: Mapping[str, Any], field: FieldLike, dataset: Optional[MarqoGSDataset],
                 check_images: bool) -> Tuple[Any, Optional[str]]:
    """(value ready for the encoder, None) or (None, why the field is absent)."""
    why = None
    for key in field.keys:
        v = rec.get(key)
        if is_missing(v):
            continue
        if field.kind != "img":
            return str(v), None
        if dataset is None:
            raise ValueError("dataset: needed to load images (field kind 'img')")
        if check_images and not dataset.image_available(v):
            why = why or f"absent image file ({key})"
            continue
        try:
            return dataset.load_image(v), None
        except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            log.debug("unreadable image %r: %s", v, e)
            why = why or f"unreadable image ({key})"
    return None, why or f"missing {'/'.join(field.keys)}"


def encode_fields(
    records: Sequence[Mapping[str, Any]],
    fields: Sequence[FieldLike],
    encoder: EncoderProtocol,
    dataset: Optional[MarqoGSDataset] = None,
    check_images: bool = True,
    counts: Optional[Counter] = None,
    role: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-field vectors of a batch of records, plus which fields each record has.

    A field's value is the first of its `keys` that a record holds and that is not
    missing (`gcl_train.data.is_missing`); an image must also exist (when
    `check_images`) and decode, else the next key is tried. The encoder is called once
    per field with that field's present values.

    Args:
        records: dicts of field values (a corpus document, a CSV row).
        fields: objects with `.keys` and `.kind` (`FieldSpec`, `DocField`).
        encoder: `EncoderProtocol`.
        dataset: resolves and loads images (needed when an image field is present).
        check_images: treat absent image files as missing.
        counts: if given, counts why fields were absent ("missing title",
            "absent image file (image_local)", "unreadable image (image_local)").
        role: "query" or "document": whose fields these are. An encoder with
            `encode_as` (`RoleAwareEncoderProtocol`, e.g. `gcl_train.models.Encoder` of a
            model with separate text towers) is called as `encode_as(values, kind,
            role)`; None, or an encoder without it: `encoder(values, kind)`. Pass
            "document" for corpus records.

    Shape:
        returns vectors [N, F, D] float32 as the encoder gave them (zero rows where
        absent; D = 0 when no record has any field) and present [N, F] bool.

    Example:
        >>> from gcl_train.data import FieldSpec
        >>> v, present = encode_fields([{"title": "red dress"}, {"title": None}],
        ...                            [FieldSpec("title", "txt")], RandomEncoder(dim=4))
        >>> v.shape, present[:, 0].tolist()
        ((2, 1, 4), [True, False])
    """
    _check_role(role)
    n, f = len(records), len(fields)
    present = np.zeros((n, f), dtype=bool)
    per_field: List[Optional[np.ndarray]] = []
    dim = None
    for j, fld in enumerate(fields):
        vals, rows = [], []
        for i, rec in enumerate(records):
            v, why = _field_value(rec, fld, dataset, check_images)
            if why is not None:
                if counts is not None:
                    counts[why] += 1
                continue
            vals.append(v)
            rows.append(i)
        if not vals:
            per_field.append(None)
            continue
        emb = _call_encoder(encoder, vals, fld.kind, role)
        if dim is None:
            dim = emb.shape[1]
        elif emb.shape[1] != dim:
            raise ValueError(f"encoder: field {'/'.join(fld.keys)!r} gave dimension {emb.shape[1]}, others {dim}")
        full = np.zeros((n, dim), dtype=np.float32)
        full[rows] = emb
        present[rows, j] = True
        per_field.append(full)
    dim = dim or 0
    vectors = np.zeros((n, f, dim), dtype=np.float32)
    for j, p in enumerate(per_field):
        if p is not None:
            vectors[:, j] = p
    return vectors, present


def encode_records(
    records: Sequence[Mapping[str, Any]],
    specs: FieldSpecs,
    encoder: EncoderProtocol,
    dataset: Optional[MarqoGSDataset] = None,
    check_images: bool = True,
    counts: Optional[Counter] = None,
    role: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Fused unit vectors for a batch of records (dicts of field values).

    `encode_fields` (with `role`: "query" or "document", see there), then
    `fuse_embeddings`: missing fields get weight 0 and the rest are renormalised. A
    record with no present field, or without a field whose spec is `required`, is
    unusable (a zero row).

    Shape:
        returns vectors [N, D] float32 (zero rows for unusable records) and usable [N] bool.
    """
    n = len(records)
    vectors, present = encode_fields(records, specs, encoder, dataset, check_images, counts, role)
    if vectors.shape[2] == 0:
        return np.zeros((n, 0), dtype=np.float32), np.zeros(n, dtype=bool)
    w = np.array([s.weight for s in specs], dtype=np.float64)[None, :] * present
    wsum = w.sum(axis=1, keepdims=True)
    required = np.array([bool(getattr(s, "required", False)) for s in specs])
    usable = (wsum[:, 0] > 0) & present[:, required].all(axis=1)
    w = np.where(usable[:, None], w / np.where(wsum > 0, wsum, 1.0), 0.0)
    return fuse_embeddings(vectors, w), usable


def _batches(it: Iterable, size: int) -> Iterator[list]:
    buf = []
    for x in it:
        buf.append(x)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


def embed_corpus(
    dataset: MarqoGSDataset,
    corpus: str,
    encoder: EncoderProtocol,
    specs: FieldSpecs = DEFAULT_RIGHT,
    batch_size: int = 256,
    check_images: bool = True,
    out_dir: Optional[str] = None,
    dtype: str = "float32",
    progress: bool = True,
    counts: Optional[Counter] = None,
) -> EmbeddingTable:
    """Stream a corpus file and encode every usable product into one table.

    With `out_dir`, rows go to disk as they are made and the result is a memory-mapped
    `out_dir/<corpus>.npy` (+ ids), so memory stays flat; otherwise it is in memory.
    Products with no usable field are counted in `counts["unusable documents"]`. The
    records are encoded with role "document" (see `encode_fields`).
    """
    specs = check_field_specs("specs", specs)
    counts = counts if counts is not None else Counter()
    ids: List[str] = []
    writer = _RowWriter(out_dir, corpus, dtype) if out_dir else None
    chunks: List[np.ndarray] = []
    bar = tqdm(desc=f"encode {corpus}", unit="doc", disable=not progress)
    try:
        for batch in _batches(dataset.iter_corpus(corpus), batch_size):
            vecs, usable = encode_records([doc for _, doc in batch], specs, encoder, dataset, check_images, counts,
                                          role="document")
            bad = int((~usable).sum())
            if bad:
                counts["unusable documents"] += bad
            keep = np.flatnonzero(usable)
            ids.extend(batch[i][0] for i in keep)
            if len(keep):
                if writer:
                    writer.append(vecs[keep])
                else:
                    chunks.append(vecs[keep].astype(dtype))
            bar.update(len(batch))
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        bar.close()
    if writer:
        return writer.finish(ids)
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 1), dtype=dtype)
    return EmbeddingTable(ids, vectors)

