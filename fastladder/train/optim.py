"""Optimizers and learning-rate schedules.

Ladder DenseNets (2017): Adam, lr 5e-4, poly decay ``(1 − step/max_steps)^1.5``, the pretrained
backbone at lr ÷ 5 (the paper; its code used ÷ 2), weight decay 1e-4. SSD: SGD, momentum 0.9,
weight decay 5e-4, warmup then step decay (or cosine).

Every schedule here is a closed-form function of the step count, so the learning rate after a
resume depends only on the restored step, never on how many times ``step()`` ran in this process.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "PolyLR", "WarmupStepLR", "WarmupCosineLR",
           "ConstantLR", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("poly", "step", "cosine", "constant")


def param_groups(model: nn.Module, lr: float, backbone_lr_divisor: float = 5.0, weight_decay: float = 1e-4,
                 backbone_prefix: str = "features.") -> List[Dict]:
    """Optimizer parameter groups: the backbone at ``lr / backbone_lr_divisor``, no weight decay on
    BatchNorm weights and biases.

    Parameters with at most one dimension (BatchNorm scale and shift, convolution and linear
    biases) get no weight decay: decaying a normalization scale only fights the normalization.
    Frozen parameters (``requires_grad=False``) are left out. Empty groups are not returned.

    Args:
        model: the bare model (not a DistributedDataParallel wrapper: its names carry ``module.``).
        lr: the learning rate of the randomly initialized part (context, decoder, classifiers).
        backbone_lr_divisor: the backbone's lr is ``lr / backbone_lr_divisor`` (1 trains it at ``lr``).
        weight_decay: L2 penalty of the convolution and linear weights.
        backbone_prefix: parameter names starting with it belong to the backbone.

    Returns:
        A list of dicts ``{"params", "lr", "weight_decay", "name"}`` for a torch optimizer;
        ``name`` is one of ``backbone``, ``backbone_no_decay``, ``head``, ``head_no_decay``.
    """
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(backbone_lr_divisor, (int, float)) and backbone_lr_divisor > 0):
        raise ValueError(f"backbone_lr_divisor must be a positive number, got {backbone_lr_divisor!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    groups = {name: [] for name in ("backbone", "backbone_no_decay", "head", "head_no_decay")}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith(backbone_prefix) else "head"
        groups[part + ("_no_decay" if param.ndim <= 1 else "")].append(param)
    result = []
    for name, params in groups.items():
        if params:
            result.append({
                "params": params,
                "lr": lr / backbone_lr_divisor if name.startswith("backbone") else lr,
                "weight_decay": 0.0 if name.endswith("_no_decay") else weight_decay,
                "name": name,
            })
    if not result:
        raise ValueError("the model has no trainable parameters")
    return result


def build_optimizer(config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer that ``config`` names (``adam`` | ``adamw`` | ``sgd``) over :func:`param_groups`.

    Reads ``config.optimizer, lr, backbone_lr_divisor, weight_decay, momentum, backbone_prefix``
    (a :class:`fastladder.train.config.TrainConfig` or anything with those attributes).
    """
    groups = param_groups(model, config.lr, config.backbone_lr_divisor, config.weight_decay,
                          getattr(config, "backbone_prefix", "features."))
    name = config.optimizer
    if name == "adam":
        # L2 regularization added to the gradient, as the paper's TensorFlow code does.
        return torch.optim.Adam(groups, lr=config.lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


class _ClosedFormLR(LRScheduler):
    """A scheduler whose lr is ``base_lr · factor(step)``, ``step`` = calls of ``step()`` so far."""

    def __init__(self, optimizer: torch.optim.Optimizer, last_epoch: int = -1):
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def get_lr(self) -> List[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> List[float]:
        return self.get_lr()

    # Hyperparameters of the schedule's shape: they come from the constructor (the resumed run's
    # configuration, e.g. a longer run), never from a loaded state.
    _shape_keys = ("max_steps", "power", "milestones", "gamma", "warmup_steps", "warmup_factor", "min_factor")

    def load_state_dict(self, state_dict: Dict):
        """Restores the step count and base lrs, and sets the optimizer's lrs to that step's values
        (the schedule is closed-form, so they follow from the state alone)."""
        super().load_state_dict({key: value for key, value in state_dict.items()
                                 if key not in self._shape_keys})
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def _warmup_factor(step: int, warmup_steps: int, warmup_factor: float) -> float:
    """Linear ramp from ``warmup_factor`` at step 0 to 1 at ``warmup_steps``."""
    if step >= warmup_steps:
        return 1.0
    return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps


def _check_warmup(warmup_steps: int, warmup_factor: float):
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if not 0 <= warmup_factor <= 1:
        raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor!r}")


class PolyLR(_ClosedFormLR):
    """Polynomial decay: ``lr = base_lr · (1 − step / max_steps)^power`` (0 from ``max_steps`` on),
    times a linear warmup over the first ``warmup_steps`` steps (none by default).

    Args:
        optimizer: its groups' lrs are the base lrs.
        max_steps: the step at which the lr reaches 0 (the whole run).
        power: 1.5 for the ladder DenseNets (0.9 in DeepLab).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, power: float = 1.5,
                 warmup_steps: int = 0, warmup_factor: float = 0.001, last_epoch: int = -1):
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if not power > 0:
            raise ValueError(f"power must be > 0, got {power!r}")
        _check_warmup(warmup_steps, warmup_factor)
        self.max_steps, self.power = max_steps, power
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        decay = max(0.0, 1.0 - step / self.max_steps) ** self.power
        return decay * _warmup_factor(step, self.warmup_steps, self.warmup_factor)


class WarmupStepLR(_ClosedFormLR):
    """Linear warmup, then ``lr = base_lr · gamma^k`` after the k-th milestone (in steps).

    SSD: lr 1e-3, milestones at 2/3 and 5/6 of the run, gamma 0.1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_steps: int = 0, warmup_factor: float = 0.001, last_epoch: int = -1):
        milestones = list(milestones)
        if any(not isinstance(m, int) or m <= 0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing positive step counts, got {milestones}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma!r}")
        _check_warmup(warmup_steps, warmup_factor)
        self.milestones, self.gamma = milestones, gamma
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        passed = sum(step >= m for m in self.milestones)
        return self.gamma ** passed * _warmup_factor(step, self.warmup_steps, self.warmup_factor)


class WarmupCosineLR(_ClosedFormLR):
    """Linear warmup, then cosine decay from base_lr to ``base_lr · min_factor`` at ``max_steps``."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_steps: int, warmup_steps: int = 0,
                 warmup_factor: float = 0.001, min_factor: float = 0.0, last_epoch: int = -1):
        if not (isinstance(max_steps, int) and max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        _check_warmup(warmup_steps, warmup_factor)
        if warmup_steps >= max_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be below max_steps ({max_steps})")
        if not 0 <= min_factor <= 1:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor!r}")
        self.max_steps, self.min_factor = max_steps, min_factor
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup_factor(step, self.warmup_steps, self.warmup_factor)
        progress = min(1.0, (step - self.warmup_steps) / (self.max_steps - self.warmup_steps))
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class ConstantLR(_ClosedFormLR):
    """Linear warmup, then the base lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, warmup_factor: float = 0.001,
                 last_epoch: int = -1):
        _check_warmup(warmup_steps, warmup_factor)
        self.warmup_steps, self.warmup_factor = warmup_steps, warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return _warmup_factor(step, self.warmup_steps, self.warmup_factor)


def build_scheduler(config, optimizer: torch.optim.Optimizer, max_steps: int,
                    milestones: Optional[Sequence[int]] = None) -> LRScheduler:
    """The per-step schedule that ``config.schedule`` names.

    Reads ``config.schedule`` (``poly`` | ``step`` | ``cosine`` | ``constant``), ``poly_power``,
    ``warmup_steps``, ``warmup_factor``, ``milestones`` (steps; default 2/3 and 5/6 of the run),
    ``gamma``, ``min_lr_factor``.

    Args:
        max_steps: optimizer steps of the whole run.
    """
    name = config.schedule
    warmup = dict(warmup_steps=config.warmup_steps, warmup_factor=config.warmup_factor)
    if name == "poly":
        return PolyLR(optimizer, max_steps, power=config.poly_power, **warmup)
    if name == "step":
        milestones = milestones or config.milestones or [max_steps * 2 // 3, max_steps * 5 // 6]
        return WarmupStepLR(optimizer, [int(m) for m in milestones], gamma=config.gamma, **warmup)
    if name == "cosine":
        return WarmupCosineLR(optimizer, max_steps, min_factor=config.min_lr_factor, **warmup)
    if name == "constant":
        return ConstantLR(optimizer, **warmup)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
