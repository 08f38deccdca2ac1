"""Evaluation settings and results: `EvalConfig`, `SplitResult`, `EvalReport`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.fields import DEFAULT_LEFT, DEFAULT_RIGHT, FieldSpecs, check_field_specs
from ..metrics import REFERENCE_KS

#: Where the ground truth comes from: rebuilt from the split CSV (the reference's default),
#: or the split's `_gt_test.json` / `_gt_dev.json` file.
GT_SOURCES = ("csv", "test", "dev")
SUMMARY_METRICS = ("ndcg@10", "err", "rbp@0.9")
#: Test queries the "csv" ground truth samples when `n_queries` is None (the reference's --top-q).
CSV_QUERIES = 2000
#: A split evaluated on fewer test queries than this is flagged `noisy`.
NOISY_QUERIES = 100


@dataclass
class EvalConfig:
    """Protocol settings; the defaults reproduce the reference evaluation (docs/evaluation.md).

    Args:
        left: query fields (default: query text).
        right: document fields (default: image 0.9, title 0.1).
        n_queries: test queries per split: None (default) takes the reference's number,
            2000 sampled for "csv" and every query of a gt file; -1 takes all; n samples
            n (weighted, without replacement).
        seed: sampling seed.
        top_k: documents retrieved per query, and ground-truth depth.
        ks: metric cut-offs (default: the reference's 1..1000 list).
        weight_key: the CSV score column turned into relevance.
        ground_truth: "csv" (default: rebuilt from the split CSV), "test" or "dev" (the
            split's gt file; "csv" with a note when it is absent).
        batch_size: values per encoder call.
        query_block, doc_block: block sizes of exact retrieval.
        check_images: treat absent image files as missing fields (one stat per doc).
        dtype: storage dtype of corpus embeddings ("float32" or "float16").
    """

    left: FieldSpecs = DEFAULT_LEFT
    right: FieldSpecs = DEFAULT_RIGHT
    n_queries: Optional[int] = None
    seed: int = 1
    top_k: int = 1000
    ks: Tuple[int, ...] = REFERENCE_KS
    weight_key: str = "score_linear"
    ground_truth: str = "csv"
    batch_size: int = 256
    query_block: int = 1024
    doc_block: int = 65536
    check_images: bool = True
    dtype: str = "float32"

    def queries_for(self, source: str) -> int:
        """Test queries to take from ground truth `source` ("csv" or a gt file); -1: all."""
        if self.n_queries is not None:
            return self.n_queries
        return CSV_QUERIES if source == "csv" else -1

    def validate(self) -> "EvalConfig":
        self.left = check_field_specs("left", self.left)
        self.right = check_field_specs("right", self.right)
        for name in ("top_k", "batch_size", "query_block", "doc_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.n_queries is not None and (isinstance(self.n_queries, bool) or not isinstance(self.n_queries, int) or (
            self.n_queries < 1 and self.n_queries != -1
        )):
            raise ValueError(f"n_queries: expected None (the protocol's number), a positive int or -1 (all), "
                             f"got {self.n_queries!r}")
        if self.ground_truth not in GT_SOURCES:
            raise ValueError(f"ground_truth: expected one of {GT_SOURCES}, got {self.ground_truth!r}")
        if self.dtype not in ("float32", "float16"):
            raise ValueError(f"dtype: expected 'float32' or 'float16', got {self.dtype!r}")
        bad = [k for k in self.ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
        if bad or not self.ks:
            raise ValueError(f"ks: expected positive int cut-offs, got {tuple(self.ks)!r}")
        ks = tuple(sorted(set(int(k) for k in self.ks)))
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
    """Metrics and counts of one split (`qrels` / `run` stay in memory, not in JSON).

    `noisy` flags a split scored on fewer than `NOISY_QUERIES` test queries; `reused`
    one taken from an earlier run in the same output directory (`evaluate(resume=True)`).
    """

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
    noisy: bool = False
    reused: bool = False
    qrels: Dict[str, Dict[str, int]] = field(default_factory=dict, repr=False)
    run: Dict[str, Dict[str, float]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.noisy = self.n_queries < NOISY_QUERIES

    def to_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("qrels", "run")}
        return d


@dataclass
class EvalReport:
    """All evaluated splits; `label` names what was evaluated; `files` lists what was written."""

    results: Dict[str, SplitResult]
    config: EvalConfig
    files: Dict[str, str] = field(default_factory=dict)
    label: Optional[str] = None

    def table(self, metrics: Optional[Sequence[str]] = None) -> str:
        """A fixed-width text table: one row per split; noisy splits are starred, with a footnote.

        Default columns: the summary metrics and recall at the largest cut-off; a metric
        the run did not compute shows as "-".
        """
        if metrics is None:
            metrics = SUMMARY_METRICS + (f"recall@{max(self.config.ks)}",)
        cols = ["split", "queries", "docs"] + list(metrics)
        rows = [cols]
        noisy = []
        for r in self.results.values():
            q = str(r.n_queries) + ("*" if r.noisy else "")
            if r.noisy:
                noisy.append(f"{r.name} {r.n_queries}")
            rows.append([r.name, q, str(r.n_docs)] + [f"{r.metrics[m]:.4f}" if m in r.metrics else "-" for m in metrics])
        widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
        if noisy:
            lines.append(f"* noisy: fewer than {NOISY_QUERIES} test queries ({', '.join(noisy)}); "
                         f"differences between models there are mostly chance")
        return "\n".join(lines)
