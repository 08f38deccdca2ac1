"""gcl_train.training and the gcl-train entry point: batches, loss glue, schedule, smoke runs, resume."""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from gcl_train.cli.train import main  # noqa: E402
from gcl_train.models import create_model, load_checkpoint  # noqa: E402
from gcl_train.training import (  # noqa: E402
    Example,
    TrainConfig,
    build_optimizer,
    compute_loss,
    cosine_schedule,
    embed,
    loss_module,
    make_batch,
    prefetched,
    shuffled,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("gs") / "tiny_gs"
    write_dataset(str(root), n_queries=20, n_products=200, docs_per_query=20, seed=0, image_size=32,
                  progress=False)
    return str(root)


@pytest.fixture(scope="module")
def tiny():
    return create_model("tiny", seed=0)


def _args(data_root, out, *extra):
    return ["--data", data_root, "--out", str(out), "--model", "tiny", "--batch-size", "32",
            "--warmup", "2", "--lr", "1e-3", "--no-progress", "--threads", "1", *extra]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ---------------------------------------------------------------------------------------- pieces

def test_shuffled_is_a_deterministic_bounded_permutation():
    items = list(range(100))
    a = list(shuffled(items, 10, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(shuffled(items, 10, random.Random(1)))
    assert a != list(shuffled(items, 10, random.Random(2)))
    # a buffer of one keeps the order; a bounded buffer cannot move an item far forward
    assert list(shuffled(items, 1, random.Random(0))) == items
    assert all(pos >= item - 10 for pos, item in enumerate(a))


def test_prefetched_keeps_order_propagates_errors_and_stops_early():
    import threading

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = prefetched(failing())
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    it = prefetched(endless(), depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # the producer thread stops instead of running on
    assert not any(t.name == "gcl-prefetch" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2


def test_cosine_schedule_warmup_then_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = cosine_schedule(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:]))  # monotone decay
    halfway = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10))
    assert lrs[9] == pytest.approx(halfway)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)  # ends at min_lr_ratio * lr


def test_optimizer_excludes_gains_biases_and_logit_scale_from_decay(tiny):
    opt = build_optimizer(tiny.model, 1e-3, 0.2)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(tiny.model.logit_scale) in no_decay
    assert id(tiny.model.text_projection) not in no_decay
    assert all(p.ndim >= 2 for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])


class _Images:
    """A stand-in dataset: images are solid colours; 'bad' fails to load; counts loads."""

    def __init__(self):
        self.loads = 0

    def load_image(self, value):
        from PIL import Image

        self.loads += 1
        if value == "bad":
            raise OSError("unreadable")
        return Image.new("RGB", (32, 32), (int(value), 0, 0))


def _ex(q, qid, pid, title, image, score):
    return Example(q, qid, pid, title, image, score)


def test_make_batch_groups_presence_and_drops(tiny):
    exs = [
        _ex("red dress", "q1", "p1", "red dress a", "10", 100),
        _ex("red dress", "q1", "p2", None, "20", 90),        # no title: image only
        _ex("blue shoe", "q2", "p1", "blue shoe b", "bad", 80),  # unreadable image: title only
        _ex("blue shoe", "q2", "p3", None, None, 70),        # nothing usable: dropped
    ]
    ds = _Images()
    b = make_batch(exs, tiny, ds, {"title": 0.1, "image": 0.9})
    assert len(b) == 3 and b.n_dropped == 1
    assert b.present.tolist() == [[True, True], [False, True], [True, False]]
    assert b.lhs_groups.tolist() == [0, 0, 1] and b.rhs_groups.tolist() == [0, 1, 0]
    assert b.scores.tolist() == [100, 90, 80]
    assert b.query_tokens.shape == (3, 32) and b.images.shape == (3, 3, 32, 32)
    # a zero-weight field is never read
    ds2 = _Images()
    b2 = make_batch(exs[:3], tiny, ds2, {"title": 1.0, "image": 0.0})
    assert ds2.loads == 0 and len(b2) == 2 and b2.present[:, 1].sum() == 0


def test_ce_baseline_loss_equals_open_clip_clip_loss(tiny, data_root):
    """weight_fn constant, no groups, one fused document vector: exactly CLIP's loss."""
    from open_clip import ClipLoss

    exs = [_ex(f"query {i}", f"q{i}", f"p{i}", f"title {i}", str(10 * i), 50 + i) for i in range(6)]
    b = make_batch(exs, tiny, _Images(), {"title": 0.1, "image": 0.9})
    cfg = TrainConfig(data=data_root, out="unused", weight_fn="constant", use_groups=False)
    model = tiny.model
    with torch.no_grad():
        got = compute_loss(model, b, loss_module(model, 100.0, **cfg.loss_options()), cfg.field_weights,
                           cfg.field_mode, cfg.use_groups)
        q, docs = embed(model, b, cfg.field_weights, cfg.field_mode)
        want = ClipLoss()(q, docs, model.logit_scale.exp())
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # with weights from the scores the loss changes (and stays finite)
    cfg_gcl = TrainConfig(data=data_root, out="unused", weight_fn="linear", use_groups=False)
    with torch.no_grad():
        gcl = compute_loss(model, b, loss_module(model, 100.0, **cfg_gcl.loss_options()), cfg_gcl.field_weights,
                           cfg_gcl.field_mode, cfg_gcl.use_groups)
    assert math.isfinite(float(gcl)) and float(gcl) != pytest.approx(float(want), rel=1e-3)


def test_loss_module_shares_the_models_logit_scale(tiny, data_root):
    """One scale: GCLLoss.scale() reads the model's Parameter, clamped at max_logit_scale."""
    model = create_model("tiny", seed=0).model
    cfg = TrainConfig(data=data_root, out="unused", max_logit_scale=50.0, use_groups=False)
    loss_fn = loss_module(model, 100.0, **cfg.loss_options())
    assert loss_fn.logit_scale is model.logit_scale
    assert float(loss_fn.scale().detach()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(80.0))  # what a training step might do
    assert float(loss_fn.scale().detach()) == pytest.approx(50.0)  # clamped on use
    with torch.no_grad():
        model.logit_scale.fill_(math.log(20.0))
    exs = [_ex(f"query {i}", f"q{i}", f"p{i}", f"title {i}", str(10 * i), 50 + i) for i in range(4)]
    b = make_batch(exs, tiny, _Images(), {"title": 0.5, "image": 0.5})
    model.zero_grad()
    compute_loss(model, b, loss_fn, cfg.field_weights, cfg.field_mode, cfg.use_groups).backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad) != 0.0


@pytest.mark.parametrize("kw, match", [
    ({"field_mode": "max"}, "field_mode"),
    ({"batch_size": 1}, "batch_size"),
    ({"weight_fn": "cubic"}, "weight_fn"),
    ({"weight_fn": "power"}, "weight_fn"),  # power needs gamma
    ({"field_weights": {"title": 0.0, "image": 0.0}}, "field_weights"),
    ({"lr": 0.0}, "lr"),
    ({"split": "nope"}, "split"),
    ({"score_column": "position"}, "score_column"),
    ({"resume": "sometimes"}, "resume"),
    ({"lock_image": True, "lock_text": True}, "lock_image"),
])
def test_config_validation(data_root, kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(data=data_root, out="x", **kw).validate()


def test_config_needs_a_data_directory(tmp_path):
    with pytest.raises(ValueError, match="data"):
        TrainConfig(data=str(tmp_path / "absent"), out="x").validate()


# ---------------------------------------------------------------------------------------- entry point

def test_smoke_train_eval_checkpoint_and_encoder(data_root, tmp_path):
    out = tmp_path / "run"
    rc = main(_args(data_root, out, "--epochs", "4", "--eval-splits", "in_domain", "--eval-queries", "8"))
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == summary["total_steps"]
    losses = summary["epoch_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1, losses  # it learns
    assert (out / "model.pt").is_file() and len(list((out / "checkpoints").glob("step_*.pt"))) == 1
    ev = summary["evals"][-1]["metrics"]["query_0_product_id_0"]
    assert 0 <= ev["ndcg@10"] <= 1 and (out / "eval").is_dir()
    log_lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert any("lr" in r and "pairs_per_s" in r for r in log_lines)
    # the final model loads with no network and encodes
    ck = load_checkpoint(out / "model.pt")
    assert ck.extra["config"]["weight_fn"] == "linear" and ck.extra["step"] == summary["step"]
    from gcl_train.models import Encoder

    v = Encoder(ck.bundle)(["red dress"], "txt")
    assert v.shape == (1, 32) and abs(np.linalg.norm(v) - 1) < 1e-5
    # a finished run is not trained again
    mtime = (out / "model.pt").stat().st_mtime_ns
    assert main(_args(data_root, out, "--epochs", "4")) == 0
    assert (out / "model.pt").stat().st_mtime_ns == mtime


def test_resume_after_stop_is_bit_exact(data_root, tmp_path):
    common = ("--epochs", "2", "--shuffle-buffer", "50", "--weight-fn", "reciprocal")
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert main(_args(data_root, full, *common)) == 0
    assert main(_args(data_root, parts, *common, "--stop-after", "3")) == 0
    s = json.loads((parts / "summary.json").read_text())
    assert not s["finished"] and s["step"] == 3 and not (parts / "model.pt").exists()
    assert main(_args(data_root, parts, *common, "--stop-after", "4")) == 0  # crosses an epoch
    assert main(_args(data_root, parts, *common)) == 0
    a, b = _state(full / "model.pt"), _state(parts / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((parts / "summary.json").read_text())
    assert sa["epoch_losses"] == sb["epoch_losses"] and sb["resumed_from"]


def test_pairs_mode_and_frozen_image_tower(data_root, tmp_path):
    out = tmp_path / "pairs"
    assert main(_args(data_root, out, "--max-steps", "3", "--field-mode", "pairs", "--lock-image",
                      "--field-weights", "title=0.5,image=0.5")) == 0
    init = create_model("tiny", seed=0).model.state_dict()
    trained = _state(out / "model.pt")
    assert all(torch.equal(trained[k], init[k]) for k in init if k.startswith("visual."))
    assert not torch.equal(trained["text_projection"], init["text_projection"])


def test_cli_bad_input(data_root, tmp_path, capsys):
    assert main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "data" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--data", data_root, "--out", str(tmp_path / "o"), "--field-weights", "title"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["--data", data_root, "--out", str(tmp_path / "o"), "--weight-fn", "cubic"])
    # a run directory from another setup is not resumed into
    out = tmp_path / "r"
    assert main(_args(data_root, out, "--max-steps", "2", "--stop-after", "1")) == 0
    assert main(_args(data_root, out, "--max-steps", "2", "--seed", "5")) == 2
    assert "different setup" in capsys.readouterr().err
    assert main(_args(data_root, out, "--max-steps", "2", "--resume", "never")) == 2
    assert os.path.isdir(out / "checkpoints")


def test_demo_comparison_table_and_defaults():
    from types import SimpleNamespace

    from gcl_train import demo

    def report(ndcg):
        r = SimpleNamespace(name="in_domain", n_queries=10, n_docs=100, chance={"ndcg@10": 0.01},
                            metrics={"ndcg@10": ndcg, "err": ndcg / 2, "rbp@0.9": ndcg / 3})
        return SimpleNamespace(results={"query_0_product_id_0": r})

    rows = demo.comparison({"gcl": report(0.3), "ce": report(0.2)})
    assert rows[0]["gcl_ndcg@10"] == 0.3 and rows[0]["ce_ndcg@10"] == 0.2
    assert rows[0]["rel_ndcg@10"] == pytest.approx(0.5) and rows[0]["rel_err"] == pytest.approx(0.5)
    table = demo.format_table(rows)
    assert "in_domain" in table and "+50.0%" in table and "0.3000" in table
    args = demo.resolve_args([])
    assert (args.model, args.docs_per_query, args.epochs) == ("tiny", 100, 4)
    quick = demo.resolve_args(["--quick", "--epochs", "2"])
    assert quick.queries == demo.QUICK["queries"] and quick.epochs == 2
