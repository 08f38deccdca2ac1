"""Argument checking and vector construction, shared by every backend.

All vectors are L2-normalised on the way in, so every stored similarity is a plain dot
product and the weighted score ``sum_f w_f * cos(q_f, d_f)`` is one dot product of the
weighted query concatenation ``[w_1 q_1; ...; w_F q_F]`` with the document concatenation
``[d_1; ...; d_F]``. The functions here are pure numpy so the brute-force reference used by
the tests and the benchmark computes exactly what the index is supposed to return.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .ids import check_ids  # noqa: F401  (re-exported: callers import it from here)
from .schema import ID_KEY, IndexSchema

# A norm below this is a zero vector in practice: normalising it would only amplify noise.
MIN_NORM = 1e-12
# Query weights are applied in float32 (the engine's precision): a positive weight must be a
# normal float32, and the weights' sum (the largest possible score) must not overflow.
F32_TINY = float(np.finfo(np.float32).tiny)
F32_MAX = float(np.finfo(np.float32).max)


def _to_array(arg: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors, without importing torch
        value = value.detach().cpu().numpy()
    if np.iscomplexobj(value):
        raise ValueError(f"{arg}: expected real numbers, got a complex array (casting would drop the imaginary part)")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{arg}: expected a numeric array, got {type(value).__name__} ({e})") from None
    return arr


def unit_rows(arg: str, value: Any, dim: int, rows: Optional[int] = None) -> np.ndarray:
    """Check a ``[N, dim]`` array (finite, no zero rows) and return its rows L2-normalised, float32.

    Shape:
        value: [N, dim] (or [dim], read as one row); returns [N, dim] float32.
    """
    arr = _to_array(arg, value)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{arg}: expected shape [N, {dim}], got {list(np.shape(value))}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{arg}: expected {rows} rows (one per id), got {arr.shape[0]}")
    a64 = arr.astype(np.float64)
    if a64.shape[0] == 1:
        # One row (every single-query search): scalar arithmetic instead of five array
        # ops, about 3x cheaper, same result to the bit.
        sq1 = float(a64[0] @ a64[0])
        if not math.isfinite(sq1):
            raise ValueError(f"{arg}: rows [0] contain NaN or inf (1 of 1 rows)")
        norm = math.sqrt(sq1)
        if norm < MIN_NORM:
            raise ValueError(
                f"{arg}: rows [0] are zero vectors (norm < {MIN_NORM}); a zero vector has no "
                f"direction to compare"
            )
        a64 /= norm
        return a64.astype(np.float32)
    # One pass: a NaN or inf anywhere in a row makes its squared norm non-finite
    # (float32 inputs cannot overflow float64 squares).
    sq = np.einsum("ij,ij->i", a64, a64)
    if not np.isfinite(sq).all():
        bad = np.flatnonzero(~np.isfinite(sq))
        raise ValueError(
            f"{arg}: rows {bad[:10].tolist()}{'...' if len(bad) > 10 else ''} contain NaN or inf "
            f"({len(bad)} of {arr.shape[0]} rows)"
        )
    norms = np.sqrt(sq)
    zero = norms < MIN_NORM
    if zero.any():
        bad = np.flatnonzero(zero)
        raise ValueError(
            f"{arg}: rows {bad[:10].tolist()}{'...' if len(bad) > 10 else ''} are zero vectors "
            f"(norm < {MIN_NORM}); a zero vector has no direction to compare"
        )
    a64 /= norms[:, None]
    return a64.astype(np.float32)


# Payload values are what JSON can hold and every backend stores the same way.
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# Deeper payloads are refused: the embedded engine converts them recursively and a deep
# enough one overflows its stack (the process dies); a server parses JSON only to depth 128.
MAX_PAYLOAD_DEPTH = 64


class _Bad(Exception):
    """A payload value problem; ``path`` is filled in on the way out of the recursion."""

    def __init__(self, msg: str):
        self.msg = msg
        self.path: List[str] = []


def _fmt_path(path: List[str]) -> str:
    return "".join(reversed(path))


def _payload_value(v: Any, depth: int, path_ids: set, size: List[int]) -> Any:
    """A JSON-compatible copy of one payload value (numpy scalars become Python ones).

    Plain ``str`` / ``int`` / ``float`` / ``bool`` / ``None`` / ``dict`` / ``list`` take the
    fast branches (a payload of a few keys costs a few microseconds); the error message's
    key path is built only when something is wrong.
    """
    t = type(v)
    if t is str:
        if v.isascii():
            size[0] += len(v) + 2
            return v
    elif t is float:
        if v - v == 0.0:  # finite (inf - inf and nan - nan are nan)
            size[0] += 24
            return v
        raise _Bad(f"expected a finite number, got {v!r} (NaN and infinity are not JSON)")
    elif t is bool or v is None:
        size[0] += 5
        return v
    elif t is int:
        if INT64_MIN <= v <= INT64_MAX:
            size[0] += 20
            return v
    if t is dict or t is list or isinstance(v, (list, tuple, Mapping)):
        if depth >= MAX_PAYLOAD_DEPTH:
            raise _Bad(f"nested deeper than {MAX_PAYLOAD_DEPTH} levels")
        if id(v) in path_ids:
            raise _Bad("contains itself (a cyclic list or dict cannot be stored)")
        path_ids.add(id(v))
        size[0] += 2
        try:
            if isinstance(v, Mapping):
                out = {}
                for k, x in v.items():
                    if type(k) is not str:
                        if not isinstance(k, str):
                            raise _Bad(f"keys must be strings, got {type(k).__name__} {k!r}")
                        k = str(k)
                    if not k.isascii():
                        try:
                            k.encode("utf-8")
                        except UnicodeEncodeError as e:
                            raise _Bad(f"key {k!r} is not encodable as UTF-8 ({e.reason})") from None
                    size[0] += len(k) + 3
                    try:
                        out[k] = _payload_value(x, depth + 1, path_ids, size)
                    except _Bad as e:
                        e.path.append(f"[{k!r}]")
                        raise
                return out
            res = []
            for j, x in enumerate(v):
                try:
                    res.append(_payload_value(x, depth + 1, path_ids, size))
                except _Bad as e:
                    e.path.append(f"[{j}]")
                    raise
            return res
        finally:
            path_ids.discard(id(v))
    # the slow branches: non-ASCII strings, subclasses, numpy scalars, big ints, the rest
    if isinstance(v, str):
        try:
            size[0] += len(v.encode("utf-8")) + 2
        except UnicodeEncodeError as e:
            raise _Bad(f"expected a string encodable as UTF-8, got {v!r} ({e.reason})") from None
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        size[0] += 5
        return bool(v)
    if isinstance(v, (int, np.integer)):
        i = int(v)
        if not INT64_MIN <= i <= INT64_MAX:
            raise _Bad(
                f"integer {i} is outside the 64-bit signed range Qdrant stores "
                f"[-2**63, 2**63 - 1] (it would be stored as an inexact float); store it as a string"
            )
        size[0] += 20
        return i
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise _Bad(f"expected a finite number, got {f!r} (NaN and infinity are not JSON)")
        size[0] += 24
        return f
    hint = " (use .tolist())" if isinstance(v, np.ndarray) else ""
    raise _Bad(
        f"expected a JSON value (str, int, float, bool, None, list or dict), got "
        f"{type(v).__name__} {v!r:.80}{hint}"
    )


def check_payloads(payloads: Any, n: int, arg: str = "payloads") -> Tuple[List[Dict[str, Any]], int]:
    """Validate ``n`` payloads before anything is written; returns JSON-compatible copies
    and their approximate size in bytes.

    A payload is None or a dict with string keys whose values are JSON: str (UTF-8), bool,
    None, int in the signed 64-bit range, finite float, lists and dicts of those (at most
    ``MAX_PAYLOAD_DEPTH`` levels). numpy scalars are accepted as the Python number they
    hold; sets, bytes, datetimes, arrays and other objects are refused, naming the row and
    the key path (``payloads[3]['meta']['when']``).
    """
    if payloads is None:
        return [{} for _ in range(n)], 0
    if isinstance(payloads, Mapping) or not isinstance(payloads, Sequence):
        raise ValueError(
            f"{arg}: expected None or a sequence of {n} dicts (one per id), got {type(payloads).__name__}"
        )
    if len(payloads) != n:
        raise ValueError(f"{arg}: expected {n} entries (one per id), got {len(payloads)}")
    out = []
    size = [0]
    for i, p in enumerate(payloads):
        if p is None:
            p = {}
        if not isinstance(p, Mapping) or not all(isinstance(k, str) for k in p):
            raise ValueError(f"{arg}[{i}]: expected a dict with string keys, got {p!r:.200}")
        if ID_KEY in p:
            raise ValueError(f"{arg}[{i}]: key {ID_KEY!r} is reserved for the document id")
        try:
            out.append(_payload_value(p, 0, set(), size))
        except _Bad as e:
            raise ValueError(f"{arg}[{i}]{_fmt_path(e.path)}: {e.msg}") from None
    return out, size[0]


def check_present(schema: IndexSchema, present: Any, n: int) -> Dict[str, Optional[np.ndarray]]:
    """``present[f][i]`` False marks field f of document i as missing (None: all present)."""
    out: Dict[str, Optional[np.ndarray]] = {f: None for f in schema.field_names}
    if present is None:
        return out
    if not isinstance(present, Mapping):
        raise ValueError(f"present: expected None or a mapping of field name to [N] bool array, got {type(present).__name__}")
    unknown = sorted(set(present) - set(schema.field_names))
    if unknown:
        raise ValueError(f"present: unknown field(s) {unknown}; the index has fields {list(schema.field_names)}")
    for f, m in present.items():
        arr = np.asarray(m)
        if arr.shape != (n,) or arr.dtype != np.bool_:
            raise ValueError(f"present[{f!r}]: expected a bool array of shape [{n}], got {arr.dtype} {list(arr.shape)}")
        out[f] = None if arr.all() else arr.copy()
    return out


def doc_vectors(
    schema: IndexSchema, vectors: Any, n: int, present: Any = None
) -> Tuple[Dict[str, np.ndarray], Dict[str, Optional[np.ndarray]]]:
    """Validate per-field document vectors and build every named vector a point stores.

    A missing field (``present[f][i]`` False) is left out of the point, counts as cosine 0
    in the weighted concatenation, and gets weight 0 in the fused vector with the other
    weights renormalised (docs/method.md section 6). Its row in ``vectors[f]`` is ignored.

    Returns:
        ``({field: [n, D_f] unit rows, main_vector: [n, main_dim]}, {name: [n] bool or None})``.
    """
    if not isinstance(vectors, Mapping):
        raise ValueError(
            f"vectors: expected a mapping of field name to [N, D] array with fields "
            f"{list(schema.field_names)}, got {type(vectors).__name__}"
        )
    names = schema.field_names
    unknown = sorted(set(vectors) - set(names))
    if unknown:
        raise ValueError(f"vectors: unknown field(s) {unknown}; the index has fields {list(names)}")
    missing = [f for f in names if f not in vectors]
    if missing:
        raise ValueError(
            f"vectors: missing field(s) {missing}; pass every field {list(names)} (mark absent "
            f"rows with present=)"
        )
    mask = check_present(schema, present, n)
    dims = schema.dims
    out: Dict[str, np.ndarray] = {}
    for f in names:
        arr = _to_array(f"vectors[{f!r}]", vectors[f])
        if arr.ndim != 2 or arr.shape[1] != dims[f]:
            raise ValueError(f"vectors[{f!r}]: expected shape [N, {dims[f]}], got {list(arr.shape)}")
        if arr.shape[0] != n:
            raise ValueError(f"vectors[{f!r}]: expected {n} rows (one per id), got {arr.shape[0]}")
        m = mask[f]
        if m is None:
            out[f] = unit_rows(f"vectors[{f!r}]", arr, dims[f])
        else:
            full = np.zeros((n, dims[f]), dtype=np.float32)
            rows = np.flatnonzero(m)
            if len(rows):
                try:
                    full[rows] = unit_rows(f"vectors[{f!r}]", arr[rows], dims[f])
                except ValueError as e:  # report positions in the caller's numbering
                    raise ValueError(f"{e} (row numbers count only rows marked present)") from None
            out[f] = full
    if len(names) == 1:
        if mask[names[0]] is not None and not mask[names[0]].all():
            bad = np.flatnonzero(~mask[names[0]])
            raise ValueError(f"present: documents {bad[:10].tolist()} have no field at all")
        return out, mask
    if schema.mode == "weighted":
        anyp = np.zeros(n, dtype=bool)
        for f in names:
            anyp |= True if mask[f] is None else mask[f]
        if not anyp.all():
            raise ValueError(f"present: documents {np.flatnonzero(~anyp)[:10].tolist()} have no field at all")
        out[schema.main_vector] = np.concatenate([out[f] for f in names], axis=1)
    else:
        out[schema.main_vector] = fuse(out, dict(schema.fused_weights), mask)
    mask = dict(mask)
    mask[schema.main_vector] = None
    return out, mask


def fuse(
    unit: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    present: Optional[Mapping[str, Optional[np.ndarray]]] = None,
) -> np.ndarray:
    """Normalised weighted mean of unit field vectors (the evaluation's document fusion).

    Missing fields weigh 0; since the sum is renormalised, the other weights are in effect
    renormalised too.

    Shape:
        unit[f]: [N, D] unit rows; present[f]: [N] bool or None; returns [N, D] unit rows.
    """
    acc = None
    for f, w in weights.items():
        if w == 0:
            continue
        term = unit[f].astype(np.float64) * w
        m = None if present is None else present.get(f)
        if m is not None:
            term = term * m[:, None]
        acc = term if acc is None else acc + term
    norms = np.linalg.norm(acc, axis=1)
    bad = norms < MIN_NORM
    if bad.any():
        raise ValueError(
            f"vectors: documents {np.flatnonzero(bad)[:10].tolist()} fuse to a zero vector (no "
            f"present field with a positive fused weight, or weighted fields that cancel out)"
        )
    return (acc / norms[:, None]).astype(np.float32)


def check_field_weights(
    schema: IndexSchema, field_weights: Any, query_fields: Sequence[str]
) -> Dict[str, float]:
    """Validate query-time weights; ``None`` weighs the given query fields equally."""
    names = schema.field_names
    if field_weights is None:
        return {f: 1.0 / len(query_fields) for f in query_fields}
    if not isinstance(field_weights, Mapping):
        raise ValueError(
            f"field_weights: expected a mapping of field name to weight, got {type(field_weights).__name__}"
        )
    unknown = sorted(set(field_weights) - set(names))
    if unknown:
        raise ValueError(f"field_weights: unknown field(s) {unknown}; the index has fields {list(names)}")
    out = {}
    for f, w in field_weights.items():
        if isinstance(w, (bool, np.bool_)):
            raise ValueError(f"field_weights[{f!r}]: expected a number, got {w!r}")
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"field_weights[{f!r}]: expected a number, got {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"field_weights[{f!r}]: expected a finite weight >= 0, got {w!r}")
        if w > 0 and not F32_TINY <= w <= F32_MAX:
            raise ValueError(
                f"field_weights[{f!r}]: expected 0 or a weight between {F32_TINY:.3g} and {F32_MAX:.3g} "
                f"(search runs in float32, where this weight would {'overflow to infinity' if w > 1 else 'vanish'}), "
                f"got {w!r}; only the weights' ratios change the ranking, so scale them all"
            )
        if w > 0:
            out[f] = w
    if not out:
        raise ValueError(f"field_weights: at least one weight must be > 0, got {dict(field_weights)}")
    total = sum(out.values())
    if total > F32_MAX:
        raise ValueError(
            f"field_weights: the weights of {sorted(out)} sum to {total:.3g}, above {F32_MAX:.3g} (the "
            f"largest float32, the engine's precision), so scores would overflow to infinity; scale "
            f"them all down (only their ratios change the ranking)"
        )
    missing = [f for f in out if f not in query_fields]
    if missing:
        raise ValueError(
            f"field_weights: field(s) {missing} have weight > 0 but no query vector; "
            f"query vectors were given for {list(query_fields)}"
        )
    return out


def query_fields(schema: IndexSchema, query: Any, batch: bool) -> Tuple[Dict[str, np.ndarray], bool]:
    """Split a query into per-field unit vectors.

    A mapping gives one vector per field; a bare array stands for every field (all fields
    must then share its dimension). Returns ``({field: [Q, D_f]}, shared)`` where ``shared``
    says the query was one vector for all fields.
    """
    names = schema.field_names
    dims = schema.dims
    shape = "[Q, D]" if batch else "[D]"
    if isinstance(query, dict) or (not isinstance(query, np.ndarray) and isinstance(query, Mapping)):
        if not query:
            raise ValueError("query: expected at least one field vector, got an empty mapping")
        unknown = sorted(set(query) - set(names))
        if unknown:
            raise ValueError(f"query: unknown field(s) {unknown}; the index has fields {list(names)}")
        out = {}
        rows = None
        for f, v in query.items():
            arr = _to_array(f"query[{f!r}]", v)
            if arr.ndim != (2 if batch else 1):
                raise ValueError(f"query[{f!r}]: expected shape {shape} with D={dims[f]}, got {list(arr.shape)}")
            out[f] = unit_rows(f"query[{f!r}]", arr, dims[f])
            if rows is not None and out[f].shape[0] != rows:
                raise ValueError(
                    f"query: every field needs the same number of query rows, got "
                    f"{ {k: v.shape[0] for k, v in out.items()} }"
                )
            rows = out[f].shape[0]
        return out, False
    arr = _to_array("query", query)
    if arr.ndim != (2 if batch else 1):
        raise ValueError(f"query: expected shape {shape} (or a mapping of field to vector), got {list(arr.shape)}")
    d = arr.shape[-1]
    if any(dims[f] != d for f in names) and schema.mode == "weighted":
        raise ValueError(
            f"query: one vector can stand for all fields only when they share its dimension; "
            f"got D={d}, fields have {dims}; pass a mapping of field to vector instead"
        )
    unit = unit_rows("query", arr, d)
    if schema.mode == "fused" and d != schema.main_dim:
        raise ValueError(f"query: expected D={schema.main_dim}, got {d}")
    return {f: unit for f in names}, True


def weighted_query(schema: IndexSchema, q: Mapping[str, np.ndarray], w: Mapping[str, float]) -> np.ndarray:
    """``[w_1 q_1; ...; w_F q_F]`` (zeros for unweighted fields): its dot product with a stored
    concatenation is exactly the weighted sum of field cosines.

    Shape:
        q[f]: [Q, D_f]; returns [Q, sum_f D_f] float32.
    """
    rows = next(iter(q.values())).shape[0]
    out = np.zeros((rows, schema.main_dim), dtype=np.float32)
    start = 0
    for f, d in schema.fields:
        if f in w:
            out[:, start:start + d] = q[f] * np.float32(w[f])
        start += d
    return out


def weighted_row(schema: IndexSchema, query: Any, field_weights: Any) -> Optional[np.ndarray]:
    """The weighted query row of one plain search, or None where the validating path must decide.

    Same result to the bit as ``weighted_query(schema, *query_fields(...), check_field_weights(...))``
    for the common call (a dict of 1-D numpy vectors, a dict of int/float weights or None, every
    vector finite and non-zero); anything else returns None, and ``MultiFieldIndex`` then runs
    the full checks, which raise the error. It exists because the general path costs about
    twice as much per query: each search runs it right after the engine has evicted the CPU
    caches, where every numpy call and Python check is several times slower than in a loop.

    Shape:
        query[f]: [D_f]; returns [1, sum_f D_f] float32.
    """
    if type(query) is not dict or not query:
        return None
    if field_weights is None:
        equal = 1.0 / len(query)
        weights = dict.fromkeys(query, equal)
    elif type(field_weights) is dict:
        weights = {}
        dims = schema.dims
        for f, w in field_weights.items():
            if (type(w) is not float and type(w) is not int) or f not in dims:
                return None
            w = float(w)
            if not (w == 0.0 or F32_TINY <= w <= F32_MAX):
                return None
            if w > 0:
                if f not in query:
                    return None
                weights[f] = w
        if not weights or sum(weights.values()) > F32_MAX:
            return None
    else:
        return None
    if len(weights) == 1 and schema.index_fields:
        return None
    out = np.zeros((1, schema.main_dim), dtype=np.float32)
    start = seen = 0
    for f, d in schema.fields:
        v = query.get(f)
        if v is not None:
            seen += 1
            if type(v) is not np.ndarray or v.shape != (d,) or v.dtype.kind != "f":
                return None
            a64 = (v if v.dtype == np.float32 else v.astype(np.float32)).astype(np.float64)
            sq = float(a64 @ a64)
            if not math.isfinite(sq):
                return None
            norm = math.sqrt(sq)
            if norm < MIN_NORM:
                return None
            if f in weights:
                a64 /= norm
                out[0, start:start + d] = a64.astype(np.float32) * np.float32(weights[f])
        start += d
    if seen != len(query):
        return None
    return out


def brute_force(
    doc_ids: Sequence[str],
    doc_field_vectors: Mapping[str, Any],
    query: Mapping[str, Any],
    field_weights: Mapping[str, float],
    limit: int,
) -> List[List[Tuple[str, float]]]:
    """Exact weighted search in numpy, float64: the reference the index is tested against.

    Args:
        doc_ids: N ids.
        doc_field_vectors: {field: [N, D_f]} raw (unnormalised) document vectors.
        query: {field: [Q, D_f]} raw query vectors.
        field_weights: {field: w_f}, fields absent from it weigh 0.
        limit: top-k.

    Returns:
        For each query, ``[(id, score)]`` by decreasing ``sum_f w_f cos(q_f, d_f)``.

    Example:
        >>> brute_force(["a", "b"], {"t": [[1, 0], [0, 1]]}, {"t": [[1, 0.1]]}, {"t": 1.0}, 1)[0][0][0]
        'a'
    """
    scores = None
    for f, w in field_weights.items():
        if w == 0:
            continue
        d = np.asarray(doc_field_vectors[f], dtype=np.float64)
        qf = np.asarray(query[f], dtype=np.float64)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        qf = qf / np.linalg.norm(qf, axis=1, keepdims=True)
        s = w * (qf @ d.T)
        scores = s if scores is None else scores + s
    k = min(limit, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(doc_ids[j], float(scores[i, j])) for j in row] for i, row in enumerate(top)]
