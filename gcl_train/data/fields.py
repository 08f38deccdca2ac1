"""Field specs: which record keys feed each tower, as text or image, with what weight.

They mirror the reference evaluation's flags (marqo-ai/GCL `evals/eval_gs_v1.py`):

    --left-keys "['query']"  --right-keys "['image_local', 'title']"
    --img-or-txt "[['txt'], ['img', 'txt']]"  --left-weights "[1]"  --right-weights "[0.9, 0.1]"

A record's field weights are the spec weights with every *missing* field set to 0 and the
rest renormalised to sum 1 (docs/method.md section 6). A value is missing when it is None, a NaN
float, an empty or all-blank string, the literal strings "nan"/"none"/"null" that pandas
and CSV exports write for missing cells, or (for images, when the caller checks) a path
that does not exist or bytes that do not decode. A record with no present field at all
has no usable embedding; callers count such records instead of dropping them silently.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Tuple

import numpy as np

KINDS = ("txt", "img")
#: Whose values an encoder call holds: the queries' (the query tower) or the documents'
#: (the document tower, for a model with separate text towers).
ROLES = ("query", "document")
_MISSING_STRINGS = frozenset({"", "nan", "none", "null", "na", "n/a"})


@dataclass(frozen=True)
class FieldSpec:
    """One input field of one tower.

    Args:
        key: the record key (CSV column or corpus JSON key), e.g. "query", "title",
            "image_local", "image".
        kind: "txt" (the value is text) or "img" (a path, bytes, or a PIL image).
        weight: the field's weight in the fused embedding, >= 0.
        required: when True, a record whose value for this key is missing is counted as
            unusable (reported, then left out) instead of getting weight 0.

    Example:
        >>> FieldSpec("title", "txt", 0.1)
        FieldSpec(key='title', kind='txt', weight=0.1, required=False)
    """

    key: str
    kind: str
    weight: float = 1.0
    required: bool = False

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"FieldSpec.key: expected a non-empty string, got {self.key!r}")
        if self.kind not in KINDS:
            raise ValueError(f"FieldSpec.kind: expected one of {KINDS} for key {self.key!r}, got {self.kind!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(
                f"FieldSpec.weight: expected a finite number >= 0 for key {self.key!r}, got {w!r}"
            )

    @property
    def keys(self) -> Tuple[str, ...]:
        """`(key,)`: the record keys tried in order, as `DocField.keys` (one field protocol)."""
        return (self.key,)


FieldSpecs = Tuple[FieldSpec, ...]


@dataclass(frozen=True)
class DocField:
    """One document field of the two-tower model: the project's field vocabulary.

    Every other spelling of the document fields (the F_R axis of "pairs" training, the
    default field weights, the evaluator's right-hand `FieldSpec`s, the Qdrant vector
    names, CLI defaults) derives from `DOC_FIELDS`.

    Args:
        name: the field's name in the model, the loss, field-weight options and Qdrant
            ("title", "image").
        keys: record keys that may hold the value, tried in order (a MarqoGS CSV or
            corpus has "image_local", the Hugging Face copy "image" bytes).
        kind: "txt" or "img".
        weight: the default weight (the reference evaluation's: image 0.9, title 0.1).
    """

    name: str
    keys: Tuple[str, ...]
    kind: str
    weight: float

    @property
    def key(self) -> str:
        """The primary record key (what the evaluator's field specs read)."""
        return self.keys[0]


#: The document fields, in the order of the F_R axis in "pairs" mode.
DOC_FIELDS: Tuple[DocField, ...] = (
    DocField("title", ("title",), "txt", 0.1),
    DocField("image", ("image_local", "image"), "img", 0.9),
)
DOC_FIELD_NAMES: Tuple[str, ...] = tuple(f.name for f in DOC_FIELDS)
DEFAULT_DOC_FIELD_WEIGHTS = {f.name: f.weight for f in DOC_FIELDS}


def doc_field(name: str) -> DocField:
    """The `DocField` called `name` (ValueError naming the known fields otherwise)."""
    for f in DOC_FIELDS:
        if f.name == name:
            return f
    raise ValueError(f"field: unknown document field {name!r}; expected one of {list(DOC_FIELD_NAMES)}")


def doc_field_specs(field_weights=None) -> "FieldSpecs":
    """The evaluator's document `FieldSpec`s for document field weights.

    Fields with weight 0 are left out; images come first, as in the reference evaluation
    (`--right-keys "['image_local', 'title']"`).

    Example:
        >>> [(s.key, s.weight) for s in doc_field_specs({"title": 0.1, "image": 0.9})]
        [('image_local', 0.9), ('title', 0.1)]
    """
    fw = DEFAULT_DOC_FIELD_WEIGHTS if field_weights is None else field_weights
    unknown = sorted(set(fw) - set(DOC_FIELD_NAMES))
    if unknown:
        raise ValueError(f"field_weights: unknown fields {unknown}; expected keys from {list(DOC_FIELD_NAMES)}")
    order = sorted(DOC_FIELDS, key=lambda f: f.kind != "img")
    return tuple(FieldSpec(f.key, f.kind, float(fw[f.name])) for f in order if float(fw.get(f.name, 0)) > 0)


#: Query text, weight 1 (the reference evaluation's left side).
DEFAULT_LEFT: FieldSpecs = (FieldSpec("query", "txt", 1.0),)
#: Product image 0.9 and title 0.1 (the reference evaluation's right side).
DEFAULT_RIGHT: FieldSpecs = doc_field_specs()


def _as_list(name: str, value) -> list:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as e:
                raise ValueError(f"{name}: could not parse {value!r} as a Python list literal ({e})") from None
        else:
            value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list (or a comma-separated string), got {value!r}")
    return list(value)


def parse_field_specs(keys, kinds, weights=None, required=()) -> FieldSpecs:
    """Build field specs from reference-style flags.

    Args:
        keys: record keys, a list or a string such as "['image_local', 'title']" or
            "image_local,title".
        kinds: "txt"/"img" per key, same forms.
        weights: one number per key (default: all 1).
        required: keys whose absence makes a record unusable.

    Returns:
        A tuple of `FieldSpec`.

    Example:
        >>> parse_field_specs("image_local,title", "img,txt", "0.9,0.1")[1]
        FieldSpec(key='title', kind='txt', weight=0.1, required=False)
    """
    keys = [str(k) for k in _as_list("keys", keys)]
    kinds = [str(k) for k in _as_list("kinds", kinds)]
    if weights is None:
        weights = [1.0] * len(keys)
    else:
        weights = _as_list("weights", weights)
        try:
            weights = [float(w) for w in weights]
        except (TypeError, ValueError):
            raise ValueError(f"weights: expected numbers, got {weights!r}") from None
    required = set(_as_list("required", required)) if required else set()
    if not keys:
        raise ValueError("keys: expected at least one field key, got none")
    if len(kinds) != len(keys):
        raise ValueError(f"kinds: expected one kind per key ({len(keys)} keys {keys}), got {len(kinds)}: {kinds}")
    if len(weights) != len(keys):
        raise ValueError(
            f"weights: expected one weight per key ({len(keys)} keys {keys}), got {len(weights)}: {weights}"
        )
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys: expected distinct keys, got {keys}")
    unknown = required - set(keys)
    if unknown:
        raise ValueError(f"required: {sorted(unknown)} are not among the keys {keys}")
    if sum(weights) <= 0:
        raise ValueError(f"weights: expected a positive sum, got {weights}")
    return tuple(FieldSpec(k, t, w, k in required) for k, t, w in zip(keys, kinds, weights))


def check_field_specs(name: str, specs) -> FieldSpecs:
    """Validate a sequence of `FieldSpec` (or (key, kind, weight) tuples) for argument `name`."""
    if isinstance(specs, FieldSpec):
        specs = (specs,)
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"{name}: expected a non-empty sequence of FieldSpec, got {specs!r}")
    out = []
    for s in specs:
        if isinstance(s, FieldSpec):
            out.append(s)
        elif isinstance(s, (list, tuple)) and 2 <= len(s) <= 4:
            out.append(FieldSpec(*s))
        else:
            raise ValueError(f"{name}: expected FieldSpec or (key, kind, weight) tuples, got {s!r}")
    keys = [s.key for s in out]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name}: expected distinct keys, got {keys}")
    if sum(s.weight for s in out) <= 0:
        raise ValueError(f"{name}: expected field weights with a positive sum, got {[s.weight for s in out]}")
    return tuple(out)


def is_missing(value: Any) -> bool:
    """True for None, NaN, empty/blank strings and the "nan"/"none"/"null" spellings.

    Example:
        >>> [is_missing(v) for v in (None, float("nan"), " ", "NaN", "red dress", b"\\x89PNG")]
        [True, True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, str):
        return value.strip().lower() in _MISSING_STRINGS
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value) == 0
    if isinstance(value, dict):
        # Hugging Face image cells: {"bytes": ..., "path": ...}
        return is_missing(value.get("bytes")) and is_missing(value.get("path"))
    return False


def renormalized_weights(specs: Sequence[FieldSpec], present: Iterable[bool]) -> np.ndarray:
    """Spec weights with absent fields at 0, renormalised to sum 1 (all zeros if none present).

    Shape:
        returns [F] float64.

    Example:
        >>> renormalized_weights(DEFAULT_RIGHT, [False, True]).tolist()
        [0.0, 1.0]
    """
    w = np.array([s.weight if p else 0.0 for s, p in zip(specs, present)], dtype=np.float64)
    total = w.sum()
    return w / total if total > 0 else w


def fuse_embeddings(field_vectors: np.ndarray, weights: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Weighted mean of L2-normalised field embeddings, renormalised (docs/method.md section 6).

    A numpy twin of the fusion `gcl_kernels` does on tensors; rows whose weights are all
    zero come back as zero vectors (callers treat them as unusable).

    Args:
        field_vectors: [N, F, D] raw field embeddings (normalised here).
        weights: [N, F] per-record field weights (missing fields 0).

    Shape:
        returns [N, D] float32, unit rows (or zero rows).

    Example:
        >>> v = np.array([[[3.0, 0.0], [0.0, 2.0]]]); w = np.array([[0.5, 0.5]])
        >>> np.round(fuse_embeddings(v, w).astype(float), 4).tolist()
        [[0.7071, 0.7071]]
    """
    v = np.asarray(field_vectors, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    if v.ndim != 3:
        raise ValueError(f"field_vectors: expected shape [N, F, D], got {v.shape}")
    if w.shape != v.shape[:2]:
        raise ValueError(f"weights: expected shape [N, F]={v.shape[:2]}, got {w.shape}")
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)
    fused = np.einsum("nf,nfd->nd", w, v)
    norm = np.linalg.norm(fused, axis=-1, keepdims=True)
    return np.where(norm > eps, fused / np.maximum(norm, eps), 0.0).astype(np.float32)
