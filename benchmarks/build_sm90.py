"""Offline Hopper build report for the Triton GCL kernels: registers, spill and tensor-core use.

Builds each kernel of `gcl_kernels.ops.triton_gcl` for sm_90 with the installed Triton's
compiler and bundled ptxas, on any machine (no GPU needed), and reads the cubin with
Triton's bundled cuobjdump: registers per thread, stack bytes (spill), and the number of
HGMMA (warpgroup tensor-core) instructions in the SASS. A config that spills hundreds of
bytes is a candidate to drop before spending GPU time autotuning it; whether a few bytes
of spill cost time only a GPU run can say.

    python benchmarks/build_sm90.py                          # first config of each kernel, 1x1 and 2x2+groups
    python benchmarks/build_sm90.py --all-configs            # every autotune config
    python benchmarks/build_sm90.py --dtype fp32 --fields 1x1 --kernels dx --json
    PYTHONPATH=/path/to/triton-3.6 python benchmarks/build_sm90.py --all-configs   # another Triton

Prints a table and appends one CSV row per build to benchmarks/results/build_sm90.csv
(Triton version, machine, git revision, command, timestamp); --json prints one JSON line
(`RESULT {...}`) instead and writes no CSV (the tests use that).
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
           "python", "git", "command"]
KERNELS = ("fwd", "merge", "dx", "dy", "fused")
_PTR = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _flags(f_l: int, f_r: int, dtype: str, groups: bool) -> dict:
    import triton

    return dict(F_L=f_l, F_R=f_r, F_LP=triton.next_power_of_2(f_l), F_RP=triton.next_power_of_2(f_r),
                HAS_ROW=True, HAS_COL=True, HAS_LG=groups, HAS_RG=groups, CAST_F32=False,
                PRECISION="ieee" if dtype == "fp32" else "tf32")


def _tiles(cfg, fl: dict) -> dict:
    c = dict(cfg.kwargs)
    c["BM"], c["BN"] = c["TILE_M"] // fl["F_LP"], c["TILE_N"] // fl["F_RP"]
    return c


def _spec(kernel: str, dtype: str, fl: dict):
    """(jit function, signature, extra constexprs, config list) of one kernel."""
    import gcl_kernels.ops.triton_gcl as tg

    p = _PTR[dtype]
    scal = {n: "i32" for n in ("B", "B_R", "N_COLS", "D", "stride_xf", "stride_yf")}
    grads = {"x_ptr": p, "y_ptr": p, "scale_ptr": "*fp32", "gout_ptr": "*fp32", "lg_ptr": "*i64",
             "rg_ptr": "*i64", "rbias_ptr": "*fp32", "cbias_ptr": "*fp32", "dcoef_ptr": "*fp32"}
    if kernel == "fwd":
        sig = {"x_ptr": p, "y_ptr": p, "scale_ptr": "*fp32", "lg_ptr": "*i64", "rg_ptr": "*i64",
               "rowpart_ptr": "*fp32", "colpart_ptr": "*fp32", **scal, "G": "i32",
               "GROUP_ROWS": "i32", "GROUP_COLS": "i32"}
        return tg._gcl_fwd_stats_kernel, sig, {}, tg._FWD_CONFIGS
    if kernel == "merge":
        sig = {n: "*fp32" for n in ("x_ptr", "y_ptr", "scale_ptr", "rowpart_ptr", "colpart_ptr",
                                     "rw_ptr", "cw_ptr", "a_ptr", "rbias_ptr", "cbias_ptr",
                                     "dcoef_ptr", "loss_ptr")}
        sig.update(x_ptr=p, y_ptr=p, B="i32", B_R="i32", D="i32", G="i32", C="i32")
        pp = fl["F_LP"] * fl["F_RP"]
        # the launcher's fixed shape (no autotuning): see triton_gcl._forward
        consts = dict(PP=pp, BLOCK=32, BK=max(16, min(256, 8192 // (pp * 32))))
        return tg._gcl_fwd_merge_kernel, sig, consts, None
    if kernel in ("dx", "fused"):
        sig = {**grads, "dx_ptr": p, "dsrow_ptr": "*fp32", "dyacc_ptr": "*fp32", **scal}
        cfgs = tg._DX_CONFIGS if kernel == "dx" else tg._FUSED_CONFIGS
        return tg._gcl_bwd_dx_kernel, sig, {"FUSE_DY": kernel == "fused"}, cfgs
    if kernel == "dy":
        return tg._gcl_bwd_dy_kernel, {**grads, "dy_ptr": p, **scal}, {}, tg._DY_CONFIGS
    raise ValueError(f"--kernels: unknown kernel {kernel!r}; choose from {KERNELS}")


def build_one(fn, sig: dict, consts: dict, warps: int, stages: int) -> dict:
    """Compile for sm_90 and read registers, stack bytes and HGMMA count from the cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(sig)
    consts = {k: v for k, v in consts.items() if k in fn.arg_names}  # flags a kernel lacks
    for k in consts:
        sig[k] = "constexpr"
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=warps, num_stages=stages))
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    return dict(regs=int(re.search(r"REG:(\d+)", res).group(1)),
                spill_bytes=int(re.search(r"STACK:(\d+)", res).group(1)),
                hgmma=sass.count("HGMMA"))


def run(kernels, dtype: str, fields, groups_opts, all_configs: bool):
    rows = []
    for f_l, f_r in fields:
        for groups in groups_opts:
            fl = _flags(f_l, f_r, dtype, groups)
            for kernel in kernels:
                fn, sig, extra, cfgs = _spec(kernel, dtype, fl)
                if cfgs is None:
                    entries = [(dict(extra), 4, 1, {})]
                else:
                    entries = [({**extra, **_tiles(c, fl)}, c.num_warps, c.num_stages, c.kwargs)
                               for c in (cfgs if all_configs else cfgs[:1])]
                for consts, warps, stages, kw in entries:
                    row = dict(kernel=kernel, dtype=dtype, fields=f"{f_l}x{f_r}", groups=groups,
                               tile_m=kw.get("TILE_M", ""), tile_n=kw.get("TILE_N", ""),
                               bk=kw.get("BK", consts.get("BK", "")), d_out=kw.get("D_OUT", ""),
                               warps=warps, stages=stages)
                    try:
                        row.update(build_one(fn, sig, {**fl, **consts}, warps, stages), status="ok")
                    except Exception as e:  # a config the compiler refuses is a result too
                        row.update(regs="", spill_bytes="", hgmma="",
                                   status=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default=",".join(KERNELS), help=f"comma list from {KERNELS}")
    ap.add_argument("--dtype", default="bf16", choices=sorted(_PTR))
    ap.add_argument("--fields", default="1x1,2x2", help="comma list of F_LxF_R, e.g. 1x1,2x3")
    ap.add_argument("--groups", default="auto", choices=("auto", "yes", "no"),
                    help="group masks: auto = without for 1x1, with for the others")
    ap.add_argument("--all-configs", action="store_true", help="every autotune config, not the first")
    ap.add_argument("--json", action="store_true", help="print RESULT {json} and write no CSV")
    a = ap.parse_args(argv)
    kernels = [k.strip() for k in a.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS]
    if bad:
        raise SystemExit(f"--kernels: unknown {bad}; choose from {list(KERNELS)}")
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
        rows += run(kernels, a.dtype, [(f_l, f_r)], groups, a.all_configs)
    if a.json:
        print("RESULT " + json.dumps(rows))
        return 0 if all(r["status"] == "ok" for r in rows) else 1

    print(f"sm_90 builds with Triton {triton.__version__} (python {platform.python_version()}, "
          f"git {git_revision() or '-'})")
    hdr = f"{'kernel':6} {'dtype':5} {'F':4} {'grp':4} {'tile':9} {'BK':>3} {'D_OUT':>5} {'w,s':>4} " \
          f"{'regs':>4} {'spill':>5} {'HGMMA':>5}  status"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        tile = f"{r['tile_m']}x{r['tile_n']}" if r["tile_m"] != "" else "-"
        print(f"{r['kernel']:6} {r['dtype']:5} {r['fields']:4} {'yes' if r['groups'] else 'no':4} {tile:9} "
              f"{r['bk']!s:>3} {r['d_out']!s:>5} {r['warps']},{r['stages']:<2} {r['regs']!s:>4} "
              f"{r['spill_bytes']!s:>5} {r['hgmma']!s:>5}  {r['status']}")
    meta = dict(timestamp=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                triton=triton.__version__, python=platform.python_version(),
                git=git_revision() or "-", command=command_line(argv, start=ROOT))
    n = append_csv(RESULTS, COLUMNS, [{**meta, **r} for r in rows])
    print(f"appended {n} rows to {RESULTS}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
