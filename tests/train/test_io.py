"""gcl_train.fileio: the one atomic writer behind checkpoints, reports and data files (the Qdrant
plugin has its own, tested in tests/qdrant/test_qdrant_io.py)."""
import json
import os

import pytest

from gcl_train import fileio
from gcl_train.fileio import atomic_write, atomic_write_json


class Boom(Exception):
    pass


def test_text_write_creates_parents_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a" / "b" / "out.csv"
    got = atomic_write(path, lambda f: f.write("x,y\r\n1,2\r\n"))
    assert got == str(path)
    assert path.read_bytes() == b"x,y\r\n1,2\r\n"  # newline="": csv line ends kept as written
    assert os.listdir(path.parent) == ["out.csv"]


def test_binary_write(tmp_path):
    path = tmp_path / "blob.bin"
    atomic_write(str(path), lambda f: f.write(bytes(range(256))), binary=True)
    assert path.read_bytes() == bytes(range(256))


def test_temp_file_is_in_the_same_directory_and_old_file_stays_readable_until_replace(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("old")
    seen = {}

    def write(f):
        f.write("new")
        f.flush()
        seen["listing"] = sorted(os.listdir(tmp_path))
        seen["during"] = path.read_text()

    atomic_write(path, write)
    temps = [n for n in seen["listing"] if n != "state.json"]
    assert len(temps) == 1 and temps[0].startswith(".state.json.") and temps[0].endswith(".tmp")
    assert seen["during"] == "old"
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["state.json"]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("durable", [False, True])
@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt])
def test_error_mid_write_keeps_old_file_and_removes_temp(tmp_path, binary, durable, exc):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old contents")

    def write(f):
        f.write(b"half of the new" if binary else "half of the new")
        f.flush()
        raise exc("disk full")

    with pytest.raises(exc, match="disk full"):
        atomic_write(path, write, binary=binary, durable=durable)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_error_on_a_new_path_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        atomic_write(tmp_path / "new.txt", lambda f: (f.write("partial"), (_ for _ in ()).throw(Boom())))
    assert os.listdir(tmp_path) == []


def test_durable_fsyncs_file_and_directory(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    atomic_write(tmp_path / "x", lambda f: f.write("1"))
    assert calls == []
    atomic_write(tmp_path / "x", lambda f: f.write("2"), durable=True)
    assert len(calls) == 2  # the file before the rename, the directory after it
    assert (tmp_path / "x").read_text() == "2"


def test_json_format_and_trailing_newline(tmp_path):
    path = tmp_path / "cfg.json"
    atomic_write_json(path, {"b": 1, "a": [1, 2]}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    atomic_write_json(path, {"p": tmp_path}, default=str)
    assert json.loads(path.read_text()) == {"p": str(tmp_path)}


def test_json_that_cannot_be_encoded_leaves_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["summary.json"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(path="x", write="not callable"), r"write: expected a callable taking the open file, got str"),
    (dict(path=None, write=print), r"path: expected a str or os.PathLike, got NoneType"),
    (dict(path="", write=print), r"path: expected a file path, got ''"),
    (dict(path="some/dir/", write=print), r"path: expected a file path, got 'some/dir/'"),
    (dict(path=b"x", write=print), r"path: expected a file path, got b'x'"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        atomic_write(**kwargs)


def test_checkpoint_save_failure_keeps_previous_checkpoint(tmp_path):
    import torch

    from gcl_train.models import atomic_torch_save

    path = tmp_path / "ck.pt"
    atomic_torch_save({"w": torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise Boom("cannot pickle")

    with pytest.raises(Boom):
        atomic_torch_save({"w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.pt"]
