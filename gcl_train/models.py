"""open_clip two-tower models for GCL: build, checkpoint, encode.

The library half of training (open_clip's `src/open_clip/` to our `train.py`'s
`src/open_clip_train/`): everything here works without the training loop.

- `create_model(model, pretrained=None, device="cpu")` builds an open_clip CLIP model from a
  built-in architecture name ("ViT-B-32"), one of our own configs ("tiny", "small"), a
  config dict or a JSON config file, plus its tokenizer and image preprocessing, and
  returns them together as a `ModelBundle`. Weights come only from a local file; nothing
  is ever downloaded (the BPE vocabulary ships inside the open_clip wheel).
- `save_checkpoint` / `load_checkpoint`: one self-contained file (architecture config,
  state dict, tokenizer and preprocessing settings, training metadata), written
  atomically; a checkpoint rebuilds its model with no network.
- `Encoder`: inference wrapper implementing the evaluator's encoder protocol
  `encoder(values: list, kind: "txt" | "img") -> np.ndarray [N, D]` (unit rows, float32).
- Document fields (GCL_SPEC section 3): `DOC_FIELDS` = ("title", "image");
  `document_field_embeddings` encodes both towers' fields of a batch, and
  `combine_document_fields` fuses them ("mean") or keeps them apart ("pairs").
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .fileio import atomic_write

CHECKPOINT_FORMAT = "gcl-checkpoint"
CHECKPOINT_VERSION = 1
TOKENIZER_NAME = "openai-clip-bpe-16e6"  # open_clip.SimpleTokenizer with the wheel's vocabulary
KINDS = ("txt", "img")
DOC_FIELDS = ("title", "image")  # order of the F_R axis in "pairs" mode
DOC_FIELD_KINDS = {"title": "txt", "image": "img"}
DEFAULT_DOC_FIELD_WEIGHTS = {"title": 0.1, "image": 0.9}  # the reference evaluation's defaults
FIELD_MODES = ("mean", "pairs")

# A tiny CLIP for tests and smoke runs: 32 px images in 8 px patches (16 tokens), a
# 2-layer text transformer over 32 tokens, 32-d embeddings. ~1.9M parameters, most of them
# the 49408-token embedding table the real BPE tokenizer needs.
TINY_CONFIG: Dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 64, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

# The demo's model: 64 px images in 8 px patches (64 tokens), 4 + 4 layers, 64-d embeddings.
SMALL_CONFIG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "layers": 4, "width": 128, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 4},
}

MODEL_CONFIGS: Dict[str, Dict[str, Any]] = {"tiny": TINY_CONFIG, "small": SMALL_CONFIG}

ModelSpec = Union[str, os.PathLike, Mapping[str, Any]]


# ----------------------------------------------------------------------------------------
# model construction
# ----------------------------------------------------------------------------------------

@dataclass
class ModelBundle:
    """A model with everything needed to feed it.

    Attributes:
        model: the open_clip `CLIP` (or `CustomTextCLIP`) module.
        tokenizer: callable list[str] -> LongTensor [N, context_length].
        preprocess: callable PIL.Image -> FloatTensor [3, H, W] (eval transform).
        config: the full architecture config (JSON-serialisable dict).
        name: "tiny", "ViT-B-32", a file name, or "custom" for a dict.
        preprocess_cfg: open_clip preprocessing settings (size, mean, std, ...).
    """

    model: torch.nn.Module
    tokenizer: Callable[[List[str]], torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    config: Dict[str, Any]
    name: str
    preprocess_cfg: Dict[str, Any]

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def image_size(self) -> int:
        size = self.config["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        return int(self.config["text_cfg"].get("context_length", 77))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def available_models() -> List[str]:
    """Names `create_model` accepts: our configs, then open_clip's built-in architectures."""
    import open_clip

    return list(MODEL_CONFIGS) + [m for m in open_clip.list_models() if _builtin_supported(m)]


def _builtin_supported(name: str) -> bool:
    import open_clip

    cfg = open_clip.get_model_config(name)
    return cfg is not None and _unsupported_reason(cfg, name) is None


def _unsupported_reason(cfg: Mapping[str, Any], name: str) -> Optional[str]:
    text = cfg.get("text_cfg", {})
    if "hf_model_name" in text or "hf_tokenizer_name" in text:
        return "its text tower or tokenizer comes from the Hugging Face hub (needs a download)"
    if "multimodal_cfg" in cfg:
        return "it is a CoCa captioning model, not a two-tower model"
    if "siglip" in name.lower():
        return "SigLIP tokenizers are not bundled with open_clip (need a download)"
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        try:
            import timm  # noqa: F401
        except ImportError:
            return "its image tower is a timm model and timm is not installed"
    return None


def _check_config(cfg: Any, source: str) -> Dict[str, Any]:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"model: expected a config dict with keys embed_dim, vision_cfg, text_cfg "
                         f"(from {source}), got {type(cfg).__name__}")
    cfg = dict(cfg.get("model_cfg", cfg))  # open_clip's open_clip_config.json nests it
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"model: config from {source} is missing keys {missing}; "
                         f"expected embed_dim, vision_cfg, text_cfg (see TINY_CONFIG)")
    if not isinstance(cfg["embed_dim"], int) or cfg["embed_dim"] < 1:
        raise ValueError(f"model: config from {source}: embed_dim must be a positive int, "
                         f"got {cfg['embed_dim']!r}")
    for key in ("vision_cfg", "text_cfg"):
        if not isinstance(cfg[key], Mapping):
            raise ValueError(f"model: config from {source}: {key} must be a dict, "
                             f"got {type(cfg[key]).__name__}")
    return json.loads(json.dumps(cfg))  # a plain, JSON-clean deep copy


def resolve_model_config(model: ModelSpec) -> Tuple[str, Dict[str, Any]]:
    """Turn a model spec into (name, architecture config).

    Args:
        model: "tiny" / "small" (ours), an open_clip architecture name ("ViT-B-32"), a
            path to a JSON file (a config, or open_clip's `{"model_cfg": ...}`), or a dict.

    Returns:
        (name, config) with config a deep copy that is safe to modify.

    Example:
        >>> name, cfg = resolve_model_config("tiny")
        >>> cfg["embed_dim"]
        32
    """
    import open_clip

    if isinstance(model, Mapping):
        name, cfg = "custom", _check_config(model, "a dict")
    elif isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        if spec in MODEL_CONFIGS:
            name, cfg = spec, copy.deepcopy(MODEL_CONFIGS[spec])
        elif spec.endswith(".json") or os.path.isfile(spec):
            if not os.path.isfile(spec):
                raise FileNotFoundError(f"model: config file {spec!r} does not exist")
            try:
                with open(spec, encoding="utf-8") as f:
                    raw = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"model: {spec!r} is not valid JSON: {e}") from None
            name, cfg = Path(spec).stem, _check_config(raw, spec)
        else:
            raw = open_clip.get_model_config(spec.replace("/", "-"))
            if raw is None:
                raise ValueError(
                    f"model: unknown model {spec!r}; expected one of {list(MODEL_CONFIGS)}, an "
                    f"open_clip architecture (e.g. 'ViT-B-32'; see available_models()), a JSON "
                    f"config path or a config dict")
            name, cfg = spec, _check_config(raw, f"open_clip's built-in {spec!r}")
    else:
        raise ValueError(f"model: expected a name, a JSON path or a config dict, "
                         f"got {type(model).__name__}")
    reason = _unsupported_reason(cfg, name)
    if reason is not None:
        raise ValueError(f"model: {name!r} is not supported offline: {reason}")
    return name, cfg


@functools.lru_cache(maxsize=8)
def get_tokenizer(context_length: int = 77):
    """open_clip's BPE tokenizer (vocabulary from the wheel, cached per context length)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def make_preprocess(preprocess_cfg: Mapping[str, Any]):
    """The eval image transform (resize, centre crop, RGB, tensor, normalise)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    keys = {f.name for f in dataclasses.fields(PreprocessCfg)}
    cfg = PreprocessCfg(**{k: (tuple(v) if isinstance(v, list) else v)
                           for k, v in preprocess_cfg.items() if k in keys})
    return image_transform_v2(cfg, is_train=False)


def _default_preprocess_cfg(cfg: Mapping[str, Any]) -> Dict[str, Any]:
    from open_clip.transform import PreprocessCfg

    pp = dataclasses.asdict(PreprocessCfg())
    size = cfg["vision_cfg"].get("image_size", 224)
    pp["size"] = list(size) if isinstance(size, (list, tuple)) else int(size)
    pp["mean"], pp["std"] = list(pp["mean"]), list(pp["std"])
    pp.update(cfg.get("preprocess_cfg", {}))
    return pp


def _build(cfg: Dict[str, Any]) -> torch.nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    kwargs = {k: v for k, v in cfg.items() if k not in ("custom_text", "preprocess_cfg")}
    cls = CustomTextCLIP if cfg.get("custom_text") else CLIP
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"model: config not accepted by open_clip's {cls.__name__}: {e}") from None


def create_model(
    model: ModelSpec,
    pretrained: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device] = "cpu",
    seed: Optional[int] = None,
) -> ModelBundle:
    """Build an open_clip two-tower model, its tokenizer and its image preprocessing.

    Args:
        model: see `resolve_model_config` ("tiny", "small", "ViT-B-32", JSON path, dict).
        pretrained: optional local weights file (an open_clip / OpenAI CLIP state dict or
            one of our checkpoints). Pretrained tags such as "openai" are refused: nothing
            is downloaded.
        device: where the model lives.
        seed: seeds torch before initialising weights (reproducible random init).

    Returns:
        A `ModelBundle` (model in eval mode; call `.train()` to train).

    Example:
        >>> b = create_model("tiny")
        >>> b.model.encode_text(b.tokenizer(["red shoe"])).shape
        torch.Size([1, 32])
    """
    name, cfg = resolve_model_config(model)
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    net = _build(cfg)
    if pretrained is not None:
        path = os.fspath(pretrained)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pretrained: {path!r} is not a file; only local weight files are supported "
                f"(pretrained tags such as 'openai' would need a download)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            net.load_state_dict(state["state_dict"])
        else:
            import open_clip

            open_clip.load_checkpoint(net, path, strict=True, weights_only=True)
    net.to(device).eval()
    pp = _default_preprocess_cfg(cfg)
    from open_clip import set_model_preprocess_cfg

    set_model_preprocess_cfg(net, {**pp, "mean": tuple(pp["mean"]), "std": tuple(pp["std"])})
    ctx = int(cfg["text_cfg"].get("context_length", 77))
    return ModelBundle(net, get_tokenizer(ctx), make_preprocess(pp), cfg, name, pp)


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------

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


def atomic_torch_save(obj: Any, path: Union[str, os.PathLike]) -> None:
    """`torch.save` through `fileio.atomic_write` (temp file, fsync, `os.replace`)."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True, durable=True)


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
        "version": CHECKPOINT_VERSION,
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


def read_checkpoint(path: Union[str, os.PathLike], map_location="cpu") -> Dict[str, Any]:
    """The raw checkpoint dict, validated (no model is built)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no file at {path!r}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign files
        raise ValueError(f"checkpoint: {path!r} could not be read as a torch file: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {path!r} is not a {CHECKPOINT_FORMAT} file "
                         f"(for plain open_clip weights use create_model(..., pretrained=path))")
    if obj.get("version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint: {path!r} has format version {obj.get('version')}, "
                         f"this code reads up to {CHECKPOINT_VERSION}")
    if obj["tokenizer"].get("name") != TOKENIZER_NAME:
        raise ValueError(f"checkpoint: {path!r} uses tokenizer {obj['tokenizer'].get('name')!r}, "
                         f"expected {TOKENIZER_NAME!r}")
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
    net = _build(copy.deepcopy(cfg))
    net.load_state_dict(obj["state_dict"])
    net.to(torch.device(device)).eval()
    pp = obj.get("preprocess_cfg") or _default_preprocess_cfg(cfg)
    from open_clip import set_model_preprocess_cfg

    set_model_preprocess_cfg(net, {**pp, "mean": tuple(pp["mean"]), "std": tuple(pp["std"])})
    bundle = ModelBundle(net, get_tokenizer(int(obj["tokenizer"]["context_length"])),
                         make_preprocess(pp), cfg, obj.get("name", "custom"), pp)
    meta = {k: obj[k] for k in ("format", "version", "created", "versions", "image_size") if k in obj}
    return Checkpoint(bundle, obj.get("extra", {}), meta)


# ----------------------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------------------

def field_weight_vector(field_weights: Optional[Mapping[str, float]] = None,
                        fields: Sequence[str] = DOC_FIELDS) -> torch.Tensor:
    """{"title": 0.1, "image": 0.9} -> tensor [F] in `fields` order; checks the values."""
    fw = dict(DEFAULT_DOC_FIELD_WEIGHTS if field_weights is None else field_weights)
    unknown = sorted(set(fw) - set(fields))
    if unknown:
        raise ValueError(f"field_weights: unknown fields {unknown}; expected keys from {list(fields)}")
    vals = []
    for f in fields:
        v = float(fw.get(f, 0.0))
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"field_weights: {f!r} must be a finite weight >= 0, got {v}")
        vals.append(v)
    if sum(vals) <= 0:
        raise ValueError(f"field_weights: at least one field needs a positive weight, got {fw}")
    return torch.tensor(vals, dtype=torch.float32)


def encode_images_tensor(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings [N, D] from preprocessed pixels [N, 3, H, W]."""
    return F.normalize(model.encode_image(images), dim=-1)


def encode_text_tensor(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """L2-normalised text embeddings [N, D] from token ids [N, context_length]."""
    return F.normalize(model.encode_text(tokens), dim=-1)


def document_field_embeddings(model: torch.nn.Module, title_tokens: torch.Tensor,
                              images: torch.Tensor) -> torch.Tensor:
    """Both document fields of a batch, each L2-normalised.

    Shape:
        title_tokens [B, context_length], images [B, 3, H, W] -> [2, B, D] in DOC_FIELDS order.
    """
    return torch.stack([encode_text_tensor(model, title_tokens),
                        encode_images_tensor(model, images)])


def combine_document_fields(fields: torch.Tensor, present: Optional[torch.Tensor],
                            mode: str, field_weights: torch.Tensor) -> torch.Tensor:
    """Fuse ("mean") or keep apart ("pairs") the document fields (GCL_SPEC section 3).

    "mean": the weighted mean of the unit field embeddings, missing fields weight 0 and
    the rest renormalised, then L2-normalised: [B, D]. "pairs": [F, B, D] as is, except that
    a missing field is replaced by the row's fused embedding, because the loss has no
    per-row field mask and a zero vector would still sit in every softmax.

    Args:
        fields: [F, B, D] unit field embeddings.
        present: [B, F] bool (None: all present).
        mode: "mean" or "pairs".
        field_weights: [F] non-negative weights.

    Shape:
        "mean" -> [B, D]; "pairs" -> [F, B, D].
    """
    if mode not in FIELD_MODES:
        raise ValueError(f"field_mode: expected one of {FIELD_MODES}, got {mode!r}")
    from gcl_kernels import fuse_fields

    fw = field_weights.to(device=fields.device, dtype=fields.dtype)
    fused = fuse_fields(fields, fw, present)
    if mode == "mean":
        return fused
    if present is None or bool(present.all()):
        return fields
    missing = ~present.to(fields.device).T  # [F, B]
    return torch.where(missing[..., None], fused[None], fields)


# ----------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------

class Encoder:
    """Inference wrapper: batches, no_grad, device, unit float32 numpy rows.

    Implements the evaluator's encoder protocol `encoder(values, kind)`: kind "txt" takes
    strings, kind "img" takes PIL images (or paths to image files).

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

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Strings -> float32 [N, D] unit rows."""
        texts = _as_list(texts, "texts")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"texts: expected str values, got {type(t).__name__} at index {i}")
        return self._run(texts, lambda chunk: self.bundle.tokenizer(chunk), self.bundle.model.encode_text)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images (or image file paths) -> float32 [N, D] unit rows."""
        images = _as_list(images, "images")
        return self._run(images, self._pixels, self.bundle.model.encode_image)

    def encode_documents(self, titles: Sequence[Optional[str]], images: Sequence[Any],
                         field_weights: Optional[Mapping[str, float]] = None) -> np.ndarray:
        """Fused document vectors ("mean" mode): [N, D] unit rows.

        A None title or image is a missing field: weight 0, the others renormalised. A row
        with no present field of positive weight raises ValueError.
        """
        titles, images = _as_list(titles, "titles"), _as_list(images, "images")
        if len(titles) != len(images):
            raise ValueError(f"images: expected {len(titles)} values (one per title), got {len(images)}")
        n = len(titles)
        fw = field_weight_vector(field_weights)
        emb = np.zeros((2, n, self.dim), dtype=np.float32)
        present = np.zeros((n, 2), dtype=bool)
        for f, (vals, enc) in enumerate(((titles, self.encode_text), (images, self.encode_images))):
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
            x = prepare(values[s:s + self.batch_size]).to(self.device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                z = forward(x)
            out.append(F.normalize(z.float(), dim=-1).cpu())
        return torch.cat(out).numpy()


def _as_list(values, name: str) -> List[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name}: expected a list of values, got {type(values).__name__}")
    return list(values)


__all__ = [
    "TINY_CONFIG", "SMALL_CONFIG", "MODEL_CONFIGS", "DOC_FIELDS", "DOC_FIELD_KINDS",
    "DEFAULT_DOC_FIELD_WEIGHTS", "FIELD_MODES", "KINDS", "ModelBundle", "Checkpoint", "Encoder",
    "available_models", "resolve_model_config", "create_model", "get_tokenizer", "make_preprocess",
    "save_checkpoint", "load_checkpoint", "read_checkpoint", "atomic_torch_save",
    "field_weight_vector", "encode_text_tensor", "encode_images_tensor",
    "document_field_embeddings", "combine_document_fields",
]
