"""`Encoder`: inference over a `ModelBundle` (batches, no_grad, device, unit float32
numpy rows); it implements the evaluator's encoder protocol `encoder(values, kind)` and
its role-aware extension `encoder.encode_as(values, kind, role)`: document titles go
through a model's document tower when it has one (`text_towers="separate"`)."""
from __future__ import annotations

import functools
import os
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..data.fields import KINDS, ROLES
from .checkpoint import load_checkpoint
from .factory import ModelBundle
from .fields import combine_document_fields, field_weight_vector



def encode_images_tensor(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings [N, D] from preprocessed pixels [N, 3, H, W]."""
    return F.normalize(model.encode_image(images), dim=-1)


def encode_text_tensor(model: torch.nn.Module, tokens) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] from the tokenizer's output: token ids
    [N, context_length] (open_clip) or a dict of [N, L] tensors (Hugging Face)."""
    return F.normalize(model.encode_text(tokens), dim=-1)


def document_text_encoder(model: torch.nn.Module):
    """The model's document-title encoder: `model.encode_document_text` when it has one
    (a Hugging Face text model; with `text_towers="separate"` its document tower), else
    `model.encode_text` (open_clip: one text tower for queries and titles)."""
    fn = getattr(model, "encode_document_text", None)
    return fn if callable(fn) else model.encode_text


def encode_document_text_tensor(model: torch.nn.Module, tokens) -> torch.Tensor:
    """L2-normalised document title embeddings [N, D] (the document tower when the model
    has one, see `document_text_encoder`); the tokens as `encode_text_tensor`."""
    return F.normalize(document_text_encoder(model)(tokens), dim=-1)


def _to_device(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


class Encoder:
    """Inference wrapper: batches, no_grad, device, unit float32 numpy rows.

    Implements the evaluator's encoder protocol `encoder(values, kind)`: kind "txt" takes
    strings (encoded as queries), kind "img" takes PIL images (or paths to image files).
    The role-aware `encode_as(values, kind, role)` (`evaluation.protocols.
    RoleAwareEncoderProtocol`) encodes document titles (role "document") through the
    model's document tower when it has separate text towers; the evaluator, the Qdrant
    ingest and the demo call it for documents.

    Args:
        bundle: a `ModelBundle` (from `create_model` or `load_checkpoint().bundle`).
        batch_size: values per forward pass.
        device: defaults to the model's device; the model is moved there.
        amp: autocast in bfloat16 on CUDA (outputs are still float32).
        progress: show a tqdm bar for calls longer than one batch.

    Example:
        >>> enc = Encoder(create_model("tiny"))
        >>> enc(["red dress", "blue shoe"], "txt").shape
        (2, 32)
    """

    def __init__(self, bundle: ModelBundle, batch_size: int = 64,
                 device: Optional[Union[str, torch.device]] = None, amp: bool = True,
                 progress: bool = False):
        if not isinstance(bundle, ModelBundle):
            raise ValueError(f"bundle: expected a ModelBundle, got {type(bundle).__name__}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.bundle = bundle
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else bundle.device
        self.bundle.model.to(self.device).eval()
        self.amp = amp and self.device.type == "cuda"
        self.progress = progress

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike],
                        device: Union[str, torch.device] = "cpu", **kwargs) -> "Encoder":
        """Load a checkpoint and wrap it."""
        return cls(load_checkpoint(path, device).bundle, device=device, **kwargs)

    @property
    def dim(self) -> int:
        return self.bundle.embed_dim

    def __call__(self, values: Sequence[Any], kind: str) -> np.ndarray:
        """Encode `values` of `kind` ("txt" or "img") -> float32 [N, D], unit rows."""
        if kind == "txt":
            return self.encode_text(values)
        if kind == "img":
            return self.encode_images(values)
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")

    def encode_as(self, values: Sequence[Any], kind: str, role: str) -> np.ndarray:
        """Encode `values` of `kind` for `role` ("query" or "document") -> float32 [N, D],
        unit rows: text of role "document" goes through the document tower (if the model
        has one), everything else as `__call__`.

        Example:
            >>> enc.encode_as(["red dress"], "txt", "document").shape  # doctest: +SKIP
            (1, 384)
        """
        if role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
        if kind == "txt":
            return self.encode_text(values, role=role)
        return self(values, kind)

    def encode_text(self, texts: Sequence[str], role: str = "query") -> np.ndarray:
        """Strings -> float32 [N, D] unit rows; `role` "document" encodes them as document
        titles (the document tower when the model has separate text towers)."""
        if role not in ROLES:
            raise ValueError(f"role: expected one of {ROLES}, got {role!r}")
        texts = _as_list(texts, "texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts: expected str values, got {type(t).__name__} at index {i}")
        model = self.bundle.model
        forward = document_text_encoder(model) if role == "document" else model.encode_text
        return self._run(texts, lambda chunk: self.bundle.tokenizer(chunk), forward)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images (or image file paths) -> float32 [N, D] unit rows."""
        images = _as_list(images, "images")
        if not self.bundle.has_image_tower:
            raise ValueError(f"images: the model {self.bundle.name!r} is text-only (no image tower); encode "
                             f"titles only (gcl-eval: --right-keys \"['title']\" --img-or-txt "
                             f"\"[['txt'], ['txt']]\" --right-weights \"[1]\")")
        return self._run(images, self._pixels, self.bundle.model.encode_image)

    def encode_documents(self, titles: Sequence[Optional[str]], images: Sequence[Any],
                         field_weights: Optional[Mapping[str, float]] = None) -> np.ndarray:
        """Fused document vectors ("mean" mode): [N, D] unit rows (titles through the
        document tower when the model has one).

        A None title or image is a missing field: weight 0, the others renormalised. A row
        with no present field of positive weight raises ValueError. `field_weights`
        defaults to the model's (`ModelBundle.default_field_weights`: title 1 for a
        text-only model, whose images are then never read).
        """
        titles, images = _as_list(titles, "titles"), _as_list(images, "images")
        if len(titles) != len(images):
            raise ValueError(f"images: expected {len(titles)} values (one per title), got {len(images)}")
        n = len(titles)
        fw = field_weight_vector(self.bundle.default_field_weights if field_weights is None else field_weights)
        if fw[1] <= 0:
            images = [None] * n  # a zero-weight field is not encoded
        emb = np.zeros((2, n, self.dim), dtype=np.float32)
        present = np.zeros((n, 2), dtype=bool)
        encode_titles = functools.partial(self.encode_text, role="document")
        for f, (vals, enc) in enumerate(((titles, encode_titles), (images, self.encode_images))):
            idx = [i for i, v in enumerate(vals) if v is not None]
            present[idx, f] = True
            if idx:
                emb[f, idx] = enc([vals[i] for i in idx])
        fused = combine_document_fields(torch.from_numpy(emb), torch.from_numpy(present), "mean", fw)
        return fused.numpy().astype(np.float32, copy=False)

    def _pixels(self, chunk: List[Any]) -> torch.Tensor:
        from PIL import Image

        out = []
        for i, img in enumerate(chunk):
            if isinstance(img, (str, os.PathLike)):
                with Image.open(img) as im:
                    img = im.convert("RGB")
            elif not isinstance(img, Image.Image):
                raise ValueError(f"images: expected PIL images or file paths, got {type(img).__name__}")
            out.append(self.bundle.preprocess(img))
        return torch.stack(out)

    @torch.no_grad()
    def _run(self, values: List[Any], prepare, forward) -> np.ndarray:
        if not values:
            return np.zeros((0, self.dim), dtype=np.float32)
        from tqdm.auto import tqdm

        starts = range(0, len(values), self.batch_size)
        bar = tqdm(starts, desc="encode", unit="batch", disable=not self.progress or len(starts) < 2,
                   leave=False)
        out = []
        for s in bar:
            x = _to_device(prepare(values[s:s + self.batch_size]), self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                z = forward(x)
            out.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(out).numpy()


def _as_list(values, name: str) -> List[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name}: expected a list of values, got {type(values).__name__}")
    return list(values)


