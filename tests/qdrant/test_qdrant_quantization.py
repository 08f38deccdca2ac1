"""``quantization="int8"``: the int8 copy of the main vector is built and searched, the
rescored scores are the exact weighted scores, recall stays high, ``exact=True`` scans the
float32 vectors, the setting round-trips through the stored schema, bad values are
rejected, and the embedded store agrees with qdrant-client local mode."""

import json
import os

import numpy as np
import pytest

import qdrant_plugin.backends.edge as edge_backend
from qdrant_plugin import IndexSchema, MultiFieldIndex, SchemaMismatchError, brute_force
from qdrant_plugin.schema import ID_KEY
from qdrant_plugin.synth import latent_embeddings

FIELDS = {"title": 32, "image": 32}
N = 3000
NQ = 30
WEIGHTS = [{"title": 0.1, "image": 0.9}, {"title": 1.0, "image": 1.0}, {"image": 2.0}]


@pytest.fixture(scope="module")
def corpus():
    docs = latent_embeddings(N, FIELDS, latent_dim=12, noise=0.3, seed=11)
    queries = latent_embeddings(NQ, FIELDS, latent_dim=12, noise=0.3, seed=12)
    ids = [f"d{i:05d}" for i in range(N)]
    payloads = [{"k": i % 5} for i in range(N)]
    return ids, docs, queries, payloads


def _build(path, name, fields, docs, ids, payloads=None, **kw):
    """An embedded index with its graph (and quantised copy) built despite the small size."""
    mp = pytest.MonkeyPatch()
    # Qdrant indexes (and quantises) only segments over 10 MB; force it for a test corpus.
    mp.setattr(edge_backend, "INDEXING_THRESHOLD_KB", 1)
    mp.setattr(edge_backend, "FULL_SCAN_THRESHOLD_KB", 1)
    try:
        idx = MultiFieldIndex(str(path), name, fields, **kw)
    finally:
        mp.undo()
    idx.upsert(ids, docs, payloads)
    idx.optimize()
    assert idx.backend.shard.info().indexed_vectors_count >= N, "the HNSW graph was not built"
    return idx


@pytest.fixture(scope="module")
def pair(corpus, tmp_path_factory):
    ids, docs, _, payloads = corpus
    edge = _build(tmp_path_factory.mktemp("quant"), "q", FIELDS, docs, ids, payloads, quantization="int8")
    local = MultiFieldIndex(":memory:", "q", FIELDS, quantization="int8")
    local.upsert(ids, docs, payloads)
    yield edge, local
    edge.close()
    local.close()


def _exact_scores(docs, query_row, weights):
    """``{doc index: sum_f w_f cos(q_f, d_f)}`` in float64 for every document."""
    s = np.zeros(N)
    for f, w in weights.items():
        q = np.asarray(query_row[f], dtype=np.float64)
        d = docs[f].astype(np.float64)
        s += w * (d / np.linalg.norm(d, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    return s


def _unrescored(idx, using, row, limit=10):
    """The engine's own int8 scores: a raw query with rescoring switched off."""
    qe = edge_backend._qe()
    params = qe.SearchParams(hnsw_ef=64, quantization=qe.QuantizationSearchParams(rescore=False))
    req = qe.QueryRequest(limit=limit, query=qe.Query.Nearest(np.asarray(row, np.float32).tolist(), using=using),
                          params=params, with_payload=True, with_vector=False)
    return [(p.payload[ID_KEY], float(p.score)) for p in idx.backend.shard.query(req)]


def test_int8_copy_is_searched_and_scores_are_rescored(pair, corpus):
    edge, _ = pair
    ids, docs, queries, _ = corpus
    w = WEIGHTS[0]
    pos = {d: i for i, d in enumerate(ids)}
    gaps = []
    for qi in range(5):
        row = {f: queries[f][qi] for f in FIELDS}
        exact = _exact_scores(docs, row, w)
        using, rows, _ = edge._plan(row, w, batch=False)
        assert using == "_concat" == edge.schema.quantized_vector
        gaps += [abs(s - exact[pos[d]]) for d, s in _unrescored(edge, using, rows[0])]
        for h in edge.search(row, field_weights=w, limit=10):
            assert h.score == pytest.approx(exact[pos[h.id]], abs=1e-5)
    # int8 codes give approximate scores: proof the quantised copy exists and is what the
    # graph walk reads, while the public scores above are the float32 ones.
    assert max(gaps) > 1e-4, max(gaps)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_recall_and_exact_scores(pair, corpus, weights):
    edge, _ = pair
    ids, docs, queries, _ = corpus
    got = edge.search_batch(queries, field_weights=weights, limit=10)
    ref = brute_force(ids, docs, queries, weights, 10)
    found = [len({h.id for h in a} & {r[0] for r in b}) / 10 for a, b in zip(got, ref)]
    assert np.mean(found) >= 0.98, np.mean(found)
    pos = {d: i for i, d in enumerate(ids)}
    for qi, hits in enumerate(got):
        exact = _exact_scores(docs, {f: queries[f][qi] for f in FIELDS}, weights)
        np.testing.assert_allclose([h.score for h in hits], exact[[pos[h.id] for h in hits]], atol=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_exact_search_ignores_the_int8_copy(pair, corpus, kind):
    idx = pair[0] if kind == "edge" else pair[1]
    ids, docs, queries, _ = corpus
    w = WEIGHTS[0]
    got = idx.search_batch(queries, field_weights=w, limit=10, exact=True)
    ref = brute_force(ids, docs, queries, w, 10)
    assert [[h.id for h in a] for a in got] == [[r[0] for r in b] for b in ref]
    for a, b in zip(got, ref):
        np.testing.assert_allclose([h.score for h in a], [r[1] for r in b], atol=1e-5)


def test_embedded_and_local_mode_agree(pair, corpus):
    edge, local = pair
    _, _, queries, _ = corpus
    for w in WEIGHTS:
        a = edge.search_batch(queries, field_weights=w, limit=10)
        b = local.search_batch(queries, field_weights=w, limit=10)
        same = sum([h.id for h in ha] == [h.id for h in hb] for ha, hb in zip(a, b))
        found = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
        assert same >= NQ - 2 and found >= 0.98, (w, same, found)
    q = {f: v[:10] for f, v in queries.items()}  # local mode filters in Python: keep it short
    a = edge.search_batch(q, field_weights=WEIGHTS[0], limit=10, filter={"k": [1, 2]})
    b = local.search_batch(q, field_weights=WEIGHTS[0], limit=10, filter={"k": [1, 2]})
    found = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
    assert found >= 0.98 and all(h.payload["k"] in (1, 2) for ha in a for h in ha), found


def test_oversampling_per_call(pair, corpus):
    edge, _ = pair
    ids, docs, queries, _ = corpus
    ref = brute_force(ids, docs, queries, WEIGHTS[0], 10)
    rec = {}
    for osr in (1.0, 4):
        got = edge.search_batch(queries, field_weights=WEIGHTS[0], limit=10, ef=10, oversampling=osr)
        rec[osr] = np.mean([len({h.id for h in a} & {r[0] for r in b}) / 10 for a, b in zip(got, ref)])
    # more int8 candidates (the beam widens with them) rescored: more of the true top 10
    assert rec[4] > rec[1.0], rec


@pytest.mark.parametrize("mode,fields", [
    ("fused", FIELDS),
    ("weighted", {"title": 32}),  # one field: the field's own vector carries graph and codes
])
def test_other_main_vectors_are_quantised(corpus, tmp_path, mode, fields):
    ids, docs, queries, _ = corpus
    d = {f: docs[f] for f in fields}
    idx = _build(tmp_path, "m", fields, d, ids, mode=mode, quantization="int8")
    try:
        assert idx.schema.quantized_vector == ("_fused" if mode == "fused" else "title")
        q = queries["title"][:10]
        using, rows, _ = idx._plan(q, None, batch=True)
        assert using == idx.schema.quantized_vector
        got = idx.search_batch(q, limit=10)
        exact = idx.search_batch(q, limit=10, exact=True)
        found = [len({h.id for h in a} & {h.id for h in b}) / 10 for a, b in zip(got, exact)]
        assert np.mean(found) >= 0.95
        es = [{h.id: h.score for h in b} for b in exact]
        for a, b in zip(got, es):
            for h in a:
                if h.id in b:
                    assert h.score == pytest.approx(b[h.id], abs=1e-5)
        gap = max(abs(s - es[0].get(i, s)) for i, s in _unrescored(idx, using, rows[0]))
        assert gap > 1e-4, gap
    finally:
        idx.close()


def test_schema_round_trip_and_mismatch(corpus, tmp_path):
    ids, docs, _, _ = corpus
    loc = str(tmp_path / "s")
    with MultiFieldIndex(loc, "q", FIELDS, quantization="int8") as idx:
        idx.upsert(ids[:50], {f: v[:50] for f, v in docs.items()})
    with open(os.path.join(loc, "q", "gcl_schema.json")) as f:
        assert json.load(f)["quantization"] == "int8"
    for kw in ({}, {"quantization": "int8"}):
        with MultiFieldIndex(loc, "q", **kw) as idx:
            assert idx.schema.quantization == "int8" and idx.count() == 50
            assert idx.search({f: v[0] for f, v in docs.items()}, limit=1)[0].id == ids[0]
    with pytest.raises(SchemaMismatchError, match="quantization: stored 'int8', requested None"):
        MultiFieldIndex(loc, "q", quantization="none")
    with MultiFieldIndex(loc, "plain", FIELDS):
        pass
    with pytest.raises(SchemaMismatchError, match="quantization: stored None, requested 'int8'"):
        MultiFieldIndex(loc, "plain", FIELDS, quantization="int8")
    with MultiFieldIndex(loc, "plain", FIELDS, quantization="none") as idx:
        assert idx.schema.quantization is None
    s = IndexSchema.build(FIELDS, quantization="int8")
    assert IndexSchema.from_json(s.to_json()) == s
    assert IndexSchema.from_json({**s.to_json(), "quantization": None}) != s


def test_store_written_before_quantisation_opens_unquantised(corpus, tmp_path):
    ids, docs, queries, _ = corpus
    loc = str(tmp_path / "old")
    with MultiFieldIndex(loc, "c", FIELDS) as idx:
        idx.upsert(ids[:200], {f: v[:200] for f, v in docs.items()})
    path = os.path.join(loc, "c", "gcl_schema.json")
    with open(path) as f:
        obj = json.load(f)
    del obj["quantization"]  # the layout schema version 1 had before this option
    with open(path, "w") as f:
        json.dump(obj, f)
    with MultiFieldIndex(loc, "c") as idx:
        assert idx.schema.quantization is None and idx.schema.quantized_vector is None
        hits = idx.search({f: v[0] for f, v in queries.items()}, limit=5)
        ref = brute_force(ids[:200], {f: v[:200] for f, v in docs.items()},
                          {f: v[:1] for f, v in queries.items()}, {"title": 1.0, "image": 1.0}, 5)[0]
        assert [h.id for h in hits] == [r[0] for r in ref]
    with pytest.raises(SchemaMismatchError, match="quantization"):
        MultiFieldIndex(loc, "c", quantization="int8")
    with open(path, "w") as f:
        json.dump({**obj, "quantization": "int4"}, f)
    with pytest.raises(SchemaMismatchError, match="unreadable schema"):
        MultiFieldIndex(loc, "c")


@pytest.mark.parametrize("bad", ["int4", "INT8", 8, True, ["int8"]])
def test_bad_quantization(tmp_path, bad):
    with pytest.raises(ValueError, match=r"^quantization: expected None, 'none' or one of \('int8',\), got"):
        MultiFieldIndex(str(tmp_path), "c", FIELDS, quantization=bad)
    assert not os.path.exists(tmp_path / "c" / "gcl_schema.json")


@pytest.mark.parametrize("bad", [0.5, 0, -2, float("nan"), float("inf"), "2", None, True])
def test_bad_oversampling(tmp_path, bad):
    with pytest.raises(ValueError, match="^oversampling: expected a"):
        MultiFieldIndex(":memory:", "c", FIELDS, quantization="int8", oversampling=bad)
    if bad is None:
        return  # None in search() means "the index's default"
    with MultiFieldIndex(":memory:", "c", FIELDS, quantization="int8") as idx:
        idx.upsert(["a"], {f: np.ones((1, d)) for f, d in FIELDS.items()})
        with pytest.raises(ValueError, match="^oversampling: expected a"):
            idx.search(np.ones(32), limit=1, oversampling=bad)


def test_server_requests_carry_the_quantisation(monkeypatch):
    """No Qdrant server runs here: record what the remote backend would send instead."""
    from types import SimpleNamespace

    from qdrant_client import models

    from qdrant_plugin.backends.client import ClientBackend

    sent = {}
    schema = IndexSchema.build({"title": 8, "image": 8}, quantization="int8")

    class Recorder:
        def create_collection(self, name, **kw):
            sent["create"] = kw

        def get_collection(self, name):
            vecs = {k: SimpleNamespace(size=d) for k, d in schema.vector_dims().items()}
            return SimpleNamespace(config=SimpleNamespace(params=SimpleNamespace(vectors=vecs)))

        def query_batch_points(self, name, requests):
            sent["requests"] = requests
            return []

        def close(self):
            pass

    b = ClientBackend("http://127.0.0.1:6333", "c")
    b.client = Recorder()
    b.create(schema)
    cfg = sent["create"]["vectors_config"]
    assert cfg["_concat"].quantization_config == models.ScalarQuantization(
        scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
    assert cfg["title"].quantization_config is None and cfg["image"].quantization_config is None
    row = np.ones((1, 16), np.float32)
    for exact, osr, want in [
        (False, 2.0, models.QuantizationSearchParams(rescore=True, oversampling=2.0)),
        (True, 2.0, models.QuantizationSearchParams(ignore=True)),
        (False, None, None),  # a vector without a quantised copy
    ]:
        b.query("_concat", row, 10, None, exact, 64, osr)
        params = sent["requests"][0].params
        assert params.quantization == want and params.exact is exact and params.hnsw_ef == 64
        sent["requests"][0].model_dump_json()  # a valid REST body
    b.close()


def test_cli_ingest_and_search_with_int8(tmp_path, capsys):
    from gcl_train.cli.qdrant import main

    docs = latent_embeddings(60, {"title": 8, "image": 8}, latent_dim=4, noise=0.3, seed=5)
    for f, v in docs.items():
        np.save(tmp_path / f"{f}.npy", v)
    ids = [f"i{k}" for k in range(60)]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    base = ["--store", str(tmp_path / "store"), "--collection", "q", "--quiet"]
    assert main(["ingest", *base, "--vectors", f"title={tmp_path / 'title.npy'}",
                 "--vectors", f"image={tmp_path / 'image.npy'}", "--ids", str(tmp_path / "ids.txt"),
                 "--quantization", "int8"]) == 0
    with MultiFieldIndex(str(tmp_path / "store"), "q") as idx:
        assert idx.schema.quantization == "int8"
    capsys.readouterr()
    np.save(tmp_path / "q.npy", docs["image"][7])
    assert main(["search", *base, "--vector", f"image={tmp_path / 'q.npy'}", "--oversampling", "3",
                 "--limit", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert hits[0]["id"] == "i7" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
