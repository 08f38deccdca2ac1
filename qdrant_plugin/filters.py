"""Payload filters: one canonical form (``qdrant_client.models.Filter``) for every backend.

Callers pass either a qdrant-client ``Filter`` (passed through untouched to qdrant-client
backends) or a small dict shorthand::

    {"color": "red"}                  # exact match (str, int or bool)
    {"color": ["red", "blue"]}        # match any
    {"price": {"gte": 10, "lt": 50}}  # range
    {"color": "red", "size": 3}       # several keys: all must hold

The embedded backend converts the canonical filter to ``qdrant_edge`` classes; conditions it
cannot express raise ``ValueError`` naming the condition instead of being dropped silently.
One such case: qdrant-edge-py 0.9 converts a Python ``True`` in ``MatchValue`` to the integer
1, which matches no boolean payload, so boolean matches are refused on the embedded store.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from qdrant_client import models

_RANGE_KEYS = ("gt", "gte", "lt", "lte")
# Qdrant stores and matches integers as signed 64-bit values.
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(key: str, v: Any) -> None:
    if isinstance(v, int) and not isinstance(v, bool) and not _INT64[0] <= v <= _INT64[1]:
        raise ValueError(
            f"filter[{key!r}]: integer {v} is outside the signed 64-bit range Qdrant stores, so it "
            f"cannot match anything"
        )


def to_filter(filter: Any) -> Optional[models.Filter]:
    """Turn the user's ``filter`` argument into a ``models.Filter`` (or None).

    Example:
        >>> to_filter({"color": "red"}).must[0].match.value
        'red'
    """
    if filter is None:
        return None
    if isinstance(filter, models.Filter):
        return filter
    if not isinstance(filter, Mapping):
        raise ValueError(
            f"filter: expected None, a dict like {{'color': 'red'}} or a qdrant_client.models.Filter, "
            f"got {type(filter).__name__}"
        )
    if not filter:
        return None
    must: List[Any] = []
    for key, value in filter.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"filter: keys must be non-empty strings, got {key!r}")
        if isinstance(value, (str, bool, int)) and not isinstance(value, float):
            _check_int(key, value)
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
        elif isinstance(value, (list, tuple)):
            if not value or not (
                all(isinstance(v, str) for v in value)
                or all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                raise ValueError(
                    f"filter[{key!r}]: a list means 'any of these values' and must be a non-empty "
                    f"list of all strings or all ints, got {value!r}"
                )
            for v in value:
                _check_int(key, v)
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))
        elif isinstance(value, Mapping):
            bad = sorted(set(value) - set(_RANGE_KEYS))
            if bad or not value or not all(_is_number(v) and v == v for v in value.values()):
                raise ValueError(
                    f"filter[{key!r}]: a dict means a range with keys among {_RANGE_KEYS} and "
                    f"numeric bounds (not NaN), got {dict(value)!r}"
                )
            must.append(models.FieldCondition(key=key, range=models.Range(**value)))
        else:
            raise ValueError(
                f"filter[{key!r}]: expected a str/int/bool value, a list of values or a range dict, "
                f"got {type(value).__name__} {value!r} (floats match by range, e.g. {{'gte': x, 'lte': x}})"
            )
    return models.Filter(must=must)


def _as_list(x: Any) -> List[Any]:
    if x is None:
        return []
    return list(x) if isinstance(x, list) else [x]


def to_edge_filter(flt: Optional[models.Filter]) -> Any:
    """Convert a canonical filter to ``qdrant_edge.Filter`` (None stays None)."""
    if flt is None:
        return None
    import qdrant_edge as qe

    def cond(c: Any) -> Any:
        if isinstance(c, models.Filter):
            return filt(c)
        if isinstance(c, models.FieldCondition):
            unsupported = [
                n for n in ("geo_bounding_box", "geo_radius", "geo_polygon", "values_count")
                if getattr(c, n, None) is not None
            ]
            if unsupported:
                raise ValueError(f"filter: condition on {c.key!r} uses {unsupported}, not supported by this plugin")
            kw = {}
            m = c.match
            vals = getattr(m, "value", None) if isinstance(m, models.MatchValue) else getattr(m, "any", None)
            if isinstance(vals, bool) or (isinstance(vals, list) and any(isinstance(v, bool) for v in vals)):
                # qdrant-edge-py 0.9 turns a Python bool into the integer 1/0, which never
                # matches a boolean payload: refuse rather than return a wrong answer.
                raise ValueError(
                    f"filter: the embedded store cannot match boolean values (key {c.key!r}); "
                    f"store the flag as a string or an int, or use local mode / a server"
                )
            for v in vals if isinstance(vals, list) else [vals]:
                _check_int(c.key, v)
            if m is not None:
                if isinstance(m, models.MatchValue):
                    kw["match"] = qe.MatchValue(m.value)
                elif isinstance(m, models.MatchAny):
                    kw["match"] = qe.MatchAny(list(m.any))
                elif isinstance(m, models.MatchExcept):
                    kw["match"] = qe.MatchExcept(list(m.except_))
                elif isinstance(m, models.MatchText):
                    kw["match"] = qe.MatchText(m.text)
                else:
                    raise ValueError(f"filter: match type {type(m).__name__} on {c.key!r} is not supported")
            r = c.range
            if r is not None:
                if not isinstance(r, models.Range):
                    raise ValueError(f"filter: range type {type(r).__name__} on {c.key!r} is not supported")
                if any(b is not None and b != b for b in (r.gte, r.gt, r.lte, r.lt)):
                    raise ValueError(f"filter: range on {c.key!r} has a NaN bound, which matches nothing")
                kw["range"] = qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
            if c.is_empty is not None:
                kw["is_empty"] = c.is_empty
            if c.is_null is not None:
                kw["is_null"] = c.is_null
            return qe.FieldCondition(key=c.key, **kw)
        if isinstance(c, models.IsEmptyCondition):
            return qe.IsEmptyCondition(c.is_empty.key)
        if isinstance(c, models.IsNullCondition):
            return qe.IsNullCondition(c.is_null.key)
        if isinstance(c, models.NestedCondition):
            return qe.NestedCondition(c.nested.key, filt(c.nested.filter))
        raise ValueError(f"filter: condition type {type(c).__name__} is not supported by this plugin")

    def filt(f: models.Filter) -> Any:
        ms = None
        if f.min_should is not None:
            ms = qe.MinShould([cond(c) for c in f.min_should.conditions], f.min_should.min_count)
        return qe.Filter(
            must=[cond(c) for c in _as_list(f.must)] or None,
            should=[cond(c) for c in _as_list(f.should)] or None,
            must_not=[cond(c) for c in _as_list(f.must_not)] or None,
            min_should=ms,
        )

    return filt(flt)
