"""A second pass of hostile inputs against MultiFieldIndex and ingest. Each case here was
silently wrong, lost data or crashed before it was fixed, except two guards: the empty
corpus (the stricter id check must still accept it) and concurrent opens from threads
(which behaved). The other inputs tried behaved and are listed in issue 14's report."""

import glob
import os
import shutil
import threading
import time

import numpy as np
import pytest
from qdrant_client import models

from qdrant_plugin import MultiFieldIndex, StoreLockedError
from qdrant_plugin.ingest import ArraySource, Batch, BatchSource, ingest

FIELDS = {"title": 8, "image": 8}
KINDS = ["edge", "local"]


def _v(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f: rng.standard_normal((n, d)) + 0.1 for f, d in FIELDS.items()}


def _open(kind, tmp_path, **kw):
    return MultiFieldIndex(str(tmp_path / "s") if kind == "edge" else ":memory:", "c", FIELDS, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_complex_vectors_are_refused_not_truncated(kind, tmp_path):
    v = _v(3)
    with _open(kind, tmp_path) as idx:
        with pytest.raises(ValueError, match=r"vectors\['title'\]: expected real numbers, got a complex array"):
            idx.upsert(["a", "b", "c"], {"title": v["title"] + 1j, "image": v["image"]})
        idx.upsert(["a", "b", "c"], v)
        with pytest.raises(ValueError, match=r"query\['image'\]: expected real numbers"):
            idx.search({"title": v["title"][0], "image": v["image"][0] * 1j})
        with pytest.raises(ValueError, match=r"query: expected real numbers"):
            idx.search(v["title"][0] + 0j)
        assert idx.count() == 3
    with pytest.raises(ValueError, match=r"vectors\['image'\]: expected real numbers"):
        ArraySource(["a"], {"title": v["title"][:1], "image": v["image"][:1] + 0j})


@pytest.mark.parametrize("kind", KINDS)
def test_filters_that_can_match_nothing_are_refused(kind, tmp_path):
    v = _v(4)
    with _open(kind, tmp_path) as idx:
        idx.upsert(list("abcd"), v, [{"p": i} for i in range(4)])
        q = {f: x[0] for f, x in v.items()}
        with pytest.raises(ValueError, match=r"filter\['p'\]: a dict means a range .* \(not NaN\), got \{'gte': nan\}"):
            idx.search(q, filter={"p": {"gte": float("nan")}})  # was: an empty answer
        with pytest.raises(ValueError, match=r"filter\['p'\]: integer 1180591620717411303424 is outside"):
            idx.search(q, filter={"p": 2 ** 70})  # was: the engine's TypeError about a 'Helper' enum
        with pytest.raises(ValueError, match=r"filter\['p'\]: integer -9223372036854775809 is outside"):
            idx.count({"p": [1, -(2 ** 63) - 1]})
        assert len(idx.search(q, filter={"p": {"lt": float("inf")}}, limit=10)) == 4
        assert idx.count({"p": 2 ** 63 - 1}) == 0
    if kind == "edge":
        with MultiFieldIndex(str(tmp_path / "s"), "c") as idx:
            big = models.Filter(must=[models.FieldCondition(key="p", match=models.MatchValue(value=2 ** 70))])
            with pytest.raises(ValueError, match=r"filter\['p'\]: integer .* is outside"):
                idx.count(big)
            nan = models.Filter(must=[models.FieldCondition(key="p", range=models.Range(lt=float("nan")))])
            with pytest.raises(ValueError, match=r"range on 'p' has a NaN bound"):
                idx.count(nan)


def test_boolean_weights_are_refused(tmp_path):
    v = _v(3)
    with _open("local", tmp_path) as idx:
        idx.upsert(list("abc"), v)
        with pytest.raises(ValueError, match=r"field_weights\['title'\]: expected a number, got True"):
            idx.search({f: x[0] for f, x in v.items()}, field_weights={"title": True, "image": 0.5})


def test_an_empty_corpus_ingests_to_an_empty_collection(tmp_path):
    with _open("edge", tmp_path) as idx:
        rep = ingest(idx, ArraySource([], {f: np.zeros((0, d)) for f, d in FIELDS.items()}), progress=False)
        assert (rep.n_documents, rep.n_batches, idx.count()) == (0, 0, 0)


def test_a_source_longer_than_it_says_is_stopped_before_the_extra_batch(tmp_path):
    v = _v(30)

    class Liar(BatchSource):
        n, fingerprint = 10, {"kind": "liar"}

        def batches(self, batch_size, skip):
            for s in range(skip * batch_size, 30, batch_size):
                yield Batch([f"l{i}" for i in range(s, s + batch_size)], {f: x[s:s + batch_size] for f, x in v.items()})

    with _open("edge", tmp_path) as idx:
        with pytest.raises(RuntimeError, match=r"source: yielded a batch 1 beyond the 1 batches its 10 documents"):
            ingest(idx, Liar(), batch_size=10, progress=False)
        assert idx.count() == 10  # was 30, then the error


def test_a_state_dir_that_is_a_file_is_refused_before_writing(tmp_path):
    (tmp_path / "f").write_text("x")
    with _open("edge", tmp_path) as idx:
        with pytest.raises(ValueError, match=r"state_dir: .* exists and is not a directory"):
            ingest(idx, ArraySource(["a"], {f: x[:1] for f, x in _v(1).items()}), state_dir=str(tmp_path / "f"),
                   progress=False)
        assert idx.count() == 0  # was: the first batch written, then NotADirectoryError


def test_a_duck_typed_source_and_a_torn_id_file_tail(tmp_path):
    v = _v(100)
    src = ArraySource([f"d{i}" for i in range(100)], v)

    class Stop(Exception):
        pass

    class Half:  # not a BatchSource subclass: no all_ids, no __len__
        n, fingerprint = 100, src.fingerprint

        def batches(self, batch_size, skip):
            for k, b in enumerate(src.batches(batch_size, skip)):
                if skip + k == 5:
                    raise Stop()
                yield b

    with _open("edge", tmp_path) as idx:
        with pytest.raises(Stop):
            ingest(idx, Half(), batch_size=10, progress=False, checkpoint_seconds=0)
        (marker,) = glob.glob(str(tmp_path / "s" / "c" / "ingest" / "*.json"))
        with open(marker[:-5] + ".ids", "ab") as f:  # a kill while appending the next keys
            f.write(os.urandom(23))
        rep = ingest(idx, src, batch_size=10, progress=False)
        assert (rep.skipped_batches, rep.written_batches, rep.duplicates) == (5, 5, 0)
        assert idx.count() == 100 and os.path.getsize(marker[:-5] + ".ids") == 100 * 16


def test_a_deleted_store_directory_is_not_written_into(tmp_path):
    v = _v(2)
    idx = _open("edge", tmp_path)
    idx.upsert(["a"], {f: x[:1] for f, x in v.items()})
    shutil.rmtree(tmp_path / "s")
    with pytest.raises(RuntimeError, match=r"shard directory .* is gone"):
        idx.upsert(["b"], {f: x[1:] for f, x in v.items()})  # was: accepted, and lost
    idx.close()


def test_concurrent_opens_from_threads_admit_exactly_one(tmp_path):
    MultiFieldIndex(str(tmp_path / "s"), "c", FIELDS).close()
    got = []

    def opener():
        try:
            i = MultiFieldIndex(str(tmp_path / "s"), "c")
        except StoreLockedError:
            got.append("locked")
            return
        got.append("open")
        time.sleep(0.3)
        i.close()

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == ["locked"] * 5 + ["open"]


@pytest.mark.parametrize("kind", KINDS)
def test_unusual_but_valid_ids_round_trip_exactly(kind, tmp_path):
    ids = ["caf\u00e9", "cafe\u0301", "a\x00b", " ", "\U0001F600\u05d0", "\u202e", "x" * 100_000]
    v = _v(len(ids))
    with _open(kind, tmp_path) as idx:
        idx.upsert(ids, v)
        assert idx.count() == len(ids)  # NFC and NFD spellings stay two documents: ids are not normalised
        assert [r.id for r in idx.retrieve(ids)] == ids
        for bad in (np.int64(3), "\udcff", b"x"):
            with pytest.raises(ValueError, match=r"ids\[1\]: expected"):
                idx.upsert(["ok", bad], {f: x[:2] for f, x in v.items()})
