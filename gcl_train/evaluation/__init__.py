"""The paper's evaluation protocol on MarqoGS splits (docs/evaluation.md).

    from gcl_train.evaluation import EvalConfig, evaluate
    report = evaluate("marqo_gs_wfash_1m", "all", encoder=my_encoder, out_dir="eval")
    print(report.table())

Modules, one concern each:

    config        EvalConfig (the protocol's settings), SplitResult, EvalReport
    protocols     the contracts: EncoderProtocol (and the optional role-aware
                  RoleAwareEncoderProtocol), RetrieverProtocol, FieldLike
    embeddings    EmbeddingTable and its on-disk format, load_embeddings
    encoding      encode_fields / encode_records (records -> vectors), embed_corpus,
                  RandomEncoder (the chance baseline)
    retrieval     ExactRetriever (blocked exact top-k)
    ground_truth  relevance rescaling, weighted query sampling, qrels from CSV or gt file
    cache         producer keys of cached artefacts (ArtefactStore, file_digest)
    protocol      evaluate_split, evaluate
    report        metrics.json / metrics.csv / ndcg_at_k.png
"""
from .cache import ArtefactStore, file_digest, file_stamp, key_mismatch, table_digest
from .config import CSV_QUERIES, GT_SOURCES, NOISY_QUERIES, SUMMARY_METRICS, EvalConfig, EvalReport, SplitResult
from .embeddings import EmbeddingTable, load_embeddings
from .encoding import RandomEncoder, embed_corpus, encode_fields, encode_records
from .ground_truth import ground_truth_for_split, ground_truth_from_csv, query_values, rescale_relevance, sample_queries
from .protocol import evaluate, evaluate_split
from .protocols import (
    EncoderProtocol,
    FieldLike,
    IndexingRetrieverProtocol,
    Kind,
    RetrieverLike,
    RetrieverProtocol,
    Role,
    RoleAwareEncoderProtocol,
    SearchFn,
)
from .report import ndcg_figure, write_reports
from .retrieval import ExactRetriever

__all__ = [
    "CSV_QUERIES", "GT_SOURCES", "NOISY_QUERIES", "SUMMARY_METRICS", "ArtefactStore", "EmbeddingTable",
    "EncoderProtocol", "EvalConfig", "EvalReport", "ExactRetriever", "FieldLike", "IndexingRetrieverProtocol", "Kind",
    "RandomEncoder", "RetrieverLike", "RetrieverProtocol", "Role", "RoleAwareEncoderProtocol", "SearchFn",
    "SplitResult", "embed_corpus", "encode_fields",
    "encode_records", "evaluate", "evaluate_split", "file_digest", "file_stamp", "ground_truth_for_split",
    "ground_truth_from_csv", "key_mismatch", "load_embeddings", "ndcg_figure", "query_values",
    "rescale_relevance", "sample_queries", "table_digest", "write_reports",
]
