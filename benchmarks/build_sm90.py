"""Offline Hopper build report for the Triton GCL kernels: registers, spill, shared memory,
pipelining and tensor-core use, for the binaries a GPU run will actually build.

Builds each kernel of `gcl_kernels.ops.triton_gcl` / `triton_gemm_backward` for sm_90 with
the installed Triton's compiler and bundled ptxas, on any machine (no GPU needed), with the
runtime specialisation a launch at a representative shape gets: every argument is passed
through Triton's own specialiser (`native_specialize_impl`, what `kernel[grid](...)` calls),
so 16-byte aligned pointers and integers divisible by 16 carry `tt.divisibility = 16` and
integers equal to 1 become constants, exactly as in the JIT. (Without these hints, the first
version of this report, the K loops could not be vectorised or pipelined: not the binaries
that run.) Then it reads the cubin with Triton's bundled cuobjdump:

    regs, spill_bytes   registers per thread, stack bytes (spill)
    shared_bytes        shared memory per program (Triton's metadata)
    hgmma               warpgroup tensor-core instructions (wgmma) in the SASS
    ldgsts, utmaldg     cp.async copies and TMA tensor loads in the SASS: a pipelined K loop
                        shows one of them; plain LDG loads mean an unpipelined loop
    utmastg             TMA tensor stores

    python benchmarks/build_sm90.py                          # first config of each kernel, 1x1 and 2x2+groups
    python benchmarks/build_sm90.py --all-configs            # every autotune config
    python benchmarks/build_sm90.py --kernels ds --shape 65536,65536,768
    python benchmarks/build_sm90.py --dtype fp32 --fields 1x1 --kernels dx --json
    PYTHONPATH=/path/to/triton-3.6 python benchmarks/build_sm90.py --all-configs   # another Triton

Kernels: fwd, merge (forward); ds (the GEMM backward's dS kernel, tensor descriptors),
ds_ptr (the same with block pointers, the path for rows that are not 16-byte aligned);
dx, dy, fused (the v1 backward). The shape (B, B_R, D; default 32768,32768,768, the
headline benchmark) sets the integer arguments and so their divisibility.

Prints a table and appends one CSV row per build to benchmarks/results/build_sm90.csv
(Triton version, machine, git revision, command, timestamp); --json prints one JSON line
(`RESULT {...}`) instead and writes no CSV (the tests use that). Rows written before the
specialisation was added have spec "none" and empty shared/pipelining columns.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (ROOT, HERE):  # the package, and benchmarks/_common.py when imported as a module
    if _p not in sys.path:
        sys.path.insert(0, _p)
from _common import append_csv, check_csv_header, command_line, git_revision  # noqa: E402

os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter

RESULTS = os.path.join(ROOT, "benchmarks", "results", "build_sm90.csv")
COLUMNS = ["timestamp", "kernel", "dtype", "fields", "groups", "tile_m", "tile_n", "bk", "d_out",
           "warps", "stages", "regs", "spill_bytes", "hgmma", "status", "triton",
           "python", "git", "command", "spec", "shared_bytes", "ldgsts", "utmaldg", "utmastg"]
KERNELS = ("fwd", "merge", "ds", "ds_ptr", "dx", "dy", "fused")
_TORCH = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _inputs(f_l, f_r, b, b_r, d, dtype, groups):
    """Canonical inputs at the representative shape, on the CPU (only their addresses,
    dtypes and sizes matter to the specialiser; nothing is computed)."""
    import torch

    from gcl_kernels._validation import GCLInputs

    dt = getattr(torch, _TORCH[dtype])
    x = torch.empty((f_l, b, d), dtype=dt)
    y = torch.empty((f_r, b_r, d), dtype=dt)
    w = torch.full((b,), 0.5 / b)
    lg = torch.zeros(b, dtype=torch.int64) if groups else None
    rg = torch.zeros(b_r, dtype=torch.int64) if groups else None
    return GCLInputs(x, y, torch.tensor(10.0), w, w.clone(), torch.ones(f_l, f_r), lg, rg)


def _launch(kernel: str, inp, tiles: dict):
    """(jit function, {arg name: value}, constexprs, config list) as the launchers pass them."""
    import torch
    import triton

    import gcl_kernels.ops.triton_gcl as tg
    import gcl_kernels.ops.triton_gemm_backward as gb

    f_l, f_r, b, b_r, d = inp.shape
    p = f_l * f_r
    fl = tg._flags(inp)
    fl["CAST_F32"] = False
    f32 = lambda *s: torch.empty(s, dtype=torch.float32)  # noqa: E731
    i64 = lambda n: torch.empty(n, dtype=torch.int64)  # noqa: E731
    n_cols = b_r
    bucket = triton.next_power_of_2(b)
    stats = (f32(p, b), f32(p, b), f32(p, b))
    if kernel == "fwd":
        group_rows, g = tg._groups(b, tg._FWD_ROW_GROUPS, tg._GPU_GROUP_ALIGN)
        group_cols, c = tg._groups(n_cols, tg._FWD_COL_GROUPS, tg._GPU_GROUP_ALIGN)
        vals = [inp.x, inp.y, f32(1), i64(b), i64(b_r), f32(c, p, b), f32(g, p, b), b, b_r, b, n_cols, d,
                b * d, b_r * d, g, group_rows, group_cols, bucket]
        return tg._gcl_fwd_stats_kernel, vals, dict(fl), tg._FWD_CONFIGS, True
    if kernel == "merge":
        pp = fl["F_LP"] * fl["F_RP"]
        group_rows, g = tg._groups(b, tg._FWD_ROW_GROUPS, tg._GPU_GROUP_ALIGN)
        group_cols, c = tg._groups(n_cols, tg._FWD_COL_GROUPS, tg._GPU_GROUP_ALIGN)
        vals = [inp.x, inp.y, f32(1), f32(c, p, b), f32(g, p, b), f32(b), f32(b), f32(f_l, f_r),
                *stats, f32(b), b, b_r, d, g, c]
        consts = dict(F_L=f_l, F_R=f_r, F_LP=fl["F_LP"], F_RP=fl["F_RP"], PP=pp,
                      HAS_ROW=True, HAS_COL=True, BLOCK=32, BK=max(16, min(256, 8192 // (pp * 32))))
        return tg._gcl_fwd_merge_kernel, vals, consts, None, False
    if kernel in ("ds", "ds_ptr"):
        rows = gb.block_length(b, n_cols, p, inp.x.element_size(), torch.device("cpu"))
        cols_pad = gb._round_up(n_cols, 16)
        buf = torch.empty(p * rows * cols_pad, dtype=inp.x.dtype)
        args, consts = gb.ds_launch_args(inp, stats, f32(1), buf, f32(264), 0, rows, 0, n_cols, rows,
                                         cols_pad, kernel == "ds", tiles)
        consts["CAST_F32"] = False
        cfgs = gb._DS_CONFIGS_FP32 if inp.x.dtype == torch.float32 else gb._DS_CONFIGS
        return gb._gcl_ds_kernel, list(args), consts, cfgs, False
    common = [inp.x, inp.y, f32(1), f32(1), f32(1), i64(b), i64(b_r), *stats]
    scal = [b, b_r, b, n_cols, d, b * d, b_r * d, bucket]
    if kernel in ("dx", "fused"):
        vals = common + [torch.empty_like(inp.x), f32(f_l, b), f32(1)] + scal
        cfgs = tg._DX_CONFIGS if kernel == "dx" else tg._FUSED_CONFIGS
        return tg._gcl_bwd_dx_kernel, vals, dict(fl, FUSE_DY=kernel == "fused"), cfgs, True
    if kernel == "dy":
        vals = common + [torch.empty_like(inp.y)] + scal
        return tg._gcl_bwd_dy_kernel, vals, dict(fl), tg._DY_CONFIGS, True
    raise ValueError(f"--kernels: unknown kernel {kernel!r}; choose from {KERNELS}")


def _specialise(fn, vals: list, consts: dict):
    """signature, constexprs and attrs as `JITFunction.run` builds them for these arguments."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    sig, constexprs, attrs = {}, {}, {}
    it = iter(vals)
    for i, kp in enumerate(fn.params):
        name = kp.name
        if kp.is_constexpr:
            if name not in consts:
                raise KeyError(f"{fn.__name__}: constexpr {name} not given")
            sig[name] = "constexpr"
            constexprs[(i,)] = consts[name]
            continue
        val = next(it)
        ty, attr = native_specialize_impl(CUDABackend, val, False, not kp.do_not_specialize,
                                          not kp.do_not_specialize_on_alignment)
        sig[name] = ty
        if ty == "constexpr":  # an integer equal to 1
            constexprs[(i,)] = attr
        elif isinstance(attr, str) and "D" in attr:
            attrs[(i,)] = [["tt.divisibility", 16]]
    rest = list(it)
    if rest:
        raise ValueError(f"{fn.__name__}: {len(rest)} arguments left over")
    return sig, constexprs, attrs


def build_one(fn, vals: list, consts: dict, warps: int, stages: int) -> dict:
    """Compile for sm_90 and read registers, stack, shared memory and instruction counts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # flags a kernel lacks
    sig, constexprs, attrs = _specialise(fn, vals, consts)
    k = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    meta = k.metadata
    shared = meta.get("shared") if isinstance(meta, dict) else getattr(meta, "shared", None)
    return dict(regs=int(re.search(r"REG:(\d+)", res).group(1)),
                spill_bytes=int(re.search(r"STACK:(\d+)", res).group(1)),
                hgmma=sass.count("HGMMA"), shared_bytes=shared, ldgsts=sass.count("LDGSTS"),
                utmaldg=sass.count("UTMALDG"), utmastg=sass.count("UTMASTG"), spec="runtime")


def run(kernels, dtype: str, fields, groups_opts, all_configs: bool, shape):
    b, b_r, d = shape
    rows = []
    for f_l, f_r in fields:
        for groups in groups_opts:
            inp = _inputs(f_l, f_r, b, b_r, d, dtype, groups)
            for kernel in kernels:
                fn, vals, consts, cfgs, per_field = _launch(kernel, inp, None)
                if cfgs is None:
                    entries = [(consts, 4, 1, {}, vals)]
                else:
                    entries = []
                    for c in (cfgs if all_configs else cfgs[:1]):
                        kw = dict(c.kwargs)
                        if per_field:  # the v1 kernels' rows / columns per field
                            kw["BM"], kw["BN"] = kw["TILE_M"] // consts["F_LP"], kw["TILE_N"] // consts["F_RP"]
                        if kernel == "ds":  # descriptors carry the config's block shapes
                            _, vals_c, _, _, _ = _launch(kernel, inp, kw)
                        else:
                            vals_c = vals
                        entries.append(({**consts, **kw}, c.num_warps, c.num_stages, c.kwargs, vals_c))
                for cst, warps, stages, kw, vals_c in entries:
                    row = dict(kernel=kernel, dtype=dtype, fields=f"{f_l}x{f_r}", groups=groups,
                               tile_m=kw.get("TILE_M", kw.get("BM", "")), tile_n=kw.get("TILE_N", kw.get("BN", "")),
                               bk=kw.get("BK", cst.get("BK", "")), d_out=kw.get("D_OUT", ""),
                               warps=warps, stages=stages)
                    try:
                        row.update(build_one(fn, vals_c, cst, warps, stages), status="ok")
                    except Exception as e:  # a config the compiler refuses is a result too
                        row.update(regs="", spill_bytes="", hgmma="", shared_bytes="", ldgsts="",
                                   utmaldg="", utmastg="", spec="runtime",
                                   status=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
                    rows.append(row)
    return rows


def _parse_fields(text: str):
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d)x(\d)\s*", part)
        if not m or not (1 <= int(m.group(1)) <= 4 and 1 <= int(m.group(2)) <= 4):
            raise SystemExit(f"--fields: expected a comma list like 1x1,2x3 (1..4 per side), got {text!r}")
        out.append((int(m.group(1)), int(m.group(2))))
    return out


def _parse_shape(text: str):
    try:
        b, b_r, d = (int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"--shape: expected B,B_R,D, got {text!r}")
    if not (1 <= b <= b_r) or d < 1:
        raise SystemExit(f"--shape: expected 1 <= B <= B_R and D >= 1, got {text!r}")
    return b, b_r, d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list from {KERNELS}")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_TORCH))
    ap.add_argument("--fields", default="1x1,2x2", help="comma list of F_LxF_R, e.g. 1x1,2x3")
    ap.add_argument("--groups", default="auto", choices=("auto", "yes", "no"),
                    help="group masks: auto = without for 1x1, with for the others")
    ap.add_argument("--shape", default="32768,32768,768",
                    help="B,B_R,D of the launch whose specialisation is built")
    ap.add_argument("--all-configs", action="store_true", help="every autotune config, not the first")
    ap.add_argument("--json", action="store_true", help="print RESULT {json} and write no CSV")
    a = ap.parse_args(argv)
    kernels = [k.strip() for k in a.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS]
    if bad:
        raise SystemExit(f"--kernels: unknown {bad}; choose from {list(KERNELS)}")
    shape = _parse_shape(a.shape)
    try:
        import triton
        import triton.backends.nvidia  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"needs Triton with its NVIDIA backend: {e}")

    if not a.json:
        check_csv_header(RESULTS, COLUMNS)
    rows = []
    for f_l, f_r in _parse_fields(a.fields):
        groups = {"yes": [True], "no": [False]}.get(a.groups, [(f_l, f_r) != (1, 1)])
        rows += run(kernels, a.dtype, [(f_l, f_r)], groups, a.all_configs, shape)
    if a.json:
        print("RESULT " + json.dumps(rows))
        return 0 if all(r["status"] == "ok" for r in rows) else 1

    print(f"sm_90 builds with Triton {triton.__version__} (python {platform.python_version()}, "
          f"git {git_revision() or '-'}), specialised for B,B_R,D = {a.shape}")
    hdr = (f"{'kernel':6} {'dtype':5} {'F':4} {'grp':4} {'tile':9} {'BK':>3} {'D_OUT':>5} {'w,s':>4} "
           f"{'regs':>4} {'spill':>5} {'smem KB':>7} {'HGMMA':>5} {'cp.async':>8} {'TMA ld/st':>9}  status")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tile = f"{r['tile_m']}x{r['tile_n']}" if r["tile_m"] != "" else "-"
        smem = f"{r['shared_bytes'] / 1024:.0f}" if isinstance(r.get("shared_bytes"), int) else "-"
        tma = f"{r['utmaldg']}/{r['utmastg']}" if r.get("utmaldg") != "" else "-"
        print(f"{r['kernel']:6} {r['dtype']:5} {r['fields']:4} {'yes' if r['groups'] else 'no':4} {tile:9} "
              f"{r['bk']!s:>3} {r['d_out']!s:>5} {r['warps']},{r['stages']:<2} {r['regs']!s:>4} "
              f"{r['spill_bytes']!s:>5} {smem:>7} {r['hgmma']!s:>5} {r['ldgsts']!s:>8} {tma:>9}  {r['status']}")
    meta = dict(timestamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                triton=triton.__version__, python=platform.python_version(),
                git=git_revision() or "-", command=command_line(argv, start=ROOT))
    n = append_csv(RESULTS, COLUMNS, [{**meta, **r} for r in rows])
    print(f"appended {n} rows to {RESULTS}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
