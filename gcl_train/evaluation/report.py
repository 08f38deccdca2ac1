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
from .config import NOISY_QUERIES, SUMMARY_METRICS, EvalReport


def _versions() -> Dict[str, str]:
    v = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch",):
        m = sys.modules.get(mod)
        if m is not None:
            v[mod] = getattr(m, "__version__", "?")
    return v


def write_reports(report: EvalReport, out_dir: str) -> Dict[str, str]:
    """Write `metrics.json`, `metrics.csv` and `ndcg_at_k.png` atomically; returns their paths.

    `metrics.json` holds the config, versions, `label`, a summary per split and every
    split's `SplitResult.to_dict()` (with `noisy` and `reused`); `metrics.csv` one row
    per split with every metric.
    """
    os.makedirs(out_dir, exist_ok=True)
    names = list(metric_names(report.config.ks))
    payload = {
        "config": report.config.to_dict(),
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "label": report.label,
        "noisy_below_queries": NOISY_QUERIES,
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
        w.writerow(["split", "name", "corpus", "gt_source", "n_queries", "noisy", "n_docs", "n_docs_unusable"] + names)
        for s, r in report.results.items():
            w.writerow([s, r.name, r.corpus, r.gt_source, r.n_queries, int(r.noisy), r.n_docs, r.n_docs_unusable]
                       + [repr(float(r.metrics.get(m, float("nan")))) for m in names])

    atomic_write(paths["csv"], write_csv)
    atomic_write(paths["png"], lambda f: _plot_ndcg(report, f), binary=True)
    return paths


def ndcg_figure(report: EvalReport):
    """The NDCG@k plot of a report (a matplotlib `Figure`, no pyplot state).

    One line per split, its chance NDCG@k (`SplitResult.chance`) dashed in the same
    colour; the y axis fits the data with a margin; the title names what was evaluated
    (`report.label`) and the test queries per split (noisy ones starred).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ks = list(report.config.ks)
    values = []
    for i, r in enumerate(report.results.values()):
        color = f"C{i % 10}"
        y = [r.metrics.get(f"ndcg@{k}", float("nan")) for k in ks]
        name = r.name + (f" (n={r.n_queries}, noisy)" if r.noisy else "")
        ax.plot(ks, y, marker="o", ms=3, color=color, label=name)
        values += y
        if r.chance:
            c = [r.chance.get(f"ndcg@{k}", float("nan")) for k in ks]
            ax.plot(ks, c, linestyle="--", linewidth=1, color=color, alpha=0.7,
                    label="chance (dashed, per split)" if i == 0 else None)
            values += c
    finite = [v for v in values if v == v]
    if finite:
        lo, hi = min(finite), max(finite)
        margin = max(0.05 * (hi - lo), 0.01)
        bottom, top = max(0.0, lo - margin), min(1.0, hi + margin)
        ax.set_ylim(bottom, max(top, bottom + 0.01))
    ax.set_xscale("log")
    ax.set_xlabel("k")
    ax.set_ylabel("NDCG@k")
    ax.grid(True, which="both", alpha=0.3)
    counts = ", ".join(f"{r.name} {r.n_queries}{'*' if r.noisy else ''}" for r in report.results.values())
    title = f"NDCG@k: {report.label}" if report.label else "NDCG@k per split"
    ax.set_title(f"{title}\ntest queries: {counts}" + (f"  (* < {NOISY_QUERIES}: noisy)" if any(
        r.noisy for r in report.results.values()) else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _plot_ndcg(report: EvalReport, f) -> None:
    ndcg_figure(report).savefig(f, format="png")
