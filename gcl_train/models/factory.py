"""Build two-tower models: open_clip architectures (configs, the BPE tokenizer, the image
preprocessing) and text-only Hugging Face / sentence-transformers towers from a local
folder (`hf.py`); `create_model` returns either as a `ModelBundle`.

Weights come only from local files (`pretrained.py` reads open_clip's formats); nothing is
ever downloaded (the BPE vocabulary ships inside the open_clip wheel, a Hugging Face
folder brings its own tokenizer).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import zipfile
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

#: How a Hugging Face text model encodes queries and document titles: one tower for both
#: ("shared"), or a query tower and a document tower that start equal and are trained
#: apart ("separate"; `create_model(..., text_towers=...)`).
TEXT_TOWERS = ("shared", "separate")

ModelSpec = Union[str, os.PathLike, Mapping[str, Any]]


@dataclass
class ModelBundle:
    """A model with everything needed to feed it.

    Attributes:
        model: the open_clip `CLIP` (or `CustomTextCLIP`) module, or an `hf.HFTextModel`.
        tokenizer: callable list[str] -> LongTensor [N, context_length] (open_clip), or a
            dict of [N, L] tensors (`hf.HFTokenizer`: input_ids, attention_mask, ...).
        preprocess: callable PIL.Image -> FloatTensor [3, H, W] (eval transform); None
            for a text-only model.
        config: the full architecture config (JSON-serialisable dict); a Hugging Face
            text model's has "kind": "hf_text" (see `hf.hf_model_config`).
        name: "tiny", "ViT-B-32", a file or folder name, or "custom" for a dict.
        preprocess_cfg: open_clip preprocessing settings (size, mean, std, ...); {} for a
            text-only model.
    """

    model: torch.nn.Module
    tokenizer: Callable[[List[str]], Any]
    preprocess: Optional[Callable[[Any], torch.Tensor]]
    config: Dict[str, Any]
    name: str
    preprocess_cfg: Dict[str, Any]
    pretrained: bool = False  # the weights were loaded (a folder, a file, a checkpoint), not drawn

    @property
    def kind(self) -> str:
        """"open_clip" or "hf_text"."""
        return str(self.config.get("kind", "open_clip"))

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def image_size(self) -> Optional[int]:
        """The image side in pixels; None for a text-only model."""
        if "vision_cfg" not in self.config:
            return None
        size = self.config["vision_cfg"].get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def context_length(self) -> int:
        if self.kind != "open_clip":
            return int(self.config["max_seq_length"])
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


def check_text_towers(text_towers: Any) -> str:
    """`text_towers` if it is one of `TEXT_TOWERS`, else a ValueError naming the argument."""
    if not isinstance(text_towers, str) or text_towers not in TEXT_TOWERS:
        raise ValueError(f"text_towers: expected one of {TEXT_TOWERS} ('shared': queries and titles through one "
                         f"text tower; 'separate': a query tower and a document tower), got {text_towers!r}")
    return text_towers


def saved_text_towers(config: Any) -> str:
    """The `text_towers` a model config (a checkpoint's) records: "shared" when it has none
    (configs written before the option, and open_clip models)."""
    return str(config.get("text_towers", "shared")) if isinstance(config, Mapping) else "shared"


def separate_towers_refused(source: str) -> ValueError:
    """The error for loading a checkpoint with separate text towers as a shared model."""
    return ValueError(f"text_towers: {source!r} has separate query and document towers; pass "
                      f"text_towers='separate' (gcl-train --text-towers separate) to load it")


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
        return ("its text tower or tokenizer comes from the Hugging Face hub (needs a download; an open_clip "
                "image tower with a Hugging Face text tower is not built here: pass the text model's local "
                "folder as the model for a text-only two-tower model)")
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


def _folder_config(folder: str) -> Tuple[str, Dict[str, Any]]:
    """(name, config) of an open_clip hub-style folder (`open_clip_config.json`)."""
    from .pretrained import HUB_CONFIG, HUB_WEIGHTS

    path = os.path.join(folder, HUB_CONFIG)
    if not os.path.isfile(path):
        raise ValueError(f"model: folder {folder!r} has neither {HUB_CONFIG} (an open_clip hub-style folder, with "
                         f"{' or '.join(HUB_WEIGHTS)}) nor config.json / modules.json (a Hugging Face or "
                         f"sentence-transformers text model)")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"model: {path!r} is not valid JSON: {e}") from None
    cfg = _check_config(raw, path)
    if isinstance(raw, Mapping) and isinstance(raw.get("preprocess_cfg"), Mapping):
        cfg["preprocess_cfg"] = json.loads(json.dumps(raw["preprocess_cfg"]))
    return Path(os.path.abspath(folder)).name, cfg


def _is_checkpoint_file(path: str) -> bool:
    """A file written by `save_checkpoint` (a torch zip archive with our format tag)."""
    if path.endswith(".json") or not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return False
    from .checkpoint import read_checkpoint

    try:
        read_checkpoint(path)
    except ValueError:
        return False
    return True


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
        elif os.path.isdir(spec):
            name, cfg = _folder_config(spec)
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
    text_towers: Optional[str] = None,
) -> ModelBundle:
    """Build a two-tower model, its tokenizer and (with an image tower) its preprocessing.

    Args:
        model: "tiny", "small", an open_clip architecture ("ViT-B-32"), a JSON config
            path or dict (see `resolve_model_config`); a local Hugging Face /
            sentence-transformers folder (a text-only model, `hf.create_hf_text_model`);
            an open_clip hub-style folder (`open_clip_config.json` + weights, loaded
            unless `pretrained` is given); or a checkpoint file from `save_checkpoint`.
        pretrained: optional local weights: for open_clip models any format of
            `pretrained.load_open_clip_weights` (state dict, OpenAI CLIP, safetensors,
            hub-style folder, our checkpoint); for a Hugging Face folder, a checkpoint of
            the same model. Pretrained tags such as "openai" are refused: nothing is
            downloaded.
        device: where the model lives.
        seed: seeds torch before initialising weights (reproducible random init).
        text_towers: Hugging Face text models only: "shared" (queries and document
            titles through one text tower) or "separate" (a query tower and a document
            tower, two independent copies of the folder's weights that diverge in
            training; state-dict keys `text.*` and `doc_text.*`). None: "shared" for a
            folder, what the checkpoint records for a checkpoint. An open_clip model
            (which has its own image and text towers) accepts only "shared" or None.

    Returns:
        A `ModelBundle` (model in eval mode; call `.train()` to train).

    Raises:
        ValueError naming `text_towers` for a value outside `hf.TEXT_TOWERS`, "separate"
        for an open_clip model, or "shared" for a checkpoint with separate towers.

    Example:
        >>> b = create_model("tiny")
        >>> b.model.encode_text(b.tokenizer(["red shoe"])).shape
        torch.Size([1, 32])
        >>> two = create_model(minilm_dir, text_towers="separate")  # doctest: +SKIP
        >>> two.config["text_towers"], two.model.doc_text is not None  # doctest: +SKIP
        ('separate', True)
    """
    if text_towers is not None:
        check_text_towers(text_towers)
    if isinstance(model, (str, os.PathLike)):
        spec = os.fspath(model)
        if os.path.isdir(spec):
            from . import hf

            if hf.is_hf_folder(spec):
                return dataclasses.replace(hf.create_hf_text_model(spec, pretrained=pretrained, device=device,
                                                                   seed=seed, text_towers=text_towers or "shared"),
                                           pretrained=True)
            if pretrained is None and os.path.isfile(os.path.join(spec, "open_clip_config.json")):
                pretrained = spec  # a hub-style folder brings its weights
        elif spec not in MODEL_CONFIGS and _is_checkpoint_file(spec):
            if pretrained is not None:
                raise ValueError(f"pretrained: {spec!r} is a checkpoint that already holds its weights; "
                                 f"pass it alone (or as pretrained with its architecture as the model)")
            from .checkpoint import load_checkpoint

            bundle = load_checkpoint(spec, device).bundle
            return dataclasses.replace(_with_text_towers(bundle, text_towers, spec), pretrained=True)
    if text_towers == "separate":
        raise ValueError(f"text_towers: 'separate' is for Hugging Face text models (a local Hugging Face / "
                         f"sentence-transformers folder); the open_clip model {_spec_name(model)!r} has its own "
                         f"text and image towers, so it takes only 'shared'")
    name, cfg = resolve_model_config(model)
    device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)
    net = _build(cfg)
    if pretrained is not None:
        from .pretrained import load_open_clip_weights

        load_open_clip_weights(net, pretrained)
    net.to(device).eval()
    pp = _default_preprocess_cfg(cfg)
    from open_clip import set_model_preprocess_cfg

    set_model_preprocess_cfg(net, {**pp, "mean": tuple(pp["mean"]), "std": tuple(pp["std"])})
    ctx = int(cfg["text_cfg"].get("context_length", 77))
    return ModelBundle(net, get_tokenizer(ctx), make_preprocess(pp), cfg, name, pp, pretrained=pretrained is not None)


def _spec_name(model: ModelSpec) -> str:
    return "custom" if isinstance(model, Mapping) else os.fspath(model) if isinstance(model, (str, os.PathLike)) \
        else type(model).__name__


def _with_text_towers(bundle: ModelBundle, text_towers: Optional[str], source: str) -> ModelBundle:
    """A checkpoint's bundle with the `text_towers` asked for: None keeps what it has; a
    shared Hugging Face model asked for "separate" gets a document tower (a copy of its
    text tower); anything else that differs is refused."""
    have = saved_text_towers(bundle.config)
    if text_towers is None or text_towers == have:
        return bundle
    if bundle.kind != "hf_text":
        raise ValueError(f"text_towers: 'separate' is for Hugging Face text models; the checkpoint {source!r} "
                         f"holds an open_clip model (its own text and image towers), which takes only 'shared'")
    if text_towers == "shared":
        raise separate_towers_refused(source)
    from .hf import split_text_towers

    split_text_towers(bundle.model)
    bundle.model.to(bundle.device)
    return dataclasses.replace(bundle, config={**bundle.config, "text_towers": "separate"})
