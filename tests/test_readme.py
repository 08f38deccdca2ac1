"""Every code block of README.md runs as written: python blocks with this interpreter,
bash blocks with bash, in order, in one scratch directory (the README's commands build on
each other: data, then training, then evaluation and search). A block that cannot run
here carries the comment `<!-- not run by tests/test_readme.py: REASON -->` right before
its fence, and the reason must say why."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (.+?) -->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


def readme_blocks(path=os.path.join(ROOT, "README.md")):
    """[(language, code, skip reason or None, line)] for every fenced block."""
    lines = open(path, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1) != "":
            lang, start = m.group(1), i
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            prev = lines[start - 1] if start else ""
            skip = SKIP.match(prev)
            blocks.append((lang, "\n".join(lines[start + 1:j]), skip.group(1) if skip else None, start + 1))
            i = j + 1
        elif m:  # a fence without a language: plain text (a listing), never code
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            i = j + 1
        else:
            i += 1
    return blocks


def test_every_block_is_run_or_says_why_not():
    blocks = readme_blocks()
    assert any(lang == "bash" and not skip for lang, _, skip, _ in blocks)
    for lang, code, skip, line in blocks:
        assert lang in ("python", "bash"), f"README.md:{line}: a ```{lang} block; tag code python or bash"
        if skip is not None:
            assert len(skip.split()) >= 3, f"README.md:{line}: say why the block cannot run here"


def test_readme_runs_as_written(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg")
    ran = 0
    for lang, code, skip, line in readme_blocks():
        if skip is not None:
            continue
        cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (f"README.md:{line} ({lang}) failed with {proc.returncode}:\n{code}\n"
                                      f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-5000:]}")
        ran += 1
    assert ran >= 8
    # what the commands promise is there
    assert (tmp_path / "runs" / "gcl" / "model.pt").is_file()
    assert (tmp_path / "runs" / "gcl" / "eval" / "metrics.json").is_file()
    assert (tmp_path / "runs" / "ddp" / "model.pt").is_file() and (tmp_path / "runs" / "cached" / "model.pt").is_file()
    assert (tmp_path / "runs" / "minilm" / "eval" / "metrics.json").is_file()
