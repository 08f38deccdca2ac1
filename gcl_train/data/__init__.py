"""The MarqoGS-10M data layer: streaming readers, field specs, a synthetic twin.

    from gcl_train.data import MarqoGSDataset, FieldSpec, iter_pairs, iter_corpus
    from gcl_train.data.synthetic import write_dataset

See `pairs` (split CSVs), `corpus` (corpora, ground truth, queries), `layout` (splits)
and `marqo_gs` (the data set root) for exactly what is read, and `fields` for field specs.
"""
from .errors import DataFormatError
from .fields import (
    DEFAULT_DOC_FIELD_WEIGHTS,
    DEFAULT_LEFT,
    DEFAULT_RIGHT,
    DOC_FIELD_NAMES,
    DOC_FIELDS,
    DocField,
    FieldSpec,
    FieldSpecs,
    check_field_specs,
    doc_field,
    doc_field_specs,
    fuse_embeddings,
    is_missing,
    parse_field_specs,
    renormalized_weights,
)
from .corpus import iter_corpus, read_ground_truth, read_queries
from .layout import (
    QUERY_KEY_SEPARATOR,
    SPLIT_ALIASES,
    SPLIT_CORPUS,
    SPLIT_NAMES,
    SPLITS,
    query_key,
    resolve_split,
    split_query_key,
)
from .marqo_gs import MarqoGSDataset
from .pairs import PairRecord, ReadStats, check_score, iter_pairs

__all__ = [
    "DEFAULT_DOC_FIELD_WEIGHTS", "DEFAULT_LEFT", "DEFAULT_RIGHT", "DOC_FIELDS", "DOC_FIELD_NAMES",
    "DataFormatError", "DocField", "FieldSpec", "FieldSpecs", "doc_field", "doc_field_specs",
    "MarqoGSDataset", "PairRecord", "QUERY_KEY_SEPARATOR", "ReadStats", "SPLITS", "SPLIT_ALIASES",
    "SPLIT_CORPUS", "SPLIT_NAMES", "check_field_specs", "check_score", "fuse_embeddings", "is_missing",
    "iter_corpus", "iter_pairs", "parse_field_specs", "query_key", "read_ground_truth", "read_queries",
    "renormalized_weights", "resolve_split", "split_query_key",
]
