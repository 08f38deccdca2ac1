"""gcl_train.evaluation: the reference's defaults, noisy splits, the plot, intended-missing
notes, and encode_fields (issues 10 and 14)."""
import csv
import json
import logging
import os
from collections import Counter

import numpy as np
import pytest

from gcl_train.data import DOC_FIELDS, FieldSpec, MarqoGSDataset, fuse_embeddings
from gcl_train.data.synthetic import write_dataset
from gcl_train.evaluation import (
    CSV_QUERIES,
    EncoderProtocol,
    EvalConfig,
    FieldLike,
    RandomEncoder,
    RetrieverProtocol,
    encode_fields,
    encode_records,
    evaluate,
    evaluate_split,
    ndcg_figure,
)

TITLE = (FieldSpec("title", "txt", 1.0),)


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs_protocol")
    write_dataset(str(root), n_queries=100, n_products=400, docs_per_query=20, seed=3, image_size=8, progress=False,
                  missing_title_rate=0.05)
    return str(root)


def write_many_queries(root, n):
    """A tiny data set whose gt_test file holds `n` queries (more than the CSV default sample)."""
    os.makedirs(root, exist_ok=True)
    docs = {f"p{i}": {"title": f"product {i}"} for i in range(7)}
    json.dump(docs, open(os.path.join(root, "corpus_1.json"), "w"))
    gt = {}
    with open(os.path.join(root, "query_0_product_id_0.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "product_id", "score_linear"])
        for q in range(n):
            for j in range(2):
                w.writerow([f"q{q}", f"p{(q + j) % 7}", 100 - 50 * j])
            gt[f"q{q}"] = {f"p{q % 7}": 100, f"p{(q + 1) % 7}": 1}
    json.dump(gt, open(os.path.join(root, "query_0_product_id_0_gt_test.json"), "w"))
    return root


def test_defaults_follow_the_reference_protocol(tmp_path):
    root = write_many_queries(str(tmp_path / "many"), CSV_QUERIES + 37)
    cfg = dict(right=TITLE, ks=(1, 5), top_k=5)
    # default: ground truth rebuilt from the CSV, 2000 queries sampled
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=EvalConfig(**cfg), progress=False)
    assert EvalConfig().ground_truth == "csv" and res.gt_source == "csv" and res.n_queries == CSV_QUERIES
    # a gt file: all of its queries unless n_queries says otherwise
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=EvalConfig(ground_truth="test", **cfg),
                         progress=False)
    assert res.gt_source == "test" and res.n_queries == CSV_QUERIES + 37
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8),
                         config=EvalConfig(ground_truth="test", n_queries=300, **cfg), progress=False)
    assert res.n_queries == 300


def test_noisy_splits_are_flagged_in_the_table_and_json(gs, tmp_path):
    out = str(tmp_path / "ev")
    report = evaluate(gs, ["in_domain", "zero_shot"], encoder=RandomEncoder(8), out_dir=out, progress=False,
                      config=EvalConfig(n_queries=-1, right=TITLE, ks=(1, 10), top_k=10))
    n = {s: r.n_queries for s, r in report.results.items()}
    assert n["query_1_product_id_1"] < 100  # 20 novel queries
    table = report.table()
    assert f"{n['query_1_product_id_1']}*" in table and "* noisy: fewer than 100 test queries" in table
    payload = json.load(open(os.path.join(out, "metrics.json")))
    assert payload["splits"]["query_1_product_id_1"]["noisy"] is True
    assert payload["splits"]["query_0_product_id_0"]["noisy"] is (n["query_0_product_id_0"] < 100)
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert rows[-1]["noisy"] == "1"


def test_plot_names_the_model_fits_the_axis_and_draws_chance(gs, tmp_path):
    report = evaluate(gs, ["in_domain", "novel_corpus"], encoder=RandomEncoder(8), progress=False,
                      config=EvalConfig(n_queries=-1, right=TITLE, ks=(1, 5, 10, 20), top_k=20), label="runs/gcl/model.pt")
    ax = ndcg_figure(report).axes[0]
    title = ax.get_title()
    assert "runs/gcl/model.pt" in title
    for r in report.results.values():
        assert f"{r.name} {r.n_queries}" in title
    values = [r.metrics[f"ndcg@{k}"] for r in report.results.values() for k in (1, 5, 10, 20)]
    values += [r.chance[f"ndcg@{k}"] for r in report.results.values() for k in (1, 5, 10, 20)]
    lo, hi = ax.get_ylim()
    assert lo <= min(values) and hi >= max(values) and hi - lo < 2 * (max(values) - min(values)) + 0.05
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 2  # one chance line per split
    np.testing.assert_allclose(dashed[0].get_ydata(), [report.results["query_0_product_id_0"].chance[f"ndcg@{k}"]
                                                       for k in (1, 5, 10, 20)])
    # two models, two titles
    other = evaluate(gs, ["in_domain"], encoder=RandomEncoder(8), progress=False, label="runs/ce/model.pt",
                     config=EvalConfig(n_queries=-1, right=TITLE, ks=(1, 5), top_k=5))
    assert ndcg_figure(other).axes[0].get_title() != title


def test_intended_missing_fields_are_noted_as_such_at_info(gs, caplog):
    from gcl_train.data.synthetic import intended_missing

    assert intended_missing(gs)["corpus_1"]["title"] > 0
    with caplog.at_level(logging.INFO, logger="gcl_train.evaluation"):
        report = evaluate(gs, ["in_domain"], encoder=RandomEncoder(8), progress=False,
                          config=EvalConfig(n_queries=-1, ks=(1, 10), top_k=10))
    notes = report.results["query_0_product_id_0"].notes
    title_note = [n for n in notes if "missing title" in n]
    assert title_note and title_note[0].endswith("(intended by the synthetic data set)")
    recs = [r for r in caplog.records if "missing title" in r.getMessage()]
    assert recs and all(r.levelno == logging.INFO for r in recs)


def test_absent_images_beyond_the_intended_ones_still_warn(gs, tmp_path, caplog):
    ds = MarqoGSDataset(gs, image_root=str(tmp_path / "nowhere"))  # a wrong image root: every image absent
    with caplog.at_level(logging.INFO, logger="gcl_train.evaluation"):
        report = evaluate(ds, ["in_domain"], encoder=RandomEncoder(8), progress=False,
                          config=EvalConfig(n_queries=-1, ks=(1, 10), top_k=10))
    note = [n for n in report.results["query_0_product_id_0"].notes if "absent image file" in n][0]
    assert "intended by" not in note and "the rest are not intended" in note
    assert any(r.levelno == logging.WARNING and "absent image file" in r.getMessage() for r in caplog.records)


def test_encode_fields_tries_a_fields_keys_in_order(gs):
    ds = MarqoGSDataset(gs)
    image = next(f for f in DOC_FIELDS if f.name == "image")
    assert isinstance(image, FieldLike) and isinstance(FieldSpec("title", "txt"), FieldLike)
    some_png = next(p for p in sorted(os.listdir(os.path.join(gs, "images"))))
    png_bytes = open(os.path.join(gs, "images", some_png), "rb").read()
    recs = [
        {"image_local": "images/" + some_png, "title": "a"},
        {"image_local": "images/absent.png", "image": png_bytes, "title": None},  # falls back to the bytes
        {"image_local": None, "title": "b"},
    ]
    enc = RandomEncoder(8)
    counts = Counter()
    v, present = encode_fields(recs, DOC_FIELDS, enc, ds, counts=counts)
    assert v.shape == (3, 2, 8) and v.dtype == np.float32
    assert present.tolist() == [[True, True], [False, True], [True, False]]
    np.testing.assert_allclose(v[1, 1], v[0, 1])  # the same picture by path and by bytes
    assert not v[1, 0].any() and not v[2, 1].any()
    assert counts == Counter({"missing title": 1, "missing image_local/image": 1})
    # encode_records is encode_fields plus fusion
    specs = (FieldSpec("image_local", "img", 0.9), FieldSpec("title", "txt", 0.1))
    fused, ok = encode_records(recs[:1], specs, enc, ds)
    w = np.array([[0.9, 0.1]])
    np.testing.assert_allclose(fused, fuse_embeddings(encode_fields(recs[:1], specs, enc, ds)[0], w), atol=1e-6)
    assert ok.tolist() == [True]


def test_encode_fields_with_nothing_present():
    v, present = encode_fields([{"title": ""}, {}], [FieldSpec("title", "txt")], RandomEncoder(4))
    assert v.shape == (2, 1, 0) and not present.any()


def test_required_fields_make_a_record_unusable():
    specs = (FieldSpec("title", "txt", 0.5, required=True), FieldSpec("query", "txt", 0.5))
    v, ok = encode_records([{"title": "a", "query": "x"}, {"title": None, "query": "x"}], specs, RandomEncoder(4))
    assert ok.tolist() == [True, False] and not v[1].any()


def test_protocol_classes_describe_the_pieces():
    from gcl_train.evaluation import ExactRetriever

    assert isinstance(RandomEncoder(4), EncoderProtocol)
    assert isinstance(ExactRetriever(["a"], np.ones((1, 2), np.float32)), RetrieverProtocol)
