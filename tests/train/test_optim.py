"""fastladder.train.optim: parameter groups, optimizers, closed-form schedules."""
import math

import pytest
import torch
import torch.nn as nn

from fastladder.models import create_model
from fastladder.train.config import TrainConfig
from fastladder.train.optim import (PolyLR, WarmupCosineLR, WarmupStepLR, build_optimizer, build_scheduler,
                                    param_groups)


def _tiny_model(tiny):
    return create_model("ladder_densenet121", num_classes=3, **tiny.TINY_LADDER_KWARGS)


def test_param_groups_divide_the_backbone_lr_and_skip_decay_on_norms_and_biases(tiny, seed):
    model = _tiny_model(tiny)
    model.features.conv0.weight.requires_grad_(False)  # frozen parameters are left out
    groups = param_groups(model, lr=4e-4, backbone_lr_divisor=5.0, weight_decay=1e-4)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    names = {id(p): n for n, p in model.named_parameters()}
    seen = []
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            seen.append(name)
            assert group["name"].startswith("backbone") == name.startswith("features."), name
            assert group["lr"] == pytest.approx(4e-4 / 5 if name.startswith("features.") else 4e-4)
            is_norm_or_bias = name.endswith(".bias") or ".norm" in name or "norm" in name.split(".")[-2]
            assert (group["weight_decay"] == 0) == is_norm_or_bias, name
            assert group["weight_decay"] in (0.0, 1e-4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable), "every trainable parameter exactly once"
    assert "features.conv0.weight" not in seen
    # norm scales and biases of both parts really are in the no-decay groups
    assert any(n.startswith("features.") and n.endswith("norm1.weight") for n in
               (names[id(p)] for p in by_name["backbone_no_decay"]["params"]))
    head_no_decay = [names[id(p)] for p in by_name["head_no_decay"]["params"]]
    assert any(n.endswith("classifier.conv.bias") for n in head_no_decay)


def test_param_groups_reject_bad_arguments():
    model = nn.Conv2d(3, 4, 3)
    with pytest.raises(ValueError, match="backbone_lr_divisor"):
        param_groups(model, lr=1e-3, backbone_lr_divisor=0)
    with pytest.raises(ValueError, match="lr must be a positive"):
        param_groups(model, lr=-1.0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model.requires_grad_(False), lr=1e-3)


def test_build_optimizer(tiny, seed):
    model = _tiny_model(tiny)
    adam = build_optimizer(TrainConfig(optimizer="adam", lr=5e-4, backbone_lr_divisor=2.0), model)
    assert isinstance(adam, torch.optim.Adam)
    assert sorted(g["lr"] for g in adam.param_groups) == pytest.approx([2.5e-4, 2.5e-4, 5e-4, 5e-4])
    sgd = build_optimizer(TrainConfig(optimizer="sgd", lr=1e-3, weight_decay=5e-4, momentum=0.9), model)
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.9 for g in sgd.param_groups)
    assert {g["weight_decay"] for g in sgd.param_groups} == {0.0, 5e-4}


def _optimizer(lrs=(1e-3, 4e-3)):
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    return torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])


def _lrs(scheduler, steps):
    values = []
    for _ in range(steps):
        values.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_poly_lr_follows_the_formula():
    max_steps, power = 37, 1.5
    scheduler = PolyLR(_optimizer(), max_steps=max_steps, power=power)
    values = _lrs(scheduler, max_steps + 3)
    for step, lrs in enumerate(values):
        for base, lr in zip((1e-3, 4e-3), lrs):
            expected = base * max(0.0, 1 - step / max_steps) ** power
            assert lr == pytest.approx(expected, rel=1e-12, abs=1e-18), (step, lr, expected)
    assert values[-1] == [0.0, 0.0]


def test_poly_lr_resumes_from_its_state_dict():
    first = PolyLR(_optimizer(), max_steps=20)
    _lrs(first, 7)
    second = PolyLR(_optimizer(), max_steps=20)
    second.load_state_dict(first.state_dict())
    assert _lrs(second, 5) == _lrs(first, 5)
    # a resumed run may be longer: the step comes from the state, the shape from the constructor
    longer = PolyLR(_optimizer(), max_steps=40)
    longer.load_state_dict(first.state_dict())
    assert longer.last_epoch == first.last_epoch == 12 and longer.max_steps == 40
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 12 / 40) ** 1.5)


def test_warmup_step_and_cosine():
    step_lr = WarmupStepLR(_optimizer((1.0,)), milestones=[6, 8], gamma=0.1, warmup_steps=4,
                           warmup_factor=0.2)
    values = [lrs[0] for lrs in _lrs(step_lr, 10)]
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert values == pytest.approx(expected)
    cosine = WarmupCosineLR(_optimizer((2.0,)), max_steps=12, warmup_steps=2, warmup_factor=0.5,
                            min_factor=0.1)
    values = [lrs[0] for lrs in _lrs(cosine, 13)]
    assert values[:2] == pytest.approx([1.0, 1.5])
    for step in range(2, 13):
        progress = (step - 2) / 10
        assert values[step] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))


def test_build_scheduler_default_step_milestones_and_errors():
    config = TrainConfig(schedule="step", gamma=0.5)
    scheduler = build_scheduler(config, _optimizer((1.0,)), max_steps=60)
    assert scheduler.milestones == [40, 50]
    with pytest.raises(ValueError, match="max_steps"):
        PolyLR(_optimizer(), max_steps=0)
    with pytest.raises(ValueError, match="milestones"):
        WarmupStepLR(_optimizer(), milestones=[5, 3])
