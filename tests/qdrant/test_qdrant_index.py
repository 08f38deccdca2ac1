"""MultiFieldIndex on the embedded store and on qdrant-client local mode: results against
numpy brute force, weights, fused mode, missing fields, idempotent upserts, reopen, locks,
and every bad input at the public boundary."""

import os
import subprocess
import sys

import numpy as np
import pytest

from qdrant_plugin import (
    CollectionNotFoundError,
    ForeignCollectionError,
    MultiFieldIndex,
    SchemaMismatchError,
    StoreLockedError,
    brute_force,
)
from qdrant_plugin.synth import latent_embeddings

FIELDS = {"title": 16, "image": 16}
N = 300
KINDS = ["edge", "local"]


def _open(kind, tmp_path, name="c", fields=FIELDS, **kw):
    loc = str(tmp_path / "store") if kind == "edge" else ":memory:"
    return MultiFieldIndex(loc, name, fields, **kw)


@pytest.fixture(scope="module")
def data():
    docs = latent_embeddings(N, FIELDS, latent_dim=8, noise=0.5, seed=0)
    # raw (unnormalised) vectors: the index must normalise them itself
    scale = np.random.default_rng(1).uniform(0.5, 3.0, size=(N, 1)).astype(np.float32)
    docs = {f: v * scale for f, v in docs.items()}
    queries = latent_embeddings(12, FIELDS, latent_dim=8, noise=0.5, seed=7)
    ids = [f"doc-{i}" for i in range(N)]
    payloads = [{"color": ["red", "blue", "green"][i % 3], "price": i, "even": i % 2 == 0} for i in range(N)]
    return ids, docs, queries, payloads


@pytest.fixture(params=KINDS)
def filled(request, tmp_path, data):
    ids, docs, _, payloads = data
    idx = _open(request.param, tmp_path)
    idx.upsert(ids, docs, payloads)
    yield idx
    idx.close()


@pytest.mark.parametrize("weights", [
    {"title": 0.1, "image": 0.9},
    {"title": 1.0, "image": 1.0},
    {"title": 2.5, "image": 0.0},  # a zero weight drops the field
    {"image": 0.7},
])
@pytest.mark.parametrize("exact", [False, True])
def test_weighted_search_matches_brute_force(filled, data, weights, exact):
    ids, docs, queries, _ = data
    for qi in range(len(queries["title"])):
        q = {f: queries[f][qi] for f in FIELDS}
        hits = filled.search(q, field_weights=weights, limit=10, exact=exact)
        ref = brute_force(ids, docs, {f: v[qi:qi + 1] for f, v in queries.items()}, weights, 10)[0]
        assert [h.id for h in hits] == [r[0] for r in ref]
        np.testing.assert_allclose([h.score for h in hits], [r[1] for r in ref], atol=1e-5)


def test_scores_are_the_weighted_sum_of_field_cosines(filled, data):
    ids, docs, queries, _ = data
    q = {f: queries[f][0] * 4.0 for f in FIELDS}  # query scale must not matter
    w = {"title": 0.3, "image": 1.7}
    hits = filled.search(q, field_weights=w, limit=5)
    recs = {r.id: r for r in filled.retrieve([h.id for h in hits], with_vectors=True)}
    for h in hits:
        expect = sum(
            w[f] * float(np.dot(q[f] / np.linalg.norm(q[f]), recs[h.id].vectors[f])) for f in FIELDS
        )
        assert h.score == pytest.approx(expect, abs=1e-5)


def test_one_vector_stands_for_all_fields(filled, data):
    _, _, queries, _ = data
    v = queries["title"][3]
    a = filled.search(v, field_weights={"title": 0.4, "image": 0.6}, limit=10)
    b = filled.search({"title": v, "image": v}, field_weights={"title": 0.4, "image": 0.6}, limit=10)
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-6)


def test_default_weights_are_equal_over_the_query_fields(filled, data):
    ids, docs, queries, _ = data
    q = {"image": queries["image"][2]}
    hits = filled.search(q, limit=10)
    ref = brute_force(ids, docs, {"image": queries["image"][2:3]}, {"image": 1.0}, 10)[0]
    assert [h.id for h in hits] == [r[0] for r in ref]
    both = filled.search({f: queries[f][2] for f in FIELDS}, limit=3)
    ref2 = brute_force(ids, docs, {f: v[2:3] for f, v in queries.items()}, {"title": 0.5, "image": 0.5}, 3)[0]
    np.testing.assert_allclose([h.score for h in both], [r[1] for r in ref2], atol=1e-5)


def test_search_batch_equals_single_searches(filled, data):
    _, _, queries, _ = data
    w = {"title": 0.2, "image": 0.8}
    batch = filled.search_batch({f: v[:5] for f, v in queries.items()}, field_weights=w, limit=7)
    assert len(batch) == 5
    for qi in range(5):
        single = filled.search({f: v[qi] for f, v in queries.items()}, field_weights=w, limit=7)
        assert [h.id for h in batch[qi]] == [h.id for h in single]


def test_payloads_come_back_and_filters_pass_through(filled, data):
    from qdrant_client import models

    ids, docs, queries, payloads = data
    q = {f: queries[f][0] for f in FIELDS}
    hits = filled.search(q, limit=N, filter={"color": "red"})
    assert len(hits) == N // 3 and all(h.payload["color"] == "red" for h in hits)
    assert hits[0].payload == payloads[int(hits[0].id.split("-")[1])]
    hits = filled.search(q, limit=N, filter={"color": ["red", "blue"], "price": {"gte": 10, "lt": 100}})
    assert {h.id for h in hits} == {ids[i] for i in range(10, 100) if i % 3 != 2}
    flt = models.Filter(must_not=[models.FieldCondition(key="color", match=models.MatchValue(value="red"))],
                        should=[models.FieldCondition(key="price", range=models.Range(lt=150)),
                                models.FieldCondition(key="price", match=models.MatchAny(any=[299]))])
    hits = filled.search(q, limit=N, filter=flt)
    keep = {ids[i] for i in range(N) if i % 3 != 0 and (i < 150 or i == 299)}
    assert {h.id for h in hits} == keep
    # filtered ranking is the unfiltered ranking restricted to the filter
    full = [h.id for h in filled.search(q, limit=N, exact=True)]
    assert [h.id for h in filled.search(q, limit=20, filter=flt, exact=True)] == [i for i in full if i in keep][:20]
    bool_flt = models.Filter(must_not=[models.FieldCondition(key="even", match=models.MatchValue(value=True))])
    if filled.kind == "edge":  # qdrant-edge-py 0.9 cannot express it: refused, not wrong
        with pytest.raises(ValueError, match="cannot match boolean values"):
            filled.search(q, filter=bool_flt)
    else:
        hits = filled.search(q, limit=N, filter=bool_flt)
        assert len(hits) == N // 2 and all(not h.payload["even"] for h in hits)
    assert filled.count({"color": "green"}) == N // 3
    assert filled.count() == N


def test_upserts_are_idempotent_and_overwrite(filled, data):
    ids, docs, queries, payloads = data
    filled.upsert(ids, docs, payloads)  # same documents again
    assert filled.count() == N
    # overwrite one document: its vectors now equal the query, so it ranks first with score 1
    q = {f: queries[f][0] for f in FIELDS}
    filled.upsert([ids[5]], {f: q[f][None] for f in FIELDS}, [{"color": "gold"}])
    assert filled.count() == N
    top = filled.search(q, field_weights={"title": 0.5, "image": 0.5}, limit=1)[0]
    assert top.id == ids[5] and top.score == pytest.approx(1.0, abs=1e-5)
    assert top.payload == {"color": "gold"}


def test_delete_and_retrieve(filled, data):
    ids, docs, _, payloads = data
    filled.delete(ids[:10] + ids[:3] + ["never-stored"])
    assert filled.count() == N - 10
    assert filled.retrieve(ids[:12]) == filled.retrieve(ids[10:12])
    rec = filled.retrieve([ids[20]], with_vectors=True)[0]
    assert rec.id == ids[20] and rec.payload == payloads[20]
    for f in FIELDS:
        v = docs[f][20] / np.linalg.norm(docs[f][20])
        np.testing.assert_allclose(rec.vectors[f], v, atol=1e-6)
    assert set(rec.vectors) == set(FIELDS)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_mode_ranks_by_the_fused_document(kind, tmp_path, data):
    ids, docs, queries, _ = data
    fw = {"image": 0.9, "title": 0.1}
    idx = _open(kind, tmp_path, "fused", mode="fused", fused_weights=fw)
    idx.upsert(ids, docs)
    unit = {f: v / np.linalg.norm(v, axis=1, keepdims=True) for f, v in docs.items()}
    fused = 0.9 * unit["image"] + 0.1 * unit["title"]
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    q = queries["title"][1]
    hits = idx.search(q, limit=10)
    ref = brute_force(ids, {"d": fused}, {"d": q[None]}, {"d": 1.0}, 10)[0]
    assert [h.id for h in hits] == [r[0] for r in ref]
    np.testing.assert_allclose([h.score for h in hits], [r[1] for r in ref], atol=1e-5)
    # the build-time weights, restated (any scale), are accepted; others are refused
    assert [h.id for h in idx.search(q, field_weights={"image": 9, "title": 1})] == [r[0] for r in ref]
    with pytest.raises(ValueError, match="fixed at build time"):
        idx.search(q, field_weights={"image": 0.5, "title": 0.5})
    with pytest.raises(ValueError, match="fused index"):
        idx.search({"title": q, "image": q})
    # one field alone searches that field's own vector
    hits = idx.search({"image": q}, limit=5)
    ref = brute_force(ids, docs, {"image": q[None]}, {"image": 1.0}, 5)[0]
    assert [h.id for h in hits] == [r[0] for r in ref]
    idx.close()


@pytest.mark.parametrize("kind", KINDS)
def test_missing_fields(kind, tmp_path, data):
    ids, docs, queries, _ = data
    present = {"title": np.arange(N) % 4 != 0, "image": np.arange(N) % 5 != 0}
    both_missing = ~present["title"] & ~present["image"]
    present["image"] = present["image"] | both_missing  # every document keeps one field
    poisoned = {f: v.copy() for f, v in docs.items()}
    poisoned["title"][~present["title"]] = np.nan  # rows marked missing are never read
    idx = _open(kind, tmp_path, "missing")
    idx.upsert(ids, poisoned, present=present)
    w = {"title": 0.3, "image": 0.7}
    q = {f: queries[f][4] for f in FIELDS}
    masked = {f: np.where(present[f][:, None], docs[f], 0.0) for f in FIELDS}
    # a missing field contributes cosine 0
    scores = sum(w[f] * np.where(present[f], (masked[f] / np.maximum(np.linalg.norm(masked[f], axis=1, keepdims=True), 1e-30)) @ (q[f] / np.linalg.norm(q[f])), 0.0) for f in FIELDS)
    order = np.argsort(-scores, kind="stable")[:10]
    hits = idx.search(q, field_weights=w, limit=10, exact=True)
    assert [h.id for h in hits] == [ids[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-5)
    rec = idx.retrieve([ids[0]], with_vectors=True)[0]
    assert set(rec.vectors) == {"image"}
    idx.close()

    fused = _open(kind, tmp_path, "missing_fused", mode="fused", fused_weights={"image": 0.9, "title": 0.1})
    fused.upsert(ids, poisoned, present=present)
    rec = fused.retrieve([ids[0]], with_vectors=True)[0]  # no title: the fused vector is the image
    hit = fused.search(docs["image"][0], limit=1)[0]
    assert hit.id == ids[0] and hit.score == pytest.approx(1.0, abs=1e-5)
    fused.close()


def test_reopen_from_disk(tmp_path, data):
    ids, docs, queries, payloads = data
    idx = _open("edge", tmp_path, hnsw_m=8)
    idx.upsert(ids, docs, payloads)
    q = {f: queries[f][0] for f in FIELDS}
    before = idx.search(q, limit=10)
    idx.close()
    idx.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        idx.count()
    again = MultiFieldIndex(str(tmp_path / "store"), "c")  # schema read from disk
    assert again.fields == FIELDS and again.schema.hnsw_m == 8 and again.count() == N
    assert again.search(q, limit=10) == before
    again.close()
    with MultiFieldIndex(str(tmp_path / "store"), "c", {"image": 16, "title": 16}) as same:  # order-insensitive
        assert same.count() == N


@pytest.mark.parametrize("kwargs, match", [
    ({"fields": {"title": 16, "image": 32}}, "fields: stored"),
    ({"fields": {"title": 16, "photo": 16}}, "fields: stored"),
    ({"fields": FIELDS, "mode": "fused"}, "mode"),
    ({"fields": FIELDS, "hnsw_m": 48}, "hnsw_m"),
    ({"fields": FIELDS, "index_fields": True}, "index_fields"),
])
def test_reopen_with_a_different_schema_is_refused(tmp_path, data, kwargs, match):
    ids, docs, _, _ = data
    with _open("edge", tmp_path) as idx:
        idx.upsert(ids[:5], {f: v[:5] for f, v in docs.items()})
    with pytest.raises(SchemaMismatchError, match=match):
        MultiFieldIndex(str(tmp_path / "store"), "c", **kwargs)
    with MultiFieldIndex(str(tmp_path / "store"), "c") as idx:  # nothing was dropped
        assert idx.count() == 5


def test_reopen_fused_with_other_weights_is_refused(tmp_path, data):
    loc = str(tmp_path / "store")
    MultiFieldIndex(loc, "f", FIELDS, mode="fused", fused_weights={"image": 0.9, "title": 0.1}).close()
    MultiFieldIndex(loc, "f", FIELDS, fused_weights={"image": 9, "title": 1}).close()  # same after normalising
    with pytest.raises(SchemaMismatchError, match="fused_weights"):
        MultiFieldIndex(loc, "f", FIELDS, fused_weights={"image": 0.5, "title": 0.5})


def test_second_open_is_refused_until_closed(tmp_path):
    loc = str(tmp_path / "store")
    idx = MultiFieldIndex(loc, "c", FIELDS)
    with pytest.raises(StoreLockedError, match="already open"):
        MultiFieldIndex(loc, "c")
    code = "from qdrant_plugin import MultiFieldIndex\nMultiFieldIndex(%r, 'c')" % loc
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "StoreLockedError" in proc.stderr
    MultiFieldIndex(loc, "other", FIELDS).close()  # other collections are independent
    idx.close()
    MultiFieldIndex(loc, "c").close()


@pytest.mark.parametrize("kind", KINDS)
def test_missing_collection_without_fields(kind, tmp_path):
    with pytest.raises(CollectionNotFoundError, match="pass fields"):
        _open(kind, tmp_path, "nope", fields=None)
    if kind == "edge":
        assert not (tmp_path / "store" / "nope").exists()


def test_foreign_collections_are_not_touched(tmp_path):
    import qdrant_edge as qe

    from qdrant_plugin.backends.client import ClientBackend

    os.makedirs(tmp_path / "store" / "alien")
    shard = qe.EdgeShard.create(str(tmp_path / "store" / "alien" / "shard"),
                                qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=4, distance=qe.Distance.Dot)))
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(1, [1.0, 0, 0, 0])]))
    shard.close()
    with pytest.raises(ForeignCollectionError, match="not created by this plugin"):
        MultiFieldIndex(str(tmp_path / "store"), "alien", FIELDS)
    back = ClientBackend(":memory:", "alien")
    from qdrant_client import models

    back.client.create_collection("alien", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    with pytest.raises(ForeignCollectionError, match="not created by this plugin"):
        back.read_schema()
    back.close()


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

def _bad_upserts(docs):
    good = {f: v[:3] for f, v in docs.items()}
    nan = {f: v.copy() for f, v in good.items()}
    nan["image"][1, 2] = np.nan
    inf = {f: v.copy() for f, v in good.items()}
    inf["title"][0, 0] = np.inf
    zero = {f: v.copy() for f, v in good.items()}
    zero["title"][2] = 0.0
    return [
        (["a", "b", "c"], {"title": good["title"][:, :8], "image": good["image"]}, None, r"vectors\['title'\]: expected shape \[N, 16\]"),
        (["a", "b", "c"], {"title": good["title"][:2], "image": good["image"]}, None, r"expected 3 rows"),
        (["a", "b", "c"], nan, None, r"vectors\['image'\]: rows \[1\] contain NaN"),
        (["a", "b", "c"], inf, None, r"contain NaN or inf"),
        (["a", "b", "c"], zero, None, r"vectors\['title'\]: rows \[2\] are zero vectors"),
        (["a", "b", "c"], {**good, "audio": good["title"]}, None, r"unknown field\(s\) \['audio'\]"),
        (["a", "b", "c"], {"title": good["title"]}, None, r"missing field\(s\) \['image'\]"),
        (["a", "b", "a"], good, None, r"duplicate ids in one batch: \['a'\]"),
        (["a", "", "c"], good, None, r"ids\[1\]: expected a non-empty string"),
        (["a", 2, "c"], good, None, r"ids\[1\]: expected a non-empty string"),
        ("abc", good, None, r"ids: expected a sequence of strings"),
        ([], {f: v[:0] for f, v in good.items()}, None, r"at least one id"),
        (["a", "b", "c"], good, [{}, {}], r"payloads: expected 3 entries"),
        (["a", "b", "c"], good, [{}, {"_gcl_id": "x"}, {}], r"reserved"),
        (["a", "b", "c"], good, [{}, "red", {}], r"payloads\[1\]: expected a dict"),
        (["a", "b", "c"], [good["title"]], None, r"vectors: expected a mapping"),
        (["a", "b", "c"], {"title": "nope", "image": good["image"]}, None, r"vectors\['title'\]: expected a numeric array"),
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_upserts_raise_and_write_nothing(kind, tmp_path, data):
    _, docs, _, _ = data
    idx = _open(kind, tmp_path, "bad")
    for ids, vecs, payloads, match in _bad_upserts(docs):
        with pytest.raises(ValueError, match=match):
            idx.upsert(ids, vecs, payloads)
    with pytest.raises(ValueError, match=r"present\['title'\]: expected a bool array of shape \[3\]"):
        idx.upsert(["a", "b", "c"], {f: v[:3] for f, v in docs.items()}, present={"title": [1, 0, 1]})
    with pytest.raises(ValueError, match=r"documents \[1\] have no field at all"):
        idx.upsert(["a", "b", "c"], {f: v[:3] for f, v in docs.items()},
                   present={"title": np.array([1, 0, 1], bool), "image": np.array([1, 0, 1], bool)})
    assert idx.count() == 0
    idx.close()


@pytest.mark.parametrize("call, match", [
    (lambda i, q: i.search({"title": q["title"], "audio": q["image"]}), r"query: unknown field\(s\) \['audio'\]"),
    (lambda i, q: i.search({"title": q["title"][:8]}), r"query\['title'\]: expected shape \[N, 16\]"),
    (lambda i, q: i.search({"title": np.full(16, np.nan)}), r"query\['title'\]: rows \[0\] contain NaN"),
    (lambda i, q: i.search({"title": np.zeros(16)}), r"zero vector"),
    (lambda i, q: i.search(np.zeros(16)), r"zero vector"),
    (lambda i, q: i.search(np.ones(12)), r"one vector can stand for all fields only"),
    (lambda i, q: i.search({}), r"at least one field vector"),
    (lambda i, q: i.search(q, field_weights={"title": -0.1, "image": 1}), r"field_weights\['title'\]: expected a finite weight >= 0"),
    (lambda i, q: i.search(q, field_weights={"title": float("nan")}), r"finite weight"),
    (lambda i, q: i.search(q, field_weights={"title": 0, "image": 0.0}), r"at least one weight must be > 0"),
    (lambda i, q: i.search(q, field_weights={"titel": 1}), r"field_weights: unknown field\(s\) \['titel'\]"),
    (lambda i, q: i.search(q, field_weights={"title": "heavy"}), r"field_weights\['title'\]: expected a number"),
    (lambda i, q: i.search({"title": q["title"]}, field_weights={"image": 1}), r"have weight > 0 but no query vector"),
    (lambda i, q: i.search(q, limit=0), r"limit: expected an int >= 1"),
    (lambda i, q: i.search(q, ef=0), r"ef: expected an int >= 1"),
    (lambda i, q: i.search(q, exact="yes"), r"exact: expected True or False"),
    (lambda i, q: i.search(q, filter="color=red"), r"filter: expected None, a dict"),
    (lambda i, q: i.search(q, filter={"price": 1.5}), r"filter\['price'\]"),
    (lambda i, q: i.search(q, filter={"price": {"above": 3}}), r"a dict means a range"),
    (lambda i, q: i.search(q, filter={"color": []}), r"non-empty list"),
    (lambda i, q: i.search_batch({"title": q["title"]}), r"expected shape \[Q, D\]"),
    (lambda i, q: i.delete("doc-1"), r"ids: expected a sequence of strings"),
    (lambda i, q: i.create_payload_index("color", "text"), r"kind: expected one of"),
])
def test_bad_queries_raise(filled, call, match):
    q = {f: np.ones(16, np.float32) for f in FIELDS}
    with pytest.raises(ValueError, match=match):
        call(filled, q)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (("{loc}", "c", {"title": 0}), {}, ValueError, r"fields\['title'\]: expected a positive int"),
    (("{loc}", "c", {"_concat": 4}), {}, ValueError, r"fields: field name must be"),
    (("{loc}", "c", {}), {}, ValueError, r"fields: expected a non-empty mapping"),
    (("{loc}", "c", FIELDS), {"mode": "sum"}, ValueError, r"mode: expected one of"),
    (("{loc}", "c", {"title": 8, "image": 16}), {"mode": "fused"}, ValueError, r"needs the same dimension"),
    (("{loc}", "c", FIELDS), {"fused_weights": {"title": 1}}, ValueError, r"only used with mode='fused'"),
    (("{loc}", "c", FIELDS), {"mode": "fused", "fused_weights": {"text": 1}}, ValueError, r"fused_weights: unknown field"),
    (("{loc}", "c", FIELDS), {"mode": "fused", "fused_weights": {"title": 0, "image": 0}}, ValueError, r"at least one weight"),
    (("{loc}", "c", FIELDS), {"hnsw_m": 2}, ValueError, r"hnsw_m: expected an int >= 4"),
    (("{loc}", "c", FIELDS), {"ef": 0}, ValueError, r"ef: expected an int >= 1"),
    (("{loc}", "a/b", FIELDS), {}, ValueError, r"collection: expected a name"),
    (("ftp://host", "c", FIELDS), {}, ValueError, r"location: unsupported scheme"),
    (("", "c", FIELDS), {}, ValueError, r"location: expected a directory path"),
    (("{loc}", "c", FIELDS), {"api_key": "k"}, ValueError, r"api_key: only used with a Qdrant server URL"),
    ((":memory:", "c", FIELDS), {"api_key": "k"}, ValueError, r"api_key: only used with a Qdrant server URL"),
])
def test_bad_construction(tmp_path, args, kwargs, exc, match):
    loc = str(tmp_path / "store")
    args = tuple(a.format(loc=loc) if isinstance(a, str) else a for a in args)
    with pytest.raises(exc, match=match):
        MultiFieldIndex(*args, **kwargs)
    if os.path.isdir(loc):  # a refused creation leaves no usable collection behind
        with pytest.raises(CollectionNotFoundError):
            MultiFieldIndex(loc, "c")


def test_location_that_is_a_file(tmp_path):
    p = tmp_path / "file"
    p.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        MultiFieldIndex(str(p), "c", FIELDS)


def test_weighted_row_is_the_general_path_to_the_bit():
    # The single-query fast path must give the validating path's query row exactly, and
    # hand every irregular call (which the validating path refuses or treats specially) back.
    from qdrant_plugin.schema import IndexSchema
    from qdrant_plugin.vectors import check_field_weights, query_fields, weighted_query, weighted_row

    rng = np.random.default_rng(3)
    fast_hits = fallbacks = 0
    for _ in range(400):
        dims = {f"f{i}": int(rng.integers(1, 9)) for i in range(int(rng.integers(2, 4)))}
        schema = IndexSchema.build(dims, "weighted", None, 16, 64, bool(rng.integers(0, 2)))
        names = list(dims)
        sub = [f for f in names if rng.random() < 0.7] or names[:1]
        dtype = (np.float32, np.float64, np.int64)[int(rng.integers(0, 3))]
        scale = 10 ** rng.uniform(-5, 5)
        query = {f: (rng.standard_normal(dims[f]) * scale).astype(dtype) for f in sub}
        if rng.random() < 0.1:
            query[sub[0]] = np.zeros(dims[sub[0]], dtype)
        if rng.random() < 0.1:
            query[sub[0]] = query[sub[0]].tolist()
        weights = None if rng.random() < 0.3 else {
            f: (0, 1, 0.25, 3.5, -1.0, np.float64(0.5), float("nan"))[int(rng.integers(0, 7))]
            for f in names if rng.random() < 0.8}
        fast = weighted_row(schema, query, weights)
        try:
            q, _ = query_fields(schema, query, False)
            w = check_field_weights(schema, weights, list(q))
            ref = None if (len(w) == 1 and schema.index_fields) else weighted_query(schema, q, w)
        except ValueError:
            ref = None
        if fast is None:
            fallbacks += 1
        else:
            fast_hits += 1
            assert ref is not None and fast.dtype == ref.dtype and np.array_equal(fast, ref)
    assert fast_hits > 50 and fallbacks > 50  # both branches were exercised


def test_edge_hit_id_falls_back_to_the_point_id(tmp_path, data):
    # The embedded backend hands out point ids lazily; a point without the id payload key
    # (not written by this plugin) still comes back under its point id.
    import uuid

    from qdrant_plugin.ids import point_ids
    from qdrant_plugin.vectors import doc_vectors

    ids, docs, _, _ = data
    idx = _open("edge", tmp_path)
    idx.upsert(ids[:5], {f: v[:5] for f, v in docs.items()})
    vecs, mask = doc_vectors(idx.schema, {f: v[5:6] for f, v in docs.items()}, 1)
    foreign = str(uuid.UUID(int=12345))
    idx.backend.upsert([foreign], vecs, mask, [{"note": "no id key"}])
    q = {f: docs[f][5] for f in FIELDS}
    hits = idx.search(q, limit=6, exact=True)
    assert hits[0].id == foreign and hits[0].payload == {"note": "no id key"}
    assert sorted(h.id for h in hits[1:]) == sorted(ids[:5])
    raw = idx.backend.query(idx.schema.main_vector, np.ones((1, 32), np.float32), 6, None, True, 10)
    assert sorted(pid() for pid, _, _ in raw[0]) == sorted([foreign] + point_ids(ids[:5]))
    idx.close()
