"""The training data pipeline: the split's pairs as a deterministic, shuffled stream of
`Example`s, cut into global batches and collated into `Batch`es (tokens, pixels, presence,
scores, group ids), optionally built ahead in a background thread.

`TrainingData` holds what the pipeline depends on (data set, split, score column, field
weights); its methods take what changes per call (seed, epoch, batch size).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..data import MarqoGSDataset, ReadStats, is_missing
from ..fileio import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training pair, images still unread."""

    query: str
    query_id: str
    product_id: str
    title: Optional[str]
    image: Any  # a path / bytes value for the dataset's loader, or None
    score: float


#: What a tokenizer returns: token ids [N, L] (open_clip) or a dict of [N, L] tensors
#: (Hugging Face: input_ids, attention_mask, ...).
Tokens = Union[torch.Tensor, Dict[str, torch.Tensor]]


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


@dataclass
class Batch:
    """A collated batch (tensors on the CPU; `to(device)` moves them).

    Shape:
        query_tokens and title_tokens: `Tokens` with N = B; images [B, 3, H, W] (None when
        the image field has weight 0); present [B, 2] (DOC_FIELD_NAMES order); scores [B];
        lhs_groups [B], rhs_groups [B] (query and product ids).
    """

    query_tokens: Tokens
    title_tokens: Tokens
    images: Optional[torch.Tensor]
    present: torch.Tensor
    scores: torch.Tensor
    lhs_groups: torch.Tensor
    rhs_groups: torch.Tensor
    n_dropped: int = 0

    def _map(self, fn) -> "Batch":
        kw = {f.name: _map_tensors(getattr(self, f.name), fn) for f in dataclasses.fields(self)}
        return Batch(**kw)

    def to(self, device) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=True))

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows start..stop-1 (views, no copies): a micro-batch or a rank's shard."""
        out = self._map(lambda t: t[start:stop])
        out.n_dropped = 0
        return out

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def shuffled(items: Iterable[Any], buffer_size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream with a bounded buffer (memory O(buffer_size)).

    Deterministic for the rng's seed; with `buffer_size` >= the stream length it is a
    uniform shuffle.

    Example:
        >>> sorted(shuffled(range(5), 2, random.Random(0)))
        [0, 1, 2, 3, 4]
    """
    buf: List[Any] = []
    for item in items:
        if len(buf) < buffer_size:
            buf.append(item)
            continue
        i = rng.randrange(buffer_size)
        out, buf[i] = buf[i], item
        yield out
    rng.shuffle(buf)
    yield from buf


def _image_value(rec) -> Any:
    return rec.image if rec.image is not None else rec.image_local


def _usable(rec, dataset, field_weights: Mapping[str, float], check_images: bool) -> bool:
    has_title = field_weights.get("title", 0) > 0 and not is_missing(rec.title)
    if has_title:
        return True
    if field_weights.get("image", 0) <= 0:
        return False
    value = _image_value(rec)
    return dataset.image_available(value) if check_images else not is_missing(value)


@dataclass
class TrainingData:
    """The training split of a MarqoGS data set, as the trainer reads it.

    Args:
        dataset: the data set (`MarqoGSDataset`).
        split: the training split ("query_0_product_id_0").
        score_column: the CSV column that holds the graded score.
        field_weights: document field weights; a row with no usable field of positive
            weight is left out (counted).
    """

    dataset: MarqoGSDataset
    split: str
    score_column: str
    field_weights: Mapping[str, float]

    def examples(self, stats: Optional[ReadStats] = None, report: bool = False) -> Iterator[Example]:
        """The split's pairs in file order as `Example`s (rows without a usable document
        field, or without a score, are counted in `stats` and left out). A score that is
        not a finite number >= 0 is a `DataFormatError` naming the file and line (the
        split is scanned before training, so it stops there, not mid-epoch)."""
        stats = stats if stats is not None else ReadStats()
        col = self.score_column
        for rec in self.dataset.iter_pairs(self.split, required=("query", "product_id", col),
                                           optional=("title", "image_local"), stats=stats, numeric=(col,),
                                           report=report):
            if not _usable(rec, self.dataset, self.field_weights, check_images=False):
                stats.note_skip("no usable document field (title or image) with positive weight", rec.line)
                continue
            score = float(rec.get(col))
            yield Example(rec.query, rec.query_id or rec.query, rec.product_id, rec.title,
                          _image_value(rec), score)

    def scan(self, cache_path: Optional[str] = None) -> Dict[str, Any]:
        """One streaming pass: usable rows and the largest score. Cached in `cache_path`,
        keyed by the file's path, size and mtime."""
        path = self.dataset.csv_path(self.split)
        st = os.stat(path)
        key = {"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime,
               "score_column": self.score_column, "field_weights": dict(self.field_weights)}
        if cache_path and os.path.isfile(cache_path):
            with open(cache_path, encoding="utf-8") as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cached
        stats = ReadStats()
        n, s_max, s_min, queries = 0, -math.inf, math.inf, set()
        for ex in self.examples(stats):
            n += 1
            s_max, s_min = max(s_max, ex.score), min(s_min, ex.score)
            if len(queries) < 1_000_000:
                queries.add(ex.query_id)
        if n == 0:
            raise ValueError(f"data: split file {path} has no usable training rows\n{stats.summary()}")
        if stats.n_skipped:
            _report_skips(self.dataset.root, self.split, stats, self.field_weights)
        out = {"key": key, "rows": stats.rows, "usable": n, "skipped": dict(stats.skipped),
               "score_max": s_max, "score_min": s_min, "queries": len(queries)}
        if cache_path:
            atomic_write_json(cache_path, out, default=str)
        return out

    def epoch(self, seed: int, epoch: int, shuffle_buffer: int,
              stats: Optional[ReadStats] = None) -> Iterator[Example]:
        """The shuffled examples of one epoch; a pure function of (data, seed, epoch)."""
        rng = random.Random(f"gcl-shuffle:{seed}:{epoch}")
        return shuffled(self.examples(stats), shuffle_buffer, rng)

    def batches(self, bundle, batch_size: int, seed: int, epoch: int, shuffle_buffer: int,
                skip: int = 0, stats: Optional[ReadStats] = None,
                shard: Optional[range] = None) -> Iterator[Tuple[Optional["Batch"], int]]:
        """(batch, examples consumed so far) for one epoch, starting after `skip` examples.

        The count after each batch is the resume position: a checkpoint taken after training
        on that batch restarts the epoch's stream there. A final remainder of one example,
        and batches left with fewer than two usable pairs, are skipped.

        With `shard` (a function of the global batch's length giving this rank's rows, see
        `distributed.shard_bounds`), every global batch yields this rank's slice, collated
        with group ids that are the same on every rank, or None when the slice has no
        usable pair; the caller decides, with the other ranks, whether the global batch
        has the two usable pairs a step needs.
        """
        stream = self.epoch(seed, epoch, shuffle_buffer, stats)
        for _ in range(skip):  # replay the deterministic shuffle up to the resume point
            next(stream, None)
        consumed, pending = skip, []
        for ex in stream:
            pending.append(ex)
            consumed += 1
            if len(pending) == batch_size:
                yield from self._emit(pending, bundle, consumed, shard)
                pending = []
        if len(pending) >= 2:
            yield from self._emit(pending, bundle, consumed, shard)

    def _emit(self, pending, bundle, consumed, shard):
        if shard is None:
            batch = self._try_batch(pending, bundle)
            if batch is not None:
                yield batch, consumed
            return
        rows = shard(len(pending))
        lhs_ids, rhs_ids = _ids([ex.query_id for ex in pending]), _ids([ex.product_id for ex in pending])
        part = [pending[i] for i in rows]
        try:
            batch = make_batch(part, bundle, self.dataset, self.field_weights,
                               lhs_ids=lhs_ids[rows.start:rows.stop], rhs_ids=rhs_ids[rows.start:rows.stop])
        except ValueError:  # none of this rank's examples has a usable field
            batch = None
        yield batch, consumed

    def _try_batch(self, examples, bundle) -> Optional["Batch"]:
        try:
            batch = make_batch(examples, bundle, self.dataset, self.field_weights)
        except ValueError as e:  # every example of the batch lost its fields (unreadable images)
            log.warning("skipping a batch: %s", e)
            return None
        return batch if len(batch) >= 2 else None


def _report_skips(root: str, split: str, stats: ReadStats, field_weights: Mapping[str, float]) -> None:
    """Say once (at the scan, not every epoch) which rows training leaves out. When the data
    set is synthetic, leaves fields out on purpose, and no more rows are left out than
    those gaps explain, say so, at INFO; anything else is a WARNING."""
    from ..data.synthetic import intended_missing, intended_missing_note

    info = (intended_missing(root) or {}).get(split) or {}
    fields = [f for f in ("title", "image") if field_weights.get(f, 0) > 0]
    explained = sum(int(info.get(f, 0)) for f in fields)
    notes = [n for n in (intended_missing_note(root, split, f) for f in fields) if n]
    if notes and stats.n_skipped <= explained:
        log.info("%s\n  (%s)", stats.summary(), "; ".join(notes))
    else:
        log.warning("%s", stats.summary())


def steps_per_epoch(usable: int, batch_size: int) -> int:
    """Optimiser steps in one epoch of `usable` pairs (a last remainder of one pair cannot
    form a contrastive batch and is skipped)."""
    return usable // batch_size + (usable % batch_size >= 2)


def prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Produce `items` in a background thread, up to `depth` ahead (image decoding and
    tokenising overlap the training step). Exceptions are re-raised in the consumer;
    closing the generator stops the producer."""
    import queue
    import threading

    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("done", done))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(("error", e))

    t = threading.Thread(target=produce, name="gcl-prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while t.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)


def close(gen) -> None:
    """Close a generator (or a `prefetched` stream), if it can be closed."""
    closer = getattr(gen, "close", None)
    if closer is not None:
        closer()


def _ids(values: Sequence[str]) -> torch.Tensor:
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values], dtype=torch.int64)


def make_batch(examples: Sequence[Example], bundle, dataset, field_weights: Mapping[str, float],
               lhs_ids: Optional[torch.Tensor] = None, rhs_ids: Optional[torch.Tensor] = None) -> Batch:
    """Tokenise, load and preprocess one batch of examples.

    A field with zero weight is not read at all; an image that fails to load is a missing
    field; an example left with no present field is dropped (counted in `n_dropped`).
    Group ids number the distinct query and product ids of the batch, unless `lhs_ids`
    and `rhs_ids` ([len(examples)] each) give them (a rank's slice of a global batch).
    """
    if (lhs_ids is None) != (rhs_ids is None):
        raise ValueError("lhs_ids, rhs_ids: give both or neither")
    need_title = field_weights.get("title", 0) > 0
    need_image = field_weights.get("image", 0) > 0
    if need_image and not bundle.has_image_tower:
        raise ValueError(f"field_weights: the image field has weight {field_weights['image']} but the "
                         f"model {bundle.name!r} has no image tower; use title=1")
    keep, kept_rows, pixels, present = [], [], [], []
    blank = None
    for row, ex in enumerate(examples):
        has_t = need_title and not is_missing(ex.title)
        img = None
        if need_image and not is_missing(ex.image):
            try:
                img = bundle.preprocess(dataset.load_image(ex.image))
            except (OSError, ValueError) as e:
                log.debug("image %r unreadable (%s): treated as a missing field", ex.image, e)
        if not has_t and img is None:
            continue
        if need_image:
            if img is None:
                if blank is None:
                    blank = torch.zeros(3, bundle.image_size, bundle.image_size)
                img = blank
            pixels.append(img)
        keep.append(ex)
        kept_rows.append(row)
        present.append((has_t, img is not None and img is not blank))
    if not keep:
        raise ValueError("batch: no example in this batch has a usable document field")
    titles = [ex.title if p[0] else "" for ex, p in zip(keep, present)]
    return Batch(
        query_tokens=bundle.tokenizer([ex.query for ex in keep]),
        title_tokens=bundle.tokenizer(titles),
        images=torch.stack(pixels) if need_image else None,
        present=torch.tensor(present, dtype=torch.bool),
        scores=torch.tensor([ex.score for ex in keep], dtype=torch.float32),
        lhs_groups=_ids([ex.query_id for ex in keep]) if lhs_ids is None else lhs_ids[kept_rows],
        rhs_groups=_ids([ex.product_id for ex in keep]) if rhs_ids is None else rhs_ids[kept_rows],
        n_dropped=len(examples) - len(keep),
    )


__all__ = ["Example", "Batch", "TrainingData", "shuffled", "steps_per_epoch", "prefetched", "close",
           "make_batch"]
