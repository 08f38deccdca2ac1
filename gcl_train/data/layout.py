"""The MarqoGS-10M layout's vocabulary: the four splits, their aliases and corpora, and
query keys (docs/method.md, section 4 of the method notes; docs/evaluation.md).

    <root>/                      marqo_gs_full_10m, marqo_gs_fashion_5m or marqo_gs_wfash_1m
      corpus_1.json, corpus_2.json
      query_{0,1}_product_id_{0,1}.csv
      query_{0,1}_product_id_{0,1}_gt_dev.json, ..._gt_test.json, ..._queries.json
"""
from __future__ import annotations

from typing import List, Sequence

#: The four splits, in the paper's order: in-domain, novel query, novel corpus, zero-shot.
SPLITS = ("query_0_product_id_0", "query_1_product_id_0", "query_0_product_id_1", "query_1_product_id_1")
SPLIT_ALIASES = {
    "in_domain": SPLITS[0],
    "novel_query": SPLITS[1],
    "novel_corpus": SPLITS[2],
    "zero_shot": SPLITS[3],
}
SPLIT_NAMES = {v: k for k, v in SPLIT_ALIASES.items()}
#: Which corpus each split searches.
SPLIT_CORPUS = {SPLITS[0]: "corpus_1", SPLITS[1]: "corpus_1", SPLITS[2]: "corpus_2", SPLITS[3]: "corpus_2"}
#: The reference evaluation joins left-key values with this separator to make query keys.
QUERY_KEY_SEPARATOR = "_{!@#~}_"


def resolve_split(split: str) -> str:
    """Canonical split name for a split name or alias ("in_domain", "novel_query", ...)."""
    if split in SPLITS:
        return split
    if split in SPLIT_ALIASES:
        return SPLIT_ALIASES[split]
    raise ValueError(f"split: expected one of {SPLITS} or aliases {tuple(SPLIT_ALIASES)}, got {split!r}")


def query_key(values: Sequence[str]) -> str:
    """The key of a query: its text for one left field, else the reference's joined key."""
    values = [str(v) for v in values]
    if len(values) == 1:
        return values[0]
    return "".join(v + QUERY_KEY_SEPARATOR for v in values)


def split_query_key(key: str, n_fields: int) -> List[str]:
    """Inverse of `query_key` for `n_fields` left fields."""
    if n_fields == 1:
        return [key]
    parts = key.split(QUERY_KEY_SEPARATOR)
    if parts and parts[-1] == "":
        parts = parts[:-1]
    if len(parts) != n_fields:
        raise ValueError(f"query key {key!r}: expected {n_fields} fields joined by {QUERY_KEY_SEPARATOR!r}")
    return parts


def _normalize_query_key(key: str) -> str:
    if key.endswith(QUERY_KEY_SEPARATOR) and key.count(QUERY_KEY_SEPARATOR) == 1:
        return key[: -len(QUERY_KEY_SEPARATOR)]
    return key

