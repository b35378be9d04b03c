"""The bench's model entry (which models get digits metrics) and the weight helpers."""

import copy
from dataclasses import replace

import torch

from diffspeed.core.contract import UNDECLARED, CondSpec
from diffspeed.models.io import param_bytes, weights_digest
from diffspeed.models.scoring import DIGITS, scoring_for
from diffspeed.models.teacher import digits_cond_spec, label_cond, load_teacher
from diffspeed.progress import Progress, track


def test_digits_metrics_apply_to_digit_models_only():
    spec = digits_cond_spec()
    assert scoring_for(spec) is DIGITS
    assert scoring_for(load_teacher().cond_spec) is DIGITS
    assert scoring_for(UNDECLARED) is None
    assert scoring_for(CondSpec(keys=(), uncond={}, sample_shape=(1, 8, 8))) is None
    assert scoring_for(replace(spec, sample_shape=(3, 8, 8))) is None
    three = replace(spec, examples=lambda n: label_cond(torch.arange(n) % 3))
    assert scoring_for(three) is None


def test_digits_score_reads_the_labels_from_the_cond():
    from diffspeed.models.digits import load_digits

    x, y = load_digits("test")
    score = DIGITS.score(x[:200], label_cond(y[:200]))
    assert (
        score["accuracy"] > 0.9 and score["fdd"] >= 0 and set(score) == {"fdd", "kid", "accuracy"}
    )


def test_weights_digest_and_param_bytes():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    twin = copy.deepcopy(net)
    assert weights_digest(net) == weights_digest(twin)
    assert weights_digest(copy.deepcopy(net).half()) != weights_digest(net)
    with torch.no_grad():
        twin[0].bias[0] += 1
    assert weights_digest(twin) != weights_digest(net)
    assert weights_digest(lambda x: x) is None
    # weights 12 + bias 4 + norm weight/bias 8 floats, running stats 8 floats + 1 int64 count
    assert param_bytes(net) == (12 + 4 + 8 + 8) * 4 + 8
    assert param_bytes(None) == 0


def test_progress_is_a_no_op_when_disabled():
    with Progress(False) as bar:
        task = bar.add("x", 3)
        bar.advance(task)
        bar.update(task, 2)
        bar.remove(task)
    assert list(track([1, 2, 3], "x", enabled=False)) == [1, 2, 3]
    assert list(track([1, 2], "x")) == [1, 2]
