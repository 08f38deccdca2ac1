"""gcl-train against faults and bad input (issue 14): nothing hangs, nothing is silently
wrong, nothing half-written is left, and every failure is one line naming the problem."""
from __future__ import annotations

import csv
import errno
import os
import shutil

import pytest
import torch

pytest.importorskip("open_clip")

from gcl_train.cli.train import main  # noqa: E402
from gcl_train.training.state import RunLock  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("gs") / "faults_gs"
    write_dataset(str(root), n_queries=10, n_products=80, docs_per_query=10, seed=2, image_size=16,
                  progress=False)
    return str(root)


def _args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--model", "tiny", "--batch-size", "16", "--warmup", "1",
            "--quiet", "--threads", "1", "--prefetch", "0", *extra]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _copy(data_root, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(data_root, dst)
    return dst


def test_an_epoch_without_a_usable_batch_fails_instead_of_looping(data_root, tmp_path, capsys):
    data = _copy(data_root, tmp_path)
    for p in (data / "images").rglob("*.png"):  # every image unreadable, titles not used
        p.write_bytes(b"not a png")
    rc = main(_args(data, tmp_path / "run", "--field-weights", "image=1,title=0", "--epochs", "3"))
    assert rc == 1
    err = capsys.readouterr().err
    assert "gave no batch with two usable pairs" in err and err.count("\n") <= 8


def _flip_a_weight_byte(path):
    import zipfile

    with zipfile.ZipFile(path) as z:  # the largest stored tensor
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("damage", ["bit flip", "truncated"])
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_resumed(data_root, tmp_path, damage, caplog):
    common = ("--max-steps", "6", "--save-every", "1", "--keep", "3")
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(_args(data_root, full, *common)) == 0
    assert main(_args(data_root, parts, *common, "--stop-after", "4")) == 0
    newest = parts / "checkpoints" / "step_00000004.pt"
    if damage == "bit flip":
        _flip_a_weight_byte(newest)
    else:
        with open(newest, "r+b") as f:
            f.truncate(os.path.getsize(newest) // 2)
    with caplog.at_level("WARNING"):
        assert main(_args(data_root, parts, *common)) == 0
    assert "step_00000004.pt" in caplog.text and "resuming from the previous checkpoint" in caplog.text
    assert "step_00000003.pt" in caplog.text
    a, b = _state(full / "model.pt"), _state(parts / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # step 3 replayed: the same final model, no NaN


def test_a_damaged_checkpoint_given_explicitly_is_refused(data_root, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(_args(data_root, out, "--max-steps", "3", "--save-every", "1", "--stop-after", "2")) == 0
    ck = out / "checkpoints" / "step_00000002.pt"
    _flip_a_weight_byte(ck)
    assert main(_args(data_root, tmp_path / "r2", "--max-steps", "3", "--resume", str(ck))) == 1
    err = capsys.readouterr().err
    assert "is damaged" in err and "tensor(s) differ from what was saved" in err


def test_a_finished_run_with_other_options_is_not_reported_finished(data_root, tmp_path, capsys):
    out = tmp_path / "done"
    assert main(_args(data_root, out, "--max-steps", "2")) == 0
    before = (out / "model.pt").stat().st_mtime_ns
    assert main(_args(data_root, out, "--max-steps", "2", "--lr", "1e-2")) == 2
    err = capsys.readouterr().err
    assert "holds a finished run trained with other options (lr" in err
    assert (out / "model.pt").stat().st_mtime_ns == before
    # options that only change how the run is watched are not a different run
    assert main(_args(data_root, out, "--max-steps", "2", "--log-every", "1")) == 0
    assert (out / "model.pt").stat().st_mtime_ns == before


def test_temp_files_of_a_killed_write_are_removed_and_a_second_writer_refused(data_root, tmp_path, capsys):
    out = tmp_path / "t"
    (out / "checkpoints").mkdir(parents=True)
    stale = [out / "checkpoints" / ".step_00000002.pt.k3j2h1.tmp", out / ".model.pt.x9y8z7.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    lock = RunLock(str(out))
    try:
        assert main(_args(data_root, out, "--max-steps", "1")) == 1
        assert "another gcl-train process is writing to" in capsys.readouterr().err
        assert all(p.exists() for p in stale)  # a live writer's files are not touched
    finally:
        lock.release()
    assert main(_args(data_root, out, "--max-steps", "1")) == 0
    assert not any(p.exists() for p in stale)


@pytest.mark.parametrize("bad", ["-3", "inf", "nan", "plenty"])
def test_bad_scores_stop_at_the_scan_naming_file_and_line(data_root, tmp_path, bad, capsys):
    data = _copy(data_root, tmp_path)
    path = data / "query_0_product_id_0.csv"
    rows = list(csv.reader(open(path, newline="", encoding="utf-8")))
    col = rows[0].index("score_linear")
    rows[5][col] = bad
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    assert main(_args(data, tmp_path / "run", "--max-steps", "2")) == 1
    err = capsys.readouterr().err
    assert "query_0_product_id_0.csv:6:" in err and "score_linear" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_one_line_errors_for_bad_runs(data_root, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(_args(data_root, tmp_path / "afile" / "run", "--max-steps", "1")) == 1
    assert "cannot create the run directory" in capsys.readouterr().err
    assert main(_args(data_root, tmp_path / "lr", "--max-steps", "3", "--lr", "1e30", "--grad-clip", "0")) == 1
    err = capsys.readouterr().err
    assert "made parameter" in err and "non-finite" in err and err.count("\n") == 1
    import pickle

    (tmp_path / "p.pt").write_bytes(pickle.dumps({"weights": object()}))
    assert main(_args(data_root, tmp_path / "pk", "--max-steps", "1", "--pretrained", str(tmp_path / "p.pt"))) == 1
    err = capsys.readouterr().err
    assert "could run code" in err and err.strip().count("\n") == 0


def test_disk_full_while_saving_is_one_line_and_leaves_no_partial_file(data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    real_save = torch.save

    def no_space(obj, f, *a, **k):
        if isinstance(obj, dict) and "train_state" in obj.get("extra", {}):
            raise OSError(errno.ENOSPC, "No space left on device", str(f.name))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", no_space)
    assert main(_args(data_root, out, "--max-steps", "2", "--save-every", "1")) == 1
    err = capsys.readouterr().err
    assert err.startswith("gcl-train: error: No space left on device") and err.count("\n") == 1
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_second_pass_bad_options_name_the_problem(data_root, tmp_path, capsys):
    assert main(_args(data_root, tmp_path / "a", "--s-max", "50", "--max-steps", "1")) == 2
    assert "s_max: 50 is below the largest score_linear" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(_args(data_root, tmp_path / "b", "--field-weights", "title=-1,image=1"))
    assert e.value.code == 2 and "'title' has a negative weight" in capsys.readouterr().err
    assert main(_args(data_root, tmp_path / "c", "--eval-splits", "bogus")) == 2
    assert "eval_splits: split: expected one of" in capsys.readouterr().err
    (tmp_path / "not_a_checkpoint.txt").write_text("hello")
    assert main(_args(data_root, tmp_path / "d", "--resume", str(tmp_path / "not_a_checkpoint.txt"))) == 1
    err = capsys.readouterr().err
    assert "could not be read as a torch file" in err and err.count("\n") == 1
