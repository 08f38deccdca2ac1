"""gcl_train.evaluation under hostile inputs: each either works correctly or fails loudly
with a message that names the problem (never a silent wrong number, lost data or a hang)."""
import csv
import glob
import json
import os
import time

import numpy as np
import pytest

from gcl_train.data import FieldSpec
from gcl_train.data.errors import DataFormatError
from gcl_train.evaluation import (
    EmbeddingTable,
    EvalConfig,
    RandomEncoder,
    evaluate,
    evaluate_split,
    load_embeddings,
)

TITLE = (FieldSpec("title", "txt", 1.0),)
CFG = EvalConfig(right=TITLE, n_queries=-1, ks=(1, 5, 10), top_k=10, batch_size=8)
SPLIT = "query_0_product_id_0"


def tiny(root, n_docs=30, n_queries=12, per_query=5, titles=True, gt=None):
    """corpus_1 + the in-domain split CSV (+ a gt_test file) with titles only."""
    os.makedirs(root, exist_ok=True)
    docs = {f"p{i}": {"title": f"product {i}" if titles else None} for i in range(n_docs)}
    json.dump(docs, open(os.path.join(root, "corpus_1.json"), "w"))
    with open(os.path.join(root, SPLIT + ".csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "product_id", "score_linear"])
        for q in range(n_queries):
            for j in range(per_query):
                w.writerow([f"query {q}", f"p{(3 * q + j) % n_docs}", 100 - 10 * j])
    if gt is not None:
        json.dump(gt, open(os.path.join(root, SPLIT + "_gt_test.json"), "w"))
    return str(root)


class Oracle:
    def __init__(self, qrels):
        self.qrels = qrels

    def search(self, qv, k):
        keys = list(self.qrels)
        ids = [[d for d, _ in sorted(self.qrels[q].items(), key=lambda t: -t[1])][:k] for q in keys]
        return ids, np.array([[float(k - i) for i in range(k)] for _ in keys])


# 1
def test_an_empty_gt_file_is_an_error_not_zero_metrics(tmp_path):
    root = tiny(tmp_path / "d", gt={})
    with pytest.raises(DataFormatError, match="no test queries"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8),
                       config=EvalConfig(right=TITLE, ground_truth="test", top_k=10, ks=(1,)), progress=False)


# 2
def test_a_split_csv_with_only_a_header_is_an_error(tmp_path):
    root = tiny(tmp_path / "d", n_queries=0)
    with pytest.raises(DataFormatError, match="no usable rows"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False)


# 3
def test_a_corpus_without_usable_documents_is_an_error(tmp_path):
    root = tiny(tmp_path / "d", titles=False)
    with pytest.raises(DataFormatError, match=r"no usable documents to search \(30 without any usable field\)"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False)


# 4
def test_an_empty_corpus_file_is_an_error(tmp_path):
    root = tiny(tmp_path / "d")
    json.dump({}, open(os.path.join(root, "corpus_1.json"), "w"))
    with pytest.raises(DataFormatError, match="no usable documents"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False)


# 5
def test_nan_rows_in_a_precomputed_corpus_table_are_refused(tmp_path):
    root = tiny(tmp_path / "d")
    vec = np.ones((30, 4), np.float32)
    vec[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"corpus_1.*2 of 30 rows hold NaN"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(4), config=CFG, progress=False,
                       embeddings={"corpus_1": ([f"p{i}" for i in range(30)], vec)})


# 6
def test_nan_query_vectors_are_refused_and_zero_ones_retrieve_nothing(tmp_path):
    root = tiny(tmp_path / "d")
    keys = [f"query {q}" for q in range(12)]
    qv = RandomEncoder(8)(keys, "txt")
    qv[0] = np.nan
    with pytest.raises(ValueError, match="1 of the 12 test queries have NaN"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False,
                       embeddings={"queries": (keys, qv)})
    qv[0] = 0.0
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False,
                         embeddings={"queries": (keys, qv)})
    assert res.run["query 0"] == {} and any("1 queries had no usable field" in n for n in res.notes)


# 7
def test_duplicate_ids_in_a_table_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"1 repeats, e.g. \['a'\]"):
        EmbeddingTable(["a", "b", "a"], np.zeros((3, 2), np.float32))
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "corpus_1.npy", np.zeros((2, 2), np.float32))
    json.dump(["p1", "p1"], open(d / "corpus_1.ids.json", "w"))
    with pytest.raises(DataFormatError, match="repeats"):
        load_embeddings(str(d))


# 8
def test_gt_documents_unknown_to_the_corpus_are_counted(tmp_path):
    gt = {"query 0": {"p0": 100, "nope-1": 50}, "query 1": {"nope-2": 100}}
    root = tiny(tmp_path / "d", gt=gt)
    cfg = EvalConfig(right=TITLE, ground_truth="test", ks=(1, 5, 10), top_k=10)
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=cfg, progress=False,
                         retriever=Oracle(gt))
    assert res.n_gt_docs_not_in_corpus == 2
    assert any("2 ground-truth documents are not in the index" in n for n in res.notes)


# 9
def test_k_larger_than_the_corpus(tmp_path):
    root = tiny(tmp_path / "d", n_docs=8, per_query=3)
    cfg = EvalConfig(right=TITLE, n_queries=-1, ks=(1, 5, 10, 100), top_k=1000)
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=cfg, progress=False)
    assert res.n_docs == 8 and all(len(r) == 8 for r in res.run.values())
    assert res.metrics["recall@100"] == pytest.approx(1.0)  # everything retrieved
    assert res.chance["recall@100"] == pytest.approx(1.0) and np.isfinite(list(res.metrics.values())).all()


# 10, 11
def test_a_run_killed_mid_embedding_then_resumed(tmp_path):
    root = tiny(tmp_path / "d", n_docs=60)
    out = str(tmp_path / "ev")
    calls = {"n": 0}

    def dies(values, kind):
        calls["n"] += 1
        if calls["n"] > 4:  # a few corpus batches in
            raise KeyboardInterrupt
        return RandomEncoder(8)(values, kind)

    with pytest.raises(KeyboardInterrupt):
        evaluate(root, ["in_domain"], encoder=dies, config=CFG, out_dir=out, progress=False, encoder_id="a")
    emb = os.path.join(out, "embeddings")
    assert not glob.glob(os.path.join(emb, ".corpus_1.*"))  # the writer cleaned up after itself
    assert os.path.isfile(os.path.join(out, "qrels", SPLIT + ".meta.json"))  # ground truth kept for the resume
    # what a SIGKILL leaves: a raw temp file, and a table of an older run without its marker
    stale = os.path.join(emb, ".corpus_1.abc.raw")
    open(stale, "wb").write(b"\0" * 64)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    EmbeddingTable([f"p{i}" for i in range(60)], np.ones((60, 8), np.float32)).save(emb, "corpus_1")
    resumed = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                       resume=True, encoder_id="a")
    fresh = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, progress=False)
    assert resumed.results[SPLIT].metrics == fresh.results[SPLIT].metrics
    assert not os.path.exists(stale)
    assert not np.allclose(load_embeddings(emb)["corpus_1"].vectors, 1.0)


# 12
def test_a_corrupt_split_json_is_recomputed_not_fatal(tmp_path):
    root = tiny(tmp_path / "d")
    out = str(tmp_path / "ev")
    first = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                     encoder_id="a")
    path = os.path.join(out, "splits", SPLIT + ".json")
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    again = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                     resume=True, encoder_id="a")
    assert again.results[SPLIT].metrics == first.results[SPLIT].metrics and not again.results[SPLIT].reused


# 13
def test_a_cached_table_changed_after_it_was_written_is_not_reused(tmp_path):
    root = tiny(tmp_path / "d")
    out = str(tmp_path / "ev")
    first = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                     encoder_id="a")
    os.remove(os.path.join(out, "splits", SPLIT + ".json"))
    emb = os.path.join(out, "embeddings")
    t = load_embeddings(emb)["corpus_1"]
    EmbeddingTable(t.ids, np.array(t.vectors)[::-1].copy()).save(emb, "corpus_1")  # someone else's vectors
    again = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                     resume=True, encoder_id="a")
    assert again.results[SPLIT].metrics == first.results[SPLIT].metrics
    # a truncated .npy with its marker intact: recomputed as well
    os.remove(os.path.join(out, "splits", SPLIT + ".json"))
    npy = os.path.join(emb, "corpus_1.npy")
    data = open(npy, "rb").read()
    open(npy, "wb").write(data[:100])
    again = evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, out_dir=out, progress=False,
                     resume=True, encoder_id="a")
    assert again.results[SPLIT].metrics == first.results[SPLIT].metrics


# 14, 15
@pytest.mark.parametrize("scores,match", [
    (lambda q, k: np.full((q, k), np.nan), "NaN or infinite scores"),
    (lambda q, k: np.zeros((q, 1)), "has 3 ids but 1 scores"),
    (lambda q, k: np.zeros((q + 1, 3)), r"scores \[Q="),
])
def test_a_retriever_with_bad_scores_is_refused(tmp_path, scores, match):
    root = tiny(tmp_path / "d")

    def retr(qv, k):
        return [["p0", "p1", "p2"]] * qv.shape[0], scores(qv.shape[0], 3)

    with pytest.raises(ValueError, match=match):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, retriever=retr, progress=False)


# 16
def test_an_empty_or_repeated_split_list(tmp_path):
    root = tiny(tmp_path / "d")
    with pytest.raises(ValueError, match="splits: expected"):
        evaluate(root, [], encoder=RandomEncoder(8), config=CFG, progress=False)
    r = evaluate(root, ["in_domain", SPLIT], encoder=RandomEncoder(8), config=CFG, progress=False)
    assert list(r.results) == [SPLIT]


# 17
def test_encoder_dimension_differs_from_a_precomputed_corpus(tmp_path):
    root = tiny(tmp_path / "d")
    with pytest.raises(ValueError, match=r"query_vectors: expected \[Q, D=4\]"):
        evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False,
                       embeddings={"corpus_1": ([f"p{i}" for i in range(30)], np.eye(30, 4, dtype=np.float32))})


# 18
def test_bad_encoder_id_and_ks(tmp_path):
    root = tiny(tmp_path / "d")
    with pytest.raises(ValueError, match="encoder_id"):
        evaluate(root, ["in_domain"], encoder=RandomEncoder(8), config=CFG, progress=False, encoder_id=3)
    with pytest.raises(ValueError, match="ks: expected positive int"):
        EvalConfig(ks=(1, 2.5)).validate()
    with pytest.raises(ValueError, match="ks: expected positive int"):
        EvalConfig(ks=(True,)).validate()


# 19
def test_a_row_whose_query_is_missing_is_left_out_and_noted(tmp_path):
    root = tiny(tmp_path / "d")
    with open(os.path.join(root, SPLIT + ".csv"), "a", newline="") as f:
        csv.writer(f).writerow(["NaN", "p1", 100])
    res = evaluate_split(root, "in_domain", encoder=RandomEncoder(8), config=CFG, progress=False)
    assert res.n_queries == 12 and "NaN" not in res.run
    assert any("left out 1 rows" in n and "'query'" in n for n in res.notes)


# 20
def test_a_truncated_or_pickled_npy_is_a_data_error(tmp_path):
    d = tmp_path / "emb"
    d.mkdir()
    np.save(d / "corpus_1.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    json.dump(["p1"], open(d / "corpus_1.ids.json", "w"))
    with pytest.raises(DataFormatError, match="not a readable .npy"):
        load_embeddings(str(d))
