"""Self-contained checkpoints: architecture config, state dict, tokenizer and
preprocessing settings and training metadata in one file, written atomically, read back
with `weights_only=True`; a checkpoint rebuilds its model with no network.

open_clip models are written as format version 1 (unchanged). Hugging Face text models
(`hf.HFTextModel`) are version 2: `model_config` is `hf.hf_model_config` (the
transformers config, pooling, Dense layers, normalisation, max length), and
`tokenizer` is `{"name": "hf", "files": {file name: text, or uint8 tensor for binary
files}}`, the tokenizer's own files as `save_pretrained` writes them.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ..fileio import atomic_write
from .factory import (
    ModelBundle,
    _build,
    _check_config,
    _default_preprocess_cfg,
    get_tokenizer,
    make_preprocess,
)

CHECKPOINT_FORMAT = "gcl-checkpoint"
CHECKPOINT_VERSION = 2  # the newest version this code reads (and writes, for Hugging Face models)
OPEN_CLIP_VERSION = 1  # open_clip models are still written as version 1
TOKENIZER_NAME = "openai-clip-bpe-16e6"  # open_clip.SimpleTokenizer with the wheel's vocabulary
HF_TOKENIZER_NAME = "hf"  # a Hugging Face tokenizer whose files travel in the checkpoint


@dataclass
class Checkpoint:
    """What `load_checkpoint` returns.

    Attributes:
        bundle: the rebuilt model with tokenizer and preprocessing.
        extra: whatever was passed as `extra` when saving (training state, metadata).
        meta: format, version, creation time, library versions.
    """

    bundle: ModelBundle
    extra: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)


def _versions() -> Dict[str, str]:
    import open_clip

    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "open_clip": str(open_clip.__version__)}


class CorruptCheckpointError(ValueError):
    """A checkpoint whose contents do not match the digests stored in it (a flipped bit,
    a damaged copy) or that cannot be read at all (a truncated file)."""


def _tensors(obj: Any, prefix: str = ""):
    """(path, tensor) for every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def tensor_digests(obj: Any) -> Dict[str, str]:
    """{path: blake2b-64 of the tensor's bytes} for every tensor in `obj`."""
    out = {}
    for path, t in _tensors(obj):
        h = hashlib.blake2b(digest_size=8)
        h.update(str(t.dtype).encode())
        h.update(repr(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        out[path] = h.hexdigest()
    return out


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """`torch.save` through `fileio.atomic_write` (temp file, fsync, `os.replace`).

    A checkpoint dict (format `CHECKPOINT_FORMAT`) also stores a digest of every tensor
    it holds (weights, optimizer and RNG states), which `read_checkpoint` verifies."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = dict(obj, digests=tensor_digests({k: v for k, v in obj.items() if k != "digests"}))
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, durable=True)


def verify_digests(obj: Mapping[str, Any], path: str) -> None:
    """CorruptCheckpointError naming the first tensor whose bytes changed since saving."""
    want = obj.get("digests")
    if want is None:  # written before digests were stored
        return
    got = tensor_digests({k: v for k, v in obj.items() if k != "digests"})
    if got != want:
        bad = sorted(set(got) ^ set(want)) or sorted(k for k in got if got[k] != want.get(k))
        raise CorruptCheckpointError(
            f"checkpoint: {path!r} is damaged: {len(bad)} tensor(s) differ from what was saved, "
            f"first {bad[0].lstrip('/')!r} (a flipped bit or a damaged copy)")


def save_checkpoint(
    path: Union[str, os.PathLike],
    model: Union[torch.nn.Module, ModelBundle],
    model_config: Optional[Mapping[str, Any]] = None,
    extra: Optional[Mapping[str, Any]] = None,
    name: Optional[str] = None,
) -> Path:
    """Write a self-contained checkpoint atomically (temp file, then `os.replace`).

    Args:
        path: destination file (parent directories are created).
        model: the module, or a `ModelBundle` (then `model_config` and `name` default to it).
        model_config: the architecture config the model was built from.
        extra: JSON-like training metadata and/or state (optimizer state dicts, step, RNG
            states); tensors are fine. Stored as is under "extra".
        name: architecture name to record (default: the bundle's name or "custom").

    Returns:
        The path written.

    Example:
        >>> b = create_model("tiny")
        >>> save_checkpoint("/tmp/m.pt", b, extra={"step": 0})  # doctest: +SKIP
    """
    preprocess_cfg = None
    if isinstance(model, ModelBundle) and model.kind == "hf_text":
        return _save_hf(path, model, extra, name)
    if isinstance(model_config, Mapping) and model_config.get("kind") == "hf_text":
        raise ValueError("model: a Hugging Face text model is saved from its ModelBundle (the checkpoint "
                         "carries its tokenizer files)")
    if isinstance(model, ModelBundle):
        model_config = model.config if model_config is None else model_config
        name = model.name if name is None else name
        preprocess_cfg = model.preprocess_cfg
        net = model.model
    else:
        net = model
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module or ModelBundle, got {type(net).__name__}")
    if model_config is None:
        raise ValueError("model_config: required when model is a bare module")
    cfg = _check_config(model_config, "model_config")
    if preprocess_cfg is None:
        preprocess_cfg = _default_preprocess_cfg(cfg)
    state = {k: v.detach().to("cpu") for k, v in net.state_dict().items()}
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": OPEN_CLIP_VERSION,
        "name": name or "custom",
        "model_config": cfg,
        "state_dict": state,
        "tokenizer": {"name": TOKENIZER_NAME,
                      "context_length": int(cfg["text_cfg"].get("context_length", 77))},
        "image_size": cfg["vision_cfg"].get("image_size", 224),
        "preprocess_cfg": json.loads(json.dumps(preprocess_cfg, default=list)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
        "extra": dict(extra or {}),
    }
    atomic_torch_save(obj, path)
    return Path(path)


def _save_hf(path, bundle: ModelBundle, extra: Optional[Mapping[str, Any]], name: Optional[str]) -> Path:
    state = {k: v.detach().to("cpu") for k, v in bundle.model.state_dict().items()}
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "name": name or bundle.name or "custom",
        "model_config": json.loads(json.dumps(bundle.config)),
        "state_dict": state,
        "tokenizer": {"name": HF_TOKENIZER_NAME, "files": bundle.tokenizer.files(),
                      "context_length": int(bundle.config["max_seq_length"])},
        "image_size": None,
        "preprocess_cfg": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {**_versions(), **_hf_versions()},
        "extra": dict(extra or {}),
    }
    atomic_torch_save(obj, path)
    return Path(path)


def _hf_versions() -> Dict[str, str]:
    import transformers

    return {"transformers": str(transformers.__version__)}


def read_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> Dict[str, Any]:
    """The raw checkpoint dict, validated (no model is built)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CorruptCheckpointError(f"checkpoint: {path!r} could not be read as a torch file "
                                     f"(truncated, damaged or not a checkpoint): {first}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path!r} is not a {CHECKPOINT_FORMAT} file "
                         f"(for plain open_clip weights use create_model(..., pretrained=path))")
    if obj.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint: {path!r} has format version {obj.get('version')}, "
                         f"this code reads up to {CHECKPOINT_VERSION}")
    tok = obj.get("tokenizer") or {}
    if tok.get("name") not in (TOKENIZER_NAME, HF_TOKENIZER_NAME):
        raise ValueError(f"checkpoint: {path!r} uses tokenizer {tok.get('name')!r}, "
                         f"expected {TOKENIZER_NAME!r} or {HF_TOKENIZER_NAME!r}")
    if tok.get("name") == HF_TOKENIZER_NAME and not tok.get("files"):
        raise ValueError(f"checkpoint: {path!r} has a Hugging Face model but no tokenizer files")
    verify_digests(obj, path)
    return obj


def load_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> Checkpoint:
    """Rebuild a model from a checkpoint written by `save_checkpoint` (no network).

    Args:
        path: checkpoint file.
        device: where to put the model.

    Returns:
        `Checkpoint(bundle, extra, meta)`; the model is in eval mode.

    Example:
        >>> ck = load_checkpoint("runs/demo/model.pt")  # doctest: +SKIP
        >>> enc = Encoder(ck.bundle)  # doctest: +SKIP
    """
    obj = read_checkpoint(path)
    cfg = obj["model_config"]
    meta = {k: obj[k] for k in ("format", "version", "created", "versions", "image_size") if k in obj}
    if cfg.get("kind") == "hf_text":
        from .hf import _bundle, build_hf_text_model

        net, tokenizer = build_hf_text_model(cfg, obj["tokenizer"]["files"], obj["state_dict"])
        bundle = _bundle(net, tokenizer, cfg, obj.get("name", "custom"), device)
        return Checkpoint(bundle, obj.get("extra", {}), meta)
    net = _build(copy.deepcopy(cfg))
    net.load_state_dict(obj["state_dict"])
    net.to(torch.device(device)).eval()
    pp = obj.get("preprocess_cfg") or _default_preprocess_cfg(cfg)
    from open_clip import set_model_preprocess_cfg

    set_model_preprocess_cfg(net, {**pp, "mean": tuple(pp["mean"]), "std": tuple(pp["std"])})
    bundle = ModelBundle(net, get_tokenizer(int(obj["tokenizer"]["context_length"])),
                         make_preprocess(pp), cfg, obj.get("name", "custom"), pp)
    return Checkpoint(bundle, obj.get("extra", {}), meta)
