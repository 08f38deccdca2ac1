"""Reports: `metrics.json`, `metrics.csv` and `ndcg_at_k.png` of an `EvalReport`."""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from typing import Dict

import numpy as np

from ..fileio import atomic_write
from ..metrics import metric_names
from .config import SUMMARY_METRICS, EvalReport


def _versions() -> Dict[str, str]:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch",):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def write_reports(report: EvalReport, out_dir: str) -> Dict[str, str]:
    """Write `metrics.json`, `metrics.csv` and `ndcg_at_k.png` atomically; returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    names = list(metric_names(report.config.ks))
    payload = {
        "config": report.config.to_dict(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "summary": {r.name: {m: r.metrics.get(m) for m in SUMMARY_METRICS} for r in report.results.values()},
        "splits": {s: r.to_dict() for s, r in report.results.items()},
    }
    paths = {
        "json": os.path.join(out_dir, "metrics.json"),
        "csv": os.path.join(out_dir, "metrics.csv"),
        "png": os.path.join(out_dir, "ndcg_at_k.png"),
    }
    atomic_write(paths["json"], lambda f: json.dump(payload, f, indent=1))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["split", "name", "corpus", "gt_source", "n_queries", "n_docs", "n_docs_unusable"] + names)
        for s, r in report.results.items():
            w.writerow([s, r.name, r.corpus, r.gt_source, r.n_queries, r.n_docs, r.n_docs_unusable]
                       + [repr(float(r.metrics.get(m, float("nan")))) for m in names])

    atomic_write(paths["csv"], write_csv)
    atomic_write(paths["png"], lambda f: _plot_ndcg(report, f), binary=True)
    return paths


def _plot_ndcg(report: EvalReport, f) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ks = list(report.config.ks)
    for r in report.results.values():
        ax.plot(ks, [r.metrics.get(f"ndcg@{k}", float("nan")) for k in ks], marker="o", ms=3, label=r.name)
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("NDCG@k")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("NDCG@k per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f, format="png")
