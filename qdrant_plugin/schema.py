"""The collection schema: what was stored, so that a reopen can be checked against it.

The schema is written when a collection is created (a JSON file next to an embedded
store, collection metadata on qdrant-client) and compared on every open. A difference in
the data layout (field names, dims, mode, fused weights, HNSW graph parameters,
quantisation) raises
:class:`SchemaMismatchError`; nothing is ever dropped or recreated implicitly.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import SchemaMismatchError

PLUGIN_VERSION = "0.1.0"
# Bumped when the stored layout (vector names, payload keys, id mapping) changes.
SCHEMA_VERSION = 1
MODES = ("weighted", "fused")

CONCAT_VECTOR = "_concat"
FUSED_VECTOR = "_fused"
# Payload key that keeps the caller's own id next to the derived point id.
ID_KEY = "_gcl_id"

_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")

# HNSW defaults, chosen with benchmarks/bench_qdrant.py (see docs/qdrant.md).
DEFAULT_HNSW_M = 32
DEFAULT_HNSW_EF_CONSTRUCT = 200
DEFAULT_HNSW_EF = 80
# Whether each field's own vector gets an HNSW graph too (single-field search without a scan).
DEFAULT_INDEX_FIELDS = False
# Quantisation of the graphed main vector: None (float32 only) or one of QUANTIZATIONS.
# "none" is accepted from callers as an explicit None (to insist on an unquantised store).
QUANTIZATIONS = ("int8",)
DEFAULT_QUANTIZATION = None
# Candidates taken from the quantised search per requested hit, rescored with the float32
# vectors (measured at 100k docs: 1.0 loses ~4 points of recall@10, 2.0 none; docs/qdrant.md).
DEFAULT_OVERSAMPLING = 2.0
# int8 range: the central 99% of coordinate values, so a few outliers do not waste the levels.
SCALAR_QUANTILE = 0.99


def validate_fields(fields: Any) -> Tuple[Tuple[str, int], ...]:
    """Check a ``{name: dim}`` mapping and return it as an ordered tuple of pairs."""
    if not isinstance(fields, Mapping) or len(fields) == 0:
        raise ValueError(
            f"fields: expected a non-empty mapping of field name to dimension, "
            f"e.g. {{'title': 512, 'image': 512}}; got {fields!r}"
        )
    out = []
    for name, dim in fields.items():
        if not isinstance(name, str) or not _FIELD_RE.match(name):
            raise ValueError(
                f"fields: field name must be a string of letters, digits, '_' or '-' "
                f"starting with a letter (names starting with '_' are reserved); got {name!r}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"fields[{name!r}]: expected a positive int dimension, got {dim!r}")
        out.append((name, int(dim)))
    return tuple(out)


def normalize_fused_weights(
    fused_weights: Any, fields: Tuple[Tuple[str, int], ...]
) -> Tuple[Tuple[str, float], ...]:
    """Validate fused-mode weights and scale them to sum to 1 (the fused vector is renormalised anyway)."""
    names = [n for n, _ in fields]
    if fused_weights is None:
        return tuple((n, 1.0 / len(names)) for n in names)
    if not isinstance(fused_weights, Mapping):
        raise ValueError(
            f"fused_weights: expected a mapping of field name to weight, got {fused_weights!r}"
        )
    unknown = sorted(set(fused_weights) - set(names))
    if unknown:
        raise ValueError(f"fused_weights: unknown field(s) {unknown}; the index has fields {names}")
    vals = {}
    for n in names:
        w = fused_weights.get(n, 0.0)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"fused_weights[{n!r}]: expected a number, got {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"fused_weights[{n!r}]: expected a finite weight >= 0, got {w!r}")
        vals[n] = w
    total = sum(vals.values())
    if total <= 0:
        raise ValueError(f"fused_weights: at least one weight must be > 0, got {dict(fused_weights)}")
    return tuple((n, vals[n] / total) for n in names)


def validate_quantization(quantization: Any) -> Optional[str]:
    """``None`` / ``"none"`` -> None, ``"int8"`` -> ``"int8"``; anything else is a ``ValueError``."""
    if quantization is None or quantization == "none":
        return None
    if isinstance(quantization, str) and quantization in QUANTIZATIONS:
        return quantization
    raise ValueError(
        f"quantization: expected None, 'none' or one of {QUANTIZATIONS}, got {quantization!r}"
    )


def validate_oversampling(oversampling: Any, arg: str = "oversampling") -> float:
    """A finite number >= 1 (candidates per hit rescored after a quantised search)."""
    if isinstance(oversampling, bool) or not isinstance(oversampling, (int, float)):
        raise ValueError(f"{arg}: expected a number >= 1, got {oversampling!r}")
    v = float(oversampling)
    if not math.isfinite(v) or v < 1.0:
        raise ValueError(f"{arg}: expected a finite number >= 1, got {oversampling!r}")
    return v


@dataclass(frozen=True)
class IndexSchema:
    """What a collection stores. ``fields`` keeps the concatenation order."""

    fields: Tuple[Tuple[str, int], ...]
    mode: str = "weighted"
    fused_weights: Optional[Tuple[Tuple[str, float], ...]] = None
    hnsw_m: int = DEFAULT_HNSW_M
    hnsw_ef_construct: int = DEFAULT_HNSW_EF_CONSTRUCT
    index_fields: bool = DEFAULT_INDEX_FIELDS
    quantization: Optional[str] = DEFAULT_QUANTIZATION
    schema_version: int = SCHEMA_VERSION
    plugin_version: str = field(default=PLUGIN_VERSION, compare=False)

    @functools.cached_property
    def field_names(self) -> Tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    @functools.cached_property
    def dims(self) -> Dict[str, int]:
        return dict(self.fields)

    @functools.cached_property
    def main_vector(self) -> str:
        """The named vector the multi-field search runs on (a lone field is its own)."""
        if len(self.fields) == 1:
            return self.fields[0][0]
        return CONCAT_VECTOR if self.mode == "weighted" else FUSED_VECTOR

    @functools.cached_property
    def main_dim(self) -> int:
        if self.mode == "weighted" and len(self.fields) > 1:
            return sum(d for _, d in self.fields)
        return self.fields[0][1]

    @functools.cached_property
    def quantized_vector(self) -> Optional[str]:
        """The named vector that also carries quantised copies (the graphed main one), or None."""
        return None if self.quantization is None else self.main_vector

    def vector_dims(self) -> Dict[str, int]:
        """Every named vector a point carries: one per field plus the main one."""
        out = dict(self.fields)
        out[self.main_vector] = self.main_dim
        return out

    @classmethod
    def build(
        cls,
        fields: Any,
        mode: str = "weighted",
        fused_weights: Any = None,
        hnsw_m: Optional[int] = None,
        hnsw_ef_construct: Optional[int] = None,
        index_fields: Optional[bool] = None,
        quantization: Optional[str] = None,
    ) -> "IndexSchema":
        """Validate user arguments into a schema (raises ``ValueError`` naming the argument)."""
        f = validate_fields(fields)
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        fw = None
        if mode == "fused":
            dims = {d for _, d in f}
            if len(dims) != 1:
                raise ValueError(
                    f"fields: mode='fused' averages the fields into one vector, so every field "
                    f"needs the same dimension; got {dict(f)}"
                )
            fw = normalize_fused_weights(fused_weights, f)
        elif fused_weights is not None:
            raise ValueError(
                "fused_weights: only used with mode='fused'; with mode='weighted' pass "
                "field_weights to search() instead"
            )
        m = DEFAULT_HNSW_M if hnsw_m is None else hnsw_m
        efc = DEFAULT_HNSW_EF_CONSTRUCT if hnsw_ef_construct is None else hnsw_ef_construct
        for arg, v, lo in (("hnsw_m", m, 4), ("hnsw_ef_construct", efc, 4)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{arg}: expected an int >= {lo}, got {v!r}")
        if index_fields is None:
            index_fields = DEFAULT_INDEX_FIELDS
        if not isinstance(index_fields, bool):
            raise ValueError(f"index_fields: expected True or False, got {index_fields!r}")
        q = validate_quantization(quantization)
        return cls(fields=f, mode=mode, fused_weights=fw, hnsw_m=m, hnsw_ef_construct=efc,
                   index_fields=index_fields, quantization=q)

    def to_json(self) -> Dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "plugin_version": self.plugin_version,
            "fields": [[n, d] for n, d in self.fields],
            "mode": self.mode,
            "fused_weights": None if self.fused_weights is None else [[n, w] for n, w in self.fused_weights],
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construct": self.hnsw_ef_construct,
            "index_fields": self.index_fields,
            "quantization": self.quantization,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], where: str = "stored schema") -> "IndexSchema":
        try:
            version = int(obj["schema_version"])
            if version != SCHEMA_VERSION:
                raise SchemaMismatchError(
                    f"{where}: written with schema version {version} (plugin "
                    f"{obj.get('plugin_version')}), this plugin reads version {SCHEMA_VERSION}"
                )
            fw = obj.get("fused_weights")
            # Stores written before quantisation existed have no key: unquantised.
            q = obj.get("quantization")
            if q is not None and q not in QUANTIZATIONS:
                raise ValueError(f"unknown quantization {q!r}")
            return cls(
                fields=tuple((str(n), int(d)) for n, d in obj["fields"]),
                mode=str(obj["mode"]),
                fused_weights=None if fw is None else tuple((str(n), float(w)) for n, w in fw),
                hnsw_m=int(obj["hnsw_m"]),
                hnsw_ef_construct=int(obj["hnsw_ef_construct"]),
                index_fields=bool(obj["index_fields"]),
                quantization=q,
                schema_version=version,
                plugin_version=str(obj.get("plugin_version", "unknown")),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, SchemaMismatchError):
                raise
            raise SchemaMismatchError(f"{where}: unreadable schema ({type(e).__name__}: {e})") from None

    def check_compatible(
        self,
        stored: "IndexSchema",
        collection: str,
        explicit: Mapping[str, bool],
    ) -> None:
        """Raise :class:`SchemaMismatchError` where the requested schema differs from the stored one.

        ``explicit`` says which optional arguments the caller actually passed: an argument
        left out accepts whatever is stored.
        """
        problems = []
        if dict(self.fields) != dict(stored.fields):
            problems.append(f"fields: stored {dict(stored.fields)}, requested {dict(self.fields)}")
        if explicit.get("mode") and self.mode != stored.mode:
            problems.append(f"mode: stored {stored.mode!r}, requested {self.mode!r}")
        if explicit.get("fused_weights") and self.mode == stored.mode == "fused":
            a, b = dict(stored.fused_weights or ()), dict(self.fused_weights or ())
            if any(abs(a.get(k, 0.0) - b.get(k, 0.0)) > 1e-9 for k in set(a) | set(b)):
                problems.append(f"fused_weights (normalised): stored {a}, requested {b}")
        if explicit.get("hnsw_m") and self.hnsw_m != stored.hnsw_m:
            problems.append(f"hnsw_m: stored {stored.hnsw_m}, requested {self.hnsw_m}")
        if explicit.get("hnsw_ef_construct") and self.hnsw_ef_construct != stored.hnsw_ef_construct:
            problems.append(
                f"hnsw_ef_construct: stored {stored.hnsw_ef_construct}, requested {self.hnsw_ef_construct}"
            )
        if explicit.get("index_fields") and self.index_fields != stored.index_fields:
            problems.append(f"index_fields: stored {stored.index_fields}, requested {self.index_fields}")
        if explicit.get("quantization") and self.quantization != stored.quantization:
            problems.append(f"quantization: stored {stored.quantization!r}, requested {self.quantization!r}")
        if problems:
            raise SchemaMismatchError(
                f"collection {collection!r} exists with a different schema: "
                + "; ".join(problems)
                + ". Existing data is never dropped implicitly: open it with the stored schema "
                "(fields=None reads it), or use another collection name."
            )
