"""open_clip weights in the formats people have on disk, read offline.

`load_open_clip_weights(model, path)` accepts

- a plain `torch.save(model.state_dict())` file (`.pt`, `.pth`, `.bin`), also nested under
  "state_dict" (open_clip_train's checkpoints) or with DistributedDataParallel's
  "module." prefix;
- an OpenAI CLIP state dict (the same key names, extra `input_resolution`,
  `context_length` and `vocab_size` entries, often float16), or OpenAI's TorchScript
  archive (read with `torch.jit.load`, which rebuilds the archive's modules without
  unpickling Python objects);
- a `.safetensors` file (read with safetensors);
- a hub-style folder: `open_clip_config.json` plus `open_clip_model.safetensors` or
  `open_clip_pytorch_model.bin`;
- one of our own checkpoints (`save_checkpoint`).

Pickled files are read with `torch.load(weights_only=True)`. The state dict must match
the model exactly: a wrong architecture or a truncated file raises ValueError naming the
file and the first mismatching key (missing, unexpected, or of another shape), in the
model's parameter order. Position embeddings are never resized.
"""
from __future__ import annotations

import os
import zipfile
from typing import Dict, Mapping, Union

import torch

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")

PathLike = Union[str, os.PathLike]


def hub_weights_file(folder: PathLike) -> str:
    """The weights file of a hub-style open_clip folder (safetensors first)."""
    folder = os.fspath(folder)
    for name in HUB_WEIGHTS:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"pretrained: folder {folder!r} has no {' or '.join(HUB_WEIGHTS)} "
                            f"(an open_clip hub-style folder holds {HUB_CONFIG} and one of them)")


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """The raw state dict of a weights file or hub-style folder (see the module docstring).

    Raises:
        FileNotFoundError for a missing path; ValueError for a file that cannot be read
        (truncated, not a weights file), naming it.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = hub_weights_file(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained: {path!r} is not a file; only local weight files are supported "
                                f"(pretrained tags such as 'openai' would need a download)")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path)
        elif _is_torchscript(path):
            obj = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / foreign files: torch, zipfile and safetensors errors differ
        first = (str(e).strip().splitlines() or [""])[0]
        if "Weights only load failed" in str(e):
            raise ValueError(f"pretrained: {path!r} is a pickle that needs more than tensors to load; it is "
                             f"refused because unpickling it could run code (torch.load weights_only=True). "
                             f"Re-save it as a plain state dict or safetensors") from None
        raise ValueError(f"pretrained: {path!r} could not be read as weights ({type(e).__name__}: {first}); "
                         f"is it truncated or not a weights file?") from None
    from .checkpoint import CHECKPOINT_FORMAT

    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"pretrained: {path!r} does not hold a state dict (a mapping of names to tensors)")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def adapt_state_dict(state: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """OpenAI / older open_clip layouts -> this model's key names (no resizing)."""
    for key in OPENAI_METADATA:
        if key in state and key not in model.state_dict():
            state.pop(key)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        from open_clip.model import convert_to_custom_text_state_dict

        state = convert_to_custom_text_state_dict(state)
    ls = getattr(model, "logit_scale", None)
    if "logit_scale" in state and ls is not None and state["logit_scale"].ndim != ls.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(ls.shape)
    return state


def check_state_dict(state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    """ValueError naming `source` and the first key (model order) that does not match."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ValueError(f"pretrained: {source!r} does not fit the model: first missing key {k!r} "
                             f"({len([x for x in own if x not in state])} missing); wrong architecture?")
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"pretrained: {source!r} does not fit the model: first mismatching key {k!r} has "
                             f"shape {tuple(state[k].shape)}, the model needs {tuple(v.shape)}; wrong architecture?")
    extra = [k for k in state if k not in own]
    if extra:
        raise ValueError(f"pretrained: {source!r} does not fit the model: first unexpected key {extra[0]!r} "
                         f"({len(extra)} unexpected); wrong architecture?")


def load_open_clip_weights(model: torch.nn.Module, path: PathLike) -> None:
    """Load `path` (file or hub-style folder) into an open_clip model, exactly.

    Example:
        >>> b = create_model("ViT-B-32")  # doctest: +SKIP
        >>> load_open_clip_weights(b.model, "ViT-B-32/open_clip_model.safetensors")  # doctest: +SKIP
    """
    source = os.fspath(path)
    state = adapt_state_dict(read_state_dict(source), model)
    check_state_dict(state, model, source)
    model.load_state_dict(state, strict=True)


__all__ = ["HUB_CONFIG", "HUB_WEIGHTS", "hub_weights_file", "read_state_dict", "adapt_state_dict",
           "check_state_dict", "load_open_clip_weights"]
