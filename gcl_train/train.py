"""GCL training: data stream, batches, loss step and the resumable training loop.

The library pieces (`TrainConfig`, `shuffled`, `stream_examples`, `make_batch`,
`compute_loss`, `build_optimizer`, `cosine_schedule`) are usable on their own; `train`
strings them together and `gcl_train.cli_train` parses arguments into a `TrainConfig`.

Run directory layout (`TrainConfig.out`):

    config.json                  the training config (resolved)
    data_scan.json               rows, usable rows, max score of the training split (cached)
    checkpoints/step_XXXXXXXX.pt periodic checkpoints with the full training state
    model.pt                     the final model (no optimizer state), for Encoder / Qdrant
    log.jsonl                    one JSON line per logged step (loss, lr, throughput)
    eval/step_XXXXXXXX/          periodic evaluation output (evaluator's JSON/CSV/PNG)
    summary.json                 final step, loss curve summary, timing

A killed run started again with the same `out` resumes from the newest checkpoint:
model, optimizer, scheduler, step, epoch and position in the epoch's shuffled stream (the
shuffle is a pure function of seed and epoch, so the stream is replayed and the consumed
examples skipped), and the torch RNG states.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .models import (
    DEFAULT_DOC_FIELD_WEIGHTS,
    DOC_FIELDS,
    FIELD_MODES,
    Encoder,
    ModelBundle,
    combine_document_fields,
    create_model,
    encode_images_tensor,
    encode_text_tensor,
    field_weight_vector,
    read_checkpoint,
    save_checkpoint,
)
from .fileio import atomic_write_json

log = logging.getLogger(__name__)

DIRECTIONS = ("both", "lhs_to_rhs", "rhs_to_lhs")
NORMALIZATIONS = ("batch", "weights")
PRECISIONS = ("auto", "fp32", "bf16")
RESUME = ("auto", "never")
SCORE_COLUMNS = ("score_linear", "score_reciprocal", "no_score")
STATE_VERSION = 1


# ----------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything a training run depends on (saved as `config.json` in the run directory).

    Data: `data` (MarqoGS root), `split` (default the in-domain training split),
    `image_root`, `score_column`. Loss: `weight_fn` (a `score_to_weight` kind; "constant"
    is the CE baseline), `weight_params`, `s_max` (default: the largest score in the
    split), `field_mode` ("mean" fuses title and image into one vector, "pairs" gives each
    field pair its own softmax), `field_weights`, `direction`, `normalize`, `use_groups`.
    Optimisation: AdamW `lr`, `weight_decay`, `warmup_steps` then cosine to
    `lr * min_lr_ratio`, `grad_clip`, `precision` ("auto": bf16 autocast on CUDA, fp32 on
    CPU), learnable logit scale clamped at `max_logit_scale`, `lock_image` / `lock_text`.
    Input: `prefetch` batches built ahead in a background thread (0: inline).
    Run: `epochs` or `max_steps`, `save_every` steps, `keep_checkpoints`, `eval_every`
    steps (0: only at the end when `eval_splits` is set), `resume`.
    """

    data: str
    out: str
    model: Any = "tiny"
    pretrained: Optional[str] = None
    split: str = "query_0_product_id_0"
    image_root: Optional[str] = None
    score_column: str = "score_linear"
    epochs: int = 1
    max_steps: Optional[int] = None
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    grad_clip: Optional[float] = 1.0
    weight_fn: str = "linear"
    weight_params: Dict[str, float] = field(default_factory=dict)
    s_max: Optional[float] = None
    field_mode: str = "mean"
    field_weights: Dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DOC_FIELD_WEIGHTS))
    direction: str = "both"
    normalize: str = "batch"
    use_groups: bool = True
    shuffle_buffer: int = 10000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    lock_image: bool = False
    lock_text: bool = False
    init_logit_scale: Optional[float] = None
    max_logit_scale: float = 100.0
    loss_impl: str = "auto"
    save_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 0
    eval_splits: Tuple[str, ...] = ()
    eval_queries: int = 2000
    eval_batch_size: int = 128
    resume: str = "auto"
    log_every: int = 10
    prefetch: int = 2
    stop_after: Optional[int] = None
    progress: bool = True

    def validate(self) -> "TrainConfig":
        """Check every option; raises ValueError naming the option."""
        from gcl_train.data import resolve_split

        def pos_int(name, v, allow_none=False, allow_zero=False):
            if v is None and allow_none:
                return
            lo = 0 if allow_zero else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")

        def num(name, v, lo=None, lo_open=False, allow_none=False):
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
            if lo is not None and (v <= lo if lo_open else v < lo):
                raise ValueError(f"{name}: expected a value {'>' if lo_open else '>='} {lo}, got {v!r}")

        if not isinstance(self.data, str) or not os.path.isdir(self.data):
            raise ValueError(f"data: expected a MarqoGS data directory, got {self.data!r} (not a directory)")
        if not isinstance(self.out, str) or not self.out:
            raise ValueError(f"out: expected a run directory path, got {self.out!r}")
        self.split = resolve_split(self.split)
        self.eval_splits = tuple(resolve_split(s) for s in self.eval_splits)
        if self.score_column not in SCORE_COLUMNS:
            raise ValueError(f"score_column: expected one of {SCORE_COLUMNS}, got {self.score_column!r}")
        pos_int("epochs", self.epochs)
        pos_int("max_steps", self.max_steps, allow_none=True)
        pos_int("stop_after", self.stop_after, allow_none=True)
        pos_int("batch_size", self.batch_size)
        if self.batch_size < 2:
            raise ValueError(f"batch_size: contrastive training needs >= 2 pairs per batch, got {self.batch_size}")
        num("lr", self.lr, 0, lo_open=True)
        num("weight_decay", self.weight_decay, 0)
        pos_int("warmup_steps", self.warmup_steps, allow_zero=True)
        num("min_lr_ratio", self.min_lr_ratio, 0)
        if self.min_lr_ratio > 1:
            raise ValueError(f"min_lr_ratio: expected a value in [0, 1], got {self.min_lr_ratio}")
        num("grad_clip", self.grad_clip, 0, lo_open=True, allow_none=True)
        num("s_max", self.s_max, 0, lo_open=True, allow_none=True)
        if self.field_mode not in FIELD_MODES:
            raise ValueError(f"field_mode: expected one of {FIELD_MODES}, got {self.field_mode!r}")
        field_weight_vector(self.field_weights)
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: expected one of {DIRECTIONS}, got {self.direction!r}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {self.normalize!r}")
        pos_int("shuffle_buffer", self.shuffle_buffer)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        num("init_logit_scale", self.init_logit_scale, 0, lo_open=True, allow_none=True)
        num("max_logit_scale", self.max_logit_scale, 1, lo_open=True)
        pos_int("save_every", self.save_every, allow_zero=True)
        pos_int("keep_checkpoints", self.keep_checkpoints)
        pos_int("eval_every", self.eval_every, allow_zero=True)
        pos_int("eval_queries", self.eval_queries)
        pos_int("eval_batch_size", self.eval_batch_size)
        pos_int("log_every", self.log_every)
        pos_int("prefetch", self.prefetch, allow_zero=True)
        if self.resume not in RESUME and not os.path.isfile(str(self.resume)):
            raise ValueError(f"resume: expected one of {RESUME} or a checkpoint file, got {self.resume!r}")
        if self.lock_image and self.lock_text:
            raise ValueError("lock_image, lock_text: both towers frozen leaves only the logit scale to train")
        self._check_weight_fn()
        return self

    def _check_weight_fn(self) -> None:
        from gcl_kernels import score_to_weight

        try:
            score_to_weight(torch.tensor([1.0, 2.0]), self.weight_fn, s_max=2.0, **self.weight_params)
        except ValueError as e:
            raise ValueError(f"weight_fn: {e}") from None
        except TypeError as e:
            raise ValueError(f"weight_params: not accepted by weight_fn {self.weight_fn!r}: {e}") from None

    def to_json(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["eval_splits"] = list(self.eval_splits)
        return d


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------

@dataclass
class Example:
    """One training pair, images still unread."""

    query: str
    query_id: str
    product_id: str
    title: Optional[str]
    image: Any  # a path / bytes value for the dataset's loader, or None
    score: float


@dataclass
class Batch:
    """A collated batch (tensors on the CPU; `to(device)` moves them).

    Shape:
        query_tokens [B, Lq], title_tokens [B, Lt], images [B, 3, H, W], present [B, 2]
        (DOC_FIELDS order), scores [B], lhs_groups [B], rhs_groups [B].
    """

    query_tokens: torch.Tensor
    title_tokens: torch.Tensor
    images: torch.Tensor
    present: torch.Tensor
    scores: torch.Tensor
    lhs_groups: torch.Tensor
    rhs_groups: torch.Tensor
    n_dropped: int = 0

    def to(self, device) -> "Batch":
        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device, non_blocking=True)
        return Batch(**kw)

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
    from gcl_train.data import is_missing

    has_title = field_weights.get("title", 0) > 0 and not is_missing(rec.title)
    if has_title:
        return True
    if field_weights.get("image", 0) <= 0:
        return False
    value = _image_value(rec)
    return dataset.image_available(value) if check_images else not is_missing(value)


def stream_examples(dataset, cfg: TrainConfig, stats=None) -> Iterator[Example]:
    """The split's pairs in file order as `Example`s (rows without a usable document
    field, or without a score, are counted in `stats` and left out)."""
    from gcl_train.data import ReadStats

    stats = stats if stats is not None else ReadStats()
    col = cfg.score_column
    for rec in dataset.iter_pairs(cfg.split, required=("query", "product_id", col),
                                  optional=("title", "image_local"), stats=stats):
        if not _usable(rec, dataset, cfg.field_weights, check_images=False):
            stats.note_skip("no usable document field (title or image) with positive weight", rec.line)
            continue
        score = float(rec.get(col))
        yield Example(rec.query, rec.query_id or rec.query, rec.product_id, rec.title,
                      _image_value(rec), score)


def scan_split(dataset, cfg: TrainConfig, cache_path: Optional[str] = None) -> Dict[str, Any]:
    """One streaming pass: usable rows and the largest score. Cached in `cache_path`,
    keyed by the file's path, size and mtime."""
    from gcl_train.data import ReadStats

    path = dataset.csv_path(cfg.split)
    st = os.stat(path)
    key = {"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime,
           "score_column": cfg.score_column, "field_weights": cfg.field_weights}
    if cache_path and os.path.isfile(cache_path):
        with open(cache_path, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return cached
    stats = ReadStats()
    n, s_max, s_min, queries = 0, -math.inf, math.inf, set()
    for ex in stream_examples(dataset, cfg, stats):
        n += 1
        s_max, s_min = max(s_max, ex.score), min(s_min, ex.score)
        if len(queries) < 1_000_000:
            queries.add(ex.query_id)
    if n == 0:
        raise ValueError(f"data: split file {path} has no usable training rows\n{stats.summary()}")
    out = {"key": key, "rows": stats.rows, "usable": n, "skipped": dict(stats.skipped),
           "score_max": s_max, "score_min": s_min, "queries": len(queries)}
    if cache_path:
        atomic_write_json(cache_path, out, default=str)
    return out


def epoch_stream(dataset, cfg: TrainConfig, epoch: int, stats=None) -> Iterator[Example]:
    """The shuffled examples of one epoch; a pure function of (data, seed, epoch)."""
    rng = random.Random(f"gcl-shuffle:{cfg.seed}:{epoch}")
    return shuffled(stream_examples(dataset, cfg, stats), cfg.shuffle_buffer, rng)


def epoch_batches(dataset, cfg: TrainConfig, bundle: ModelBundle, epoch: int, skip: int = 0,
                  stats=None) -> Iterator[Tuple["Batch", int]]:
    """(batch, examples consumed so far) for one epoch, starting after `skip` examples.

    The count after each batch is the resume position: a checkpoint taken after training
    on that batch restarts the epoch's stream there. A final remainder of one example,
    and batches left with fewer than two usable pairs, are skipped.
    """
    stream = epoch_stream(dataset, cfg, epoch, stats)
    for _ in range(skip):  # replay the deterministic shuffle up to the resume point
        next(stream, None)
    consumed, pending = skip, []
    for ex in stream:
        pending.append(ex)
        consumed += 1
        if len(pending) == cfg.batch_size:
            batch = _try_batch(pending, bundle, dataset, cfg)
            pending = []
            if batch is not None:
                yield batch, consumed
    if len(pending) >= 2:
        batch = _try_batch(pending, bundle, dataset, cfg)
        if batch is not None:
            yield batch, consumed


def _try_batch(examples, bundle, dataset, cfg) -> Optional["Batch"]:
    try:
        batch = make_batch(examples, bundle, dataset, cfg.field_weights)
    except ValueError as e:  # every example of the batch lost its fields (unreadable images)
        log.warning("skipping a batch: %s", e)
        return None
    return batch if len(batch) >= 2 else None


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


def _close(gen) -> None:
    close = getattr(gen, "close", None)
    if close is not None:
        close()


def _ids(values: Sequence[str]) -> torch.Tensor:
    index: Dict[str, int] = {}
    return torch.tensor([index.setdefault(v, len(index)) for v in values], dtype=torch.int64)


def make_batch(examples: Sequence[Example], bundle: ModelBundle, dataset,
               field_weights: Mapping[str, float]) -> Batch:
    """Tokenise, load and preprocess one batch of examples.

    A field with zero weight is not read at all; an image that fails to load is a missing
    field; an example left with no present field is dropped (counted in `n_dropped`).
    """
    need_title = field_weights.get("title", 0) > 0
    need_image = field_weights.get("image", 0) > 0
    from gcl_train.data import is_missing

    size = bundle.image_size
    keep, pixels, present = [], [], []
    blank = None
    for ex in examples:
        has_t = need_title and not is_missing(ex.title)
        img = None
        if need_image and not is_missing(ex.image):
            try:
                img = bundle.preprocess(dataset.load_image(ex.image))
            except (OSError, ValueError) as e:
                log.debug("image %r unreadable (%s): treated as a missing field", ex.image, e)
        if not has_t and img is None:
            continue
        if img is None:
            if blank is None:
                blank = torch.zeros(3, size, size)
            img = blank
        keep.append(ex)
        pixels.append(img)
        present.append((has_t, img is not blank))
    if not keep:
        raise ValueError("batch: no example in this batch has a usable document field")
    titles = [ex.title if p[0] else "" for ex, p in zip(keep, present)]
    return Batch(
        query_tokens=bundle.tokenizer([ex.query for ex in keep]),
        title_tokens=bundle.tokenizer(titles),
        images=torch.stack(pixels),
        present=torch.tensor(present, dtype=torch.bool),
        scores=torch.tensor([ex.score for ex in keep], dtype=torch.float32),
        lhs_groups=_ids([ex.query_id for ex in keep]),
        rhs_groups=_ids([ex.product_id for ex in keep]),
        n_dropped=len(examples) - len(keep),
    )


# ----------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------

def loss_module(model: torch.nn.Module, cfg: TrainConfig, s_max: float):
    """A `gcl_kernels.GCLLoss` configured from `cfg` that uses the model's own logit scale.

    The module's `logit_scale` is the model's Parameter itself, not a copy, so the
    optimizer, the clamp after each step and the checkpoints see one value, and
    `loss_fn.scale()` is exp(model.logit_scale) clamped at `cfg.max_logit_scale`.

    Args:
        model: an open_clip model with a 0-dim `logit_scale` Parameter (log of the scale).
        cfg: weight_fn, weight_params, direction, normalize, field_mode, field_weights,
            max_logit_scale and loss_impl are read.
        s_max: the data set's largest score (`score_to_weight`'s s_max).

    Example:
        >>> loss_fn = loss_module(bundle.model, cfg, s_max=100.0)  # doctest: +SKIP
        >>> float(loss_fn.scale())  # doctest: +SKIP
    """
    from gcl_kernels import GCLLoss

    field_weights = None
    if cfg.field_mode == "pairs":
        fw = field_weight_vector(cfg.field_weights)
        field_weights = (fw / fw.sum()).reshape(1, -1)
    loss_fn = GCLLoss(weight_fn=cfg.weight_fn, s_max=s_max, weight_params=cfg.weight_params,
                      direction=cfg.direction, normalize=cfg.normalize, field_weights=field_weights,
                      # the initial value is never used: the model's parameter replaces it below
                      init_logit_scale=cfg.max_logit_scale, max_logit_scale=cfg.max_logit_scale,
                      impl=cfg.loss_impl)
    loss_fn.logit_scale = model.logit_scale
    return loss_fn


def embed(model: torch.nn.Module, batch: Batch, cfg: TrainConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query embeddings [B, D] and document embeddings ([B, D] "mean", [2, B, D] "pairs").

    Fields with zero weight are not encoded (a text-only run never touches the image tower).
    """
    fw = field_weight_vector(cfg.field_weights)
    q = encode_text_tensor(model, batch.query_tokens)
    parts, present = [], batch.present.clone()
    for f, name in enumerate(DOC_FIELDS):
        if fw[f] <= 0:
            parts.append(None)
            present[:, f] = False
        elif name == "title":
            parts.append(encode_text_tensor(model, batch.title_tokens))
        else:
            parts.append(encode_images_tensor(model, batch.images))
    ref = next(p for p in parts if p is not None)
    fields = torch.stack([p if p is not None else torch.zeros_like(ref) for p in parts])
    docs = combine_document_fields(fields.float(), present, cfg.field_mode, fw.to(fields.device))
    return q.float(), docs


def compute_loss(model: torch.nn.Module, batch: Batch, cfg: TrainConfig, s_max: float,
                 loss_fn=None) -> torch.Tensor:
    """The GCL loss of one batch (GCL_SPEC sections 1-3) with the model's logit scale.

    Args:
        model, cfg, s_max: as `loss_module`; batch: from `make_batch`.
        loss_fn: a `loss_module(model, cfg, s_max)` to reuse across steps (built here
            when None).
    """
    if loss_fn is None:
        loss_fn = loss_module(model, cfg, s_max)
    q, docs = embed(model, batch, cfg)
    return loss_fn(q, docs, scores=batch.scores,
                   lhs_groups=batch.lhs_groups if cfg.use_groups else None,
                   rhs_groups=batch.rhs_groups if cfg.use_groups else None)


# ----------------------------------------------------------------------------------------
# optimisation
# ----------------------------------------------------------------------------------------

def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with open_clip's split: no weight decay on gains, biases, norms, logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def cosine_schedule(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0):
    """Linear warmup to the base lr, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available")
    return dev


# ----------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"step_(\d+)\.pt$")


def list_checkpoints(out: str) -> List[Tuple[int, str]]:
    """(step, path) of the run's periodic checkpoints, oldest first."""
    found = []
    for p in glob.glob(os.path.join(out, "checkpoints", "step_*.pt")):
        m = _STEP_RE.search(p)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def _model_signature(cfg_json: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: cfg_json.get(k) for k in ("model", "pretrained", "data", "split", "batch_size",
                                         "seed", "shuffle_buffer", "field_mode", "score_column")}


# ----------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What `train` returns (also written to `summary.json`)."""

    out: str
    step: int
    total_steps: int
    finished: bool
    model_path: Optional[str]
    checkpoint: Optional[str]
    first_loss: Optional[float]
    last_loss: Optional[float]
    epoch_losses: List[float]
    resumed_from: Optional[str]
    seconds: float
    evals: List[Dict[str, Any]] = field(default_factory=list)


def _rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def evaluate_model(bundle: ModelBundle, cfg: TrainConfig, out_dir: str, device) -> Dict[str, Any]:
    """Run the evaluator (`gcl_train.evaluate`) on `cfg.eval_splits` with an `Encoder`.

    Documents are fused with the training field weights (image -> `image_local`, title);
    everything else is the paper's protocol (`EvalConfig` defaults) except the number of
    test queries, `cfg.eval_queries`. The evaluator writes its JSON / CSV / PNG into
    `out_dir`.

    Returns:
        {split: {"ndcg@10", "err", "rbp@0.9", ...}}.
    """
    from gcl_train.data import MarqoGSDataset
    from gcl_train.evaluate import EvalConfig, evaluate

    was_training = bundle.model.training
    bundle.model.eval()
    try:
        enc = Encoder(bundle, batch_size=cfg.eval_batch_size, device=device)
        config = EvalConfig(right=eval_right_fields(cfg.field_weights), n_queries=cfg.eval_queries,
                            batch_size=cfg.eval_batch_size)
        report = evaluate(MarqoGSDataset(cfg.data, image_root=cfg.image_root), list(cfg.eval_splits),
                          encoder=enc, config=config, out_dir=out_dir, progress=cfg.progress)
    finally:
        bundle.model.train(was_training)
        if cfg.lock_image:
            bundle.model.visual.eval()
    return {s: {k: float(r.metrics[k]) for k in SUMMARY_KEYS if k in r.metrics}
            for s, r in report.results.items()}


SUMMARY_KEYS = ("ndcg@10", "err", "rbp@0.7", "rbp@0.8", "rbp@0.9", "mrr@10", "recall@100")


def eval_right_fields(field_weights: Mapping[str, float]):
    """The evaluator's document field specs for our field weights (zero weights left out)."""
    from gcl_train.data import FieldSpec

    specs = []
    if field_weights.get("image", 0) > 0:
        specs.append(FieldSpec("image_local", "img", float(field_weights["image"])))
    if field_weights.get("title", 0) > 0:
        specs.append(FieldSpec("title", "txt", float(field_weights["title"])))
    return tuple(specs)


def train(cfg: TrainConfig, on_step: Optional[Callable[[int, float], None]] = None) -> TrainResult:
    """Train (or resume training) a two-tower model with the GCL loss.

    Args:
        cfg: the run's configuration (validated here).
        on_step: optional callback(step, loss) after every optimiser step.

    Returns:
        `TrainResult`; the run directory holds checkpoints, `model.pt`, logs and summary.

    Example:
        >>> cfg = TrainConfig(data="demo_out/data", out="runs/tiny", model="tiny")  # doctest: +SKIP
        >>> train(cfg).model_path  # doctest: +SKIP
        'runs/tiny/model.pt'
    """
    from tqdm.auto import tqdm

    from gcl_train.data import MarqoGSDataset, ReadStats

    cfg.validate()
    t_start = time.time()
    os.makedirs(cfg.out, exist_ok=True)
    device = resolve_device(cfg.device)
    amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if amp and device.type != "cuda":
        log.warning("precision bf16 on %s: autocast in bfloat16 on the CPU is slow; use fp32 there", device)

    dataset = MarqoGSDataset(cfg.data, image_root=cfg.image_root)
    scan = scan_split(dataset, cfg, os.path.join(cfg.out, "data_scan.json"))
    s_max = float(cfg.s_max) if cfg.s_max is not None else float(scan["score_max"])
    if s_max <= 0:
        raise ValueError(f"s_max: the largest {cfg.score_column} in the split is {s_max}; "
                         f"pass a positive s_max (or another score_column)")
    # a last remainder of one pair cannot form a contrastive batch and is skipped
    steps_per_epoch = scan["usable"] // cfg.batch_size + (scan["usable"] % cfg.batch_size >= 2)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    if cfg.resume == "auto" and is_finished(cfg.out):
        with open(os.path.join(cfg.out, "summary.json"), encoding="utf-8") as f:
            done = json.load(f)
        if done.get("total_steps") == total_steps:
            log.info("%s: already finished (%d steps); nothing to do", cfg.out, total_steps)
            return TrainResult(**done)

    # resume point
    resume_path = None
    if cfg.resume not in RESUME:
        resume_path = str(cfg.resume)
    elif cfg.resume == "auto":
        cks = list_checkpoints(cfg.out)
        resume_path = cks[-1][1] if cks else None
    cfg_path = os.path.join(cfg.out, "config.json")
    if cfg.resume == "never" and list_checkpoints(cfg.out):
        raise ValueError(f"out: {cfg.out!r} already holds checkpoints and resume='never'; "
                         f"choose a new out directory or resume='auto'")
    if resume_path is not None and os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            old = json.load(f)
        if _model_signature(old) != _model_signature(json.loads(json.dumps(cfg.to_json()))):
            raise ValueError(
                f"resume: {cfg.out!r} was trained with a different setup "
                f"({_model_signature(old)}); resume needs the same model, data, batch size, seed "
                f"and shuffle; pass another out directory or resume='never'")
    atomic_write_json(cfg_path, cfg.to_json(), default=str)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    bundle = create_model(cfg.model, pretrained=cfg.pretrained, device=device, seed=cfg.seed)
    model = bundle.model
    if cfg.init_logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    if cfg.lock_image:
        model.lock_image_tower()
    if cfg.lock_text:
        model.lock_text_tower()
    loss_fn = loss_module(model, cfg, s_max)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = cosine_schedule(optimizer, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)

    step, epoch, consumed = 0, 0, 0
    epoch_losses: List[float] = []
    history: List[float] = []  # per-step losses of the current epoch
    first_loss = last_loss = None
    evals: List[Dict[str, Any]] = []
    if resume_path is not None:
        ck = read_checkpoint(resume_path)
        st = ck["extra"].get("train_state")
        if not st or st.get("version") != STATE_VERSION:
            raise ValueError(f"resume: {resume_path!r} has no training state (a final model.pt?); "
                             f"start a new run with pretrained={resume_path!r} instead")
        model.load_state_dict(ck["state_dict"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        step, epoch, consumed = st["step"], st["epoch"], st["consumed"]
        epoch_losses, history = list(st["epoch_losses"]), list(st["history"])
        first_loss, last_loss = st.get("first_loss"), st.get("last_loss")
        evals = list(st.get("evals", []))
        _set_rng_state(st["rng"])
        log.info("resumed from %s at step %d (epoch %d, %d examples in)", resume_path, step, epoch, consumed)
    model.train()
    if cfg.lock_image:  # lock_image_tower leaves the frozen tower's modules in train mode
        model.visual.eval()

    def save(path: Optional[str] = None) -> str:
        path = path or os.path.join(cfg.out, "checkpoints", f"step_{step:08d}.pt")
        state = {"version": STATE_VERSION, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                 "consumed": consumed, "epoch_losses": epoch_losses, "history": history,
                 "first_loss": first_loss, "last_loss": last_loss, "evals": evals,
                 "rng": _rng_state()}
        save_checkpoint(path, bundle, extra={"train_state": state, "config": cfg.to_json(), "s_max": s_max})
        for _, old_path in list_checkpoints(cfg.out)[:-cfg.keep_checkpoints]:
            os.unlink(old_path)
        return path

    def run_eval() -> None:
        if not cfg.eval_splits:
            return
        r = evaluate_model(bundle, cfg, os.path.join(cfg.out, "eval", f"step_{step:08d}"), device)
        evals.append({"step": step, "metrics": r})
        with open(os.path.join(cfg.out, "log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "eval": r}) + "\n")

    last_ck = None
    ran = 0
    stats = ReadStats()
    bar = tqdm(total=total_steps, initial=step, desc=f"train {os.path.basename(cfg.out.rstrip('/'))}",
               unit="step", disable=not cfg.progress, dynamic_ncols=True)
    t_last, pairs_since = time.time(), 0
    log_f = open(os.path.join(cfg.out, "log.jsonl"), "a", encoding="utf-8")
    try:
        while step < total_steps:
            batches = epoch_batches(dataset, cfg, bundle, epoch, consumed, stats)
            if cfg.prefetch:
                batches = prefetched(batches, cfg.prefetch)
            exhausted = True
            for batch, consumed in batches:
                batch = batch.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = compute_loss(model, batch, cfg, s_max, loss_fn)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():  # CLIP's clamp: keeps exp(logit_scale) <= max
                    model.logit_scale.clamp_(0, math.log(cfg.max_logit_scale))
                step += 1
                ran += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"loss is {value} at step {step}; lower lr, check the data "
                        f"({cfg.split}) or use precision='fp32'")
                first_loss = value if first_loss is None else first_loss
                last_loss = value
                history.append(value)
                pairs_since += len(batch)
                bar.update(1)
                if on_step is not None:
                    on_step(step, value)
                if step % cfg.log_every == 0 or step == total_steps:
                    now = time.time()
                    rate = pairs_since / max(now - t_last, 1e-9)
                    t_last, pairs_since = now, 0
                    rec = {"step": step, "epoch": epoch, "loss": value,
                           "lr": scheduler.get_last_lr()[0],
                           "logit_scale": float(loss_fn.scale().detach()),
                           "pairs_per_s": rate}
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                    bar.set_postfix(loss=f"{value:.4f}", lr=f"{rec['lr']:.2e}", pairs_s=f"{rate:.0f}")
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    run_eval()
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    last_ck = save()
                if cfg.stop_after is not None and ran >= cfg.stop_after and step < total_steps:
                    _close(batches)
                    last_ck = save()
                    return _finish(cfg, step, total_steps, False, None, last_ck, first_loss,
                                   last_loss, epoch_losses, resume_path, t_start, evals)
                if step >= total_steps:
                    exhausted = False
                    break
            _close(batches)
            if exhausted:
                epoch_losses.append(sum(history) / len(history) if history else float("nan"))
                history = []
                epoch += 1
                consumed = 0
    finally:
        bar.close()
        log_f.close()
    if history:  # stopped by max_steps inside an epoch
        epoch_losses.append(sum(history) / len(history))
        history = []
    if stats.n_skipped:
        log.warning("%s", stats.summary())
    run_eval()
    last_ck = save()
    model_path = os.path.join(cfg.out, "model.pt")
    save_checkpoint(model_path, bundle, extra={"config": cfg.to_json(), "s_max": s_max, "step": step,
                                                "epoch_losses": epoch_losses, "evals": evals})
    return _finish(cfg, step, total_steps, True, model_path, last_ck, first_loss, last_loss,
                   epoch_losses, resume_path, t_start, evals)


def _finish(cfg, step, total, finished, model_path, ck, first_loss, last_loss, epoch_losses,
            resumed_from, t_start, evals) -> TrainResult:
    res = TrainResult(out=cfg.out, step=step, total_steps=total, finished=finished,
                      model_path=model_path, checkpoint=ck, first_loss=first_loss, last_loss=last_loss,
                      epoch_losses=list(epoch_losses), resumed_from=resumed_from,
                      seconds=time.time() - t_start, evals=list(evals))
    atomic_write_json(os.path.join(cfg.out, "summary.json"), dataclasses.asdict(res), default=str)
    return res


def is_finished(out: str) -> bool:
    """True when `out` holds a finished run (a `summary.json` with finished=true and model.pt)."""
    p = os.path.join(out, "summary.json")
    if not (os.path.isfile(p) and os.path.isfile(os.path.join(out, "model.pt"))):
        return False
    with open(p, encoding="utf-8") as f:
        return bool(json.load(f).get("finished"))


__all__ = [
    "TrainConfig", "TrainResult", "Example", "Batch", "shuffled", "stream_examples", "scan_split",
    "epoch_stream", "epoch_batches", "prefetched", "make_batch", "loss_module", "embed", "compute_loss",
    "build_optimizer", "cosine_schedule", "resolve_device",
    "list_checkpoints", "evaluate_model", "train", "is_finished",
]
