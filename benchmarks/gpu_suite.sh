#!/usr/bin/env bash
# GPU suite for the fused Triton GCL loss: the GPU tests, the GPU benchmark grid of the
# issue, a kernel profile and a summary table, on a bare GPU machine with no internet.
#
#   bash benchmarks/gpu_suite.sh                 # every stage: env deps tests bench profile summary
#   bash benchmarks/gpu_suite.sh tests           # only some stages, in the order given
#   RUN_ID=h100-a SIZES=8192,16384 bash benchmarks/gpu_suite.sh bench
#   RUN_ID=h100-a SIZES=32768,65536 bash benchmarks/gpu_suite.sh bench summary
#
# Stages
#   env          nvidia-smi, python / torch / triton versions       -> results/gpu_suite/<RUN_ID>_env.txt
#   deps         installs the wheels in benchmarks/wheels (no index, no deps) into .gpu_deps
#                when the module does not import already: inf_cl (Inf-CL baseline) and tqdm
#   tests        pytest -m gpu on the triton and loss tests          -> <RUN_ID>_tests.txt
#   tests-small  the rest of tests/test_gcl_loss_triton.py, compiled (tiny shapes, every
#                field / group / direction case; many compiles: several minutes)
#   bench        benchmarks/bench_loss.py --device cuda, bf16, the issue's grid; appends to
#                benchmarks/results/bench_loss.csv under run id RUN_ID (rerun with the same
#                RUN_ID to continue: finished rows are skipped)
#   profile      per-kernel CUDA times and the autotuned configs at B=32768, D=768, F=1
#   summary      markdown table and the issue's targets, from this run's CSV rows
#                                                                      -> <RUN_ID>.md, <RUN_ID>.csv
# The inf_cl wheel is tracked in benchmarks/wheels (pure Python); tqdm is on the GPU image.
# Another version: pip download inf-cl --no-deps -d benchmarks/wheels (then git add -f it).
#
# Environment knobs (defaults = the issue's grid):
#   RUN_ID  (gpu-<date>)   SIZES (8192,16384,32768,65536)   DIMS (512,768,1024)
#   FIELDS (1,2x2)   IMPLS (naive,compiled,chunked,triton,triton_fused,inf_cl,floor)   REPEATS (5)
#   PYTHON (python3)   GCL_TRITON_AUTOTUNE (1)   OUT (set by the device tool: results are
#   copied there too)
# One device call may run at most 10 minutes: split the grid over several calls with one
# RUN_ID (see docs/triton_kernel.md, "Running the GPU suite").
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
RUN_ID="${RUN_ID:-gpu-$(date +%Y%m%d-%H%M%S)}"
SIZES="${SIZES:-8192,16384,32768,65536}"
DIMS="${DIMS:-512,768,1024}"
FIELDS="${FIELDS:-1,2x2}"
IMPLS="${IMPLS:-naive,compiled,chunked,triton,triton_fused,inf_cl,floor}"
REPEATS="${REPEATS:-5}"
RES="$ROOT/benchmarks/results/gpu_suite"
mkdir -p "$RES"
export PYTHONPATH="$ROOT:$ROOT/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export GCL_TRITON_AUTOTUNE="${GCL_TRITON_AUTOTUNE:-1}"
unset TRITON_INTERPRET

STAGES=("$@")
if [ ${#STAGES[@]} -eq 0 ]; then
    STAGES=(env deps tests bench profile summary)
fi
FAILED=()

log() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

stage_env() {
    {
        echo "run_id: $RUN_ID"
        echo "date: $(date -Is)"
        echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo -) $(git status --porcelain 2>/dev/null | wc -l) changed files"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
        "$PYTHON" - <<'EOF'
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          f"{p.total_memory / 2**30:.1f} GiB")
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton import failed:", e)
for mod in ("inf_cl", "tqdm", "numpy", "hypothesis", "pytest"):
    try:
        __import__(mod)
        print(mod, "ok")
    except Exception as e:
        print(mod, "missing:", type(e).__name__)
EOF
    } 2>&1 | tee "$RES/${RUN_ID}_env.txt"
}

stage_deps() {
    local whl mod
    mkdir -p "$ROOT/.gpu_deps"
    for mod in inf_cl tqdm; do
        if "$PYTHON" -c "import $mod" 2>/dev/null; then
            echo "$mod: already importable"
            continue
        fi
        whl=$(ls "$ROOT"/benchmarks/wheels/${mod}-*.whl 2>/dev/null | head -n 1 || true)
        if [ -z "$whl" ]; then
            echo "$mod: no wheel in benchmarks/wheels (pip download ${mod//_/-} --no-deps -d benchmarks/wheels)"
            continue
        fi
        "$PYTHON" -m pip install --no-deps --no-index --quiet --target "$ROOT/.gpu_deps" "$whl" \
            && echo "$mod: installed from $(basename "$whl")"
    done
}

stage_tests() {
    "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu -rs \
        tests/test_gcl_loss_triton.py tests/test_gcl_loss.py 2>&1 | tee "$RES/${RUN_ID}_tests.txt"
    return "${PIPESTATUS[0]}"
}

stage_tests_small() {
    # small shapes, compiled, one config per key (the test file turns autotune off)
    "$PYTHON" -m pytest -q -p no:cacheprovider -m "not gpu" --durations=10 \
        tests/test_gcl_loss_triton.py 2>&1 | tee "$RES/${RUN_ID}_tests_small.txt"
    return "${PIPESTATUS[0]}"
}

stage_bench() {
    "$PYTHON" benchmarks/bench_loss.py --device cuda --dtype bfloat16 --sizes "$SIZES" \
        --dims "$DIMS" --fields "$FIELDS" --impls "$IMPLS" --repeats "$REPEATS" --resume "$RUN_ID"
}

stage_profile() {
    TRITON_PRINT_AUTOTUNING=1 "$PYTHON" - <<'EOF' 2>&1 | tee "$RES/${RUN_ID}_profile.txt"
import torch
from torch.profiler import ProfilerActivity, profile

import gcl_kernels.ops.triton_gcl as tg
from gcl_kernels import gcl_loss

b, d = 32768, 768
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=g), dim=-1)
y = torch.nn.functional.normalize(torch.randn(b, d, device="cuda", generator=g), dim=-1)
x = x.bfloat16().requires_grad_()
y = y.bfloat16().requires_grad_()
s = torch.tensor(1 / 0.07, device="cuda", requires_grad=True)
import os
for mode in ("split", "fused"):
    os.environ["GCL_TRITON_BACKWARD"] = mode  # read at every call
    for _ in range(2):  # autotune and warm up
        gcl_loss(x, y, s, impl="triton").backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            gcl_loss(x, y, s, impl="triton").backward()
        torch.cuda.synchronize()
    print(f"B={b} D={d} F=1 bf16, backward {mode}, 5 forward+backward steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
for name in ("_fwd_stats_tuned", "_bwd_dx_tuned", "_bwd_dy_tuned", "_bwd_fused_tuned"):
    for key, cfg in getattr(tg, name).cache.items():
        print(name, "key", key[:5], "->", cfg)
EOF
    return "${PIPESTATUS[0]}"
}

stage_summary() {
    RUN_ID="$RUN_ID" RES="$RES" "$PYTHON" - <<'EOF'
import csv, os
from collections import defaultdict

root = os.getcwd()
run_id, res = os.environ["RUN_ID"], os.environ["RES"]
src = os.path.join(root, "benchmarks", "results", "bench_loss.csv")
rows = []
if os.path.exists(src):
    with open(src, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames
        rows = [r for r in reader if r["run_id"] == run_id and r["device"] == "cuda"]
if not rows:
    raise SystemExit(f"no cuda rows with run_id {run_id} in {src}")
with open(os.path.join(res, f"{run_id}.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=header)
    w.writeheader()
    w.writerows(rows)

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

full = defaultdict(dict)  # (B, D, F) -> impl -> row
for r in rows:
    if r["mode"] == "full":
        full[(int(r["B"]), int(r["D"]), r["F"])][r["impl"]] = r
impls = [i for i in ("naive", "compiled", "chunked", "inf_cl", "floor", "triton", "triton_fused")
         if any(i in v for v in full.values())]
first = rows[0]
out = [f"# GPU suite {run_id}", "",
       f"{first['cpu']} host; torch {first['torch']}, triton {first['triton']}, python {first['python']}, "
       f"git {first['git']}", f"command: `{first['command']}`", "",
       "Forward + backward (mode full), bf16, median ms (extra peak MiB); triton also TFLOP/s "
       "(8 * B * B_R * D per field pair) and the fraction of the bf16 matmul rate measured "
       "in the same run.", "",
       "| B | D | F | " + " | ".join(impls) + " | triton TFLOP/s | of matmul | x naive | x inf_cl "
       "| fused x split |",
       "|" + "---|" * (3 + len(impls) + 5)]
for key in sorted(full):
    cells = []
    for i in impls:
        r = full[key].get(i)
        if r is None:
            cells.append("")
        elif r["status"].startswith("ok"):
            cells.append(f"{num(r['median_ms']):.1f} ({num(r['extra_peak_mb']):.0f})")
        else:
            cells.append(r["status"][:40])
    t = full[key].get("triton", {})
    tt = num(t.get("median_ms")) if t.get("status", "").startswith("ok") else None
    def ratio(other):
        o = full[key].get(other, {})
        om = num(o.get("median_ms")) if o.get("status", "").startswith("ok") else None
        return f"{om / tt:.2f}" if tt and om else ""
    cells += [f"{num(t['tflops']):.0f}" if tt else "", f"{num(t['frac_bf16_matmul']):.2f}" if tt else "",
              ratio("naive"), ratio("inf_cl")]
    f = full[key].get("triton_fused", {})
    fm = num(f.get("median_ms")) if f.get("status", "").startswith("ok") else None
    cells.append(f"{tt / fm:.2f}" if tt and fm else "")
    out.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")

out += ["", "## Targets (H100)", ""]
def ok_row(key, impl):
    r = full.get(key, {}).get(impl)
    return r if r is not None and r["status"].startswith("ok") else None
for mode in ("triton", "triton_fused"):
    fr = [(k, num(ok_row(k, mode)["frac_bf16_matmul"])) for k in full
          if k[0] >= 16384 and k[1] >= 512 and ok_row(k, mode)]
    if fr:
        worst = min(fr, key=lambda kv: kv[1])
        out.append(f"- {mode}: forward + backward >= 60% of the bf16 matmul rate for B >= 16k, D >= 512: "
                   f"worst {worst[1]:.2f} at B={worst[0][0]}, D={worst[0][1]}, F={worst[0][2]} -> "
                   f"{'met' if worst[1] >= 0.6 else 'NOT met'}")
key = (32768, 768, "1x1")
for mode in ("triton", "triton_fused"):
    t, n, c = ok_row(key, mode), ok_row(key, "naive"), ok_row(key, "inf_cl")
    if t and n:
        x = num(n["median_ms"]) / num(t["median_ms"])
        out.append(f"- {mode}: >= 3x faster than naive at B=32k, D=768: {x:.2f}x -> {'met' if x >= 3 else 'NOT met'}")
    if t and c:
        x = num(c["median_ms"]) / num(t["median_ms"])
        out.append(f"- {mode}: >= 2x faster than Inf-CL at B=32k, D=768: {x:.2f}x -> {'met' if x >= 2 else 'NOT met'}")
for key in sorted(k for k in full if k[0] == 65536 and k[2] == "1x1"):
    t, n = ok_row(key, "triton"), ok_row(key, "naive")
    if not t:
        continue
    extra = num(t["extra_peak_mb"])
    if n:
        base, how = num(n["extra_peak_mb"]), "measured naive"
    else:
        # naive did not run (out of memory): it holds at least one float32 B x B_R matrix
        base, how = key[0] * key[0] * 4 / 2**20, "lower bound for naive (one fp32 B x B matrix)"
    out.append(f"- extra memory at B=64k, D={key[1]}: triton {extra:.0f} MiB vs {how} {base:.0f} MiB "
               f"= {extra / base:.2%} -> {'met' if extra < 0.01 * base else 'NOT met'}")
text = "\n".join(out) + "\n"
with open(os.path.join(res, f"{run_id}.md"), "w") as f:
    f.write(text)
print(text)
EOF
}

for st in "${STAGES[@]}"; do
    fn="stage_${st//-/_}"
    if ! declare -F "$fn" >/dev/null; then
        echo "unknown stage: $st (env deps tests tests-small bench profile summary)" >&2
        exit 2
    fi
    log "stage $st (run $RUN_ID)"
    if ! "$fn"; then
        FAILED+=("$st")
        log "stage $st FAILED"
    fi
done

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    cp "$RES/${RUN_ID}"* "$OUT"/ 2>/dev/null || true
fi
log "run $RUN_ID done; results in benchmarks/results/gpu_suite/; failed stages: ${FAILED[*]:-none}"
[ ${#FAILED[@]} -eq 0 ]
