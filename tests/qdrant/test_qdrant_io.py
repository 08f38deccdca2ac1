"""qdrant_plugin._io: the plugin's own atomic JSON writer (standard library only), JSON reads
that name the file they could not parse, and the layering rule: the library imports
nothing from the training application."""

import ast
import errno
import os
import subprocess
import sys

import pytest

from qdrant_plugin import CorruptFileError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLUGIN = os.path.join(ROOT, "qdrant_plugin")
# The CLI is being split (model-aware commands move to gcl_train); the library is everything else.
APP_MODULES = {"cli.py"}


def test_qdrant_store_json_keeps_its_format_and_is_durable(tmp_path, monkeypatch):
    from qdrant_plugin import _io
    from qdrant_plugin._io import atomic_write_json as store_write, read_json

    calls = []
    real = os.fsync
    monkeypatch.setattr(_io.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    path = tmp_path / "store" / "schema.json"
    store_write(str(path), {"z": 1, "a": 2})
    assert path.read_text() == '{\n "a": 2,\n "z": 1\n}\n'
    assert read_json(str(path)) == {"a": 2, "z": 1} and len(calls) == 2


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    from qdrant_plugin import _io

    path = tmp_path / "marker.json"
    _io.atomic_write_json(str(path), {"v": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        _io.atomic_write_json(str(path), {"v": 2})
    monkeypatch.undo()
    with pytest.raises(TypeError):
        _io.atomic_write_json(str(path), {"v": {1, 2}})  # not JSON: nothing is touched
    assert _io.read_json(str(path)) == {"v": 1}
    assert os.listdir(tmp_path) == ["marker.json"]


@pytest.mark.parametrize("content, match", [
    (b'{"format": "gcl-qdrant-ingest", "batch', r"is not valid JSON \(.*line 1 column 33.*truncated"),
    (b"", r"is empty"),
    (b"  \n", r"is empty"),
    (b'{"a": "\xff"}', r"is not UTF-8 text"),
])
def test_unreadable_json_names_the_file(tmp_path, content, match):
    from qdrant_plugin._io import read_json

    path = tmp_path / "x.json"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=match) as e:
        read_json(str(path), what="the test file", recover="delete it")
    assert str(path) in str(e.value) and "the test file" in str(e.value) and str(e.value).endswith("delete it")
    assert isinstance(e.value, ValueError)
    assert read_json(str(tmp_path / "absent.json")) is None


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_the_library_imports_nothing_from_the_training_app():
    offenders = []
    for dirpath, _, files in os.walk(PLUGIN):
        for f in files:
            if not f.endswith(".py") or (dirpath == PLUGIN and f in APP_MODULES):
                continue
            path = os.path.join(dirpath, f)
            offenders += [f"{os.path.relpath(path, ROOT)}: {m}" for m in _imports(path)
                          if m == "gcl_train" or m.startswith("gcl_train.")]
    assert offenders == []
    # and at run time: importing every library module pulls in no gcl_train module
    mods = ["qdrant_plugin", "qdrant_plugin.ingest", "qdrant_plugin.retriever", "qdrant_plugin.synth",
            "qdrant_plugin.backends.edge", "qdrant_plugin.backends.client", "qdrant_plugin._io"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gcl_train'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
