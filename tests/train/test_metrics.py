"""gcl_train.metrics against pytrec_eval (trec_eval) and hand-computed ERR / RBP."""
import itertools
import math

import numpy as np
import pytest

from gcl_train.metrics import (
    DEFAULT_KS,
    build_arrays,
    chance_metrics,
    metric_names,
    metrics_from_arrays,
    ranking_metrics,
    reference_err,
    reference_rbp,
)

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 3, 5, 10, 20, 100)


def random_case(seed, n_queries=120, n_docs=150, tie_levels=None):
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        nd = int(rng.integers(1, 60))
        docs = [f"d{i}" for i in rng.choice(n_docs, nd, replace=False)]
        qrels[f"q{q}"] = {d: int(rng.integers(0, 5)) for d in docs}
        nr = int(rng.integers(0, 120))
        rdocs = [f"d{i}" for i in rng.choice(n_docs, nr, replace=False)]
        if tie_levels:
            run[f"q{q}"] = {d: float(rng.integers(0, tie_levels)) for d in rdocs}
        else:
            run[f"q{q}"] = {d: float(rng.normal()) for d in rdocs}
    return qrels, run


def trec(qrels, run, ks):
    cut = ",".join(str(k) for k in ks)
    ev = pytrec_eval.RelevanceEvaluator(
        qrels, {f"ndcg_cut.{cut}", f"map_cut.{cut}", f"recall.{cut}", f"P.{cut}", "recip_rank"}
    )
    return ev.evaluate(run)


@pytest.mark.parametrize("seed,ties", [(0, None), (1, 4), (2, 2), (3, None)])
def test_matches_pytrec_eval_per_query(seed, ties):
    qrels, run = random_case(seed, tie_levels=ties)
    ref = trec(qrels, run, KS)
    _, per = ranking_metrics(qrels, run, ks=KS, per_query=True)
    queries = list(qrels)
    assert set(ref) == set(queries)
    pairs = [("ndcg@{}", "ndcg_cut_{}"), ("map@{}", "map_cut_{}"), ("recall@{}", "recall_{}"), ("precision@{}", "P_{}")]
    for ours, theirs in pairs:
        for k in KS:
            expected = np.array([ref[q][theirs.format(k)] for q in queries])
            np.testing.assert_allclose(per[ours.format(k)], expected, atol=1e-12, err_msg=f"{ours.format(k)} seed {seed}")
    # with k past every run's length, mrr@k is trec_eval's recip_rank
    _, per_long = ranking_metrics(qrels, run, ks=(1000,), per_query=True)
    np.testing.assert_allclose(per_long["mrr@1000"], [ref[q]["recip_rank"] for q in queries], atol=1e-12)


def test_mean_matches_pytrec_eval_and_keys():
    qrels, run = random_case(7)
    ref = trec(qrels, run, DEFAULT_KS)
    m = ranking_metrics(qrels, run)
    assert tuple(m) == metric_names()
    expected_keys = {f"{n}@{k}" for n in ("ndcg", "map", "mrr", "recall", "precision") for k in DEFAULT_KS}
    assert set(m) == expected_keys | {"err", "rbp@0.7", "rbp@0.8", "rbp@0.9"}
    for k in DEFAULT_KS:
        assert m[f"ndcg@{k}"] == pytest.approx(np.mean([r[f"ndcg_cut_{k}"] for r in ref.values()]), abs=1e-12)
        assert m[f"map@{k}"] == pytest.approx(np.mean([r[f"map_cut_{k}"] for r in ref.values()]), abs=1e-12)


def test_tie_order_is_doc_id_descending_not_dict_order():
    qrels = {"q": {"a": 1}}
    # equal scores: trec_eval puts "b" (larger id) before "a"
    m1 = ranking_metrics(qrels, {"q": {"a": 1.0, "b": 1.0}}, ks=(1,))
    m2 = ranking_metrics(qrels, {"q": {"b": 1.0, "a": 1.0}}, ks=(1,))
    assert m1 == m2
    assert m1["precision@1"] == 0.0 and m1["mrr@1"] == 0.0


def test_err_rbp_hand_computed():
    qrels = {"q": {"a": 3, "b": 1, "c": 0}}
    run = {"q": {"b": 0.9, "a": 0.8, "d": 0.7}}
    m = ranking_metrics(qrels, run, ks=(1,))
    # R(b) = (2^1 - 1) / 2^3 = 1/8, R(a) = 7/8: ERR = 1/8 + (1 - 1/8) * 7/8 / 2
    assert m["err"] == pytest.approx(1 / 8 + (7 / 8) * (7 / 8) / 2, abs=1e-15)
    assert reference_err(qrels["q"], run["q"]) == pytest.approx(1 / 8 + (7 / 8) * (7 / 8) / 2, abs=1e-15)
    # RBP: (1 - p) * (1/3 + 1 * p)
    assert m["rbp@0.7"] == pytest.approx(0.3 * (1 / 3 + 0.7), abs=1e-15)
    assert m["rbp@0.9"] == pytest.approx(0.1 * (1 / 3 + 0.9), abs=1e-15)
    assert reference_rbp(qrels["q"], run["q"], 0.9) == pytest.approx(0.1 * (1 / 3 + 0.9), abs=1e-15)
    # a perfect single-document run with one grade-1 document: ERR = 1/2, RBP = 1 - p
    m = ranking_metrics({"q": {"a": 1}}, {"q": {"a": 1.0}}, ks=(1,))
    assert m["err"] == 0.5 and m["rbp@0.8"] == pytest.approx(0.2)


def test_err_rbp_match_reference_loops_on_random_runs():
    qrels, run = random_case(11, tie_levels=None)
    qrels = {q: d for q, d in qrels.items() if max(d.values()) > 0}
    _, per = ranking_metrics(qrels, run, ks=(10,), per_query=True)
    for i, q in enumerate(qrels):
        assert per["err"][i] == pytest.approx(reference_err(qrels[q], run[q]), abs=1e-12)
        for p in (0.7, 0.8, 0.9):
            assert per[f"rbp@{p:g}"][i] == pytest.approx(reference_rbp(qrels[q], run[q], p), abs=1e-12)


def test_err_stays_finite_for_grades_up_to_100():
    qrels = {"q": {f"d{i}": 100 - i for i in range(100)}}
    run = {"q": {f"d{i}": -i for i in range(100)}}
    m = ranking_metrics(qrels, run, ks=(10,))
    assert math.isfinite(m["err"])
    assert m["err"] == pytest.approx(reference_err(qrels["q"], run["q"]), rel=1e-12)
    assert m["ndcg@10"] == pytest.approx(1.0)


def test_mrr_cut():
    qrels = {"q": {"c": 2}}
    run = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    m = ranking_metrics(qrels, run, ks=(2, 3))
    assert m["mrr@2"] == 0.0 and m["mrr@3"] == pytest.approx(1 / 3)


def test_missing_run_scores_zero_and_extra_run_queries_are_ignored():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}, "zzz": {"b": 1.0}}
    m = ranking_metrics(qrels, run, ks=(1,))
    assert m["ndcg@1"] == 0.5 and m["err"] == 0.25 and m["precision@1"] == 0.5


def test_query_without_relevant_documents_scores_zero():
    m, per = ranking_metrics({"q": {"a": 0}}, {"q": {"a": 1.0}}, ks=(1,), per_query=True)
    assert all(v == 0.0 for v in m.values())


def test_chance_metrics_equal_the_average_over_all_permutations():
    qrels = {"q": {"a": 3, "b": 1}, "r": {"c": 2}}
    docs = ["a", "b", "c", "d", "e"]
    ks = (1, 2, 4)
    total = None
    perms = list(itertools.permutations(docs))
    for perm in perms:
        run = {q: {d: -i for i, d in enumerate(perm)} for q in qrels}
        m = ranking_metrics(qrels, run, ks=ks)
        total = m if total is None else {k: total[k] + m[k] for k in m}
    chance = chance_metrics(qrels, n_docs=len(docs), ks=ks)
    for name, v in chance.items():
        assert v == pytest.approx(total[name] / len(perms), abs=1e-12), name


def test_build_arrays_padding_and_max_k():
    ranked, n_ret, ideal, max_rel = build_arrays({"q": {"a": 2, "b": 1}, "r": {"c": 1}},
                                                 {"q": {"x": 3.0, "a": 2.0, "b": 1.0}}, max_k=2)
    assert ranked.tolist() == [[0, 2], [0, 0]] and n_ret.tolist() == [2, 0]
    assert ideal.tolist() == [[2, 1], [1, 0]] and max_rel.tolist() == [2, 1]
    per = metrics_from_arrays(ranked, ideal, ks=(2,))
    assert per["precision@2"].tolist() == [0.5, 0.0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(qrels=[], run={}), "qrels"),
        (dict(qrels={}, run=[("q", {})]), "run"),
        (dict(qrels={"q": {"a": 1}}, run={}, ks=(0, 5)), "ks"),
        (dict(qrels={"q": {"a": 1}}, run={}, ks="10"), "ks"),
        (dict(qrels={"q": {"a": 1}}, run={}, rbp_ps=(1.5,)), "rbp_ps"),
        (dict(qrels={"q": {"a": -1}}, run={}), "qrels"),
        (dict(qrels={"q": [("a", 1)]}, run={}), "qrels"),
        (dict(qrels={"q": {"a": 1}}, run={"q": {"a": float("nan")}}), "NaN"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ranking_metrics(**kwargs)


def test_chance_metrics_rejects_bad_n_docs():
    with pytest.raises(ValueError, match="n_docs"):
        chance_metrics({"q": {"a": 1}}, n_docs=0)
