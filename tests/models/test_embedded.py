"""Shipped weights load through safetensors and behave; the metric network is what we claim."""

import json

import torch

import diffspeed
from diffspeed.eval import metrics
from diffspeed.models.classifier import ASSETS, held_out_accuracy, load_classifier
from diffspeed.models.digits import load_digits, real_halves
from diffspeed.models.teacher import guided_teacher, load_teacher


def test_digits_data():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    xtr, _ = load_digits("train")
    xte, _ = load_digits("test")
    assert len(xtr) + len(xte) == 1797


def test_classifier_accuracy_matches_shipped_config():
    acc = held_out_accuracy(load_classifier())
    shipped = json.loads((ASSETS / "classifier.json").read_text())["held_out_acc"]
    assert acc >= 0.97
    assert abs(acc - shipped) < 1e-6


def test_fdd_floor_small_and_noise_large():
    a, b = real_halves()
    floor = metrics.frechet_distance(metrics.features(a), metrics.features(b))
    noise = metrics.fdd(torch.rand(500, 1, 8, 8) * 2 - 1)
    assert floor < 2.0
    assert noise > 20 * floor
    assert metrics.kid_score(a) < metrics.kid_score(torch.rand(500, 1, 8, 8) * 2 - 1)


def test_teacher_loads_and_samples_finite():
    den = load_teacher()
    assert isinstance(den, diffspeed.Denoiser)
    g = guided_teacher(2.0, den)
    noise = diffspeed.seeded_noise(range(10), (1, 8, 8))
    x = diffspeed.sample(g, noise, "ddim", 10, cond={"class_labels": torch.arange(10)})
    assert x.shape == (10, 1, 8, 8) and torch.isfinite(x).all()
    assert den.nfe == 10


def test_seeded_noise_independent_of_batch():
    a = diffspeed.seeded_noise([3, 4, 5], (1, 8, 8))
    b = diffspeed.seeded_noise([5], (1, 8, 8))
    torch.testing.assert_close(a[2], b[0])
