#!/usr/bin/env bash
# The fused Triton GCL loss on a GPU in ONE device call of at most 8 minutes, compile and
# autotune counted: versions, the GPU tests, a scale check, the headline benchmark and a
# summary against the issue's targets. Every stage runs under its own time limit, cut to
# what the remaining budget allows; optional stages run only while time is left.
#
#   bash benchmarks/gpu_first_call.sh            # the device tool: timeout_s=480
#
# The budget (455 s of stages + 20 s of summary) fits 8 minutes; the stage limits below add up
# to more, so each is cut to leave the later stages their minimum (scale 60 s, bench 170 s).
#
# Stages (limit in seconds, before the budget cuts it)
#   env      40   nvidia-smi, python / torch / triton versions; installs the tracked Inf-CL
#                 wheel (benchmarks/wheels, pure Python) into .gpu_deps       -> env.txt
#   tests   200   pytest -m gpu on tests/kernels/test_gcl_loss_triton.py and
#                 test_gcl_loss.py, 8 workers (compiles in parallel)           -> tests.txt
#   scale    90   tests/kernels/test_triton_scale.py: triton vs chunked vs a float64-
#                 accumulated reference, B = 16k-64k, bf16 / fp16, groups + extra negatives
#                                                                            -> scale.txt
#   bench   240   bench_loss.py --device cuda --dtype bfloat16 --sizes 32768,65536 --dims 768
#                 --fields 1 --impls triton,naive,inf_cl,chunked (autotuned)  -> bench_loss.csv
#   extra   opt.  triton_cols and triton_v1 (GCL_TRITON_BACKWARD gemm_cols / split, first
#                 configs) at B = 32768, only if >= 80 s are left             -> bench_loss.csv
#   summary       the table and the targets, from this call's rows           -> summary.md
# Everything is logged to log.txt. Results go to $OUT (set by the device tool; at most 8
# files come back) or benchmarks/results/gpu_first_call/ without it. Afterwards, append the
# rows of bench_loss.csv (minus its header) to benchmarks/results/bench_loss.csv and commit
# them with summary.md (docs/triton_kernel.md, "The GPU run").
#
# Knobs: BUDGET (455 s for the stages before the summary), PYTHON (python3), WORKERS (8),
# STAGES (env,tests,scale,bench,extra: the ones to run; the summary always runs), RUN_ID.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
BUDGET="${BUDGET:-455}"
WORKERS="${WORKERS:-8}"
RES="${OUT:-$ROOT/benchmarks/results/gpu_first_call}"
mkdir -p "$RES"
RUN_ID="${RUN_ID:-gpu-first-$(date +%Y%m%d-%H%M%S)}"
STAGES=",${STAGES:-env,tests,scale,bench,extra},"
T0=$(date +%s)
exec > >(tee -a "$RES/log.txt") 2>&1
export PYTHONPATH="$ROOT:$ROOT/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
STATUS=()

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
log() { printf '\n=== [%s, %4ss used, %4ss left] %s\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - T0 ))" "$(left)" "$*"; }

# run_stage NAME MAX RESERVE FUNCTION: runs FUNCTION under min(MAX, left - RESERVE) seconds,
# RESERVE being what the later stages need at least; skipped when under 15 s remain for it.
run_stage() {
    local name=$1 max=$2 reserve=$3 fn=$4 limit rc
    if [[ "$STAGES" != *",$name,"* ]]; then
        STATUS+=("$name: not selected")
        return 0
    fi
    limit=$(( $(left) - reserve ))
    (( limit > max )) && limit=$max
    if (( limit < 15 )); then
        log "stage $name SKIPPED (only ${limit}s left for it)"
        STATUS+=("$name: skipped, no time left")
        return 0
    fi
    log "stage $name (limit ${limit}s)"
    LIMIT=$limit "$fn"
    rc=$?
    if (( rc == 124 || rc == 137 )); then
        STATUS+=("$name: stopped at its ${limit}s limit")
    elif (( rc != 0 )); then
        STATUS+=("$name: exit code $rc")
    else
        STATUS+=("$name: ok")
    fi
    log "stage $name done (exit code $rc)"
}

stage_env() {
    timeout -k 5 "$LIMIT" bash -c '
        echo "run_id: '"$RUN_ID"'"
        echo "date: $(date -Is)"
        echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo -) ($(git status --porcelain 2>/dev/null | wc -l) changed files)"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>&1
        mkdir -p .gpu_deps
        '"$PYTHON"' -c "import inf_cl" 2>/dev/null && echo "inf_cl: already importable" || \
            '"$PYTHON"' -m pip install --no-deps --no-index --quiet --target .gpu_deps benchmarks/wheels/inf_cl-*.whl
        '"$PYTHON"' - <<EOF
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
p = torch.cuda.get_device_properties(0)
print("device", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs", f"{p.total_memory / 2**30:.1f} GiB")
import triton
print("triton", triton.__version__)
for mod in ("inf_cl", "tqdm", "numpy", "pytest", "xdist"):
    try:
        __import__(mod)
        print(mod, "ok")
    except Exception as e:
        print(mod, "missing:", type(e).__name__, e)
EOF
    ' 2>&1 | tee "$RES/env.txt"
    return "${PIPESTATUS[0]}"
}

# pytest-xdist is on the GPU image; without it the tests run in one process
xdist() { "$PYTHON" -c "import xdist" 2>/dev/null && echo "-n $1"; }

stage_tests() {
    # -v: each result is printed as it finishes, so a stage cut at its limit still says
    # which tests passed
    timeout -k 10 "$LIMIT" "$PYTHON" -m pytest -v -p no:cacheprovider -m gpu $(xdist "$WORKERS") -rfEs \
        --durations=15 tests/kernels/test_gcl_loss_triton.py tests/kernels/test_gcl_loss.py \
        2>&1 | tee "$RES/tests.txt"
    return "${PIPESTATUS[0]}"
}

stage_scale() {
    : > "$RES/scale.txt"
    GCL_SCALE_LOG="$RES/scale.txt" timeout -k 10 "$LIMIT" "$PYTHON" -m pytest -q -p no:cacheprovider \
        -m gpu $(xdist 4) -rfEs tests/kernels/test_triton_scale.py 2>&1 | tail -n 40
    return "${PIPESTATUS[0]}"
}

stage_bench() {
    timeout -k 20 "$LIMIT" "$PYTHON" benchmarks/bench_loss.py --device cuda --dtype bfloat16 \
        --sizes 32768,65536 --dims 768 --fields 1 --impls triton,naive,inf_cl,chunked \
        --repeats 5 --max-seconds 6 --time-budget $(( LIMIT - 45 )) --resume "$RUN_ID" \
        --out "$RES/bench_loss.csv"
}

stage_extra() {
    GCL_TRITON_AUTOTUNE=0 timeout -k 20 "$LIMIT" "$PYTHON" benchmarks/bench_loss.py --device cuda \
        --dtype bfloat16 --sizes 32768 --dims 768 --fields 1 --impls triton_cols,triton_v1 \
        --repeats 3 --max-seconds 4 --time-budget $(( LIMIT - 40 )) --resume "$RUN_ID" \
        --out "$RES/bench_loss.csv"
}

stage_summary() {
    RES="$RES" RUN_ID="$RUN_ID" STAGES="$(printf '%s\n' "${STATUS[@]}")" timeout -k 5 "$LIMIT" "$PYTHON" - <<'EOF'
import csv, os, re

res, run_id = os.environ["RES"], os.environ["RUN_ID"]
rows = []
path = os.path.join(res, "bench_loss.csv")
if os.path.exists(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["run_id"] == run_id]

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

full = {}
for r in rows:
    if r["mode"] == "full":
        full.setdefault(int(r["B"]), {})[r["impl"]] = r
def ok(b, impl):
    r = full.get(b, {}).get(impl)
    return r if r is not None and r["status"].startswith("ok") else None

impls = [i for i in ("triton", "triton_cols", "triton_v1", "naive", "inf_cl", "chunked")
         if any(i in v for v in full.values())]
out = [f"# GPU first call {run_id}", ""]
if rows:
    r0 = rows[0]
    rate = None
    t = next((r for r in rows if r["impl"].startswith("triton") and num(r["frac_bf16_matmul"])), None)
    if t:
        rate = num(t["tflops"]) / num(t["frac_bf16_matmul"])
    out += [f"torch {r0['torch']}, triton {r0['triton']}, git {r0['git']}; bf16 matmul rate measured in "
            f"this run (torch.matmul 8192^3): {rate:.0f} TFLOP/s" if rate else "", "",
            f"command: `{r0['command']}`", "",
            "Forward + backward, D = 768, F = 1, bf16: median ms (min-max), extra peak MiB; "
            "TFLOP/s counts 8 B B_R D.", "",
            "| B | " + " | ".join(impls) + " | triton TFLOP/s | of matmul rate | x naive | x Inf-CL | x chunked |",
            "|" + "---|" * (len(impls) + 6)]
    for b in sorted(full):
        cells = []
        for i in impls:
            r = full[b].get(i)
            if r is None:
                cells.append("")
            elif r["status"].startswith("ok"):
                cells.append(f"{num(r['median_ms']):.1f} ({num(r['min_ms']):.1f}-{num(r['max_ms']):.1f}), "
                             f"{num(r['extra_peak_mb']):.0f} MiB")
            else:
                cells.append(r["status"][:50])
        t = ok(b, "triton")
        def x(o):
            r = ok(b, o)
            return f"{num(r['median_ms']) / num(t['median_ms']):.2f}" if (t and r) else ""
        cells += [f"{num(t['tflops']):.0f}" if t else "", f"{num(t['frac_bf16_matmul']):.2f}" if t else "",
                  x("naive"), x("inf_cl"), x("chunked")]
        out.append(f"| {b} | " + " | ".join(cells) + " |")

out += ["", "## Targets (B >= 16k, D = 768, bf16)", ""]
def verdict(cond):
    return "met" if cond else "NOT met"
for b in sorted(full):
    t = ok(b, "triton")
    if not t:
        out.append(f"- B={b}: triton did not run ({full[b].get('triton', {}).get('status', 'no row')})")
        continue
    f = num(t["frac_bf16_matmul"])
    out.append(f"- B={b}: >= 60% of the bf16 matmul rate: {f:.0%} -> {verdict(f >= 0.6)}")
    n, c = ok(b, "naive"), ok(b, "inf_cl")
    if n:
        v = num(n["median_ms"]) / num(t["median_ms"])
        out.append(f"- B={b}: >= 3x the naive bf16 loss: {v:.2f}x -> {verdict(v >= 3)}")
    if c:
        v = num(c["median_ms"]) / num(t["median_ms"])
        out.append(f"- B={b}: >= 2x Inf-CL: {v:.2f}x -> {verdict(v >= 2)}")
    if b >= 65536:
        extra = num(t["extra_peak_mb"])
        if n and num(n["extra_peak_mb"]):
            base, how = num(n["extra_peak_mb"]), "the naive loss's measured extra memory"
        else:
            base, how = 3 * 2 * b * b / 2**20, "a lower bound for the naive loss (three bf16 B x B matrices)"
        out.append(f"- B={b}: extra memory <= 1% of {how}: {extra:.0f} / {base:.0f} MiB = {extra / base:.2%} "
                   f"-> {verdict(extra <= 0.01 * base)}")
    for other in ("triton_cols", "triton_v1"):
        o = ok(b, other)
        if o:
            out.append(f"- B={b}: {other} / triton time: {num(o['median_ms']) / num(t['median_ms']):.2f} "
                       f"(extra {num(o['extra_peak_mb']):.0f} MiB)")

out += ["", "## Correctness", ""]
tests = os.path.join(res, "tests.txt")
if os.path.exists(tests):
    text = open(tests).read()
    passed, failed = len(re.findall(r" PASSED", text)), len(re.findall(r" FAILED", text))
    last = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed)\b.* in ", ln)]
    out.append(f"- GPU tests: {passed} passed, {failed} failed" + (f" ({last[-1].strip('= ')})" if last else
                                                                    " (stage cut before the end)"))
    out += [f"  - {ln.strip()}" for ln in text.splitlines() if ln.startswith("FAILED")][:20]
scale = os.path.join(res, "scale.txt")
if os.path.exists(scale):
    out += ["- scale check (relative errors against the float64-accumulated reference):"]
    out += [f"  - {ln.strip()}" for ln in open(scale) if ln.strip()]
out += ["", "## Stages", ""] + [f"- {s}" for s in os.environ.get("STAGES", "").splitlines() if s]
text = "\n".join(out) + "\n"
with open(os.path.join(res, "summary.md"), "w") as f:
    f.write(text)
print(text)
EOF
}

log "GPU first call $RUN_ID, budget ${BUDGET}s, results in $RES"
# reserves: what the later stages need at least (scale 60, bench 170, summary 20)
run_stage env 40 400 stage_env
run_stage tests 200 250 stage_tests
run_stage scale 90 190 stage_scale
run_stage bench 240 20 stage_bench
if (( $(left) >= 80 )); then
    run_stage extra 120 20 stage_extra
elif [[ "$STAGES" == *",extra,"* ]]; then
    STATUS+=("extra: skipped ($(left)s left, needs 80)")
fi
log "stage summary"
LIMIT=20 stage_summary
log "done: $(printf '%s; ' "${STATUS[@]}")"
