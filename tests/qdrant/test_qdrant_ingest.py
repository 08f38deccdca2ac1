"""Resumable ingestion: a killed ingest, run again, ends with every document exactly once.

The kills are real: a subprocess running the gcl-qdrant CLI either exits right after
sending a batch (before it is flushed or recorded, via the CRASH_ENV hook) or gets SIGKILL
from this test while it is writing."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from qdrant_plugin import MultiFieldIndex
from gcl_train.cli.qdrant import main as cli_main
from qdrant_plugin.ingest import CRASH_ENV, ArraySource, ingest
from qdrant_plugin.synth import latent_embeddings

FIELDS = {"title": 16, "image": 16}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_inputs(tmp_path, n, seed=0):
    docs = latent_embeddings(n, FIELDS, latent_dim=8, seed=seed)
    paths = {}
    for f, v in docs.items():
        paths[f] = str(tmp_path / f"{f}.npy")
        np.save(paths[f], v)
    ids = [f"sku-{seed}-{i}" for i in range(n)]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    with open(tmp_path / "payloads.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"rank": i}) + "\n")
    return ids, docs, paths


def _cli_args(tmp_path, paths, batch, store="store"):
    return ["ingest", "--store", str(tmp_path / store), "--collection", "c",
            "--vectors", f"title={paths['title']}", "--vectors", f"image={paths['image']}",
            "--ids", str(tmp_path / "ids.txt"), "--payloads", str(tmp_path / "payloads.jsonl"),
            "--batch-size", str(batch), "--checkpoint-seconds", "0", "--quiet"]


def _spawn(args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "gcl_train.cli.qdrant", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_exactly_once(store, ids, docs):
    with MultiFieldIndex(store, "c") as idx:
        assert idx.count() == len(ids)
        recs = idx.retrieve(ids, with_vectors=True)
        assert [r.id for r in recs] == ids
        for i in range(0, len(ids), max(1, len(ids) // 25)):
            np.testing.assert_allclose(recs[i].vectors["image"], docs["image"][i], atol=1e-5)
            assert recs[i].payload == {"rank": i}
            top = idx.search({f: docs[f][i] for f in FIELDS}, limit=1)[0]
            assert top.id == ids[i] and top.score == pytest.approx(1.0, abs=1e-4)


def _marker(store):
    d = os.path.join(store, "c", "ingest")
    files = [f for f in os.listdir(d) if f.endswith(".json")] if os.path.isdir(d) else []
    if not files:
        return None
    with open(os.path.join(d, files[0])) as fh:
        return json.load(fh)


def test_ingest_then_rerun_is_a_no_op(tmp_path):
    docs = latent_embeddings(1000, FIELDS, seed=2)
    ids = [f"d{i}" for i in range(1000)]
    with MultiFieldIndex(str(tmp_path / "s"), "c", FIELDS) as idx:
        rep = ingest(idx, ArraySource(ids, docs), batch_size=128, progress=False)
        assert (rep.n_batches, rep.written_batches, rep.skipped_batches, rep.resumed) == (8, 8, 0, False)
        assert idx.count() == 1000
    m = _marker(str(tmp_path / "s"))
    assert m["complete"] and m["optimized"] and m["batches_done"] == 8
    with MultiFieldIndex(str(tmp_path / "s"), "c") as idx:
        rep = ingest(idx, ArraySource(ids, docs), batch_size=128, progress=False)
        assert (rep.written_batches, rep.skipped_batches, rep.optimize_seconds) == (0, 8, 0.0)
        assert idx.count() == 1000


def test_crash_after_a_batch_then_resume(tmp_path):
    ids, docs, paths = _write_inputs(tmp_path, 2000)
    args = _cli_args(tmp_path, paths, batch=100)
    proc = _spawn(args, {CRASH_ENV: "5"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err
    m = _marker(str(tmp_path / "store"))
    assert m["batches_done"] == 4 and not m["complete"]  # the 5th was sent, never recorded
    with MultiFieldIndex(str(tmp_path / "store"), "c") as idx:
        assert idx.count() == 500  # the write-ahead log kept the 5th batch
    assert cli_main(args) == 0  # resume in this process
    m = _marker(str(tmp_path / "store"))
    assert m["complete"] and m["batches_done"] == 20
    _check_exactly_once(str(tmp_path / "store"), ids, docs)


def test_sigkill_mid_ingest_then_resume(tmp_path, capsys):
    ids, docs, paths = _write_inputs(tmp_path, 6000, seed=1)
    store = str(tmp_path / "store")
    args = _cli_args(tmp_path, paths, batch=50)  # 120 batches, each flushed and recorded
    proc = _spawn(args)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            m = _marker(store)
        except (json.JSONDecodeError, OSError):
            m = None  # never happens with atomic writes; tolerated so a failure reads clearly below
        if m and m["batches_done"] >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done_before = _marker(store)["batches_done"]
    assert 3 <= done_before < 120
    rerun = args[:args.index("--checkpoint-seconds")] + ["--quiet"]  # default: record every 5 s
    assert cli_main(rerun) == 0
    out = capsys.readouterr().out
    assert f"{done_before} already done" in out
    _check_exactly_once(store, ids, docs)


def test_a_different_source_is_not_resumed_from(tmp_path, caplog):
    a = latent_embeddings(300, FIELDS, seed=5)
    b = latent_embeddings(300, FIELDS, seed=6)
    with MultiFieldIndex(str(tmp_path / "s"), "c", FIELDS) as idx:
        ingest(idx, ArraySource([f"a{i}" for i in range(300)], a), batch_size=100, progress=False)
        rep = ingest(idx, ArraySource([f"b{i}" for i in range(300)], b), batch_size=100, progress=False)
        assert rep.skipped_batches == 0 and rep.written_batches == 3
        # same source, other batch size: markers are per batch size, so it starts over (harmlessly)
        rep = ingest(idx, ArraySource([f"a{i}" for i in range(300)], a), batch_size=50, progress=False)
        assert rep.skipped_batches == 0 and rep.written_batches == 6
        assert idx.count() == 600


def test_memory_store_keeps_no_marker():
    idx = MultiFieldIndex(":memory:", "c", FIELDS)
    rep = ingest(idx, ArraySource(["x", "y"], latent_embeddings(2, FIELDS)), progress=False)
    assert rep.marker is None and idx.count() == 2
    idx.close()


def test_bad_sources():
    with pytest.raises(ValueError, match=r"vectors\['title'\]: expected 2 rows"):
        ArraySource(["a", "b"], {"title": np.ones((3, 16))})
    with pytest.raises(ValueError, match="payloads: expected 2 entries"):
        ArraySource(["a", "b"], {"title": np.ones((2, 16))}, payloads=[{}])
    idx = MultiFieldIndex(":memory:", "c", FIELDS)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        ingest(idx, ArraySource(["a"], {"title": np.ones((1, 16)), "image": np.ones((1, 16))}), batch_size=0)
    idx.close()


def test_an_empty_batch_is_counted_not_sent():
    from qdrant_plugin.ingest import Batch, BatchSource

    class Gappy(BatchSource):
        n = None
        fingerprint = {"kind": "test"}

        def batches(self, batch_size, skip):
            for b in range(skip, 3):
                ids = [] if b == 1 else [f"g{b}"]
                yield Batch(ids, {f: np.ones((len(ids), 16)) for f in FIELDS})

    idx = MultiFieldIndex(":memory:", "c", FIELDS)
    rep = ingest(idx, Gappy(), batch_size=1, progress=False)
    assert rep.written_batches == 3 and idx.count() == 2
    idx.close()
