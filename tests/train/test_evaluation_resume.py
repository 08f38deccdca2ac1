"""gcl_train.evaluation: --resume reuses only what the same producer made (issue 14)."""
import json
import logging
import os
import shutil
import time

import numpy as np
import pytest

from gcl_train.data.synthetic import write_dataset
from gcl_train.evaluation import EvalConfig, RandomEncoder, evaluate, key_mismatch, load_embeddings

CFG = EvalConfig(n_queries=-1, ks=(1, 10, 50), top_k=50, batch_size=128)
SPLITS = ["in_domain", "novel_query"]  # both search corpus_1


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs_resume")
    write_dataset(str(root), n_queries=120, n_products=300, docs_per_query=25, seed=5, image_size=8, progress=False)
    return str(root)


def fresh(gs, seed):
    return evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=seed), config=CFG, progress=False)


def metrics(report):
    return {s: r.metrics for s, r in report.results.items()}


class Counting:
    def __init__(self, enc):
        self.enc, self.calls = enc, 0

    def __call__(self, values, kind):
        self.calls += 1
        return self.enc(values, kind)


def test_resume_with_another_encoder_recomputes_everything(gs, tmp_path, caplog):
    out = str(tmp_path / "ev")
    a = evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=0), config=CFG, out_dir=out, progress=False,
                 encoder_id="model-a")
    with caplog.at_level(logging.INFO, logger="gcl_train.evaluation"):
        b = evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=1), config=CFG, out_dir=out, progress=False,
                     resume=True, encoder_id="model-b")
    assert metrics(b) == metrics(fresh(gs, 1)) != metrics(a)
    assert not any(r.reused for r in b.results.values())
    assert "different corpus.encoder, encoder" in caplog.text  # the log says why
    assert "the cached ones were made with a different encoder" in caplog.text


def test_split_jsons_deleted_never_mix_old_corpus_with_new_queries(gs, tmp_path):
    out = str(tmp_path / "ev")
    evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=0), config=CFG, out_dir=out, progress=False,
             encoder_id="model-a")
    shutil.rmtree(os.path.join(out, "splits"))
    b = evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=1), config=CFG, out_dir=out, progress=False,
                 resume=True, encoder_id="model-b")
    assert metrics(b) == metrics(fresh(gs, 1))
    meta = json.load(open(os.path.join(out, "embeddings", "corpus_1.meta.json")))
    assert meta["key"]["encoder"] == "model-b"


def test_same_producer_reuses_splits_ground_truth_and_corpus(gs, tmp_path):
    out = str(tmp_path / "ev")
    first = evaluate(gs, SPLITS, encoder=RandomEncoder(16, seed=0), config=CFG, out_dir=out, progress=False,
                     encoder_id="model-a")
    enc = Counting(RandomEncoder(16, seed=0))
    again = evaluate(gs, SPLITS, encoder=enc, config=CFG, out_dir=out, progress=False, resume=True,
                     encoder_id="model-a")
    assert enc.calls == 0 and all(r.reused for r in again.results.values())
    assert metrics(again) == metrics(first)
    # without the split JSONs: ground truth and corpus come from the cache, only queries are encoded
    shutil.rmtree(os.path.join(out, "splits"))
    enc = Counting(RandomEncoder(16, seed=0))
    third = evaluate(gs, SPLITS, encoder=enc, config=CFG, out_dir=out, progress=False, resume=True,
                     encoder_id="model-a")
    assert metrics(third) == metrics(first)
    n_queries = sum(r.n_queries for r in first.results.values())
    assert 0 < enc.calls <= -(-n_queries // CFG.batch_size) + len(SPLITS)  # query batches only
    assert third.results["query_0_product_id_0"].n_docs_unusable == first.results["query_0_product_id_0"].n_docs_unusable


def test_a_changed_config_or_data_file_is_not_reused(gs, tmp_path, caplog):
    root = str(tmp_path / "data")
    shutil.copytree(gs, root)
    out = str(tmp_path / "ev")
    evaluate(root, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
             encoder_id="a")
    cfg2 = EvalConfig(n_queries=40, ks=(1, 10, 50), top_k=50, batch_size=128)
    r = evaluate(root, ["in_domain"], encoder=RandomEncoder(16), config=cfg2, out_dir=out, progress=False,
                 resume=True, encoder_id="a")
    assert r.results["query_0_product_id_0"].n_queries == 40 and not r.results["query_0_product_id_0"].reused
    # the split CSV rewritten in place (new mtime): ground truth and split are recomputed
    csv_path = os.path.join(root, "query_0_product_id_0.csv")
    lines = open(csv_path).read().splitlines(True)
    with open(csv_path, "w") as f:
        f.writelines(lines[:-40])
    os.utime(csv_path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with caplog.at_level(logging.INFO, logger="gcl_train.evaluation"):
        r2 = evaluate(root, ["in_domain"], encoder=RandomEncoder(16), config=cfg2, out_dir=out, progress=False,
                      resume=True, encoder_id="a")
    assert not r2.results["query_0_product_id_0"].reused
    assert "ground_truth.data.pairs" in caplog.text


def test_resume_save_runs_writes_the_runs_of_reused_splits(gs, tmp_path):
    out = str(tmp_path / "ev")
    first = evaluate(gs, SPLITS, encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
                     encoder_id="a")
    assert not os.path.exists(os.path.join(out, "runs"))
    again = evaluate(gs, SPLITS, encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
                     resume=True, save_runs=True, encoder_id="a")
    assert metrics(again) == metrics(first)
    for split, r in again.results.items():
        run = json.load(open(os.path.join(out, "runs", split + ".json")))
        assert set(run) == set(first.results[split].qrels) and len(next(iter(run.values()))) == 50
    # a third resume with --save-runs reuses both the split and its saved run
    enc = Counting(RandomEncoder(16))
    third = evaluate(gs, SPLITS, encoder=enc, config=CFG, out_dir=out, progress=False, resume=True,
                     save_runs=True, encoder_id="a")
    assert enc.calls == 0 and all(r.reused for r in third.results.values())


def test_a_run_file_of_another_producer_is_removed(gs, tmp_path):
    out = str(tmp_path / "ev")
    evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
             save_runs=True, encoder_id="a")
    run_path = os.path.join(out, "runs", "query_0_product_id_0.json")
    assert os.path.isfile(run_path)
    evaluate(gs, ["in_domain"], encoder=RandomEncoder(16, seed=3), config=CFG, out_dir=out, progress=False,
             encoder_id="b")
    assert not os.path.exists(run_path)  # it was model a's run; metrics.json is model b's


def test_an_encoder_without_id_is_reused_on_the_callers_word_with_a_warning(gs, tmp_path, caplog):
    out = str(tmp_path / "ev")
    evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False)
    with caplog.at_level(logging.WARNING, logger="gcl_train.evaluation"):
        r = evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
                     resume=True)
    assert r.results["query_0_product_id_0"].reused
    assert "no encoder_id" in caplog.text
    # an id now, none before: not the same producer
    r = evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
                 resume=True, encoder_id="a")
    assert not r.results["query_0_product_id_0"].reused


def test_precomputed_tables_are_keyed_by_their_content(gs, tmp_path):
    out = str(tmp_path / "ev")
    evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), config=CFG, out_dir=out, progress=False,
             encoder_id="a")
    tables = load_embeddings(os.path.join(out, "embeddings"))
    ids, vec = tables["corpus_1"].ids, np.array(tables["corpus_1"].vectors)
    out2 = str(tmp_path / "ev2")
    kw = dict(config=CFG, out_dir=out2, progress=False, encoder_id="a")
    first = evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), embeddings={"corpus_1": (ids, vec)}, **kw)
    rng = np.random.default_rng(0)
    other = rng.normal(size=vec.shape).astype(np.float32)
    second = evaluate(gs, ["in_domain"], encoder=RandomEncoder(16), embeddings={"corpus_1": (ids, other)},
                      resume=True, **kw)
    assert not second.results["query_0_product_id_0"].reused
    assert second.results["query_0_product_id_0"].metrics != first.results["query_0_product_id_0"].metrics


def test_key_mismatch_names_the_parts():
    assert key_mismatch({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 2, "d": 2}}) == ["b.c"]
    assert key_mismatch(None, {"a": 1}) == ["everything (no key recorded)"]
    assert key_mismatch({"a": 1}, {"a": 1}) == []
