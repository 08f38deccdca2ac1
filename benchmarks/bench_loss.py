"""Benchmark: the GCL loss, forward / backward / full, time and extra peak memory.

Implementations, named in one place (IMPLS):

    naive          eager PyTorch in the benchmark's dtype (bf16 on CUDA: bf16 matmul and
                   logits): materialised B x B_R logits per field pair and two
                   F.cross_entropy calls (reduction="none", weighted), autograd backward
    compiled       torch.compile(naive, dynamic=True) (compiled once per process)
    reference      gcl_loss(impl="reference"): the readable oracle (materialises S)
    chunked        gcl_loss(impl="chunked"): row blocks, one exp per element, recompute
    floor          the arithmetic floor in plain torch ops on full-size matrices, in the
                   benchmark's dtype: per field pair, forward = 1 matmul + exp, backward =
                   1 matmul + exp + 2 matmuls
    floor_blocked  the same ops on the row blocks `chunked` uses (diagnostic: the cost of
                   the block shapes alone)
    triton         gcl_loss(impl="triton"), GEMM backward (GCL_TRITON_BACKWARD=gemm, the
                   default: Triton dS kernel + cuBLAS products)  (--device cuda only)
    triton_cols    the same with GCL_TRITON_BACKWARD=gemm_cols (dy by column blocks)
    triton_v1      the v1 backward kernels (GCL_TRITON_BACKWARD=split)
    triton_fused   the v1 fused backward (GCL_TRITON_BACKWARD=fused, atomics)
    inf_cl         Inf-CL `cal_inf_loss`, once per direction, unweighted, F = 1
                   (--device cuda only; skipped with a note when `inf_cl` does not import)

All implementations get the same inputs from one setup factory (`make_inputs`): unit-norm
random embeddings [F, B, D] and [F, B_R, D], logit scale 1/0.07, weights in (0, 1],
field weights 1/(F_L F_R), direction "both", normalize "batch", no groups.

Every implementation runs in its own long-lived worker process; the parent walks the
configurations and asks each worker in turn, so the implementations of one configuration
are measured minutes apart at most (paired under the same machine load). Per configuration
a worker builds the inputs, runs one untimed full step (warm-up; compiles), then:

- extra peak memory, from one step. CPU: the worker runs with a fixed glibc mmap
  threshold (MALLOC_MMAP_THRESHOLD_=131072) so every large tensor is mmapped and unmapped
  and the resident set follows live memory; the peak RSS is reset
  (`echo 5 > /proc/self/clear_refs`) before the forward and again before the backward.
  forward = VmHWM during the forward - VmRSS before it; backward = VmHWM during the
  backward - VmRSS after the forward; full = the larger peak - VmRSS before the step. It
  includes everything the step allocates: saved activations, scratch, and in the
  backward the gradients of lhs, rhs (2 x B x D values) and the scale. CUDA: the same
  with torch.cuda.max_memory_allocated / reset_peak_memory_stats / memory_allocated.
- time: `--repeats` steps (at least 3 unless --repeats is lower; fewer when the steps
  pass --max-seconds), each timed in two halves: forward = the loss call, backward =
  loss.backward(), full = both; median with min and max. Wall clock (CPU: perf_counter;
  CUDA: events) and, on CPU, process CPU time (about threads x wall when the process
  has the cores to itself, so cpu < threads x wall shows other load).

Reported ratios use the same configuration and mode: x_naive = naive time / impl time,
x_floor = impl time / floor time, mem_vs_naive = impl extra peak / naive extra peak.
On CUDA also TFLOP/s (2, 6 and 8 * B * B_R * D flops per field pair for forward,
backward and full) and the fraction of the bf16 matmul rate measured in the same run
(torch.matmul 8192^3 in bfloat16). loss_rel_diff compares each loss with the reference
(or chunked) loss of the same inputs.

    python benchmarks/bench_loss.py --quick                       # smoke run, under 1 min
    python benchmarks/bench_loss.py                               # default grid (40 min here, see below)
    python benchmarks/bench_loss.py --sizes 16384 --dims 512 --fields 1 --impls naive,chunked,floor
    python benchmarks/bench_loss.py --device cuda --dtype bfloat16 --impls naive,chunked,triton,inf_cl,floor

The default grid is B in {1024, 4096, 8192, 16384} x D in {256, 512} x F in {1, 2x2}
minus the B = 16384, F = 2x2 corner (the default --max-logits of the default grid; the
naive loss would need ~20 GiB there), with naive, compiled, reference, chunked and floor: it
took 39m52s on the 2-core machine it was written on, with other jobs keeping the load
average at 3 to 4. Sizes given with --sizes are never capped unless --max-logits is given
too, and every configuration skipped (size cap, --time-budget, memory) is printed, with its
reason, in the table and in the CSV.

Prints a table and appends one CSV row per (configuration, implementation, mode) to
benchmarks/results/bench_loss.csv (bench_loss_quick.csv for --quick) with the machine,
versions, load average, the exact command line and a timestamp. `--resume RUN_ID`
continues an interrupted run, skipping what that run already wrote.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from _common import (append_csv, check_csv_header, command_line, git_revision, loadavg, machine, package_versions,
                     proc_status_kb, reset_peak_rss)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS_DIR = os.path.join(HERE, "results")
MODES = ("forward", "backward", "full")
DTYPES = ("float32", "bfloat16", "float16", "float64")
COLUMNS = [
    "run_id", "timestamp", "device", "dtype", "impl", "mode", "B", "B_R", "D", "F", "repeats",
    "median_ms", "min_ms", "max_ms", "cpu_median_ms", "extra_peak_mb", "x_naive", "x_floor",
    "mem_vs_naive", "tflops", "frac_bf16_matmul", "loss", "loss_rel_diff", "status", "cpu", "cores",
    "torch_threads", "loadavg_start", "loadavg_end", "python", "torch", "triton", "numpy", "git",
    "command",
]


# --------------------------------------------------------------------------- worker side


def make_inputs(cfg: dict, device: str, dtype_name: str, seed: int = 0) -> dict:
    """The one setup factory shared by every implementation, speed and memory runs."""
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator(device="cpu").manual_seed(seed)
    f_l, f_r, b, d = cfg["FL"], cfg["FR"], cfg["B"], cfg["D"]
    b_r = b + cfg.get("extra", 0)
    x = torch.nn.functional.normalize(torch.randn(f_l, b, d, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(f_r, b_r, d, generator=g), dim=-1)
    x = x.to(device=device, dtype=dtype).requires_grad_(True)
    y = y.to(device=device, dtype=dtype).requires_grad_(True)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / 0.07, dtype=acc, device=device, requires_grad=True)
    w = (torch.rand(b, generator=g, dtype=torch.float64) * 0.9 + 0.1).to(device=device, dtype=acc)
    fw = torch.full((f_l, f_r), 1.0 / (f_l * f_r), dtype=acc, device=device)
    return dict(x=x, y=y, scale=scale, w=w, fw=fw)


def _naive_loss(x, y, scale, w, fw):
    """Materialised logits and two cross_entropy calls per field pair (direction both, Z = B),
    in the inputs' dtype (bf16 logits for bf16 inputs, as a bf16 training step computes them)."""
    import torch
    import torch.nn.functional as F

    b = x.shape[1]
    labels = torch.arange(b, device=x.device)
    total = scale.new_zeros(())
    for l in range(x.shape[0]):
        for r in range(y.shape[0]):
            logits = scale * (x[l] @ y[r].T)
            row = F.cross_entropy(logits, labels, reduction="none")
            col = F.cross_entropy(logits[:, :b].T, labels, reduction="none")
            total = total + fw[l, r] * 0.5 * ((w * row).sum() + (w * col).sum()) / b
    return total


@dataclass
class Impl:
    """build(device) returns forward(inputs) -> state; the backward is state.backward(),
    or forward.backward(state) when the forward function carries one (the floors)."""
    build: Callable[[str], Callable]
    devices: tuple
    fields_one_only: bool = False
    materialises: float = 0.0  # approx. B x B_R float32 matrices held per field pair (skip rule)
    note: str = ""


def _build_gcl(impl_name, env=None):
    def build(device):
        # each implementation has its own worker process, so its settings stay its own
        os.environ.update(env or {})
        from gcl_kernels import gcl_loss

        return lambda t: gcl_loss(t["x"], t["y"], t["scale"], t["w"], t["fw"], impl=impl_name)
    return build


def _build_naive(device):
    return lambda t: _naive_loss(t["x"], t["y"], t["scale"], t["w"], t["fw"])


def _build_compiled(device):
    import torch

    fn = torch.compile(_naive_loss, dynamic=True)
    return lambda t: fn(t["x"], t["y"], t["scale"], t["w"], t["fw"])


def _build_inf_cl(device):
    from inf_cl import cal_inf_loss  # raises ImportError -> reported as skipped

    def fwd(t):
        # the scale goes into the inputs: cal_inf_loss(scale=...) gathers the scale's
        # gradient with torch.distributed, which fails without a process group
        x, y, s = t["x"][0], t["y"][0], t["scale"]
        return 0.5 * (cal_inf_loss(s * x, y) + cal_inf_loss(s * y, x))
    return fwd


def _floor_ops(blocked: bool):
    """Plain-torch arithmetic floor: per field pair, forward mm + exp, backward mm + exp + 2 mm."""

    def build(device):
        import torch

        from gcl_kernels.ops.chunked import chunk_rows

        cache = {}

        def buffers(t):
            x, y = t["x"], t["y"]
            key = (tuple(x.shape), tuple(y.shape), x.dtype)
            if key not in cache:
                cache.clear()
                b, b_r = x.shape[1], y.shape[1]
                c = chunk_rows(b_r, b) if blocked else b
                acc = x.dtype  # the benchmark's dtype: bf16 products and exp for bf16 inputs
                xo, yo = x.detach(), y.detach()
                # blocked: flat storage viewed as [B_R, n] per block, chunked's layout (S^T blocks)
                cache[key] = (c, xo, yo, torch.empty(c * b_r, dtype=acc, device=x.device),
                              torch.empty_like(xo[0]), torch.empty_like(yo[0]))
            return cache[key]

        def _block(buf, xo, yo, i0, c):
            n = min(c, xo.shape[1] - i0)
            if blocked:
                return buf[: yo.shape[1] * n].view(yo.shape[1], n)
            return buf.view(xo.shape[1], yo.shape[1])

        def _scores(blk, x_rows, y_all):
            if blocked:
                torch.mm(y_all, x_rows.T, out=blk)  # S^T block [B_R, n]
            else:
                torch.mm(x_rows, y_all.T, out=blk)  # S [B, B_R]

        def fwd(t):
            c, xo, yo, buf, _, _ = buffers(t)
            with torch.no_grad():
                for l in range(xo.shape[0]):
                    for r in range(yo.shape[0]):
                        for i0 in range(0, xo.shape[1], c):
                            blk = _block(buf, xo, yo, i0, c)
                            _scores(blk, xo[l, i0:i0 + c], yo[r])
                            blk.exp_()
            return t

        def bwd(t):
            c, xo, yo, buf, dx, dy = buffers(t)
            with torch.no_grad():
                for l in range(xo.shape[0]):
                    for r in range(yo.shape[0]):
                        for i0 in range(0, xo.shape[1], c):
                            n = min(c, xo.shape[1] - i0)
                            blk = _block(buf, xo, yo, i0, c)
                            _scores(blk, xo[l, i0:i0 + c], yo[r])
                            blk.exp_()
                            if blocked:
                                torch.mm(blk.T, yo[r], out=dx[i0:i0 + n])
                                dy.addmm_(blk, xo[l, i0:i0 + c])
                            else:
                                torch.mm(blk, yo[r], out=dx)
                                torch.mm(blk.T, xo[l], out=dy)

        fwd.backward = bwd
        return fwd

    return build


IMPLS: Dict[str, Impl] = {
    "naive": Impl(_build_naive, ("cpu", "cuda"), materialises=5.0),
    "compiled": Impl(_build_compiled, ("cpu", "cuda"), materialises=5.0),
    "reference": Impl(_build_gcl("reference"), ("cpu", "cuda"), materialises=5.0),
    "chunked": Impl(_build_gcl("chunked"), ("cpu", "cuda")),
    "floor": Impl(_floor_ops(blocked=False), ("cpu", "cuda"), materialises=1.0),
    "floor_blocked": Impl(_floor_ops(blocked=True), ("cpu", "cuda")),
    "triton": Impl(_build_gcl("triton", {"GCL_TRITON_BACKWARD": "gemm"}), ("cuda",)),
    "triton_cols": Impl(_build_gcl("triton", {"GCL_TRITON_BACKWARD": "gemm_cols"}), ("cuda",),
                        note="gemm_cols backward"),
    "triton_v1": Impl(_build_gcl("triton", {"GCL_TRITON_BACKWARD": "split"}), ("cuda",),
                      note="v1 split backward"),
    "triton_fused": Impl(_build_gcl("triton", {"GCL_TRITON_BACKWARD": "fused"}), ("cuda",),
                         note="v1 fused backward"),
    "inf_cl": Impl(_build_inf_cl, ("cuda",), fields_one_only=True, note="unweighted CE"),
}
DEFAULT_IMPLS = {"cpu": ["naive", "compiled", "reference", "chunked", "floor"],
                 "cuda": ["triton", "naive", "inf_cl", "chunked", "triton_v1", "compiled", "floor"]}


class _Probe:
    """Memory and clock readings around the two halves of one step."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.cuda = device == "cuda"

    def reset_peak(self) -> int:
        """Start a new peak window; returns the memory in use now (bytes)."""
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        reset_peak_rss()
        return proc_status_kb("VmRSS") * 1024

    def peak(self) -> int:
        if self.cuda:
            self.torch.cuda.synchronize()
            return self.torch.cuda.max_memory_allocated()
        return proc_status_kb("VmHWM") * 1024

    def mark(self):
        if self.cuda:
            e = self.torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter(), time.process_time()

    def elapsed(self, a, b):
        """(wall seconds, CPU seconds or nan) between two marks."""
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1e3, float("nan")
        return b[0] - a[0], b[1] - a[1]


def _measure_config(impl: Impl, fwd, cfg: dict, device: str, dtype: str) -> dict:
    """Warm-up step, one memory step, then `repeats` timed steps, each split into its
    forward and backward halves (full = the whole step)."""
    import torch

    t = make_inputs(cfg, device, dtype)
    backward = getattr(fwd, "backward", None) or (lambda st: st.backward())
    probe = _Probe(device)

    def clear_grads():
        for k in ("x", "y", "scale"):
            t[k].grad = None

    # warm-up: compiles, touches every code path, records the loss value
    state = fwd(t)
    loss = float(state.detach()) if isinstance(state, torch.Tensor) else None
    backward(state)
    del state
    clear_grads()

    # memory: peak of the forward over the memory before it, peak of the backward over
    # the memory after the forward, and the larger of the two over the memory before
    gc.collect()
    base = probe.reset_peak()
    state = fwd(t)
    peak_f = probe.peak()
    mid = probe.reset_peak()
    backward(state)
    peak_b = probe.peak()
    del state
    clear_grads()
    extra = {"forward": peak_f - base, "backward": peak_b - mid, "full": max(peak_f, peak_b) - base}

    times = {m: ([], []) for m in MODES}
    spent = 0.0
    while len(times["full"][0]) < cfg["repeats"]:
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
        m0 = probe.mark()
        state = fwd(t)
        m1 = probe.mark()
        backward(state)
        m2 = probe.mark()
        del state
        clear_grads()
        for mode, (a, b) in (("forward", (m0, m1)), ("backward", (m1, m2)), ("full", (m0, m2))):
            wall, cpu = probe.elapsed(a, b)
            times[mode][0].append(wall)
            times[mode][1].append(cpu)
        spent += times["full"][0][-1]
        if spent > cfg["max_seconds"] and len(times["full"][0]) >= min(3, cfg["repeats"]):
            break

    out = {"loss": loss, "modes": {}}
    for mode in MODES:
        walls, cpus = times[mode]
        out["modes"][mode] = dict(repeats=len(walls), median=statistics.median(walls), min=min(walls),
                                  max=max(walls), cpu_median=statistics.median(cpus), extra=extra[mode])
    del t
    gc.collect()
    return out


def worker_main(impl_name: str, device: str, dtype: str) -> None:
    """Line protocol: one JSON config per stdin line -> one JSON result per stdout line."""
    import torch  # noqa: F401  (import before reporting ready)

    proto = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    impl = IMPLS[impl_name]
    try:
        fwd = impl.build(device)
        ready = {"ready": True}
    except Exception as e:  # e.g. inf_cl not installed, triton without a GPU
        fwd = None
        ready = {"ready": False, "error": f"{type(e).__name__}: {e}"}
    proto.write(json.dumps(ready) + "\n")
    proto.flush()
    for line in sys.stdin:
        cfg = json.loads(line)
        try:
            res = _measure_config(impl, fwd, cfg, device, dtype)
            res["ok"] = True
        except Exception as e:
            res = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            gc.collect()
        proto.write(json.dumps(res) + "\n")
        proto.flush()


# --------------------------------------------------------------------------- parent side


class Worker:
    def __init__(self, impl: str, device: str, dtype: str, threads: Optional[int]):
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.impl = impl
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", impl, "--device", device, "--dtype", dtype],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        hello = self.proc.stdout.readline()
        self.ready = json.loads(hello) if hello else {"ready": False, "error": "worker exited at start"}

    def run(self, cfg: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(cfg) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:
            rc = self.proc.wait()
            return {"ok": False, "error": f"worker died (exit code {rc}; out of memory?)", "died": True}
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _machine() -> dict:
    """The machine and version columns of bench_loss.csv."""
    import torch

    return dict(machine(), torch_threads=str(torch.get_num_threads()),
                **package_versions({"torch": "torch", "triton": "triton", "numpy": "numpy"}),
                git=git_revision() or "-")


def _mem_available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def _bf16_matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ a
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * 8192 ** 3 / statistics.median(times) / 1e12


def _done_keys(path: str, run_id: str) -> set:
    if not os.path.exists(path):
        return set()
    with open(path, newline="") as f:
        return {(r["impl"], r["B"], r["D"], r["F"]) for r in csv.DictReader(f) if r["run_id"] == run_id}


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _print_table(rows: List[dict]) -> None:
    head = (f"{'B':>6} {'D':>4} {'F':>4} {'impl':<14}{'mode':<9}{'median ms':>10} {'min-max ms':>17} "
            f"{'cpu ms':>9} {'extra MB':>9} {'x naive':>8} {'x floor':>8} {'mem/naive':>9} "
            f"{'TFLOP/s':>8} {'loss diff':>9}  status")
    print(head)
    print("-" * len(head))
    for r in rows:
        spread = f"{_fmt(r['min_ms'], '.1f')}-{_fmt(r['max_ms'], '.1f')}" if r["median_ms"] is not None else "-"
        print(f"{r['B']:>6} {r['D']:>4} {r['F']:>4} {r['impl']:<14}{r['mode']:<9}"
              f"{_fmt(r['median_ms'], '10.1f')} {spread:>17} {_fmt(r['cpu_median_ms'], '9.1f')} "
              f"{_fmt(r['extra_peak_mb'], '9.1f')} {_fmt(r['x_naive'], '8.2f')} {_fmt(r['x_floor'], '8.2f')} "
              f"{_fmt(r['mem_vs_naive'], '9.3f')} {_fmt(r['tflops'], '8.2f')} {_fmt(r['loss_rel_diff'], '9.1e')}"
              f"  {r['status']}")
    sys.stdout.flush()


def _parse_fields(s: str):
    out = []
    for part in s.split(","):
        part = part.strip().lower()
        fl, _, fr = part.partition("x")
        try:
            fl_i, fr_i = int(fl), int(fr or fl)
        except ValueError:
            raise SystemExit(f"--fields: expected entries like 1 or 2x2, got {part!r}")
        if fl_i < 1 or fr_i < 1:
            raise SystemExit(f"--fields: field counts must be >= 1, got {part!r}")
        out.append((fl_i, fr_i) if fr else (1, 1) if fl_i == 1 else (fl_i, fl_i))
    return out


def _ints(name: str, s: str) -> List[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{name}: expected comma-separated integers, got {s!r}")
    if not vals or min(vals) < 1:
        raise SystemExit(f"--{name}: expected positive integers, got {s!r}")
    return vals


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="batch sizes B (default 1024,4096,8192,16384)")
    p.add_argument("--dims", default="256,512", help="embedding dims D")
    p.add_argument("--fields", default="1,2x2", help="field layouts: 1 (F_L = F_R = 1) or FLxFR")
    p.add_argument("--extra", type=int, default=0, help="extra negatives: B_R = B + extra")
    p.add_argument("--impls", default=None, help=f"comma list from {list(IMPLS)}")
    p.add_argument("--modes", default="forward,backward,full")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=30.0,
                   help="stop repeating a mode after this much measured time (>= 3 runs)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the workers")
    p.add_argument("--max-logits", type=float, default=None,
                   help="skip configurations with F_L * F_R * B * B_R above this; 0 for no cap. "
                        "Default: 16384^2 for the default sizes (the grid's B = 16384, F = 2x2 "
                        "corner), no cap for sizes given with --sizes")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no further measurement after this many seconds (those left out "
                        "are written as skipped rows)")
    p.add_argument("--quick", action="store_true", help="smoke run: B=1024, D=256, F=1, 2 repeats")
    p.add_argument("--out", default=None, help="CSV path (default benchmarks/results/bench_loss[_quick].csv)")
    p.add_argument("--resume", default=None, metavar="RUN_ID", help="continue this run id, skipping done rows")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        worker_main(args.worker, args.device, args.dtype)
        return

    sizes_given = args.sizes is not None
    if args.sizes is None:
        args.sizes = "1024,4096,8192,16384"
    if args.quick:
        args.sizes, args.dims, args.fields, args.repeats = "1024", "256", "1", min(args.repeats, 2)
    if args.max_logits is None:
        args.max_logits = 0.0 if sizes_given else float(16384 ** 2)
    sizes, dims, fields = _ints("sizes", args.sizes), _ints("dims", args.dims), _parse_fields(args.fields)
    modes = [m.strip() for m in args.modes.split(",")]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: expected a comma list from {MODES}, got {args.modes!r}")
    impls = [s.strip() for s in args.impls.split(",")] if args.impls else list(DEFAULT_IMPLS[args.device])
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"--impls: unknown {bad}; choose from {list(IMPLS)}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats: expected >= 1, got {args.repeats}")
    if args.extra < 0:
        raise SystemExit(f"--extra: expected >= 0, got {args.extra}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    out = args.out or os.path.join(RESULTS_DIR, "bench_loss_quick.csv" if args.quick else "bench_loss.csv")

    run_id = args.resume or time.strftime("%Y%m%d-%H%M%S")
    done = _done_keys(out, run_id) if args.resume else set()
    check_csv_header(out, COLUMNS)
    meta = _machine()
    command = command_line(argv, start=ROOT)
    bf16_rate = _bf16_matmul_tflops() if args.device == "cuda" else None

    configs = [dict(B=b, D=d, FL=fl, FR=fr, extra=args.extra, modes=modes, repeats=args.repeats,
                    max_seconds=args.max_seconds)
               for (fl, fr) in fields for d in dims for b in sizes]
    for c in configs:
        logits = c["FL"] * c["FR"] * c["B"] * (c["B"] + c["extra"])
        if args.max_logits and logits > args.max_logits:
            c["skip"] = f"skipped: F_L*F_R*B*B_R = {logits:.3g} above --max-logits {args.max_logits:.3g}"
    capped = [c for c in configs if c.get("skip")]
    if capped:
        print("skipping (above --max-logits, pass --max-logits 0 to run them): " + ", ".join(
            f"B={c['B']} D={c['D']} F={c['FL']}x{c['FR']}" for c in capped), flush=True)
    t_start = time.monotonic()
    skipped: List[str] = []
    workers: Dict[str, Worker] = {}
    all_rows: List[dict] = []
    from tqdm import tqdm

    print(f"run {run_id}: {len(configs)} configurations x {len(impls)} implementations -> {out}", flush=True)
    bar = tqdm(total=len(configs) * len(impls), desc="bench_loss", file=sys.stderr)
    try:
        for cfg in configs:
            f_str = f"{cfg['FL']}x{cfg['FR']}"
            b_r = cfg["B"] + cfg["extra"]
            results: Dict[str, dict] = {}
            load0 = loadavg()
            for name in impls:
                bar.set_postfix_str(f"B={cfg['B']} D={cfg['D']} F={f_str} {name}")
                impl = IMPLS[name]
                key = (name, str(cfg["B"]), str(cfg["D"]), f_str)
                over = args.time_budget is not None and time.monotonic() - t_start > args.time_budget
                if key in done:
                    results[name] = {"ok": False, "error": "done in an earlier part of this run", "resumed": True}
                elif cfg.get("skip"):
                    results[name] = {"ok": False, "error": cfg["skip"]}
                elif over:
                    results[name] = {"ok": False, "error": f"skipped: --time-budget {args.time_budget:.0f} s spent"}
                elif args.device not in impl.devices:
                    results[name] = {"ok": False, "error": f"skipped: {args.device} not supported"}
                elif impl.fields_one_only and (cfg["FL"], cfg["FR"]) != (1, 1):
                    results[name] = {"ok": False, "error": "skipped: F = 1 only"}
                elif impl.materialises and args.device == "cpu" and (
                        impl.materialises * cfg["FL"] * cfg["FR"] * cfg["B"] * b_r * 4 > 0.6 * _mem_available_bytes()):
                    need = impl.materialises * cfg["FL"] * cfg["FR"] * cfg["B"] * b_r * 4 / 2 ** 30
                    results[name] = {"ok": False, "error": f"skipped: needs ~{need:.0f} GiB, more than 60% of free memory"}
                else:
                    if name not in workers or workers[name].proc.poll() is not None:
                        workers[name] = Worker(name, args.device, args.dtype, args.threads)
                    wk = workers[name]
                    if not wk.ready.get("ready"):
                        results[name] = {"ok": False, "error": f"skipped: {wk.ready.get('error')}"}
                    else:
                        results[name] = wk.run(cfg)
                bar.update(1)
            load1 = loadavg()

            ref_loss = next((results[n]["loss"] for n in ("reference", "chunked")
                             if results.get(n, {}).get("ok") and results[n].get("loss") is not None), None)
            rows = []
            for name in impls:
                res = results[name]
                if res.get("resumed"):
                    continue
                for mode in modes:
                    m = res["modes"][mode] if res.get("ok") else None
                    row = dict(meta, run_id=run_id, timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"),
                               device=args.device, dtype=args.dtype, impl=name, mode=mode, B=cfg["B"], B_R=b_r,
                               D=cfg["D"], F=f_str, loadavg_start=load0, loadavg_end=load1, command=command,
                               repeats=None, median_ms=None, min_ms=None, max_ms=None, cpu_median_ms=None,
                               extra_peak_mb=None, x_naive=None, x_floor=None, mem_vs_naive=None, tflops=None,
                               frac_bf16_matmul=None, loss=None, loss_rel_diff=None,
                               status="ok" if m else res.get("error", "?"))
                    if m:
                        row.update(repeats=m["repeats"], median_ms=m["median"] * 1e3, min_ms=m["min"] * 1e3,
                                   max_ms=m["max"] * 1e3,
                                   cpu_median_ms=None if math.isnan(m["cpu_median"]) else m["cpu_median"] * 1e3,
                                   extra_peak_mb=m["extra"] / 2 ** 20, loss=res.get("loss"))
                        if IMPLS[name].note:
                            row["status"] = "ok (" + IMPLS[name].note + ")"
                        naive = results.get("naive", {})
                        if naive.get("ok"):
                            nm = naive["modes"][mode]
                            row["x_naive"] = nm["median"] / m["median"]
                            if nm["extra"] > 0:
                                row["mem_vs_naive"] = m["extra"] / nm["extra"]
                        floor = results.get("floor", {})
                        if floor.get("ok") and name != "floor":
                            row["x_floor"] = m["median"] / floor["modes"][mode]["median"]
                        if args.device == "cuda":
                            flops = {"forward": 2, "backward": 6, "full": 8}[mode] * cfg["B"] * b_r * cfg["D"] \
                                * cfg["FL"] * cfg["FR"]
                            row["tflops"] = flops / m["median"] / 1e12
                            row["frac_bf16_matmul"] = row["tflops"] / bf16_rate
                        if ref_loss is not None and res.get("loss") is not None:
                            row["loss_rel_diff"] = abs(res["loss"] - ref_loss) / max(abs(ref_loss), 1e-30)
                    rows.append(row)
            append_csv(out, COLUMNS, rows)
            all_rows.extend(rows)
    finally:
        bar.close()
        for wk in workers.values():
            try:
                wk.close()
            except Exception:
                wk.proc.kill()
    print()
    if bf16_rate:
        print(f"bf16 matmul rate (torch.matmul 8192^3): {bf16_rate:.1f} TFLOP/s")
    print(f"machine: {meta['cpu']}, {meta['cores']} cores, torch {meta['torch']} ({meta['torch_threads']} threads), "
          f"python {meta['python']}, triton {meta['triton']}; git {meta['git']}")
    print(f"command: {command}")
    _print_table(all_rows)
    skipped = sorted({(r["B"], r["D"], r["F"], r["impl"], r["status"]) for r in all_rows
                      if str(r["status"]).startswith(("skipped", "worker died")) or
                      "Error" in str(r["status"])})
    if skipped:
        print("\nnot measured (configuration, implementation: reason):")
        for b, d, f, name, why in skipped:
            print(f"  B={b} D={d} F={f} {name}: {why}")
    print(f"\nappended {len(all_rows)} rows to {os.path.relpath(out, ROOT)} (run_id {run_id})")


if __name__ == "__main__":
    main()
