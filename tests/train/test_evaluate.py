"""gcl_train.evaluation: the protocol end to end on synthetic data, retrieval, outputs, CLI."""
import csv
import json
import os

import numpy as np
import pytest

from gcl_train.cli.eval import main as cli_main
from gcl_train.data import FieldSpec, MarqoGSDataset, SPLITS
from gcl_train.data.synthetic import write_dataset
from gcl_train.evaluation import (
    EmbeddingTable,
    EvalConfig,
    ExactRetriever,
    RandomEncoder,
    encode_records,
    evaluate,
    evaluate_split,
    ground_truth_from_csv,
    load_embeddings,
    rescale_relevance,
    sample_queries,
)
from gcl_train.metrics import metric_names, ranking_metrics

SMALL = EvalConfig(n_queries=-1, ground_truth="test", ks=(1, 5, 10, 100), top_k=100, batch_size=64)


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs_eval")
    write_dataset(str(root), n_queries=150, n_products=500, docs_per_query=30, seed=11, image_size=16, progress=False)
    return str(root)


class OracleRetriever:
    """Returns each query's ground truth in relevance order: the perfect run."""

    def __init__(self, qrels_by_key):
        self.qrels = qrels_by_key
        self.indexed = []
        self.order = None

    def index(self, doc_ids, doc_vectors, corpus):
        self.indexed.append((corpus, len(doc_ids)))

    def search(self, query_vectors, k):
        ids, scores = [], []
        for key in self.order:
            docs = sorted(self.qrels[key].items(), key=lambda t: -t[1])[:k]
            ids.append([d for d, _ in docs])
            scores.append([float(len(docs) - i) for i in range(len(docs))] + [0.0] * (k - len(docs)))
        return ids, np.array(scores)


def test_a_run_equal_to_the_ground_truth_scores_one(gs):
    ds = MarqoGSDataset(gs)
    gt = ds.ground_truth("in_domain")
    oracle = OracleRetriever(gt)
    oracle.order = list(gt)  # the evaluator keeps gt order for queries
    res = evaluate_split(ds, "in_domain", encoder=RandomEncoder(16), config=SMALL, retriever=oracle, progress=False)
    assert res.gt_source == "test" and res.n_queries == len(gt)
    assert oracle.indexed == [("corpus_1", res.n_docs)]
    for k in (1, 5, 10, 100):
        assert res.metrics[f"ndcg@{k}"] == pytest.approx(1.0)
    assert res.metrics["recall@100"] == pytest.approx(1.0) and res.metrics["mrr@1"] == 1.0
    assert res.metrics["precision@1"] == 1.0


def test_random_encoder_gets_what_chance_predicts(gs):
    names = ("ndcg@10", "precision@10", "recall@50", "ndcg@50")
    pooled = {n: [] for n in names}
    chance = None
    for seed in range(8):
        res = evaluate_split(gs, "in_domain", encoder=RandomEncoder(32, seed=seed),
                             config=EvalConfig(n_queries=-1, ground_truth="csv", ks=(10, 50), top_k=100),
                             progress=False)
        _, per = ranking_metrics(res.qrels, res.run, ks=(10, 50), per_query=True)
        for n in names:
            pooled[n].append(per[n])
        chance = res.chance
    assert res.n_queries >= 100
    for n in names:
        x = np.concatenate(pooled[n])
        se = x.std(ddof=1) / np.sqrt(len(x))
        assert se < 0.15 * chance[n]  # enough samples for the check to have teeth
        assert abs(x.mean() - chance[n]) < 4 * se, (n, x.mean(), chance[n], se)
    assert chance["ndcg@10"] < 0.1


def test_exact_retriever_matches_brute_force_for_any_blocking():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(503, 12)).astype(np.float32)
    qs = rng.normal(size=(41, 12)).astype(np.float32)
    ids = [f"d{i}" for i in range(503)]
    ref = np.argsort(-(qs @ docs.T), axis=1, kind="stable")[:, :37]
    for qb, db in ((1, 20), (7, 50), (41, 503), (1000, 100000)):
        got, scores = ExactRetriever(ids, docs, query_block=qb, doc_block=db).search(qs, 37)
        assert [[int(d[1:]) for d in row] for row in got] == ref.tolist()
        assert np.all(np.diff(scores, axis=1) <= 1e-6)
    got, scores = ExactRetriever(ids[:5], docs[:5]).search(qs, 100)
    assert scores.shape == (41, 5)  # k capped at the corpus size
    with pytest.raises(ValueError, match="query_vectors"):
        ExactRetriever(ids, docs).search(qs[:, :3], 5)
    with pytest.raises(ValueError, match="doc_block"):
        ExactRetriever(ids, docs, doc_block=0)


def test_ground_truth_from_csv_matches_the_reference_procedure(tmp_path):
    path = tmp_path / "s.csv"
    rows = [("a", "p1", 10), ("a", "p2", 4), ("b", "p1", 1), ("b", "p3", 7), ("c", "p4", 10), ("c", "p5", 10)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "product_id", "score_linear"])
        w.writerows(rows)
    qrels, values = ground_truth_from_csv(str(path), n_queries=-1, progress=False)
    # (s - 1) / 9 * 99 + 1, truncated
    assert qrels == {"c": {"p4": 100, "p5": 100}, "a": {"p1": 100, "p2": 34}, "b": {"p3": 67, "p1": 1}}
    assert values["a"] == {"query": "a"}
    assert rescale_relevance(4, 1, 10) == 34 and rescale_relevance(5, 5, 5) == 1
    # sampling: RandomState(seed).choice over sorted keys with p proportional to summed relevance
    q2, _ = ground_truth_from_csv(str(path), n_queries=2, seed=1, progress=False)
    keys = ["a", "b", "c"]
    w = np.array([134.0, 68.0, 200.0])
    pick = np.random.RandomState(1).choice(3, 2, replace=False, p=w / w.sum())
    assert set(q2) == {keys[i] for i in pick}
    # top_k keeps the most relevant documents
    q3, _ = ground_truth_from_csv(str(path), n_queries=-1, top_k=1, progress=False)
    assert q3["a"] == {"p1": 100}


def test_csv_ground_truth_reproduces_the_synthetic_gt_files(gs):
    ds = MarqoGSDataset(gs)
    for split in ("in_domain", "zero_shot"):
        gt = ds.ground_truth(split, "test")
        qrels, _ = ground_truth_from_csv(ds.csv_path(split), n_queries=len(gt), seed=1, progress=False)
        assert qrels == gt


def test_sample_queries():
    assert sample_queries(["a", "b", "c"], [1, 5, 3], -1) == ["b", "c", "a"]
    assert len(set(sample_queries([str(i) for i in range(50)], np.arange(1, 51), 10, seed=4))) == 10
    with pytest.raises(ValueError, match="weights"):
        sample_queries(["a"], [1, 2], 1)
    with pytest.raises(ValueError, match="cannot draw"):
        sample_queries(["a", "b", "c"], [1, 0, 0], 2)


def test_missing_fields_get_weight_zero_and_empty_documents_are_counted(gs):
    from collections import Counter

    ds = MarqoGSDataset(gs)
    enc = RandomEncoder(8)
    recs = [
        {"image_local": "images/does-not-exist.png", "title": "red dress"},
        {"image_local": float("nan"), "title": None},
        {"title": "red dress"},
    ]
    counts = Counter()
    v, ok = encode_records(recs, (FieldSpec("image_local", "img", 0.9), FieldSpec("title", "txt", 0.1)), enc, ds,
                           counts=counts)
    assert ok.tolist() == [True, False, True]
    np.testing.assert_allclose(v[0], enc(["red dress"], "txt")[0], atol=1e-6)  # title alone, renormalised
    assert not v[1].any()
    assert counts["absent image file (image_local)"] == 1 and counts["missing title"] == 1


def test_evaluate_all_splits_writes_reports(gs, tmp_path):
    out = str(tmp_path / "ev")
    report = evaluate(gs, "all", encoder=RandomEncoder(16), config=SMALL, out_dir=out, progress=False, save_runs=True)
    assert list(report.results) == list(SPLITS)
    names = list(metric_names(SMALL.ks))
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == list(SPLITS)
    assert all(set(names) <= set(r) for r in rows)
    assert float(rows[0]["ndcg@10"]) == pytest.approx(report.results[SPLITS[0]].metrics["ndcg@10"])
    payload = json.load(open(os.path.join(out, "metrics.json")))
    assert set(payload["splits"]) == set(SPLITS) and payload["config"]["n_queries"] == -1
    assert set(payload["summary"]["zero_shot"]) == {"ndcg@10", "err", "rbp@0.9"}
    from PIL import Image

    with Image.open(os.path.join(out, "ndcg_at_k.png")) as im:
        assert im.format == "PNG" and im.size[0] > 100
    run = json.load(open(os.path.join(out, "runs", "query_0_product_id_0.json")))
    assert len(next(iter(run.values()))) == 100
    assert "in_domain" in report.table()
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temp files left behind


def test_precomputed_embeddings_give_the_same_metrics(gs, tmp_path):
    out = str(tmp_path / "ev")
    enc = RandomEncoder(16, seed=2)
    first = evaluate(gs, ["in_domain", "novel_corpus"], encoder=enc, config=SMALL, out_dir=out, progress=False)
    tables = load_embeddings(os.path.join(out, "embeddings"))
    assert set(tables) == {"corpus_1", "corpus_2"}
    ds = MarqoGSDataset(gs)
    qkeys = sorted(set(ds.ground_truth("in_domain")) | set(ds.ground_truth("novel_corpus")))
    qvec = enc(qkeys, "txt")
    EmbeddingTable(qkeys, qvec).save(os.path.join(out, "embeddings"), "queries")
    again = evaluate(gs, ["in_domain", "novel_corpus"], embeddings=os.path.join(out, "embeddings"), config=SMALL,
                     progress=False)
    for s in again.results:
        assert again.results[s].metrics == pytest.approx(first.results[s].metrics, abs=1e-6)
    with pytest.raises(KeyError, match="queries"):
        evaluate(gs, ["zero_shot"], embeddings={"queries": EmbeddingTable(["x"], qvec[:1]), **tables},
                 config=SMALL, progress=False)


def test_resume_reuses_finished_splits(gs, tmp_path):
    out = str(tmp_path / "ev")
    first = evaluate(gs, ["novel_query"], encoder=RandomEncoder(16), config=SMALL, out_dir=out, progress=False)

    def boom(values, kind):
        raise AssertionError("the encoder must not run on resume")

    again = evaluate(gs, ["novel_query"], encoder=boom, config=SMALL, out_dir=out, progress=False, resume=True)
    assert again.results["query_1_product_id_0"].metrics == first.results["query_1_product_id_0"].metrics
    with pytest.raises(AssertionError, match="must not run"):
        evaluate(gs, ["novel_query"], encoder=boom, config=SMALL, out_dir=out, progress=False, resume=False)


def test_callable_retriever_and_bad_retriever_output(gs):
    calls = []

    def retr(qv, k):
        calls.append(qv.shape)
        return [["nope"]] * qv.shape[0], np.zeros((qv.shape[0], 1))

    res = evaluate_split(gs, "zero_shot", encoder=RandomEncoder(8), config=SMALL, retriever=retr, progress=False)
    assert calls and res.metrics["ndcg@10"] == 0.0
    with pytest.raises(ValueError, match="retriever"):
        evaluate_split(gs, "zero_shot", encoder=RandomEncoder(8), config=SMALL,
                       retriever=lambda qv, k: ([], np.zeros((0, 0))), progress=False)


@pytest.mark.parametrize("cfg,match", [
    (dict(n_queries=0), "n_queries"),
    (dict(top_k=0), "top_k"),
    (dict(ground_truth="train"), "ground_truth"),
    (dict(dtype="int8"), "dtype"),
    (dict(right=()), "right"),
    (dict(left=(FieldSpec("q", "txt", 0.0),)), "left"),
])
def test_bad_config(gs, cfg, match):
    with pytest.raises(ValueError, match=match):
        evaluate_split(gs, "in_domain", encoder=RandomEncoder(8), config=EvalConfig(**cfg), progress=False)


def test_encoder_errors(gs):
    with pytest.raises(ValueError, match="encoder: needed"):
        evaluate_split(gs, "in_domain", config=SMALL, progress=False)
    with pytest.raises(ValueError, match=r"encoder: expected an array \[N=\d+, D\]"):
        evaluate_split(gs, "in_domain", encoder=lambda v, k: np.zeros((1, 4)), config=SMALL, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_split(gs, "in_domain", encoder=lambda v, k: np.full((len(v), 4), np.nan), config=SMALL,
                       progress=False)


def test_cli(gs, tmp_path, capsys):
    out = str(tmp_path / "cli")
    rc = cli_main([gs, "--out", out, "--model", "random", "--top-q", "20", "--top-k", "50", "--quiet",
                   "--splits", "in_domain,zero_shot", "--right-keys", "['title']", "--img-or-txt", "[['txt'], ['txt']]"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "zero_shot" in printed and "metrics.csv" in printed
    payload = json.load(open(os.path.join(out, "metrics.json")))
    assert payload["config"]["right"] == [{"key": "title", "kind": "txt", "weight": 1.0, "required": False}]
    assert payload["config"]["ks"][-1] == 50
    assert cli_main([str(tmp_path / "nowhere"), "--out", out, "--model", "random", "--quiet"]) == 1
    with pytest.raises(SystemExit):
        cli_main([gs, "--out", out, "--quiet"])  # no encoder source
    with pytest.raises(SystemExit):
        cli_main([gs, "--out", out, "--model", "random", "--right-keys", "title"])  # kinds needed
