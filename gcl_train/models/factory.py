"""Build open_clip two-tower models: architecture configs, the tokenizer, the image
preprocessing, and `create_model`, which returns them together as a `ModelBundle`.

Weights come only from a local file; nothing is ever downloaded (the BPE vocabulary ships
inside the open_clip wheel).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..data.fields import DEFAULT_DOC_FIELD_WEIGHTS

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

    @property
    def has_image_tower(self) -> bool:
        """False for a text-only two-tower model (documents are titles)."""
        return getattr(self.model, "visual", None) is not None

    @property
    def default_field_weights(self) -> Dict[str, float]:
        """Document field weights when the user gives none: the reference evaluation's
        image 0.9 / title 0.1, or title 1 for a text-only model."""
        return dict(DEFAULT_DOC_FIELD_WEIGHTS) if self.has_image_tower else {"title": 1.0}


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
        from .checkpoint import CHECKPOINT_FORMAT

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
