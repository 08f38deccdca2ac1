"""Evaluation settings and results: `EvalConfig`, `SplitResult`, `EvalReport`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

from ..data.fields import DEFAULT_LEFT, DEFAULT_RIGHT, FieldSpecs, check_field_specs
from ..metrics import REFERENCE_KS

GT_SOURCES = ("test", "dev", "csv")
SUMMARY_METRICS = ("ndcg@10", "err", "rbp@0.9")


@dataclass
class EvalConfig:
    """Protocol settings (defaults: the paper's).

    Args:
        left: query fields (default: query text).
        right: document fields (default: image 0.9, title 0.1).
        n_queries: test queries per split (-1: all).
        seed: sampling seed.
        top_k: documents retrieved per query, and ground-truth depth.
        ks: metric cut-offs (default: the reference's 1..1000 list).
        weight_key: the CSV score column turned into relevance.
        ground_truth: "test", "dev" or "csv" (see the module docstring).
        batch_size: values per encoder call.
        query_block, doc_block: block sizes of exact retrieval.
        check_images: treat absent image files as missing fields (one stat per doc).
        dtype: storage dtype of corpus embeddings ("float32" or "float16").
    """

    left: FieldSpecs = DEFAULT_LEFT
    right: FieldSpecs = DEFAULT_RIGHT
    n_queries: int = 2000
    seed: int = 1
    top_k: int = 1000
    ks: Tuple[int, ...] = REFERENCE_KS
    weight_key: str = "score_linear"
    ground_truth: str = "test"
    batch_size: int = 256
    query_block: int = 1024
    doc_block: int = 65536
    check_images: bool = True
    dtype: str = "float32"

    def validate(self) -> "EvalConfig":
        self.left = check_field_specs("left", self.left)
        self.right = check_field_specs("right", self.right)
        for name in ("top_k", "batch_size", "query_block", "doc_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if isinstance(self.n_queries, bool) or not isinstance(self.n_queries, int) or (
            self.n_queries < 1 and self.n_queries != -1
        ):
            raise ValueError(f"n_queries: expected a positive int or -1 (all), got {self.n_queries!r}")
        if self.ground_truth not in GT_SOURCES:
            raise ValueError(f"ground_truth: expected one of {GT_SOURCES}, got {self.ground_truth!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype: expected 'float32' or 'float16', got {self.dtype!r}")
        ks = tuple(sorted(set(int(k) for k in self.ks)))
        if not ks or ks[0] < 1:
            raise ValueError(f"ks: expected positive cut-offs, got {self.ks!r}")
        self.ks = ks
        return self

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["left"] = [asdict(s) for s in self.left]
        d["right"] = [asdict(s) for s in self.right]
        d["ks"] = list(self.ks)
        return d


@dataclass
class SplitResult:
    """Metrics and counts of one split (`qrels` / `run` stay in memory, not in JSON)."""

    split: str
    name: str
    corpus: str
    gt_source: str
    n_queries: int
    n_docs: int
    n_docs_unusable: int
    n_gt_docs_not_in_corpus: int
    metrics: Dict[str, float]
    chance: Dict[str, float]
    seconds: float
    notes: List[str] = field(default_factory=list)
    qrels: Dict[str, Dict[str, int]] = field(default_factory=dict, repr=False)
    run: Dict[str, Dict[str, float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("qrels", "run")}
        return d


@dataclass
class EvalReport:
    """All evaluated splits; `files` lists what was written."""

    results: Dict[str, SplitResult]
    config: EvalConfig
    files: Dict[str, str] = field(default_factory=dict)

    def table(self, metrics: Sequence[str] = ("ndcg@10",) + SUMMARY_METRICS[1:] + ("recall@1000",)) -> str:
        """A fixed-width text table: one row per split."""
        cols = ["split", "queries", "docs"] + list(metrics)
        rows = [cols]
        for r in self.results.values():
            rows.append([r.name, str(r.n_queries), str(r.n_docs)] + [f"{r.metrics.get(m, float('nan')):.4f}" for m in metrics])
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)

