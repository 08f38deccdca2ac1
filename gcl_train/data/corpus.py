"""The JSON files of the layout: corpora (streamed), ground truth and query lists.

* Corpus (`corpus_N.json`): streamed member by member. Accepted shapes: an object
  `{product_id: {field: value, ...}}` (the reference evaluation's `doc_meta`, and what
  `synthetic.write_dataset` writes), an array of objects each carrying `product_id` (or
  `id` / `doc_id`), or JSON lines (`corpus_N.jsonl`) of such objects.
* Ground truth (`*_gt_dev.json`, `*_gt_test.json`): loaded whole (they hold a few
  thousand queries). Accepted shapes: `{query: {product_id: relevance}}` (the reference
  `gt_results.json`; what the synthetic writer writes), `{query: [[product_id, rel], ...]}`,
  `{query: [product_id, ...]}` (relevance 1 each), or an array of records
  `{query, product_id, relevance | rel | score | score_linear}`. Relevances are rounded
  to int and must be >= 0. Query keys written by the reference evaluation end in its
  separator `_{!@#~}_`; a single trailing separator is stripped so keys are the query text.
* Queries (`*_queries.json`): a list of strings, a list of objects with `query`, an
  object `{id: query_text}` (string values), or an object keyed by query text.

Gzip and a UTF-8 byte-order mark are accepted; malformed files raise `DataFormatError`
naming the file and line (a JSON value longer than `jsonstream.MAX_VALUE_CHARS`, nesting
too deep, duplicate keys, ids that are neither strings nor integers). A path that is a
directory, a FIFO, a broken symlink or a symlink loop raises FileNotFoundError saying so.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any, Dict, Iterator, List, Tuple

from .errors import DataFormatError
from .fields import is_missing
from .jsonstream import (
    GZIP_ERRORS,
    encoding_hint,
    gzip_error,
    iter_json_lines,
    iter_json_members,
    open_text,
    require_file,
)
from .layout import _normalize_query_key

log = logging.getLogger(__name__)

_CORPUS_ID_KEYS = ("product_id", "id", "doc_id")
_GT_REL_KEYS = ("relevance", "rel", "score", "score_linear")


def iter_corpus(path: str) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """Stream (product_id, fields) from a corpus file, one product at a time.

    Accepts `{product_id: {...}}`, `[{"product_id": ..., ...}, ...]` (also `id` /
    `doc_id`) and JSON lines (`.jsonl`); see the module docstring.

    Raises:
        DataFormatError naming file and line for malformed JSON, a product that is not an
        object, a record without an id, an empty id or one that is neither a string nor
        an integer, or a duplicate product id.

    Example:
        >>> # ids = [pid for pid, doc in iter_corpus("corpus_1.json")]
    """
    path = str(path)
    require_file(path, "corpus file")
    seen = set()
    if path.endswith((".jsonl", ".jsonl.gz")):
        source = ((None, v, ln) for ln, v in iter_json_lines(path))
    else:
        source = iter_json_members(path)
    for key, value, line in source:
        if not isinstance(value, dict):
            hint = ""
            if key in _CORPUS_ID_KEYS and line == 1:
                hint = " (one product object per line is JSON lines: name the file .jsonl)"
            raise DataFormatError(path, line, f"expected a product object, got {type(value).__name__}{hint}")
        if isinstance(key, str):
            pid = key
        else:
            pid = next((value[k] for k in _CORPUS_ID_KEYS if k in value and not is_missing(value[k])), None)
            if pid is None:
                raise DataFormatError(path, line, f"product record has none of the id keys {_CORPUS_ID_KEYS}")
            if isinstance(pid, bool) or not isinstance(pid, (str, int)):
                # str(1.0) == "1.0" would never match the CSV's "1"
                raise DataFormatError(path, line, f"expected a string or integer product id, got {pid!r}")
            pid = str(pid)
        if not pid.strip():
            raise DataFormatError(path, line, f"empty product id {pid!r}")
        if not pid.isascii():
            try:
                pid.encode("utf-8")
            except UnicodeEncodeError:
                raise DataFormatError(path, line,
                                      f"product id {pid!r} holds an unpaired UTF-16 surrogate escape") from None
        if pid in seen:
            raise DataFormatError(path, line, f"duplicate product id {pid!r}")
        seen.add(pid)
        yield pid, value


def _rel(path, where, v, rounded: List[Any]) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise DataFormatError(path, 0, f"{where}: expected a numeric relevance, got {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise DataFormatError(path, 0, f"{where}: expected a finite relevance, got {v!r}")
        if not v.is_integer():
            rounded.append(v)
        v = math.floor(v + 0.5)  # half up: 0.5 stays relevant (round() would make it 0)
    if v < 0:
        raise DataFormatError(path, 0, f"{where}: expected a relevance >= 0, got {v!r}")
    return int(v)


def read_ground_truth(path: str) -> Dict[str, Dict[str, int]]:
    """Read a `*_gt_dev.json` / `*_gt_test.json` file as {query: {product_id: relevance}}.

    Accepted shapes are listed in the module docstring; query keys lose the reference
    evaluation's single trailing `_{!@#~}_`. Order of queries and documents is kept.
    Non-integer relevances are rounded half up, with one warning that counts them.

    Raises:
        DataFormatError naming the file (and line for invalid JSON) for any other shape,
        a relevance that is negative, NaN or infinite, a key that appears twice in one
        JSON object, a query that appears twice (also as "q" and "q_{!@#~}_"), or a
        product listed twice under one query.
    """
    path = str(path)
    require_file(path, "ground-truth file")
    data = _load_json(path)
    out: Dict[str, Dict[str, int]] = {}
    raw_key: Dict[str, str] = {}
    rounded: List[Any] = []

    def start_query(q, where):
        if not isinstance(q, str) or is_missing(q):
            raise DataFormatError(path, 0, f"{where}: expected a query string, got {q!r}")
        key = _normalize_query_key(q)
        if raw_key.setdefault(key, q) != q:
            raise DataFormatError(path, 0, f"query {key!r} appears twice (as {raw_key[key]!r} and {q!r})")
        return out.setdefault(key, {})

    def add(docs, d, r, where, q):
        if is_missing(d) or isinstance(d, (dict, list, bool)):
            raise DataFormatError(path, 0, f"{where}: expected a product id, got {d!r}")
        d = str(d)
        if d in docs:
            raise DataFormatError(path, 0, f"{where}: product {d!r} appears twice under query {q!r}")
        docs[d] = _rel(path, where, r, rounded)

    if isinstance(data, dict):
        for q, docs in data.items():
            where = f"query {q!r}"
            qdocs = start_query(q, where)
            if isinstance(docs, dict):
                for d, r in docs.items():
                    add(qdocs, d, r, where, q)
            elif isinstance(docs, list):
                for item in docs:
                    if isinstance(item, (list, tuple)) and len(item) == 2:
                        add(qdocs, item[0], item[1], where, q)
                    elif isinstance(item, (str, int)) and not isinstance(item, bool):
                        add(qdocs, item, 1, where, q)
                    else:
                        raise DataFormatError(path, 0, f"{where}: expected product ids or [id, relevance] pairs, got {item!r}")
            else:
                raise DataFormatError(path, 0, f"{where}: expected an object or a list of products, got {docs!r}")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            where = f"record {i}"
            if not isinstance(item, dict) or "query" not in item:
                raise DataFormatError(path, 0, f"{where}: expected an object with 'query', got {item!r}")
            q = item["query"]
            if isinstance(q, str) and q in raw_key.values():
                qdocs = out[_normalize_query_key(q)]
            else:
                qdocs = start_query(q, where)
            pid = next((item[k] for k in _CORPUS_ID_KEYS if k in item), None)
            rel = next((item[k] for k in _GT_REL_KEYS if k in item), 1)
            add(qdocs, pid, rel, where, q)
    else:
        raise DataFormatError(path, 0, f"expected a JSON object or array, got {type(data).__name__}")
    if rounded:
        log.warning("%s: %d non-integer relevances rounded to integers (half up), e.g. %r",
                    path, len(rounded), rounded[0])
    return out


def read_queries(path: str) -> List[str]:
    """Read a `*_queries.json` file as a list of query strings (shapes in the module docstring).

    Raises:
        DataFormatError naming the file for any other shape, including an object whose
        values are partly strings (neither {id: text} nor keyed by text).
    """
    path = str(path)
    require_file(path, "queries file")
    data = _load_json(path)
    if isinstance(data, list):
        out = []
        for i, item in enumerate(data):
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and isinstance(item.get("query"), str):
                out.append(item["query"])
            else:
                raise DataFormatError(path, 0, f"element {i}: expected a string or an object with 'query', got {item!r}")
        return [_normalize_query_key(q) for q in out]
    if isinstance(data, dict):
        if len(data) == 1 and isinstance(next(iter(data.values())), list):
            raise DataFormatError(path, 0, f"one key {next(iter(data))!r} holding a list: expected the queries "
                                           "themselves (a list, {id: text}, or keys that are the queries)")
        n_str = sum(isinstance(v, str) for v in data.values())
        if data and n_str == len(data):
            return [_normalize_query_key(v) for v in data.values()]
        if n_str:
            example = next(k for k, v in data.items() if not isinstance(v, str))
            raise DataFormatError(path, 0, f"the object mixes string and non-string values (e.g. {example!r}: "
                                           f"{data[example]!r}): expected {{id: query text}} or keys that are "
                                           "the queries")
        return [_normalize_query_key(str(k)) for k in data]
    raise DataFormatError(path, 0, f"expected a JSON list or object, got {type(data).__name__}")


def _unique_keys(path):
    def hook(pairs):
        out = dict(pairs)
        if len(out) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise DataFormatError(path, 0, f"duplicate key {dup!r} in one JSON object")
        return out
    return hook


def _load_json(path: str):
    """A whole (small) JSON file: gzip or plain, a BOM dropped, duplicate keys refused."""
    parts, lines = [], 0
    try:
        with open_text(path) as f:
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                parts.append(chunk)
                lines += chunk.count("\n")
    except GZIP_ERRORS as e:
        raise gzip_error(path, e, lines) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, lines + 1, f"not valid UTF-8 ({e}){encoding_hint(path)}") from None
    try:
        return json.loads("".join(parts), object_pairs_hook=_unique_keys(path))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataFormatError(path, 0, "JSON nested too deeply to decode") from None

