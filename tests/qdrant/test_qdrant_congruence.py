"""Congruence: the same documents and queries on the embedded Qdrant Edge store (with a
real HNSW graph) and on qdrant-client local mode give the same top-10 ids and scores
(qdrant-client's own tests/congruence_tests do this across its backends)."""

import numpy as np
import pytest
from qdrant_client import models

import qdrant_plugin.backends.edge as edge_backend
from qdrant_plugin import MultiFieldIndex, brute_force
from qdrant_plugin.synth import latent_embeddings

FIELDS = {"title": 32, "image": 32}
N = 4000
NQ = 30
WEIGHTS = [
    {"title": 0.1, "image": 0.9},
    {"title": 0.5, "image": 0.5},
    {"title": 3.0, "image": 1.0},
    {"title": 1.0},  # one field through the concatenated graph (zeros elsewhere)
]
FILTERS = [
    {"category": "shoes"},
    {"category": ["shoes", "bags"], "price": {"lt": 2500}},
    models.Filter(must_not=[models.FieldCondition(key="category", match=models.MatchValue(value="hats"))],
                  should=[models.FieldCondition(key="price", range=models.Range(gte=100, lte=3000))]),
]


@pytest.fixture(scope="module")
def corpus():
    docs = latent_embeddings(N, FIELDS, latent_dim=12, noise=0.3, seed=3)
    queries = latent_embeddings(NQ, FIELDS, latent_dim=12, noise=0.3, seed=4)
    ids = [f"p{i:05d}" for i in range(N)]
    cats = ["shoes", "bags", "hats", "coats"]
    payloads = [{"category": cats[i % 4], "price": (i * 37) % 5000} for i in range(N)]
    return ids, docs, queries, payloads


@pytest.fixture(scope="module")
def pair(corpus, tmp_path_factory):
    """Weighted indexes on both backends; the edge one with its HNSW graph built."""
    ids, docs, _, payloads = corpus
    mp = pytest.MonkeyPatch()
    # Qdrant skips the graph for segments under 10 MB; force it so HNSW is what is tested.
    # Likewise filtered searches walk the graph instead of scanning the few matches.
    mp.setattr(edge_backend, "INDEXING_THRESHOLD_KB", 1)
    mp.setattr(edge_backend, "FULL_SCAN_THRESHOLD_KB", 1)
    edge = MultiFieldIndex(str(tmp_path_factory.mktemp("congruence")), "c", FIELDS, ef=128)
    mp.undo()
    local = MultiFieldIndex(":memory:", "c", FIELDS)
    for idx in (edge, local):
        # payload indexes let Qdrant add filter-aware links to the graph (as in production)
        idx.create_payload_index("category", "keyword")
        idx.create_payload_index("price", "integer")
        idx.upsert(ids, docs, payloads)
    edge.optimize()
    info = edge.backend.shard.info()
    assert info.indexed_vectors_count >= N, "the HNSW graph was not built"
    yield edge, local
    edge.close()
    local.close()


def _both(edge, local, q, **kw):
    return edge.search_batch(q, **kw), local.search_batch(q, **kw)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_exact_search_is_identical(pair, corpus, weights):
    edge, local = pair
    _, _, queries, _ = corpus
    a, b = _both(edge, local, queries, field_weights=weights, limit=10, exact=True)
    for ha, hb in zip(a, b):
        assert [h.id for h in ha] == [h.id for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
        assert [h.payload for h in ha] == [h.payload for h in hb]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_hnsw_search_agrees_with_local_mode(pair, corpus, weights):
    edge, local = pair
    ids, docs, queries, _ = corpus
    a, b = _both(edge, local, queries, field_weights=weights, limit=10)
    same = sum([h.id for h in ha] == [h.id for h in hb] for ha, hb in zip(a, b))
    found = [len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)]
    assert same >= NQ - 1 and np.mean(found) >= 0.99, (same, np.mean(found))
    for ha, hb in zip(a, b):  # every returned score is the exact weighted score, HNSW or not
        exact = {h.id: h.score for h in hb}
        for h in ha:
            if h.id in exact:
                assert h.score == pytest.approx(exact[h.id], abs=1e-4)
    # and both agree with numpy
    ref = brute_force(ids, docs, queries, weights, 10)
    assert [[h.id for h in hb] for hb in b] == [[r[0] for r in rr] for rr in ref]


@pytest.mark.parametrize("flt", FILTERS, ids=["value", "any+range", "model"])
def test_filtered_search_agrees(pair, corpus, flt):
    edge, local = pair
    _, _, queries, _ = corpus
    q = {f: v[:10] for f, v in queries.items()}  # local mode filters in Python: keep it short
    b = local.search_batch(q, field_weights=WEIGHTS[0], limit=10, filter=flt)
    a = edge.search_batch(q, field_weights=WEIGHTS[0], limit=10, filter=flt, exact=True)
    assert [[h.id for h in ha] for ha in a] == [[h.id for h in hb] for hb in b]
    a = edge.search_batch(q, field_weights=WEIGHTS[0], limit=10, filter=flt)
    same = sum([h.id for h in ha] == [h.id for h in hb] for ha, hb in zip(a, b))
    found = np.mean([len({h.id for h in ha} & {h.id for h in hb}) / 10 for ha, hb in zip(a, b)])
    assert same >= 9 and found >= 0.99, (same, found)
    assert edge.count(flt) == local.count(flt)


def test_fused_mode_is_congruent(corpus, tmp_path):
    ids, docs, queries, payloads = corpus
    fw = {"image": 0.9, "title": 0.1}
    edge = MultiFieldIndex(str(tmp_path), "f", FIELDS, mode="fused", fused_weights=fw)
    local = MultiFieldIndex(":memory:", "f", FIELDS, mode="fused", fused_weights=fw)
    for idx in (edge, local):
        idx.upsert(ids, docs, payloads)
    edge.optimize()
    a, b = _both(edge, local, queries["title"], limit=10, exact=True)
    for ha, hb in zip(a, b):
        assert [h.id for h in ha] == [h.id for h in hb]
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=1e-4)
    edge.close()
    local.close()
