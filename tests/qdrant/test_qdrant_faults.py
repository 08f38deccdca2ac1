"""Faults around the embedded store and the ingest (issue 14): a full disk, payloads the
engine rejects halfway through a batch, weights that overflow float32, corrupt schema and
marker files, a bad checkpoint interval, leftovers of a killed optimize(), and the
progress bar's total and ETA.

Full disk: tested twice. With a patched free-space probe (always runs), and on a real
tmpfs mounted here when the machine allows ``mount -t tmpfs`` (root in a sandbox); the
engine maps its files, so before the fix a full tmpfs killed the process with SIGBUS."""

import datetime
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from qdrant_plugin import CorruptFileError, InsufficientSpaceError, MultiFieldIndex
from qdrant_plugin.backends import edge as edge_mod
from qdrant_plugin.ingest import ArraySource, Batch, BatchSource, ingest
from qdrant_plugin.synth import latent_embeddings

FIELDS = {"title": 16, "image": 16}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ["edge", "local"]


def _loc(kind, tmp_path):
    return str(tmp_path / "store") if kind == "edge" else ":memory:"


def _docs(n, seed=0):
    return latent_embeddings(n, FIELDS, latent_dim=8, seed=seed)


# ---------------------------------------------------------------------------------------
# disk space
# ---------------------------------------------------------------------------------------

def test_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    docs = _docs(300)
    ids = [f"d{i}" for i in range(300)]
    idx = MultiFieldIndex(store, "c", FIELDS)
    idx.upsert(ids[:100], {f: v[:100] for f, v in docs.items()})
    free = {"bytes": 32 * 2 ** 20 + 100_000}  # the 32 MiB headroom, and less than the 200 documents need
    monkeypatch.setattr(edge_mod, "free_bytes", lambda path: free["bytes"])
    monkeypatch.setattr(edge_mod, "sparse_bytes", lambda path: 0)
    with pytest.raises(InsufficientSpaceError) as e:
        idx.upsert(ids[100:], {f: v[100:] for f, v in docs.items()})
    msg = str(e.value)
    assert store in msg and "upsert of 200 documents" in msg and f"{32 * 2 ** 20 + 100_000} bytes) is free" in msg
    assert re.search(r"needs about [\d.]+ MiB \(\d+ bytes: [\d.]+ KiB estimated for the write", msg)
    assert isinstance(e.value, OSError)
    assert idx.count() == 100  # nothing of the refused batch
    with pytest.raises(InsufficientSpaceError, match=r"optimize\(\)"):
        free["bytes"] = 32 * 2 ** 20 + 1000
        idx.optimize()
    # an ingest that cannot fit is refused before its first batch
    free["bytes"] = 32 * 2 ** 20 + 300_000  # each batch of 50 would fit, the whole ingest and its build not
    with pytest.raises(InsufficientSpaceError, match=r"ingesting 200 documents"):
        ingest(idx, ArraySource(ids[100:], {f: v[100:] for f, v in docs.items()}), batch_size=50,
               progress=False)
    assert idx.count() == 100
    idx.close()
    # creating a collection needs the engine's first files
    with pytest.raises(InsufficientSpaceError, match=r"creating the collection"):
        MultiFieldIndex(store, "other", FIELDS)
    monkeypatch.undo()
    with MultiFieldIndex(store, "c") as idx:
        assert idx.count() == 100
    MultiFieldIndex(store, "other", FIELDS).close()


def test_ingest_stops_cleanly_when_the_disk_fills_and_resumes(tmp_path, monkeypatch):
    store = str(tmp_path / "store")
    docs = _docs(400, seed=1)
    ids = [f"d{i}" for i in range(400)]
    src = ArraySource(ids, docs)
    calls = {"n": 0}

    def shrinking(path):  # plenty for the creation, the up-front check and 3 batches, then full
        calls["n"] += 1
        return 10 ** 12 if calls["n"] <= 5 else 10 ** 6

    monkeypatch.setattr(edge_mod, "free_bytes", shrinking)
    with MultiFieldIndex(store, "c", FIELDS) as idx:
        with pytest.raises(InsufficientSpaceError, match=r"upsert of 50 documents"):
            ingest(idx, src, batch_size=50, progress=False, checkpoint_seconds=3600)
        assert idx.count() == 150
    monkeypatch.undo()
    with MultiFieldIndex(store, "c") as idx:
        rep = ingest(idx, src, batch_size=50, progress=False)
        assert rep.skipped_batches == 3 and rep.written_batches == 5  # progress was recorded at the error
        assert idx.count() == 400


def _can_mount_tmpfs(tmp_path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    d = tmp_path / "probe"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        return False
    subprocess.run(["umount", str(d)], check=True)
    return True


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs of the given size (MiB); unmounted afterwards."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("mount -t tmpfs is not permitted here")
    mounted = []

    def make(mib):
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(d)], check=True)
        mounted.append(d)
        return str(d)

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)])


_FILL = """
import sys, numpy as np
from qdrant_plugin import MultiFieldIndex
from qdrant_plugin.ingest import ArraySource, Batch, BatchSource, ingest
loc, n, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
F = {"title": 128, "image": 128}
rng = np.random.default_rng(0)
v = {f: rng.standard_normal((n, d)).astype(np.float32) for f, d in F.items()}
ids = [f"d{i}" for i in range(n)]
src = ArraySource(ids, v)

class Stream(BatchSource):  # does not know its length: no up-front check, only per batch
    fingerprint = src.fingerprint
    def batches(self, batch_size, skip):
        return src.batches(batch_size, skip)

with MultiFieldIndex(loc, "c", F) as idx:
    print("opened", flush=True)
    ingest(idx, src if kind == "sized" else Stream(), batch_size=500, progress=False,
           checkpoint_seconds=0, optimize=False)
"""


def _run(args, timeout=300):
    return subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def test_real_tmpfs_2mb_refuses_cleanly(tmpfs):
    loc = os.path.join(tmpfs(2), "store")
    r = _run([_FILL, loc, "5000", "sized"])
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])  # was -7 (SIGBUS), no output
    assert "InsufficientSpaceError" in r.stderr and loc in r.stderr and "2097152 bytes) is free" in r.stderr
    assert "opened" not in r.stdout


def test_real_tmpfs_fills_up_then_stops_and_reopens(tmpfs):
    loc = os.path.join(tmpfs(150), "store")
    # a source that knows its size is refused before the first batch
    r = _run([_FILL, loc, "100000", "sized"])
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "opened" in r.stdout and "InsufficientSpaceError" in r.stderr and "ingesting 100000 documents" in r.stderr
    # a stream is written until the next batch would not fit, then stops with the error
    r = _run([_FILL, loc, "100000", "stream"])
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "InsufficientSpaceError" in r.stderr and "upsert of 500 documents" in r.stderr
    # the store is intact and opens again (before the fix, even the reopen died with SIGBUS)
    probe = ("import sys\nfrom qdrant_plugin import MultiFieldIndex\n"
             "with MultiFieldIndex(sys.argv[1], 'c') as i: print('count', i.count())")
    r2 = _run([probe, loc])
    assert r2.returncode == 0, (r2.returncode, r2.stderr[-2000:])
    assert int(r2.stdout.split()[-1]) % 500 == 0 and int(r2.stdout.split()[-1]) > 0


# ---------------------------------------------------------------------------------------
# payloads the engine would reject halfway through a batch
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad, match", [
    (float("nan"), r"payloads\[700\]\['x'\]: expected a finite number, got nan"),
    (float("-inf"), r"payloads\[700\]\['x'\]: expected a finite number"),
    ({1, 2}, r"payloads\[700\]\['x'\]: expected a JSON value .* got set"),
    (datetime.datetime(2024, 1, 1), r"payloads\[700\]\['x'\]: expected a JSON value .* got datetime"),
    (2 ** 70, r"payloads\[700\]\['x'\]: integer 1180591620717411303424 is outside the 64-bit signed range"),
    (2 ** 63, r"outside the 64-bit signed range"),
    (b"raw", r"got bytes"),
    (np.arange(3), r"got ndarray .*\(use \.tolist\(\)\)"),
    ({"meta": {"tags": ["a", float("nan")]}}, r"payloads\[700\]\['x'\]\['meta'\]\['tags'\]\[1\]: expected a finite number"),
    ({"k": {3: "int key"}}, r"payloads\[700\]\['x'\]\['k'\]: keys must be strings, got int 3"),
    ("\ud800", r"payloads\[700\]\['x'\]: expected a string encodable as UTF-8"),
])
def test_a_bad_payload_writes_nothing(kind, tmp_path, bad, match):
    docs = _docs(1000)
    pls = [{"row": i} for i in range(1000)]
    pls[700] = {"x": bad}
    with MultiFieldIndex(_loc(kind, tmp_path), "c", FIELDS) as idx:
        with pytest.raises(ValueError, match=match):
            idx.upsert([f"d{i}" for i in range(1000)], docs, pls)
        assert idx.count() == 0  # was 512: the first write request went in


@pytest.mark.parametrize("kind", KINDS)
def test_payload_edge_cases_that_are_accepted_store_the_same_everywhere(kind, tmp_path):
    cyclic = []
    cyclic.append(cyclic)
    deep = 1
    for _ in range(70):
        deep = [deep]
    with MultiFieldIndex(_loc(kind, tmp_path), "c", FIELDS) as idx:
        ok = {"i": np.int64(5), "f": np.float32(1.5), "b": np.bool_(True), "t": (1, "a"), "big": 2 ** 63 - 1,
              "neg": -(2 ** 63), "none": None, "s": np.str_("x"), "": "empty key", "u": "caf\u00e9 \u2603"}
        idx.upsert(["a"], {f: v[:1] for f, v in _docs(1).items()}, [ok])
        got = idx.retrieve(["a"])[0].payload
        assert got == {"i": 5, "f": 1.5, "b": True, "t": [1, "a"], "big": 2 ** 63 - 1, "neg": -(2 ** 63),
                       "none": None, "s": "x", "": "empty key", "u": "caf\u00e9 \u2603"}
        assert type(got["i"]) is int and type(got["b"]) is bool
        with pytest.raises(ValueError, match=r"payloads\[0\]\['c'\]\[0\]: contains itself"):
            idx.upsert(["b"], {f: v[:1] for f, v in _docs(1).items()}, [{"c": cyclic}])
        with pytest.raises(ValueError, match=r"nested deeper than 64 levels"):  # the engine's stack overflowed
            idx.upsert(["b"], {f: v[:1] for f, v in _docs(1).items()}, [{"d": deep}])
        assert idx.count() == 1


# ---------------------------------------------------------------------------------------
# query weights outside float32
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("weights, match", [
    ({"title": 1e39, "image": 1.0}, r"field_weights\['title'\]: expected 0 or a weight between 1.18e-38 and 3.4e\+38 .*overflow.* got 1e\+39"),
    ({"title": 1e300, "image": 1.0}, r"field_weights\['title'\].*overflow to infinity.*got 1e\+300"),
    ({"title": 1.0, "image": 1e-50}, r"field_weights\['image'\].*vanish.*got 1e-50"),
    ({"title": 3e38, "image": 3e38}, r"field_weights: the weights of \['image', 'title'\] sum to 6e\+38"),
])
def test_weights_that_overflow_float32_are_refused(kind, tmp_path, weights, match):
    docs = _docs(20)
    with MultiFieldIndex(_loc(kind, tmp_path), "c", FIELDS) as idx:
        idx.upsert([f"d{i}" for i in range(20)], docs)
        q = {f: v[0] for f, v in docs.items()}
        with pytest.raises(ValueError, match=match):
            idx.search(q, field_weights=weights)  # the single-query fast path
        with pytest.raises(ValueError, match=match):
            idx.search_batch({f: v[:2] for f, v in docs.items()}, field_weights=weights)
        with pytest.raises(ValueError, match=match):
            idx.search({f: list(map(float, v)) for f, v in q.items()}, field_weights=weights)
        # the largest usable weights still give finite, correctly ordered scores
        hits = idx.search(q, field_weights={"title": 1e38, "image": 1e38}, limit=3)
        assert hits[0].id == "d0" and all(np.isfinite(h.score) for h in hits)
        assert hits[0].score == pytest.approx(2e38, rel=1e-5)


# ---------------------------------------------------------------------------------------
# corrupt files and bad ingest arguments
# ---------------------------------------------------------------------------------------

def test_a_truncated_schema_file_names_the_file(tmp_path):
    store = str(tmp_path / "store")
    MultiFieldIndex(store, "c", FIELDS).close()
    path = os.path.join(store, "c", "gcl_schema.json")
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(CorruptFileError, match=rf"schema file of collection 'c', {re.escape(path)} is not valid "
                                               rf"JSON .*truncated.*restore the file from a backup"):
        MultiFieldIndex(store, "c")
    with open(path, "w") as f:
        f.write("[1, 2]")
    with pytest.raises(CorruptFileError, match=rf"{re.escape(path)}, holds a JSON list, expected an object"):
        MultiFieldIndex(store, "c")
    MultiFieldIndex(store, "d", FIELDS).close()  # the lock was released both times


def _marker_files(store):
    return sorted(glob.glob(os.path.join(store, "c", "ingest", "ingest-*.json")))


@pytest.mark.parametrize("damage, match", [
    (lambda t: t[: len(t) // 2], r"is not valid JSON"),
    (lambda t: "", r"is empty"),
    (lambda t: "[1, 2, 3]", r"holds a JSON list, expected an object"),
    (lambda t: json.dumps({**json.loads(t), "batches_done": "many"}), r"is damaged \(ValueError"),
    (lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "ids_recorded"}), r"is damaged \(KeyError"),
    (lambda t: json.dumps({**json.loads(t), "batches_done": 99}), r"records 99 batches done, but the source has only 4"),
])
def test_a_damaged_marker_names_the_file_and_how_to_restart(tmp_path, damage, match):
    store = str(tmp_path / "store")
    docs = _docs(200)
    src = ArraySource([f"d{i}" for i in range(200)], docs)
    with MultiFieldIndex(store, "c", FIELDS) as idx:
        ingest(idx, src, batch_size=50, progress=False, optimize=False)
        (marker,) = _marker_files(store)
        with open(marker) as f:
            text = f.read()
        with open(marker, "w") as f:
            f.write(damage(text))
        with pytest.raises(CorruptFileError, match=match) as e:
            ingest(idx, src, batch_size=50, progress=False)
        assert marker in str(e.value) and f"delete {marker}" in str(e.value) and "restart" in str(e.value)
        os.unlink(marker)  # the advertised recovery works
        rep = ingest(idx, src, batch_size=50, progress=False)
        assert rep.written_batches == 4 and idx.count() == 200


def test_a_missing_id_file_under_a_live_marker_is_reported(tmp_path):
    store = str(tmp_path / "store")
    src = ArraySource([f"d{i}" for i in range(100)], _docs(100))

    class Stop(Exception):
        pass

    class Half(BatchSource):
        n, fingerprint = src.n, src.fingerprint

        def batches(self, batch_size, skip):
            for i, b in enumerate(src.batches(batch_size, skip)):
                if skip + i == 2:
                    raise Stop()
                yield b

    with MultiFieldIndex(store, "c", FIELDS) as idx:
        with pytest.raises(Stop):
            ingest(idx, Half(), batch_size=25, progress=False, checkpoint_seconds=0)
        (marker,) = _marker_files(store)
        ids_file = marker[:-5] + ".ids"
        assert os.path.getsize(ids_file) == 50 * 16
        os.unlink(ids_file)
        with pytest.raises(CorruptFileError, match=r"ingest id file .*\.ids is missing, but the marker .* records 50"):
            ingest(idx, src, batch_size=25, progress=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "5", True, None])
def test_checkpoint_seconds_is_validated(value):
    with MultiFieldIndex(":memory:", "c", FIELDS) as idx:
        with pytest.raises(ValueError, match=r"checkpoint_seconds: expected a"):
            ingest(idx, ArraySource(["a"], _docs(1)), checkpoint_seconds=value, progress=False)
        assert idx.count() == 0


def test_checkpoint_seconds_zero_records_every_batch(tmp_path):
    # the lower end of the range (nan, which compared False with every elapsed time and so
    # never recorded progress, is refused above)
    store = str(tmp_path / "store")
    with MultiFieldIndex(store, "c", FIELDS) as idx:
        ingest(idx, ArraySource([f"d{i}" for i in range(100)], _docs(100)), batch_size=10, progress=False,
               checkpoint_seconds=0)
        assert json.load(open(_marker_files(store)[0]))["batches_done"] == 10


@pytest.mark.parametrize("kwargs, match", [
    ({"on_duplicate": "skip"}, r"on_duplicate: expected one of \('error', 'report', 'last'\), got 'skip'"),
    ({"optimize": "yes"}, r"optimize: expected True or False"),
    ({"progress": 1}, r"progress: expected True or False"),
    ({"batch_size": 2.0}, r"batch_size: expected an int >= 1"),
    ({"state_dir": 5}, r"state_dir: expected a directory path or None"),
])
def test_bad_ingest_arguments(kwargs, match):
    with MultiFieldIndex(":memory:", "c", FIELDS) as idx:
        with pytest.raises(ValueError, match=match):
            ingest(idx, ArraySource(["a"], _docs(1)), **{"progress": False, **kwargs})
        with pytest.raises(ValueError, match=r"source: expected a BatchSource"):
            ingest(idx, [("a", None)], progress=False)


# ---------------------------------------------------------------------------------------
# leftovers of a killed optimize()
# ---------------------------------------------------------------------------------------

def _builders(store):
    return glob.glob(os.path.join(store, "c", "shard", "temp_segments", "segment_builder_*"))


def test_leftover_segment_builders_are_removed_on_open(tmp_path):
    store = str(tmp_path / "store")
    with MultiFieldIndex(store, "c", FIELDS) as idx:
        idx.upsert(["a", "b"], {f: v[:2] for f, v in _docs(2).items()})
    tmp = os.path.join(store, "c", "shard", "temp_segments")
    left = os.path.join(tmp, "segment_builder_AbC123")
    os.makedirs(os.path.join(left, "vector_storage-_concat"))
    with open(os.path.join(left, "vector_storage-_concat", "chunk_0.mmap"), "wb") as f:
        f.write(b"\0" * 100_000)
    other = os.path.join(tmp, "something_else")
    os.makedirs(other)
    holder = MultiFieldIndex(store, "c")  # holds the lock: opens and cleans
    assert not os.path.exists(left) and os.path.isdir(other)  # only what the builder leaves
    assert holder.backend.removed_leftovers == [left]
    os.makedirs(left)  # as if a live optimize() were building now
    with pytest.raises(Exception, match="already open"):
        MultiFieldIndex(store, "c")  # a second opener never touches the holder's files
    assert os.path.isdir(left)
    holder.close()
    with MultiFieldIndex(store, "c") as idx:
        assert idx.count() == 2 and not os.path.exists(left)


_OPTIMIZE = """
import sys
from qdrant_plugin import MultiFieldIndex
from qdrant_plugin.synth import latent_embeddings
loc, n = sys.argv[1], int(sys.argv[2])
F = {"title": 64, "image": 64}
with MultiFieldIndex(loc, "c", F, hnsw_ef_construct=400) as idx:
    idx.upsert([f"d{i}" for i in range(n)], latent_embeddings(n, F))
    idx.flush()
    print("optimizing", flush=True)
    idx.optimize()
    print("optimized", flush=True)
"""


def test_a_kill_during_optimize_leaves_nothing_after_the_next_open(tmp_path):
    store = str(tmp_path / "store")
    n = 30000  # 15 MB of _concat vectors: above the 10 MB indexing threshold, so a graph is built
    proc = subprocess.Popen([sys.executable, "-c", _OPTIMIZE, store, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        assert proc.stdout.readline().strip() == "optimizing"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            b = _builders(store)
            if b and sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(b[0]) for f in fs) > 10 ** 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "optimize() finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    left = _builders(store)
    assert len(left) == 1  # what the engine leaves: before the fix it stayed through reopen + optimize
    with MultiFieldIndex(store, "c") as idx:
        assert _builders(store) == [] and idx.backend.removed_leftovers == left
        assert idx.count() == n


# ---------------------------------------------------------------------------------------
# progress bar
# ---------------------------------------------------------------------------------------

class SizedSource(BatchSource):
    """Knows its length only through __len__ (no ``n``)."""

    def __init__(self, n):
        self._n, self._docs = n, _docs(n)
        self.fingerprint = {"kind": "sized", "n": n}

    def __len__(self):
        return self._n

    def batches(self, batch_size, skip):
        for s in range(skip * batch_size, self._n, batch_size):
            e = min(self._n, s + batch_size)
            time.sleep(0.02)
            yield Batch([f"d{i}" for i in range(s, e)], {f: v[s:e] for f, v in self._docs.items()})


def test_the_progress_bar_has_a_total_and_an_eta(capsys):
    with MultiFieldIndex(":memory:", "c", FIELDS) as idx:
        rep = ingest(idx, SizedSource(300), batch_size=30, progress=True)
        assert rep.n_batches == 10 and idx.count() == 300
    err = capsys.readouterr().err
    frames = [f for f in re.split(r"[\r\n]", err) if "ingest c" in f]
    assert any("300/300" in f for f in frames)
    # mid-run frames show elapsed<remaining with a real estimate, not "?"
    assert any(re.search(r"\d+/300 \[\d\d:\d\d<\d\d:\d\d", f) for f in frames if "300/300" not in f), frames
