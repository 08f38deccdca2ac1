"""gcl_train.data.synthetic: layout, round trip through the readers, learnable ranking."""
import hashlib
import json
import os
import re

import numpy as np
import pytest

from gcl_train.data import MarqoGSDataset, ReadStats, SPLITS, iter_corpus, read_queries
from gcl_train.data.synthetic import (
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    MATERIAL_BG,
    MATERIALS,
    PATTERNS,
    generate_world,
    main,
    write_dataset,
)
from gcl_train.metrics import chance_metrics, ranking_metrics

ARGS = dict(n_queries=60, n_products=400, docs_per_query=40, seed=3, image_size=32)


@pytest.fixture(scope="module")
def gs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gs")
    info = write_dataset(str(root), progress=False, **ARGS)
    return str(root), info, generate_world(**ARGS)


def test_layout_and_counts(gs):
    root, info, world = gs
    names = set(os.listdir(root))
    expected = {"corpus_1.json", "corpus_2.json", "synthetic_meta.json", "images"}
    for s in SPLITS:
        expected |= {f"{s}.csv", f"{s}_gt_test.json", f"{s}_gt_dev.json", f"{s}_queries.json"}
    assert names == expected
    assert info.n_pairs == 60 * 40 and sum(info.rows.values()) == info.n_pairs
    meta = json.load(open(os.path.join(root, "synthetic_meta.json")))
    assert meta["rows"] == info.rows and meta["seed"] == 3
    assert info.bytes == sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def test_round_trip_reads_back_what_was_written(gs):
    root, _, world = gs
    ds = MarqoGSDataset(root)
    for corpus in ("corpus_1", "corpus_2"):
        assert dict(ds.iter_corpus(corpus)) == world.corpus_docs(corpus)
    tricky = 0
    for split in SPLITS:
        stats = ReadStats()
        got = list(ds.iter_pairs(split, stats=stats))
        want = list(world.split_rows(split))
        assert stats.n_skipped == 0 and len(got) == len(want) > 0
        for rec, row in zip(got, want):
            assert rec.query == row["query"] and rec.product_id == row["product_id"]
            assert rec.title == row["title"] and rec.image_local == row["image_local"]
            assert rec.position == row["position"] and rec.score_linear == row["score_linear"]
            assert rec.score_reciprocal == row["score_reciprocal"] and rec.no_score == row["no_score"]
            assert rec.query_id == str(row["query_id"]) and rec.pair_id == str(row["pair_id"])
            tricky += bool(rec.title and re.search(r'[,"\n]', rec.title))
    assert tricky > 0  # commas, quotes or newlines went through the CSV and came back


def test_images_show_the_attributes(gs):
    root, _, world = gs
    ds = MarqoGSDataset(root)
    p = world.products
    checked = 0
    for i in range(world.n_products):
        if world.no_image[i]:
            assert not ds.image_available(world.image_local[i])
            continue
        img = np.asarray(ds.load_image(world.image_local[i]), dtype=np.int64)
        assert img.shape == (32, 32, 3)
        if PATTERNS[p["pattern"][i]] == "solid" and CATEGORIES[p["category"][i]] in ("shirt", "hat", "jacket"):
            centre = img[14:18, 14:18].reshape(-1, 3).mean(0)
            assert np.abs(centre - COLOUR_RGB[COLOURS[p["colour"][i]]]).max() <= 16
            corner = img[2, 2]  # outside every shape and frame
            assert np.abs(corner - MATERIAL_BG[MATERIALS[p["material"][i]]]).max() <= 13
            checked += 1
    assert checked >= 5


def test_splits_follow_the_paper(gs):
    root, _, world = gs
    ds = MarqoGSDataset(root)
    c1 = {k for k, _ in iter_corpus(ds.corpus_path("corpus_1"))}
    c2 = {k for k, _ in iter_corpus(ds.corpus_path("corpus_2"))}
    assert not c1 & c2 and len(c1) + len(c2) == world.n_products
    assert 0.35 < len(c1) / world.n_products < 0.65
    queries = {s: {r.query for r in ds.iter_pairs(s)} for s in SPLITS}
    docs = {s: {r.product_id for r in ds.iter_pairs(s)} for s in SPLITS}
    q0 = queries["query_0_product_id_0"] | queries["query_0_product_id_1"]
    q1 = queries["query_1_product_id_0"] | queries["query_1_product_id_1"]
    assert not q0 & q1 and len(q0) + len(q1) == 60 and len(q1) == 12  # 80 / 20
    assert docs["query_0_product_id_0"] <= c1 and docs["query_1_product_id_0"] <= c1
    assert docs["query_0_product_id_1"] <= c2 and docs["query_1_product_id_1"] <= c2
    for s in SPLITS:
        assert set(read_queries(ds.queries_path(s))) == queries[s]
    # products show up under several queries, as in MarqoGS
    counts = np.bincount(world.pair_product, minlength=world.n_products)
    assert counts[counts > 0].mean() > 3


def test_scores_follow_positions(gs):
    root, _, world = gs
    for rec in MarqoGSDataset(root).iter_pairs("in_domain"):
        assert rec.score_linear == 101 - rec.position and rec.score_reciprocal == pytest.approx(1 / rec.position)
    for q in range(60):
        assert sorted(world.pair_position[world.pair_query == q]) == list(range(1, 41))


def test_ground_truth_files(gs):
    root, info, _ = gs
    ds = MarqoGSDataset(root)
    for s in SPLITS:
        test, dev = ds.ground_truth(s, "test"), ds.ground_truth(s, "dev")
        assert len(test) == info.gt_queries[s]["test"] > 0 and not set(test) & set(dev)
        raw = json.load(open(ds.gt_path(s, "test")))
        assert all(k.endswith("_{!@#~}_") for k in raw)  # the reference's key format
        rows = {(r.query, r.product_id): r.score_linear for r in ds.iter_pairs(s)}
        lo, hi = min(rows.values()), max(rows.values())
        for q, docs in test.items():
            for d, rel in docs.items():
                assert rel == int((rows[(q, d)] - lo) / (hi - lo) * 99 + 1)
            assert len(docs) == sum(1 for (qq, _) in rows if qq == q)


def _title_match_run(ds, split, qrels):
    # a bag-of-words scorer that only reads titles: it must beat chance if titles carry the signal
    titles = {pid: (doc.get("title") or "") for pid, doc in ds.iter_corpus(split)}
    run = {}
    for q in qrels:
        words = set(q.split())
        run[q] = {pid: len(words & set(t.split())) + 1e-6 * (hash(pid) % 1000) for pid, t in titles.items()}
    return run


def test_ranking_is_learnable_from_titles_and_matters(gs):
    root, _, world = gs
    ds = MarqoGSDataset(root)
    qrels = ds.ground_truth("in_domain", "test")
    run = _title_match_run(ds, "in_domain", qrels)
    m = ranking_metrics(qrels, run, ks=(10,))
    chance = chance_metrics(qrels, n_docs=len(next(iter(run.values()))), ks=(10,))
    assert m["ndcg@10"] > 2.5 * chance["ndcg@10"]
    # ranking matters: within each query, top positions match the asked attributes more often than the tail
    p = world.products
    top, tail = [], []
    for qi, (_, asked, _) in enumerate(world.queries):
        idx = np.flatnonzero(world.pair_query == qi)
        order = idx[np.argsort(world.pair_position[idx])]
        score = sum((p[a][world.pair_product[order]] == v).astype(float) for a, v in asked.items())
        top.append(score[:10].mean())
        tail.append(score[-10:].mean())
    assert np.mean(top) > np.mean(tail) + 0.5


def test_deterministic_for_a_seed(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for d, _, fs in sorted(os.walk(root)):
            for f in sorted(fs):
                if f != "synthetic_meta.json":
                    h.update(f.encode())
                    h.update(open(os.path.join(d, f), "rb").read())
        return h.hexdigest()

    small = dict(n_queries=10, n_products=60, docs_per_query=12, image_size=16, progress=False)
    a = write_dataset(str(tmp_path / "a"), seed=5, **small)
    b = write_dataset(str(tmp_path / "b"), seed=5, **small)
    c = write_dataset(str(tmp_path / "c"), seed=6, **small)
    assert digest(a.root) == digest(b.root) != digest(c.root)
    # resume: a deleted image is rewritten identically, the rest are kept
    img = os.path.join(a.root, "images", sorted(os.listdir(os.path.join(a.root, "images")))[0])
    before = open(img, "rb").read()
    os.unlink(img)
    write_dataset(a.root, seed=5, **small)
    assert open(img, "rb").read() == before and digest(a.root) == digest(b.root)


def test_disk_size_scales_linearly(tmp_path):
    sizes = []
    for n in (40, 160):
        info = write_dataset(str(tmp_path / str(n)), n_queries=n, docs_per_query=25, seed=0, images=False, progress=False)
        sizes.append(info.bytes / info.n_pairs)
    assert sizes[1] == pytest.approx(sizes[0], rel=0.15)


def test_tiny_sets_and_docs_per_query_cap(tmp_path):
    info = write_dataset(str(tmp_path / "t"), n_queries=4, n_products=10, docs_per_query=100, seed=0,
                         image_size=8, progress=False)
    assert info.n_pairs == 40  # capped at n_products


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_queries=1), "n_queries"),
    (dict(n_queries=5, docs_per_query=0), "docs_per_query"),
    (dict(n_queries=5, n_products=1), "n_products"),
    (dict(n_queries=5, image_size=4), "image_size"),
    (dict(n_queries=5, missing_title_rate=0.9), "missing_title_rate"),
    (dict(n_queries=5, gt_queries=0), "gt_queries"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_dataset(str(tmp_path / "x"), progress=False, **kwargs)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--queries", "6", "--products", "30", "--docs-per-query", "8",
                 "--image-size", "8", "--quiet"]) == 0
    assert "48 pairs" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "cli" / "query_1_product_id_1.csv")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--queries", "1"])


def _help_blocks(text):
    """{option: its help text, whitespace collapsed} from argparse's --help output."""
    blocks, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (-[-\w]+)", line)
        if m:
            cur = m.group(1)
            blocks[cur] = line
        elif cur and line.startswith("    "):
            blocks[cur] += " " + line.strip()
        else:
            cur = None
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_cli_help_shows_every_default_once_and_cites_files_in_the_repo(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    blocks = _help_blocks(out)
    for opt in ("--queries", "--products", "--docs-per-query", "--seed", "--image-size", "--gt-queries",
                "--missing-title-rate", "--missing-image-rate", "--tricky-title-rate"):
        assert blocks[opt].count("(default:") == 1, (opt, blocks[opt])
    assert "(default: 100)" in blocks["--docs-per-query"] and "(default: 0)" in blocks["--seed"]
    assert "(default: 0.01)" in blocks["--missing-title-rate"]
    assert all(b.count("default") <= 1 for b in blocks.values()), blocks
    import gcl_train.data.corpus
    import gcl_train.data.errors
    import gcl_train.data.jsonstream
    import gcl_train.data.layout
    import gcl_train.data.marqo_gs
    import gcl_train.data.pairs
    import gcl_train.data.synthetic
    import inspect

    for text in [out] + [inspect.getsource(m) for m in (gcl_train.data.errors, gcl_train.data.jsonstream,
                                                          gcl_train.data.marqo_gs, gcl_train.data.synthetic,
                                                          gcl_train.data.pairs, gcl_train.data.corpus,
                                                          gcl_train.data.layout)]:
        assert "GCL_SPEC" not in text


def test_intended_missing_is_recorded_per_corpus_and_split(gs):
    from gcl_train.data.synthetic import intended_missing, intended_missing_note

    root, _, world = gs
    meta = json.load(open(os.path.join(root, "synthetic_meta.json")))
    got = intended_missing(root)
    assert got == meta["intended_missing"]
    assert got["rates"] == {"title": 0.01, "image": 0.005}
    ds = MarqoGSDataset(root)
    for corpus in ("corpus_1", "corpus_2"):
        docs = list(ds.iter_corpus(corpus))
        assert got[corpus] == {
            "products": len(docs),
            "title": sum(d["title"] is None for _, d in docs),
            "image": sum(not ds.image_available(d["image_local"]) for _, d in docs),
        }
    assert sum(got[c]["title"] for c in ("corpus_1", "corpus_2")) == sum(t is None for t in world.titles) > 0
    for split in SPLITS:
        stats = ReadStats()
        rows = list(ds.iter_pairs(split, optional=("title",), stats=stats))
        assert got[split] == {"rows": len(rows), "title": stats.missing["title"],
                              "image": sum(not ds.image_available(r.image_local) for r in rows)}
    n = got["corpus_1"]["title"]
    note = intended_missing_note(root, "corpus_1", "title")
    assert note == f"intended: the synthetic data set leaves out {n} of {got['corpus_1']['products']} titles " \
                   f"in corpus_1 (missing_title_rate 0.01)"
    assert intended_missing_note(root, "in_domain", "image_local") == intended_missing_note(
        root, "query_0_product_id_0", "image")
    assert "rows" in intended_missing_note(root, "in_domain", "title")
    assert intended_missing_note(root, "corpus_1", "query") is None


def test_intended_missing_without_images_and_on_other_data(tmp_path):
    from gcl_train.data.synthetic import intended_missing, intended_missing_note

    info = write_dataset(str(tmp_path / "t"), n_queries=6, n_products=30, docs_per_query=8, images=False,
                         missing_title_rate=0.0, progress=False)
    got = intended_missing(info.root)
    assert got["corpus_1"]["image"] == got["corpus_1"]["products"] and got["rates"]["image"] == 1.0
    assert got["corpus_1"]["title"] == 0 and intended_missing_note(info.root, "corpus_1", "title") is None
    assert "images were not written" in intended_missing_note(info.root, "corpus_1", "image")
    # not a synthetic set, or one written before the field existed
    assert intended_missing(str(tmp_path)) is None and intended_missing_note(str(tmp_path), "corpus_1", "title") is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "synthetic_meta.json").write_text('{"seed": 0}')
    assert intended_missing(str(tmp_path / "old")) is None
    (tmp_path / "old" / "synthetic_meta.json").write_text('{"seed": ')
    assert intended_missing(str(tmp_path / "old")) is None
