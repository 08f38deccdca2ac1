"""gcl_train.models: build from names / configs, checkpoints, Encoder, document fields."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
from PIL import Image  # noqa: E402

from gcl_train.models import (  # noqa: E402
    DEFAULT_DOC_FIELD_WEIGHTS,
    TINY_CONFIG,
    Encoder,
    available_models,
    combine_document_fields,
    create_model,
    field_weight_vector,
    load_checkpoint,
    resolve_model_config,
    save_checkpoint,
)

TEXTS = ["red floral cotton dress", "blue striped shirt", "black leather handbag", "teal mug"]


def _images(n=3, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny():
    return create_model("tiny", seed=0)


def _params_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------- build

def test_tiny_model_matches_its_config(tiny):
    assert tiny.name == "tiny" and tiny.embed_dim == TINY_CONFIG["embed_dim"]
    assert tiny.image_size == 32 and tiny.context_length == 32
    tokens = tiny.tokenizer(TEXTS)
    assert tokens.shape == (len(TEXTS), 32) and tokens.dtype == torch.long
    with torch.no_grad():
        assert tiny.model.encode_text(tokens).shape == (4, 32)
        px = torch.stack([tiny.preprocess(im) for im in _images()])
        assert px.shape == (3, 3, 32, 32)
        assert tiny.model.encode_image(px).shape == (3, 32)
    # the CLIP logit scale initialisation: log(1 / 0.07)
    assert float(tiny.model.logit_scale.detach()) == pytest.approx(np.log(1 / 0.07), rel=1e-6)


def test_seed_makes_the_random_init_reproducible():
    a, b, c = create_model("tiny", seed=3), create_model("tiny", seed=3), create_model("tiny", seed=4)
    assert _params_equal(a.model, b.model)
    assert not _params_equal(a.model, c.model)


def test_config_dict_and_json_file(tmp_path):
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["embed_dim"] = 16
    b = create_model(cfg)
    assert b.name == "custom" and b.embed_dim == 16
    assert b.model.encode_text(b.tokenizer(["x"])).shape == (1, 16)
    p = tmp_path / "arch.json"
    p.write_text(json.dumps({"model_cfg": cfg}))  # open_clip's open_clip_config.json nesting
    name, got = resolve_model_config(str(p))
    assert name == "arch" and got == cfg
    # the caller's dict is not modified and the returned config is a copy
    got["embed_dim"] = 99
    assert resolve_model_config("tiny")[1]["embed_dim"] == TINY_CONFIG["embed_dim"]


def test_builtin_architecture_config_resolves_offline():
    name, cfg = resolve_model_config("ViT-B-32")
    assert name == "ViT-B-32" and cfg["embed_dim"] == 512
    assert "ViT-B-32" in available_models() and "tiny" in available_models()


def test_pretrained_local_open_clip_weights(tmp_path, tiny):
    path = tmp_path / "weights.pt"
    torch.save(tiny.model.state_dict(), path)
    b = create_model("tiny", pretrained=str(path), seed=123)
    assert _params_equal(b.model, tiny.model)


@pytest.mark.parametrize("spec, match", [
    ("no-such-model", "unknown model"),
    ({"embed_dim": 8}, "missing keys"),
    ({"embed_dim": -1, "vision_cfg": {}, "text_cfg": {}}, "embed_dim"),
    ({"embed_dim": 8, "vision_cfg": {}, "text_cfg": {"hf_model_name": "x"}}, "Hugging Face"),
    (3.5, "expected a name"),
])
def test_bad_model_spec(spec, match):
    with pytest.raises(ValueError, match=match):
        create_model(spec)


def test_bad_json_config_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        create_model(str(p))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model(str(tmp_path / "absent.json"))


def test_pretrained_tag_is_refused_not_downloaded():
    with pytest.raises(FileNotFoundError, match="only local weight files"):
        create_model("tiny", pretrained="openai")


def test_unknown_config_key_is_a_clear_error():
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["not_an_option"] = 1
    with pytest.raises(ValueError, match="not accepted by open_clip"):
        create_model(cfg)


# ---------------------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_same_outputs(tmp_path, tiny):
    enc = Encoder(tiny)
    want_t, want_i = enc(TEXTS, "txt"), enc(_images(), "img")
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint(path, tiny, extra={"step": 7, "note": "x"})
    assert sorted(os.listdir(path.parent)) == ["ck.pt"]  # no temp file left behind
    ck = load_checkpoint(path)
    assert ck.extra == {"step": 7, "note": "x"}
    assert ck.meta["format"] == "gcl-checkpoint" and ck.meta["image_size"] == 32
    assert ck.bundle.config == tiny.config and ck.bundle.name == "tiny"
    enc2 = Encoder(ck.bundle)
    np.testing.assert_array_equal(enc2(TEXTS, "txt"), want_t)
    np.testing.assert_array_equal(enc2(_images(), "img"), want_i)
    # overwriting an existing checkpoint replaces it atomically
    save_checkpoint(path, tiny, extra={"step": 8})
    assert load_checkpoint(path).extra == {"step": 8}
    # a checkpoint is also a valid `pretrained` file
    assert _params_equal(create_model("tiny", pretrained=str(path)).model, tiny.model)


def test_checkpoint_from_bare_module_needs_config(tmp_path, tiny):
    with pytest.raises(ValueError, match="model_config"):
        save_checkpoint(tmp_path / "x.pt", tiny.model)
    save_checkpoint(tmp_path / "x.pt", tiny.model, tiny.config)
    assert load_checkpoint(tmp_path / "x.pt").bundle.name == "custom"


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match="not a gcl-checkpoint"):
        load_checkpoint(foreign)


# ---------------------------------------------------------------------------------------- encoder

def test_encoder_protocol_shapes_and_normalisation(tiny, tmp_path):
    enc = Encoder(tiny, batch_size=3)
    t = enc(TEXTS, "txt")
    assert t.shape == (4, 32) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    imgs = _images(5)
    i = enc(imgs, "img")
    assert i.shape == (5, 32) and i.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(i, axis=1), 1.0, atol=1e-5)
    # batching does not change the result
    np.testing.assert_allclose(Encoder(tiny, batch_size=64)(TEXTS, "txt"), t, atol=1e-5)
    # image file paths work like PIL images
    p = tmp_path / "a.png"
    imgs[0].save(p)
    np.testing.assert_allclose(enc([str(p)], "img")[0], i[0], atol=1e-5)
    assert enc([], "txt").shape == (0, 32)
    assert enc.encode_text(TEXTS).shape == (4, 32) and enc.encode_images(imgs).shape == (5, 32)


def test_encoder_bad_input(tiny):
    enc = Encoder(tiny)
    with pytest.raises(ValueError, match="kind"):
        enc(TEXTS, "audio")
    with pytest.raises(ValueError, match="texts: expected str"):
        enc(["ok", 3], "txt")
    with pytest.raises(ValueError, match="expected a list"):
        enc("a single string", "txt")
    with pytest.raises(ValueError, match="PIL images or file paths"):
        enc([np.zeros((4, 4, 3))], "img")
    with pytest.raises(ValueError, match="batch_size"):
        Encoder(tiny, batch_size=0)
    with pytest.raises(ValueError, match="ModelBundle"):
        Encoder(tiny.model)


def test_encode_documents_fuses_fields_and_renormalises_missing(tiny):
    enc = Encoder(tiny)
    imgs = _images(3)
    titles = ["red dress", None, "blue shoe"]
    images = [imgs[0], imgs[1], None]
    fused = enc.encode_documents(titles, images)
    t = enc(["red dress", "blue shoe"], "txt")
    i = enc(imgs[:2], "img")
    w = DEFAULT_DOC_FIELD_WEIGHTS
    manual = w["title"] * t[0] + w["image"] * i[0]
    np.testing.assert_allclose(fused[0], manual / np.linalg.norm(manual), atol=1e-5)
    np.testing.assert_allclose(fused[1], i[1], atol=1e-5)  # title missing: the image alone
    np.testing.assert_allclose(fused[2], t[1], atol=1e-5)  # image missing: the title alone
    with pytest.raises(ValueError):
        enc.encode_documents([None], [None])
    with pytest.raises(ValueError, match="one per title"):
        enc.encode_documents(["a", "b"], [imgs[0]])


# ---------------------------------------------------------------------------------------- fields

def test_combine_document_fields_modes():
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2, 5, 8), dim=-1)
    fw = field_weight_vector({"title": 0.25, "image": 0.75})
    mean = combine_document_fields(f, None, "mean", fw)
    want = torch.nn.functional.normalize(0.25 * f[0] + 0.75 * f[1], dim=-1)
    torch.testing.assert_close(mean, want)
    assert torch.equal(combine_document_fields(f, None, "pairs", fw), f)
    present = torch.tensor([[True, True], [False, True], [True, False], [True, True], [True, True]])
    pairs = combine_document_fields(f, present, "pairs", fw)
    torch.testing.assert_close(pairs[0, 1], f[1, 1])  # missing title -> the row's fused vector = image
    torch.testing.assert_close(pairs[1, 2], f[0, 2])  # missing image -> title
    torch.testing.assert_close(pairs[:, 0], f[:, 0])
    with pytest.raises(ValueError, match="field_mode"):
        combine_document_fields(f, None, "max", fw)


@pytest.mark.parametrize("weights, match", [
    ({"title": 0.1, "colour": 1.0}, "unknown fields"),
    ({"title": -1.0, "image": 1.0}, ">= 0"),
    ({"title": 0.0, "image": 0.0}, "positive weight"),
])
def test_field_weights_validation(weights, match):
    with pytest.raises(ValueError, match=match):
        field_weight_vector(weights)


# ---------------------------------------------------------------------------------------- model specs: files and folders

def test_checkpoint_file_and_hub_folder_as_model_specs(tmp_path, tiny):
    from safetensors.torch import save_file

    ck = tmp_path / "model.pt"
    save_checkpoint(ck, tiny)
    b = create_model(str(ck))  # a checkpoint is a complete model spec
    assert b.name == "tiny" and _params_equal(b.model, tiny.model)
    with pytest.raises(ValueError, match="already holds its weights"):
        create_model(str(ck), pretrained=str(ck))
    hub = tmp_path / "tiny-hub"
    hub.mkdir()
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(hub / "open_clip_model.safetensors"))
    b = create_model(str(hub), seed=5)  # architecture and weights from the folder
    assert b.name == "tiny-hub" and b.config == tiny.config and _params_equal(b.model, tiny.model)
    # the folder as --pretrained for a named architecture, and the same weights file alone
    assert _params_equal(create_model("tiny", pretrained=str(hub), seed=5).model, tiny.model)
    assert _params_equal(create_model("tiny", pretrained=str(hub / "open_clip_model.safetensors")).model,
                         tiny.model)


def test_a_text_only_bundle_has_no_image_size_and_title_weights():
    from gcl_train.models import ModelBundle

    b = ModelBundle(torch.nn.Linear(2, 2), lambda xs: {}, None,
                    {"kind": "hf_text", "embed_dim": 8, "max_seq_length": 16}, "x", {})
    assert b.kind == "hf_text" and b.image_size is None and b.context_length == 16
    assert not b.has_image_tower and b.default_field_weights == {"title": 1.0}
    assert create_model("tiny").kind == "open_clip"
