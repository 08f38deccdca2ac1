"""gcl-eval: options from EvalConfig, help text, exit codes, --resume with checkpoints (issues 10, 14)."""
import json
import os
import sys
import types

import pytest

import gcl_train
from gcl_train.cli.eval import build_parser, main
from gcl_train.data.synthetic import write_dataset
from gcl_train.evaluation import CSV_QUERIES, EvalConfig, RandomEncoder

FAST = ["--right-keys", "['title']", "--img-or-txt", "[['txt'], ['txt']]", "--top-k", "20", "--quiet"]


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs_cli")
    write_dataset(str(root), n_queries=60, n_products=200, docs_per_query=20, seed=2, image_size=8, progress=False)
    return str(root)


def test_help_shows_each_default_once_and_cites_the_docs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "GCL_SPEC" not in text and "docs/evaluation.md" in text and "docs/method.md" in text
    parser = build_parser()
    no_default = {a for g in parser._mutually_exclusive_groups if g.required for a in g._group_actions}
    with_default = [a for a in parser._actions
                    if a.option_strings and a.nargs != 0 and not a.required and a not in no_default]
    assert len(with_default) > 15
    for action in parser._actions:
        assert action.help.count("(default:") == (action in with_default), action.option_strings
    assert text.count("(default:") == len(with_default)


def test_defaults_and_choices_come_from_eval_config():
    parser = build_parser()
    by_flag = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    d = EvalConfig()
    assert by_flag["--gt"].default == d.ground_truth == "csv"
    assert tuple(by_flag["--gt"].choices) == ("csv", "test", "dev")
    assert by_flag["--top-q"].default is d.n_queries is None
    assert f"{CSV_QUERIES} with --gt csv" in by_flag["--top-q"].help
    for flag, field in (("--top-k", "top_k"), ("--seed", "seed"), ("--batch-size", "batch_size"),
                        ("--weight-key", "weight_key"), ("--doc-block", "doc_block"), ("--dtype", "dtype")):
        assert by_flag[flag].default == getattr(d, field), flag


@pytest.mark.parametrize("args", [
    ["--ks", "0,5"], ["--ks", "abc"], ["--ks", "10,50"],  # 50 > --top-k 20
    ["--top-k", "0"], ["--top-q", "0"], ["--batch-size", "-3"], ["--gt", "train"], ["--dtype", "int8"],
    ["--splits", "in_domain,nope"], ["--splits", ","], ["--img-or-txt", "[['txt']]"],
    ["--right-keys", "title"],  # kinds needed
])
def test_wrong_command_lines_exit_2_before_any_work(gs, tmp_path, args, capsys):
    out = str(tmp_path / "ev")
    with pytest.raises(SystemExit) as e:
        main([gs, "--out", out, "--model", "random", "--quiet", "--top-k", "20"] + args)
    assert e.value.code == 2
    assert "gcl-eval: error:" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_out_that_is_a_file_exits_2(gs, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        main([gs, "--out", str(f), "--model", "random"] + FAST)
    assert e.value.code == 2


def test_failures_during_the_run_exit_1(gs, tmp_path, capsys):
    out = str(tmp_path / "ev")
    assert main([str(tmp_path / "nowhere"), "--out", out, "--model", "random"] + FAST) == 1
    assert main([gs, "--out", out, "--embeddings", str(tmp_path / "none")] + FAST) == 1
    err = capsys.readouterr().err
    assert err.count("gcl-eval: error:") == 2 and "Traceback" not in err
    # a table missing queries: a KeyError, printed without repr quotes
    emb = tmp_path / "emb"
    emb.mkdir()
    from gcl_train.evaluation import EmbeddingTable

    EmbeddingTable(["x"], RandomEncoder(4)(["x"], "txt")).save(str(emb), "queries")
    assert main([gs, "--out", out, "--embeddings", str(emb), "--splits", "in_domain"] + FAST) == 1
    assert "error: queries:" in capsys.readouterr().err


def test_no_progress_is_quiet_and_the_run_is_labelled(gs, tmp_path, capsys):
    out = str(tmp_path / "ev")
    assert main([gs, "--out", out, "--model", "random", "--splits", "zero_shot", "--no-progress"] + FAST[:-1]) == 0
    printed = capsys.readouterr()
    assert "zero_shot" in printed.out and "metrics.csv" in printed.out
    payload = json.load(open(os.path.join(out, "metrics.json")))
    assert payload["label"] == "random (chance baseline)"
    assert payload["config"]["ground_truth"] == "csv" and payload["config"]["n_queries"] is None
    assert payload["splits"]["query_1_product_id_1"]["gt_source"] == "csv"
    assert payload["config"]["ks"][-1] == 20


@pytest.fixture
def fake_models(monkeypatch):
    """gcl_train.models stand-in: a checkpoint file holds the RandomEncoder seed."""
    mod = types.ModuleType("gcl_train.models")

    class Encoder:
        @staticmethod
        def from_checkpoint(path, device="cpu", batch_size=256, progress=True):
            return RandomEncoder(16, seed=int(open(path).read()))

    mod.Encoder = Encoder
    monkeypatch.setitem(sys.modules, "gcl_train.models", mod)
    monkeypatch.setattr(gcl_train, "models", mod, raising=False)
    return mod


def test_resume_with_another_checkpoint_recomputes(gs, tmp_path, fake_models):
    out, ck = str(tmp_path / "ev"), tmp_path / "model.pt"
    args = [gs, "--out", out, "--checkpoint", str(ck), "--splits", "in_domain,novel_query"] + FAST
    ck.write_text("1")
    assert main(args) == 0
    first = json.load(open(os.path.join(out, "metrics.json")))
    assert first["label"] == str(ck)
    ck.write_text("2")  # the same path, another model
    assert main(args + ["--resume"]) == 0
    resumed = json.load(open(os.path.join(out, "metrics.json")))
    fresh_out = str(tmp_path / "fresh")
    assert main([gs, "--out", fresh_out] + args[3:]) == 0
    fresh = json.load(open(os.path.join(fresh_out, "metrics.json")))
    for split in ("query_0_product_id_0", "query_1_product_id_0"):
        assert resumed["splits"][split]["metrics"] == fresh["splits"][split]["metrics"]
        assert resumed["splits"][split]["metrics"] != first["splits"][split]["metrics"]
        assert not resumed["splits"][split]["reused"]
    # the same checkpoint again: everything reused
    assert main(args + ["--resume"]) == 0
    again = json.load(open(os.path.join(out, "metrics.json")))
    assert all(again["splits"][s]["reused"] for s in again["splits"])


def test_resume_save_runs_on_finished_splits_writes_runs(gs, tmp_path):
    out = str(tmp_path / "ev")
    args = [gs, "--out", out, "--model", "random", "--splits", "in_domain"] + FAST
    assert main(args) == 0
    assert main(args + ["--resume", "--save-runs"]) == 0
    run = json.load(open(os.path.join(out, "runs", "query_0_product_id_0.json")))
    assert len(run) > 0 and all(len(v) == 20 for v in run.values())
