"""score_to_weight: the docs/method.md section 5 table, input types, ranges and bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from gcl_kernels import score_to_weight

SCORES = [1.0, 2.0, 10.0, 50.0, 99.0, 100.0]


@pytest.mark.parametrize("kind,params,formula", [
    ("constant", {}, lambda s, m: 1.0),
    ("linear", {}, lambda s, m: s / m),
    ("power", {"gamma": 2.0}, lambda s, m: (s / m) ** 2.0),
    ("power", {"gamma": 0.5}, lambda s, m: (s / m) ** 0.5),
    ("log", {}, lambda s, m: math.log1p(s) / math.log1p(m)),
    ("reciprocal", {}, lambda s, m: 1.0 / (m + 1.0 - s)),
    ("sigmoid", {"k": 10.0, "c": 0.5}, lambda s, m: 1.0 / (1.0 + math.exp(-10.0 * (s / m - 0.5)))),
])
def test_table_values(kind, params, formula):
    got = score_to_weight(torch.tensor(SCORES, dtype=torch.float64), kind, 100.0, **params)
    want = torch.tensor([formula(s, 100.0) for s in SCORES], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    assert got.dtype == torch.float64


def test_marqo_positions():
    """score_linear 100, 99, ... is position 1, 2, ...: reciprocal gives 1 / position."""
    w = score_to_weight([100, 99, 98, 91], "reciprocal", s_max=100)
    torch.testing.assert_close(w, torch.tensor([1.0, 1 / 2, 1 / 3, 1 / 10]))


@pytest.mark.parametrize("scores", [
    [3, 1, 2],
    np.array([3, 1, 2]),
    np.array([3.0, 1.0, 2.0], dtype=np.float32),
    torch.tensor([3, 1, 2]),
    torch.tensor([3.0, 1.0, 2.0], dtype=torch.float16),
    (3, 1, 2),
])
def test_input_types_and_default_s_max(scores):
    """Tensors, numpy arrays, lists and tuples; s_max defaults to the largest score."""
    w = score_to_weight(scores, "linear")
    assert isinstance(w, torch.Tensor) and w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([1.0, 1 / 3, 2 / 3]))


def test_shape_and_empty():
    s = torch.arange(1, 7, dtype=torch.float32).reshape(2, 3)
    assert score_to_weight(s, "log", 6).shape == (2, 3)
    assert score_to_weight(torch.tensor(5.0), "linear", 10).item() == 0.5
    assert score_to_weight([], "linear", s_max=3).numel() == 0


def test_callable_kind():
    w = score_to_weight([1, 2, 4], lambda s: s / s.sum())
    torch.testing.assert_close(w, torch.tensor([1 / 7, 2 / 7, 4 / 7]))
    w = score_to_weight([1, 2], lambda s, s_max, base: base ** (s - s_max), s_max=2, base=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0]))
    w = score_to_weight(torch.tensor([1.0, 2.0]), lambda s: [0.0, 3.0])  # a list back is fine
    torch.testing.assert_close(w, torch.tensor([0.0, 3.0]))


def test_clip_clamps_scores_above_s_max():
    w = score_to_weight([50, 100, 150], "linear", s_max=100, clip=True)
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 1.0]))


def test_negative_scores_allowed_where_meaningful():
    w = score_to_weight([-5.0, 0.0, 10.0], "reciprocal", s_max=10)
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    w = score_to_weight([-5.0, 10.0], "sigmoid", s_max=10, k=4, c=0.0)
    assert 0 < float(w[0]) < 0.5 < float(w[1]) < 1
    assert score_to_weight([-5.0], "constant").item() == 1.0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(scores=st.lists(st.floats(0, 1e4), min_size=1, max_size=20),
       kind=st.sampled_from(["constant", "linear", "power", "log", "reciprocal", "sigmoid"]),
       extra=st.floats(0, 100))
def test_property_weights_in_unit_interval_and_monotone(scores, kind, extra):
    s_max = max(scores) + extra
    if s_max <= 0:
        s_max = 1.0
    params = {"power": {"gamma": 1.7}, "sigmoid": {"k": 8.0, "c": 0.3}}.get(kind, {})
    t = torch.tensor(scores, dtype=torch.float64)
    w = score_to_weight(t, kind, s_max, **params)
    assert bool(torch.isfinite(w).all()) and float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    order = torch.argsort(t)
    assert bool((w[order].diff() >= -1e-12).all()), "a higher score never gets a lower weight"


@pytest.mark.parametrize("args,kwargs,match", [
    (([1, 2], "cubic"), {}, r"kind: expected one of .*'constant'.* or a callable, got str 'cubic'"),
    (([1, 2], 3), {}, r"kind: expected one of"),
    (([1, 2], "power"), {}, r"power: missing parameter\(s\) \['gamma'\], e.g. gamma=..."),
    (([1, 2], "sigmoid"), {"k": 1.0}, r"sigmoid: missing parameter\(s\) \['c'\]"),
    (([1, 2], "linear"), {"gamma": 2.0}, r"linear: unknown parameter\(s\) \['gamma'\]; accepted: none"),
    (([1, 2], "power"), {"gamma": 2.0, "k": 1}, r"power: unknown parameter\(s\) \['k'\]; accepted: gamma"),
    (([1, 2], "power"), {"gamma": 0.0}, r"gamma: expected a number > 0, got 0.0"),
    (([1, 2], "power"), {"gamma": "2"}, r"gamma: expected a finite number, got str '2'"),
    (([1, 2], "sigmoid"), {"k": -1.0, "c": 0.5}, r"k: expected a number > 0"),
    (([1, 2], "sigmoid"), {"k": 1.0, "c": float("nan")}, r"c: expected a finite number"),
    (([1, 2], "linear", 0.0), {}, r"s_max: expected a number > 0, got 0.0"),
    (([1, 2], "linear", -3), {}, r"s_max: expected a number > 0"),
    (([1, 2], "linear", float("inf")), {}, r"s_max: expected a finite number"),
    (([1, 2], "linear", "100"), {}, r"s_max: expected a finite number"),
    (([-3, -1], "reciprocal"), {}, r"s_max: defaults to the largest score, -1.0, which is not > 0"),
    (([], "linear"), {}, r"s_max: cannot default .* empty"),
    (([1, 200], "linear", 100), {}, r"scores: largest score 200.0 exceeds s_max=100.0; .*clip=True"),
    (([-1, 2], "linear", 10), {}, r"scores: kind 'linear' needs scores >= 0, got minimum -1.0"),
    (([-1, 2], "log", 10), {}, r"scores: kind 'log' needs scores >= 0"),
    (([-1, 2], "power", 10), {"gamma": 0.5}, r"scores: kind 'power' needs scores >= 0"),
    (([1, float("nan")], "linear", 10), {}, r"scores: contains NaN or infinite"),
    (([1, float("inf")], "constant"), {}, r"scores: contains NaN or infinite"),
    ((["a", "b"], "linear"), {}, r"scores: expected numbers"),
    ((torch.tensor([True, False]), "linear"), {}, r"scores: expected real numbers, got dtype torch.bool"),
    ((torch.tensor([1 + 1j]), "linear"), {}, r"scores: expected real numbers"),
    (([1, 2], lambda s: s[:1]), {}, r"kind: the callable returned shape \(1,\), expected the scores' shape \(2,\)"),
    (([1, 2], lambda s: -s), {}, r"kind: the callable returned negative, NaN or infinite weights"),
    (([1, 2], lambda s: s / 0), {}, r"kind: the callable returned negative, NaN or infinite weights"),
])
def test_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        score_to_weight(*args, **kwargs)
