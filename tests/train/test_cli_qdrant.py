"""gcl-qdrant end to end on a tiny synthetic MarqoGS set with a tiny open_clip checkpoint:
ingest (encoded corpus and precomputed vectors), search (text and vectors, weights,
filters, JSON output), eval (exact vs index NDCG@10), and the CLI's error reporting."""

import json
import os

import numpy as np
import pytest

import qdrant_plugin.backends.edge as edge_backend
from qdrant_plugin import MultiFieldIndex, brute_force
from gcl_train.cli.qdrant import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset
    from gcl_train.models import create_model, save_checkpoint

    root = tmp_path_factory.mktemp("cli")
    data = root / "data"
    write_dataset(str(data), n_queries=20, n_products=120, docs_per_query=20, seed=0, image_size=16,
                  gt_queries=50, progress=False)
    ck = root / "ck.pt"
    save_checkpoint(str(ck), create_model("tiny", seed=0))
    return root, str(data), str(ck)


def _usable_corpus(data, name="corpus_1"):
    from gcl_train.data import MarqoGSDataset, is_missing

    ds = MarqoGSDataset(data)
    out = {}
    for pid, doc in ds.iter_corpus(name):
        has_title = not is_missing(doc.get("title"))
        has_image = ds.image_available(doc.get("image_local"))
        if has_title or has_image:
            out[pid] = (doc, has_title, has_image)
    return out


def test_ingest_search_and_eval(world, capsys, monkeypatch):
    root, data, ck = world
    store = str(root / "store")
    usable = _usable_corpus(data)
    args = ["ingest", "--store", store, "--data", data, "--corpus", "1", "--checkpoint", ck,
            "--batch-size", "16", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"now holds {len(usable)} documents" in out
    assert main(args) == 0  # a rerun has nothing left to do
    assert "0 written" in capsys.readouterr().out

    with MultiFieldIndex(store, "products") as idx:
        assert idx.count() == len(usable)
        recs = {r.id: r for r in idx.retrieve(list(usable), with_vectors=True)}
    for pid, (doc, has_title, has_image) in usable.items():
        assert set(recs[pid].vectors) == {f for f, p in (("title", has_title), ("image", has_image)) if p}
        assert recs[pid].payload["title"] == doc.get("title")

    # text query: one CLIP text vector stands for both fields
    assert main(["search", "red linen summer dress", "--checkpoint", ck, "--store", store,
                 "--weights", "image=0.9,title=0.1", "--limit", "5", "--json", "--quiet"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    from gcl_train.models import Encoder

    q = Encoder.from_checkpoint(ck).encode_text(["red linen summer dress"])[0]
    ids = list(recs)
    vecs = {f: np.stack([recs[i].vectors.get(f, np.zeros(32, np.float32)) for i in ids]) for f in ("title", "image")}
    # brute force over the stored unit vectors; a missing field (zero row here) scores 0
    scores = sum(w * (vecs[f] @ (q / np.linalg.norm(q))) for f, w in (("title", 0.1), ("image", 0.9)))
    order = np.argsort(-scores)[:5]
    assert [h["id"] for h in hits] == [ids[i] for i in order]
    np.testing.assert_allclose([h["score"] for h in hits], scores[order], atol=1e-4)
    assert all("title" in h["payload"] for h in hits)

    # filters and the plain table
    some_title = next(d["title"] for d, t, _ in usable.values() if t)
    assert main(["search", "dress", "--checkpoint", ck, "--store", store, "--filter", f"title={some_title}",
                 "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["#", "id", "score"] and len(table) == 2

    # eval: force a real HNSW graph even on this tiny corpus, then compare with exact retrieval
    monkeypatch.setattr(edge_backend, "INDEXING_THRESHOLD_KB", 1)
    out_dir = str(root / "eval")
    rc = main(["eval", "--data", data, "--checkpoint", ck, "--out", out_dir, "--n-queries", "20", "--quiet"])
    report = json.load(open(os.path.join(out_dir, "qdrant_eval.json")))
    assert rc == 0 and report["within_tolerance"]
    assert len(report["splits"]) == 4
    for r in report["splits"]:
        assert abs(r["diff"]) <= 0.005 and 0 < r["ndcg@10_exact"] <= 1
    assert os.path.isfile(os.path.join(out_dir, "exact", "metrics.json"))
    assert os.path.isfile(os.path.join(out_dir, "index", "metrics.json"))
    with MultiFieldIndex(os.path.join(out_dir, "qdrant_store"), "eval_corpus_2") as idx:
        assert idx.backend.shard.info().indexed_vectors_count > 0  # the index run used a graph

    # the same through int8-quantised collections (one split keeps it short)
    out_q = str(root / "eval_int8")
    rc = main(["eval", "--data", data, "--checkpoint", ck, "--out", out_q, "--n-queries", "20",
               "--splits", "in_domain", "--quantization", "int8", "--quiet"])
    report = json.load(open(os.path.join(out_q, "qdrant_eval.json")))
    assert rc == 0 and report["within_tolerance"] and len(report["splits"]) == 1
    with MultiFieldIndex(os.path.join(out_q, "qdrant_store"), "eval_corpus_1") as idx:
        assert idx.schema.quantization == "int8"


def test_precomputed_vectors_and_vector_queries(world, capsys, tmp_path):
    rng = np.random.default_rng(0)
    t, i = rng.normal(size=(40, 8)), rng.normal(size=(40, 8))
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "i.npy", i)
    ids = [f"item{k}" for k in range(40)]
    json.dump(ids, open(tmp_path / "ids.json", "w"))
    with open(tmp_path / "p.jsonl", "w") as fh:
        for k in range(40):
            fh.write(json.dumps({"shop": "north" if k % 2 else "south", "k": k}) + "\n")
    store = str(tmp_path / "store")
    base = ["--store", store, "--collection", "pre", "--quiet"]
    assert main(["ingest", *base, "--vectors", f"title={tmp_path / 't.npy'}", "--vectors", f"image={tmp_path / 'i.npy'}",
                 "--ids", str(tmp_path / "ids.json"), "--payloads", str(tmp_path / "p.jsonl")]) == 0
    capsys.readouterr()
    qt, qi = rng.normal(size=8), rng.normal(size=8)
    np.save(tmp_path / "qt.npy", qt)
    np.save(tmp_path / "qi.npy", qi)
    assert main(["search", *base, "--vector", f"title={tmp_path / 'qt.npy'}", "--vector", f"image={tmp_path / 'qi.npy'}",
                 "--weights", "title=0.3,image=0.7", "--filter", "shop=north", "--limit", "4", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    odd = [k for k in range(40) if k % 2]
    ref = brute_force([ids[k] for k in odd], {"title": t[odd], "image": i[odd]},
                      {"title": qt[None], "image": qi[None]}, {"title": 0.3, "image": 0.7}, 4)[0]
    assert [h["id"] for h in hits] == [r[0] for r in ref]
    np.testing.assert_allclose([h["score"] for h in hits], [r[1] for r in ref], atol=1e-5)
    assert main(["search", *base, "--vector", str(tmp_path / "qt.npy"), "--filter-json", '{"k": {"lt": 3}}',
                 "--json"]) == 0
    assert {json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()} == {"item0", "item1", "item2"}


@pytest.mark.parametrize("argv, message", [
    (["search", "--vector", "{q}", "--weights", "title=0.5,titel=0.5"], "unknown field(s) ['titel']"),
    (["search", "--vector", "{q}", "--weights", "title=-1"], "expected a finite weight >= 0"),
    (["search", "--vector", "{q}", "--weights", "title=heavy"], "non-numeric weight"),
    (["search", "--vector", "{q}", "--filter", "price"], "--filter: expected key=value"),
    (["search", "--vector", "{q}", "--filter-json", "[1]"], "--filter-json: expected a JSON object"),
    (["search", "red dress"], "--checkpoint: needed to encode query text"),
    (["search"], "give query text"),
    (["search", "--collection", "nope", "--vector", "{q}"], "does not exist"),
    (["ingest", "--vectors", "title={q}"], "--ids: required"),
    (["ingest"], "give --vectors"),
    (["ingest", "--vectors", "title={m5}", "--vectors", "image={m5}", "--ids", "{ids}"], "fields: stored"),
    (["ingest", "--vectors", "title={m}", "--ids", "{ids}", "--collection", "new"], "expected 5 rows"),
])
def test_errors_are_reported_not_raised(tmp_path, capsys, argv, message):
    store = str(tmp_path / "store")
    with MultiFieldIndex(store, "products", {"title": 4, "image": 4}) as idx:
        idx.upsert(["a"], {"title": np.ones((1, 4)), "image": np.ones((1, 4))})
    np.save(tmp_path / "q.npy", np.ones(4))
    np.save(tmp_path / "m.npy", np.ones((3, 6)))
    np.save(tmp_path / "m5.npy", np.ones((5, 6)))
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\ne\n")
    fmt = {"q": str(tmp_path / "q.npy"), "m": str(tmp_path / "m.npy"), "m5": str(tmp_path / "m5.npy"), "ids": str(tmp_path / "ids.txt")}
    argv = [a.format(**fmt) for a in argv]
    assert main(argv[:1] + ["--store", store, "--quiet"] + argv[1:]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"gcl-qdrant {argv[0]}: error:")


class _CountingEncoder:
    """Stands in for gcl_train.models.Encoder: a fixed vector per call, counting values."""

    dim = 4

    def __init__(self):
        self.values = 0

    def __call__(self, values, kind):
        self.values += len(values)
        return np.tile(np.array([1.0, 2.0, 3.0, 4.0] if kind == "txt" else [4.0, 3.0, 2.0, 1.0], np.float32),
                       (len(values), 1))


def test_corpus_source_skips_done_batches_without_encoding(world):
    from gcl_train.cli.qdrant import CorpusSource

    _, data, ck = world
    usable = _usable_corpus(data)
    enc = _CountingEncoder()
    full = list(CorpusSource(data, "1", enc, ck).batches(16, skip=0))
    assert sum(len(b.ids) for b in full) == len(usable)
    assert {i for b in full for i in b.ids} == set(usable)
    encoded_all = enc.values
    enc2 = _CountingEncoder()
    tail = list(CorpusSource(data, "1", enc2, ck).batches(16, skip=2))
    assert [b.ids for b in tail] == [b.ids for b in full[2:]]
    assert 0 < enc2.values < encoded_all  # the skipped batches were never encoded
    for b in full:  # present masks follow the data: a missing title is a missing field
        for k, pid in enumerate(b.ids):
            doc, has_title, has_image = usable[pid]
            assert (b.present["title"][k], b.present["image"][k]) == (has_title, has_image)
