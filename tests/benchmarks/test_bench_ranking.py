"""benchmarks/bench_ranking.py: a seconds-long smoke run (tiny model, tiny data) through the
real trainer and evaluator, the JSON / PNG / CSV outputs, the zero_shot arm for a
pretrained model only, and --summarize."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import sys

import pytest

pytest.importorskip("open_clip")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_ranking.py")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    spec = importlib.util.spec_from_file_location("bench_ranking_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_csv_headers_match_the_script(bench):
    import glob

    paths = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "results", "bench_ranking*.csv")))
    if not paths:
        pytest.skip("no bench_ranking*.csv yet")
    for path in paths:
        with open(path, newline="", encoding="utf-8") as f:
            assert next(csv.reader(f)) == bench.COLUMNS, path


def test_smoke_run_from_scratch_and_from_pretrained_weights(bench, tmp_path):
    work, out, csv_path = tmp_path / "work", tmp_path / "r.json", tmp_path / "r.csv"
    common = ["--preset", "smoke", "--model", "tiny", "--work", str(work), "--csv", str(csv_path), "--threads", "1"]
    assert bench.main(common + ["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    # a model built from scratch has no zero_shot arm
    assert set(res) == {"ce", "gcl", "meta"}
    assert list(res["gcl"]) == ["in_domain", "novel_query", "novel_corpus", "zero_shot"]
    for arm in ("ce", "gcl"):
        for split, m in res[arm].items():
            assert 0 <= m["ndcg@10"] <= 1 and 0 <= m["err"] <= 1 and "rbp@0.9" in m and m["n_queries"] > 0
    meta = res["meta"]
    assert meta["eval_config"]["ground_truth"] == "csv" and meta["eval_config"]["n_queries"] == 2000
    assert meta["arms"]["gcl"]["steps"] == bench.PRESETS["smoke"]["scratch"]["steps"]
    assert meta["field_weights"] == {"image": 0.9, "title": 0.1} or meta["field_weights"]["image"] == 0.9
    assert (tmp_path / "r.png").stat().st_size > 1000
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["arm"] for r in rows} == {"ce", "gcl"} and rows[0]["command"]
    # the two arms differ only in the weights: constant vs linear
    cfg = {a: json.loads((work / "runs" / f"smoke_{a}_seed0" / "config.json").read_text()) for a in ("ce", "gcl")}
    diff = {k for k in cfg["ce"] if cfg["ce"][k] != cfg["gcl"][k]}
    assert diff == {"out", "weight_fn"}, diff

    # with --pretrained the model as is is an arm too (here: the CE run's own weights)
    out2 = tmp_path / "r2.json"
    ck = str(work / "runs" / "smoke_ce_seed0" / "model.pt")
    assert bench.main(common + ["--pretrained", ck, "--tag", "pt", "--arms", "zero_shot",
                                "--out", str(out2)]) == 0
    res2 = json.loads(out2.read_text())
    assert set(res2) == {"zero_shot", "meta"}
    # evaluating the CE model's weights as "zero_shot" gives the CE arm's numbers
    for split in res["ce"]:
        assert res2["zero_shot"][split]["ndcg@10"] == pytest.approx(res["ce"][split]["ndcg@10"], abs=1e-6)

    # --summarize: arms of one seed in separate files are merged; seeds are averaged
    def write(name, **changes):
        r = json.loads(json.dumps(res))
        for k, v in changes.items():
            if k == "seed":
                r["meta"]["seed"] = v
            elif v is None:
                del r[k]
        (tmp_path / name).write_text(json.dumps(r))
        return str(tmp_path / name)

    ce_only, gcl_only = write("ce0.json", gcl=None), write("gcl0.json", ce=None)
    summary = bench.summarize([ce_only, gcl_only])
    assert summary["stats"]["gcl"]["in_domain"]["ndcg@10"]["n"] == 1
    assert summary["stats"]["ce"]["in_domain"]["ndcg@10"]["n"] == 1
    assert summary["checks"]["per_seed"][0]["gcl_beats_ce_cold_start"]  # CE and GCL of seed 0 were paired
    summary = bench.summarize([str(out), write("s1.json", seed=1)])
    assert summary["stats"]["gcl"]["in_domain"]["ndcg@10"]["n"] == 2
    assert "mean (worst) over 2 training seeds" in bench.format_summary(summary)
    with pytest.raises(ValueError, match="arm 'ce' is in"):
        bench.summarize([str(out), ce_only])  # one seed's CE twice
    other = json.loads(out.read_text())
    other["meta"]["hparams"]["steps"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert bench.main(["--summarize", str(out), str(tmp_path / "other.json")]) == 2  # another experiment


def test_bad_arm_is_a_usage_error(bench, capsys):
    assert bench.main(["--arms", "ce,nope", "--model", "tiny", "--csv", ""]) == 2
    assert "unknown arm 'nope'" in capsys.readouterr().err
