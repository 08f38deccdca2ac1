"""Repeated document ids: refused by default, or reported (first kept / last kept), in one
upsert, across the batches of one ingest, and across a crash + resume of that ingest.

Before: an ingest of 10 documents with 5 distinct ids ended with 5 stored and exit 0;
``[1, "1"]`` and ``[None]`` were turned into strings ("1", "None") without a word."""

import os
import subprocess
import sys

import numpy as np
import pytest

from qdrant_plugin import DuplicateIdError, MultiFieldIndex
from qdrant_plugin.ids import SeenIds, id_keys, ids_from_json, repeated_ids
from qdrant_plugin.ingest import CRASH_ENV, ArraySource, Batch, BatchSource, ingest

FIELDS = {"title": 8, "image": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vecs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {f: rng.standard_normal((n, d)).astype(np.float32) + 0.1 for f, d in FIELDS.items()}


class ListSource(BatchSource):
    """A source that does not list its ids up front (like an encoded corpus)."""

    def __init__(self, ids, vectors, tag="list"):
        self._ids, self._v, self.n = list(ids), vectors, len(ids)
        self.fingerprint = {"kind": tag, "ids": self._ids}

    def batches(self, batch_size, skip):
        for s in range(skip * batch_size, self.n, batch_size):
            e = min(self.n, s + batch_size)
            yield Batch(self._ids[s:e], {f: v[s:e] for f, v in self._v.items()},
                        [{"row": i} for i in range(s, e)])


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_repeated_ids_in_one_ingest_are_refused_before_anything_is_written(kind, tmp_path):
    loc = str(tmp_path / "s") if kind == "edge" else ":memory:"
    ids = [f"d{i % 5}" for i in range(10)]  # 10 documents, 5 ids: batches 0-1 hold each id once
    with MultiFieldIndex(loc, "c", FIELDS) as idx:
        with pytest.raises(DuplicateIdError, match=r"source: 5 id\(s\) occur more than once, e.g. \['d0', "
                                                   r"'d1', 'd2', 'd3', 'd4'\]; nothing was written"):
            ingest(idx, ArraySource(ids, _vecs(10)), batch_size=5, progress=False)
        assert idx.count() == 0


def test_a_source_without_an_id_list_stops_at_the_batch_with_the_repeat(tmp_path):
    ids = ["a", "b", "c", "d", "e", "b"]
    with MultiFieldIndex(str(tmp_path / "s"), "c", FIELDS) as idx:
        with pytest.raises(DuplicateIdError, match=r"batch 2 \(source documents from 4\): id\(s\) \['b'\] occur "
                                                   r"earlier in this ingest.*this batch was not written"):
            ingest(idx, ListSource(ids, _vecs(6)), batch_size=2, progress=False, checkpoint_seconds=0)
        assert idx.count() == 4
    # the batches before it are recorded: a rerun with on_duplicate="report" resumes after them
    with MultiFieldIndex(str(tmp_path / "s"), "c") as idx:
        rep = ingest(idx, ListSource(ids, _vecs(6)), batch_size=2, progress=False, on_duplicate="report")
        assert (rep.skipped_batches, rep.written_batches) == (2, 1)
        assert (rep.duplicates, rep.duplicate_ids) == (1, ["b"])
        assert idx.count() == 5
        assert idx.retrieve(["b"])[0].payload == {"row": 1}  # the first one stayed
        assert "1 documents repeated an earlier id" in rep.summary()


@pytest.mark.parametrize("mode, kept_row", [("report", 0), ("last", 7)])
def test_report_and_last_count_the_repeats(tmp_path, mode, kept_row):
    ids = ["x", "y", "z", "x", "w", "y", "v", "x"]  # x at 0, 3, 7; y at 1, 5
    vec = _vecs(8)
    with MultiFieldIndex(str(tmp_path / "s"), "c", FIELDS) as idx:
        rep = ingest(idx, ListSource(ids, vec), batch_size=3, progress=False, on_duplicate=mode)
        assert rep.duplicates == 3 and rep.duplicate_ids == ["x", "y"]
        assert rep.n_documents == 8 and idx.count() == 5
        rec = idx.retrieve(["x"], with_vectors=True)[0]
        assert rec.payload == {"row": kept_row}
        np.testing.assert_allclose(rec.vectors["title"], vec["title"][kept_row] / np.linalg.norm(vec["title"][kept_row]),
                                   atol=1e-6)
        # ArraySource with repeats goes through the same path
        rep = ingest(idx, ArraySource(ids, vec), batch_size=8, progress=False, on_duplicate=mode)
        assert rep.duplicates == 3 and idx.count() == 5


def test_int_and_none_ids_are_refused_not_stringified(tmp_path):
    with pytest.raises(ValueError, match=r"ids\[0\]: expected a non-empty string, got 1 \(ids are strings"):
        ArraySource([1, "1"], _vecs(2))
    with pytest.raises(ValueError, match=r"ids\[1\]: expected a non-empty string, got None \(a missing id"):
        ArraySource(["a", None], _vecs(2))
    for bad in (1.0, True, ["a"], {"a": 1}, b"a"):
        with pytest.raises(ValueError, match=r"ids\[0\]: expected a non-empty string"):
            ArraySource([bad, "b"], _vecs(2))
    # ids read from JSON: integers become their decimal string, so [1, "1"] is a repeat
    assert ids_from_json(["a", 1, 22], "ids.json") == ["a", "1", "22"]
    for bad, typ in ((None, "NoneType"), (1.5, "float"), (True, "bool"), ([1], "list")):
        with pytest.raises(ValueError, match=rf"ids.json: item 1: expected a string or an integer id, got {typ}"):
            ids_from_json(["a", bad], "ids.json")
    with MultiFieldIndex(":memory:", "c", FIELDS) as idx:
        with pytest.raises(DuplicateIdError, match=r"\['1'\]"):
            ingest(idx, ArraySource(ids_from_json([1, "1"], "ids.json"), _vecs(2)), progress=False)
        assert idx.count() == 0


@pytest.mark.parametrize("kind", ["edge", "local"])
def test_upsert_on_duplicate(kind, tmp_path):
    loc = str(tmp_path / "s") if kind == "edge" else ":memory:"
    vec = _vecs(4)
    ids = ["a", "b", "a", "c"]
    pls = [{"row": i} for i in range(4)]
    with MultiFieldIndex(loc, "c", FIELDS) as idx:
        with pytest.raises(DuplicateIdError, match=r"duplicate ids in one batch: \['a'\].*on_duplicate"):
            idx.upsert(ids, vec, pls)
        with pytest.raises(ValueError, match=r"on_duplicate: expected one of"):
            idx.upsert(ids, vec, pls, on_duplicate="first")
        assert idx.count() == 0
        assert idx.upsert(ids, vec, pls, on_duplicate="report") == 3
        assert idx.retrieve(["a"])[0].payload == {"row": 0}
        assert idx.upsert(ids, vec, pls, on_duplicate="last") == 3
        assert idx.retrieve(["a"])[0].payload == {"row": 2}
        assert idx.count() == 3


def test_resume_after_a_crash_is_not_a_duplicate_and_keeps_earlier_ids(tmp_path):
    """The batches re-sent after the marker are not repeats; a repeat of an id written
    before the crash is still found after the resume (the ids are recorded on disk)."""
    store = str(tmp_path / "s")
    n, bs = 40, 4
    ids = [f"d{i}" for i in range(n)]
    ids[33] = "d5"  # batch 8 repeats an id of batch 1, written before the crash
    np.save(tmp_path / "v_title.npy", _vecs(n)["title"])
    np.save(tmp_path / "v_image.npy", _vecs(n)["image"])
    script = f"""
import numpy as np, sys
sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from test_qdrant_duplicates import ListSource
from qdrant_plugin import MultiFieldIndex
from qdrant_plugin.ingest import ingest
ids = {ids!r}
v = {{f: np.load({str(tmp_path)!r} + f"/v_{{f}}.npy") for f in ("title", "image")}}
with MultiFieldIndex({store!r}, "c", {FIELDS!r}) as idx:
    ingest(idx, ListSource(ids, v), batch_size={bs}, progress=False, checkpoint_seconds=0,
           on_duplicate=sys.argv[1])
"""
    env = dict(os.environ, PYTHONPATH=ROOT, **{CRASH_ENV: "6"})
    proc = subprocess.run([sys.executable, "-c", script, "error"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 75, proc.stderr  # batch 5 sent, never recorded
    v = {f: np.load(tmp_path / f"v_{f}.npy") for f in FIELDS}
    with MultiFieldIndex(store, "c") as idx:
        assert idx.count() == 24
        with pytest.raises(DuplicateIdError, match=r"batch 8 .*\['d5'\] occur earlier"):
            ingest(idx, ListSource(ids, v), batch_size=bs, progress=False, checkpoint_seconds=0)
        assert idx.count() == 32  # batches 5-7 went in (5 re-sent: no false repeat), 8 did not
        rep = ingest(idx, ListSource(ids, v), batch_size=bs, progress=False, on_duplicate="report")
        assert (rep.skipped_batches, rep.written_batches, rep.duplicates, rep.duplicate_ids) == (8, 2, 1, ["d5"])
        assert idx.count() == n - 1
        assert idx.retrieve(["d5"])[0].payload == {"row": 5}


def test_resume_counts_the_repeats_of_the_run_before_the_crash(tmp_path):
    store = str(tmp_path / "s")
    ids = ["a", "b", "a", "c", "d", "e", "b", "f"]
    script = f"""
import numpy as np, sys
sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
from test_qdrant_duplicates import ListSource, _vecs
from qdrant_plugin import MultiFieldIndex
from qdrant_plugin.ingest import ingest
with MultiFieldIndex({store!r}, "c", {FIELDS!r}) as idx:
    ingest(idx, ListSource({ids!r}, _vecs(8)), batch_size=2, progress=False, checkpoint_seconds=0,
           on_duplicate="last")
"""
    env = dict(os.environ, PYTHONPATH=ROOT, **{CRASH_ENV: "3"})
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    with MultiFieldIndex(store, "c") as idx:
        rep = ingest(idx, ListSource(ids, _vecs(8)), batch_size=2, progress=False, on_duplicate="last")
        assert rep.skipped_batches == 2 and rep.duplicates == 2 and rep.duplicate_ids == ["a", "b"]
        assert idx.count() == 6 and idx.retrieve(["b"])[0].payload == {"row": 6}


def test_the_id_set_is_16_bytes_per_id_and_exact():
    n = 1_000_000
    ids = [f"sku-{i:07d}" for i in range(n)]
    seen = SeenIds()
    keys = id_keys(ids)
    for s in range(0, n, 4096):
        assert not seen.contains(keys[s:s + 4096]).any()
        seen.add(keys[s:s + 4096])
    assert len(seen) == n
    assert sum(h.nbytes + lo.nbytes for h, lo in seen._runs) == 16 * n
    assert len(seen._runs) <= 20
    probe = id_keys(["sku-0000000", "sku-0999999", "sku-1000000", "", "sku-0500000 "])
    assert seen.contains(probe).tolist() == [True, True, False, False, False]
    assert repeated_ids(ids + ["sku-0000042", "sku-0000007", "sku-0000042"], limit=5) == (
        ["sku-0000007", "sku-0000042"], 2)
