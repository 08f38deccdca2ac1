"""open_clip weights in the formats people have on disk (gcl_train.models.pretrained): a
randomly initialised ViT-B-32 saved in each format loads bit-exact, offline; a wrong
architecture or a truncated file fails naming the file and the first mismatching key."""
from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("open_clip")
from safetensors.torch import save_file  # noqa: E402

from gcl_train.models import create_model  # noqa: E402
from gcl_train.models.pretrained import load_open_clip_weights, read_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def vit():
    """(reference ViT-B-32 state dict, a second ViT-B-32 to load into)."""
    src = create_model("ViT-B-32", seed=0).model
    ref = {k: v.clone() for k, v in src.state_dict().items()}
    del src
    target = create_model("ViT-B-32", seed=1).model
    return ref, target


def _scrub(model):
    with torch.no_grad():
        for p in model.state_dict().values():
            p.zero_()


def _assert_bit_exact(model, ref):
    got = model.state_dict()
    assert got.keys() == ref.keys()
    bad = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not bad, bad[:3]


def test_plain_state_dict_nested_and_ddp_prefixed(vit, tmp_path):
    ref, target = vit
    path = tmp_path / "vit.pt"
    torch.save(ref, path)
    _scrub(target)
    load_open_clip_weights(target, path)
    _assert_bit_exact(target, ref)
    # open_clip_train's checkpoint layout: {"epoch", "state_dict": {"module.<key>": ...}}
    path2 = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "x", "state_dict": {f"module.{k}": v for k, v in ref.items()}}, path2)
    _scrub(target)
    load_open_clip_weights(target, path2)
    _assert_bit_exact(target, ref)


def test_openai_clip_state_dict_float16_with_metadata(vit, tmp_path):
    ref, target = vit
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in ref.items()}
    half.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "ViT-B-32.pt"
    torch.save(half, path)
    _scrub(target)
    load_open_clip_weights(target, path)
    want = {k: (v.half().float() if v.is_floating_point() else v) for k, v in ref.items()}
    _assert_bit_exact(target, want)


def test_safetensors_file_and_hub_style_folders(vit, tmp_path):
    ref, target = vit
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(path))
    _scrub(target)
    load_open_clip_weights(target, path)
    _assert_bit_exact(target, ref)
    from open_clip import get_model_config

    for weights in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        folder = tmp_path / weights.split(".")[0]
        folder.mkdir()
        (folder / "open_clip_config.json").write_text(json.dumps(
            {"model_cfg": get_model_config("ViT-B-32"), "preprocess_cfg": {"mean": [0.5, 0.5, 0.5]}}))
        if weights.endswith(".safetensors"):
            os.link(path, folder / weights)
        else:
            torch.save(ref, folder / weights)
        _scrub(target)
        load_open_clip_weights(target, folder)
        _assert_bit_exact(target, ref)
    # the folder as the model itself: architecture, preprocessing and weights from it, offline
    b = create_model(str(tmp_path / "open_clip_model"))
    assert b.name == "open_clip_model" and b.embed_dim == 512 and b.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
    _assert_bit_exact(b.model, ref)


def test_wrong_architecture_names_the_file_and_first_mismatching_key(vit, tmp_path):
    _, target = vit
    tiny = tmp_path / "tiny.pt"
    torch.save(create_model("tiny", seed=0).model.state_dict(), tiny)
    with pytest.raises(ValueError, match=r"tiny\.pt.*first mismatching key 'positional_embedding'"):
        load_open_clip_weights(target, tiny)
    # a key the model lacks (another architecture's extra layer)
    extra = tmp_path / "extra.pt"
    sd = target.state_dict()
    torch.save({**sd, "visual.extra_head.weight": torch.zeros(2)}, extra)
    with pytest.raises(ValueError, match=r"extra\.pt.*first unexpected key 'visual.extra_head.weight'"):
        load_open_clip_weights(target, extra)
    missing = tmp_path / "missing.pt"
    torch.save({k: v for k, v in sd.items() if k != "text_projection"}, missing)
    with pytest.raises(ValueError, match=r"missing\.pt.*first missing key 'text_projection'"):
        load_open_clip_weights(target, missing)


def test_truncated_files_and_missing_weights(vit, tmp_path):
    ref, target = vit
    small = {k: ref[k] for k in list(ref)[:4]}
    for name, save in (("cut.pt", lambda p: torch.save(small, p)),
                       ("cut.safetensors", lambda p: save_file({k: v.contiguous() for k, v in small.items()}, str(p)))):
        full = tmp_path / ("full_" + name)
        save(full)
        data = full.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=rf"{name}.*could not be read"):
            read_state_dict(cut)
    (tmp_path / "empty_hub").mkdir()
    (tmp_path / "empty_hub" / "open_clip_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="open_clip_model.safetensors or open_clip_pytorch_model.bin"):
        read_state_dict(tmp_path / "empty_hub")
    with pytest.raises(FileNotFoundError, match="only local weight files"):
        create_model("tiny", pretrained="openai")
