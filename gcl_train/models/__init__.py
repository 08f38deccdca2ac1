"""Two-tower models for GCL: build (`factory`), checkpoint (`checkpoint`), fuse document
fields (`fields`) and encode (`encoder`).

The library half of training (open_clip's `src/open_clip/` to our `gcl_train.training`):
everything here works without the training loop.

- `create_model(model, pretrained=None, device="cpu")` builds an open_clip CLIP model from a
  built-in architecture name ("ViT-B-32"), one of our own configs ("tiny", "small"), a
  config dict, a JSON config file or a hub-style folder, plus its tokenizer and image
  preprocessing, or a text-only model from a local Hugging Face / sentence-transformers
  folder (`hf`; `text_towers="separate"` gives it a query tower and a document tower),
  and returns them together as a `ModelBundle`. `pretrained` reads
  open_clip weights in the formats of `pretrained`. Nothing is ever downloaded.
- `save_checkpoint` / `load_checkpoint`: one self-contained file, written atomically.
- `Encoder`: inference wrapper implementing the evaluator's encoder protocol
  `encoder(values: list, kind: "txt" | "img") -> np.ndarray [N, D]` (unit rows, float32),
  and `encoder.encode_as(values, kind, role)` (role "query" / "document").
- `combine_document_fields` fuses document field embeddings ("mean") or keeps them apart
  ("pairs"); `field_weight_vector` orders field weights like `DOC_FIELD_NAMES`.
"""
from ..data.fields import DEFAULT_DOC_FIELD_WEIGHTS, DOC_FIELD_NAMES
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Checkpoint,
    CorruptCheckpointError,
    atomic_torch_save,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .encoder import (
    KINDS,
    ROLES,
    Encoder,
    document_text_encoder,
    encode_document_text_tensor,
    encode_images_tensor,
    encode_text_tensor,
)
from .factory import (
    MODEL_CONFIGS,
    SMALL_CONFIG,
    TEXT_TOWERS,
    TINY_CONFIG,
    ModelBundle,
    ModelSpec,
    available_models,
    create_model,
    get_tokenizer,
    make_preprocess,
    resolve_model_config,
)
from .fields import FIELD_MODES, combine_document_fields, field_weight_vector
from .pretrained import load_open_clip_weights

__all__ = [
    "TINY_CONFIG", "SMALL_CONFIG", "MODEL_CONFIGS", "DOC_FIELD_NAMES", "DEFAULT_DOC_FIELD_WEIGHTS",
    "FIELD_MODES", "KINDS", "ROLES", "TEXT_TOWERS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "ModelBundle",
    "ModelSpec",
    "Checkpoint", "CorruptCheckpointError", "Encoder", "available_models", "resolve_model_config", "create_model",
    "get_tokenizer", "make_preprocess", "save_checkpoint", "load_checkpoint", "read_checkpoint",
    "atomic_torch_save", "field_weight_vector", "encode_text_tensor", "encode_document_text_tensor",
    "document_text_encoder", "encode_images_tensor",
    "combine_document_fields", "load_open_clip_weights",
]
