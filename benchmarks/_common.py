"""What every benchmark script records next to its numbers, and how it appends them.

Each script (`bench_loss.py`, `bench_metrics.py`, ...) keeps its own CSV columns; this
module gives the values they share: the CPU model and core count, the load average, the
versions of named packages, the git revision, the exact command line, and an atomic CSV
append that refuses to add rows under a header with other columns.

Imported by the scripts as `from _common import ...` (the script's own directory is on
sys.path when it is run as `python benchmarks/<name>.py`). Standard library only, apart
from `gcl_train.fileio` (itself standard library only).
"""
from __future__ import annotations

import csv
import importlib
import io
import os
import platform
import shlex
import subprocess
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from gcl_train.fileio import atomic_write

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def cpu_model() -> str:
    """The "model name" line of /proc/cpuinfo, else `platform.processor()`, else "?"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine() -> Dict[str, str]:
    """{"cpu": model, "cores": os.cpu_count() as text, "python": version}."""
    return {"cpu": cpu_model(), "cores": str(os.cpu_count()), "python": platform.python_version()}


def loadavg() -> str:
    """The 1/5/15-minute load averages as "0.51/0.89/1.40" ("?" where unavailable)."""
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def proc_status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (Linux): "VmRSS" resident now, "VmHWM" its peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Start a new peak-RSS window: VmHWM is reset to the current VmRSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def package_versions(packages: Mapping[str, str]) -> Dict[str, str]:
    """Versions by CSV column: {column: name} -> {column: version, or "-" if not installed}.

    A name that is a module path ("torch", "numpy") is imported and its `__version__`
    read: torch's carries the build tag (2.14.1+cu130) that the distribution metadata
    drops. A name with a dash ("pytrec-eval-terrier") is looked up as a distribution.

    Example:
        >>> package_versions({"numpy": "numpy", "pytrec_eval": "pytrec-eval-terrier"})  # doctest: +SKIP
        {'numpy': '2.4.6', 'pytrec_eval': '0.5.11'}
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for column, name in packages.items():
        v = None
        if name.replace(".", "").replace("_", "").isalnum():
            try:
                v = getattr(importlib.import_module(name), "__version__", None)
            except Exception:  # a broken optional install (triton without a driver) counts as absent
                v = None
        if not isinstance(v, str):
            try:
                v = version(name)
            except (PackageNotFoundError, ValueError):
                v = None
        out[column] = str(v) if v else "-"
    return out


def git_revision(dirty: bool = False) -> Optional[str]:
    """The short commit of the checkout (`git rev-parse --short HEAD`); with dirty=True
    `git describe --always --dirty`, which adds "-dirty" for uncommitted changes. None
    when git or the repository is not there."""
    cmd = ["git", "describe", "--always", "--dirty"] if dirty else ["git", "rev-parse", "--short", "HEAD"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def command_line(argv: Optional[Sequence[str]] = None, start: Optional[str] = None) -> str:
    """The command as typed, shell-quoted: the script path relative to `start` (default:
    the working directory) followed by `argv` (default: sys.argv[1:])."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], start)] + args)


def check_csv_header(path: str, columns: Sequence[str]) -> None:
    """Raise ValueError if `path` exists with a header other than `columns`.

    Call it before a long run so a mismatch is found before the measurements, not
    after them. A missing or empty file passes.
    """
    if not os.path.isfile(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), None)
    if header is not None and header != list(columns):
        raise ValueError(
            f"{path}: its header has the columns {header}, this script writes {list(columns)}; "
            f"move the old file aside or write to another file")


def append_csv(path: str, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> int:
    """Append `rows` to the CSV at `path` atomically (header first when the file is new).

    The old contents plus the new rows go to a temp file that replaces `path`, so an
    interrupted run leaves the file as it was. Keys outside `columns` raise ValueError
    (a misspelt column is a bug, not something to drop); missing keys are written empty.

    Returns:
        The number of rows appended.

    Example:
        >>> append_csv("benchmarks/results/x.csv", ["impl", "ms"], [{"impl": "a", "ms": 1.5}])  # doctest: +SKIP
        1
    """
    check_csv_header(path, columns)
    old = ""
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as f:
            old = f.read()
    if old and not old.endswith("\n"):
        old += "\r\n"  # csv's own line end, so a torn last line does not swallow the first row
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    if not old:
        w.writeheader()
    rows: List[Mapping[str, object]] = list(rows)
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(old + buf.getvalue()))
    return len(rows)
