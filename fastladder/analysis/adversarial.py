"""Adversarial examples for classifiers, dense predictors and SSD detectors.

Every attack takes images in [0, 1] (``images [N, C, H, W]``, a floating tensor) and keeps the
adversarial images in [0, 1]; a model that expects normalised input is wrapped first:
``nn.Sequential(fastladder.nn.Normalize(mean, std), model)``. Perturbation norms are measured on
that [0, 1] scale, over all C·H·W values of an image. The model should be in eval mode (batch
statistics would couple the images of a batch); when it returns a tuple (a model in train mode, or
one with auxiliary outputs) its first element is taken as the logits.

Attacks (each returns :class:`AttackResult`):

* :func:`deepfool` — minimal L2 (Moosavi-Dezfooli et al. 2016): repeatedly linearise the classifier
  and step to the nearest linearised decision boundary, with overshoot.
* :func:`ddn` — minimal L2, Decoupled Direction and Norm (Rony et al. 2019).
* :func:`fgsm`, :func:`pgd` — bounded (L∞ or L2 ball of radius ``eps``), untargeted or targeted.
* :func:`dag` — Dense Adversary Generation (Xie et al. 2017) for semantic segmentation.
* :func:`ssd_attack` — DAG on an SSD's per-prior scores: suppress every detection or mislabel them.
"""
import math
import warnings
from contextlib import contextmanager
from typing import Callable, NamedTuple, Optional, Tuple

import torch
from torch import nn

__all__ = ["AttackResult", "deepfool", "ddn", "fgsm", "pgd", "dag", "ssd_attack", "perturbation_norms"]

IGNORE_INDEX = 255


class AttackResult(NamedTuple):
    """The outcome of an attack on a batch of N images.

    adversarial: Tensor[N, C, H, W], in [0, 1], same dtype and device as the images.
    success: BoolTensor[N], whether the model's prediction on ``adversarial`` meets the attack's
        goal (checked with one final forward pass on the returned images).
    l2: Tensor[N], L2 norm of the perturbation ``adversarial - images`` ([0, 1] intensity scale).
    linf: Tensor[N], its L∞ norm.
    """
    adversarial: torch.Tensor
    success: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor


# --- argument checks and helpers ----------------------------------------------------------------

def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        what = (f"a {images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
                else type(images).__name__)
        raise ValueError(f"images must be a floating [N, C, H, W] tensor in [0, 1], got {what}")
    if images.numel() and (not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1):
        raise ValueError(f"images must lie in [0, 1] (wrap a model that expects normalised input with "
                         f"fastladder.nn.Normalize), got values in [{images.min().item():.4g}, "
                         f"{images.max().item():.4g}] for images of shape {tuple(images.shape)}")
    return images.detach()


def _check_class_labels(labels, name: str, num_images: int, num_classes: int, device) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.shape != (num_images,) or labels.is_floating_point():
        what = (f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                else type(labels).__name__)
        raise ValueError(f"{name} must be an integer tensor of shape [{num_images}] (one class per image), "
                         f"got {what}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must be class indices in [0, {num_classes}), got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    return labels.to(device=device, dtype=torch.int64)



def _classification_inputs(model, images, labels, target_labels):
    """The checked (images, labels, target_labels or None, num_classes) of a classifier attack."""
    images = _check_images(images)
    _warn_if_training(model)
    num_classes = _num_classes(model, images)
    n = images.shape[0]
    labels = _check_class_labels(labels, "labels", n, num_classes, images.device)
    if target_labels is not None:
        target_labels = _check_class_labels(target_labels, "target_labels", n, num_classes, images.device)
    return images, labels, target_labels, num_classes

def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _warn_if_training(model: nn.Module):
    if isinstance(model, nn.Module) and model.training:
        warnings.warn("the attacked model is in train mode: batch-norm statistics couple the images of a "
                      "batch and change the model; call model.eval() first", stacklevel=3)


def _classifier_logits(model: Callable, x: torch.Tensor) -> torch.Tensor:
    logits = _first(model(x))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return classification logits [N, num_classes] for images of shape "
                         f"{tuple(x.shape)}, got {shape}")
    return logits


def perturbation_norms(adversarial: torch.Tensor, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(L2 [N], L∞ [N]) of ``adversarial - images`` per image, computed in float32 or wider."""
    r = (adversarial - images).flatten(1)
    if r.dtype in (torch.float16, torch.bfloat16):
        r = r.float()
    if r.shape[1] == 0:
        zeros = r.new_zeros(r.shape[0])
        return zeros, zeros
    return r.norm(dim=1), r.abs().amax(dim=1)


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N] → [N, 1, 1, ...] broadcastable against ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _l2_normalized(g: torch.Tensor) -> torch.Tensor:
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / _view(norm, g)


def _classification_result(model, images, adversarial, labels, target_labels) -> AttackResult:
    with torch.no_grad():
        prediction = _classifier_logits(model, adversarial).argmax(1)
    success = prediction == target_labels if target_labels is not None else prediction != labels
    l2, linf = perturbation_norms(adversarial, images)
    return AttackResult(adversarial.detach(), success, l2, linf)


def _num_classes(model, images) -> int:
    with torch.no_grad():
        return _classifier_logits(model, images[:1]).shape[1]


# --- minimal-norm attacks ---------------------------------------------------------------------

def deepfool(model: Callable, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 50,
             overshoot: float = 0.02, candidates: Optional[int] = None) -> AttackResult:
    """DeepFool, multi-class, L2 (Moosavi-Dezfooli et al. 2016).

    At each step, for every image still classified as its label ℓ, the logit differences
    ``f_k - f_ℓ`` of the candidate classes k are linearised; the step goes to the nearest linearised
    boundary, ``r = |f_k - f_ℓ| / ||∇(f_k - f_ℓ)||₂² · ∇(f_k - f_ℓ)`` for the k of smallest
    ``|f_k - f_ℓ| / ||∇(f_k - f_ℓ)||₂``. The adversarial image is ``clip(x + (1 + overshoot) Σ r, 0, 1)``.
    An image stops as soon as it is misclassified (one that starts misclassified is returned as is).

    Args:
        model: images [N, C, H, W] in [0, 1] → logits [N, K].
        images: Tensor[N, C, H, W] in [0, 1].
        labels: LongTensor[N], the true classes.
        steps: most linearisation steps per image.
        overshoot: relative overshoot of the accumulated perturbation (0.02 in the paper).
        candidates: number of classes considered, the label included: the label and the
            ``candidates - 1`` other classes of highest clean logit (foolbox's meaning); None: all.
    """
    images, labels, _, num_classes = _classification_inputs(model, images, labels, None)
    if steps < 0 or overshoot < 0:
        raise ValueError(f"steps and overshoot must be >= 0, got steps={steps}, overshoot={overshoot}")
    if candidates is None:
        candidates = num_classes
    if not 2 <= candidates <= num_classes:
        raise ValueError(f"candidates must be in [2, {num_classes}] (the number of classes), "
                         f"got {candidates}")
    n = images.shape[0]
    with torch.no_grad():
        clean = _classifier_logits(model, images)
    # the other classes, by decreasing clean logit: the label is pushed to the end and dropped
    ranking = clean.scatter(1, labels[:, None], float("-inf")).argsort(1, descending=True)
    others = ranking[:, :candidates - 1]                                   # [N, candidates - 1]
    total = torch.zeros_like(images)
    adversarial = images.clone()
    active = torch.ones(n, dtype=torch.bool, device=images.device)
    for iteration in range(steps):
        index = active.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        x = adversarial[index].requires_grad_(True)
        logits = _classifier_logits(model, x)
        still_correct = logits.argmax(1) == labels[index]
        rows = torch.arange(index.numel(), device=images.device)
        label_logit = logits[rows, labels[index]]
        differences, gradients = [], []
        for j in range(candidates - 1):
            difference = logits[rows, others[index, j]] - label_logit          # < 0 while correct
            # the images of a batch are independent, so the gradient of the sum is per image
            (gradient,) = torch.autograd.grad(difference.sum(), x, retain_graph=j < candidates - 2)
            differences.append(difference.detach())
            gradients.append(gradient)
        differences = torch.stack(differences, 1)                             # [n, candidates - 1]
        gradients = torch.stack(gradients, 1)                                 # [n, candidates - 1, C, H, W]
        gradient_norms = gradients.flatten(2).norm(dim=2)
        distances = differences.abs() / (gradient_norms + 1e-8)
        best = distances.argmin(1)
        distance = distances[rows, best] + 1e-4  # a little past the linearised boundary, as foolbox does
        gradient = gradients[rows, best]
        step = _view(distance / (gradient_norms[rows, best] + 1e-8), gradient) * gradient
        # images already misclassified keep their adversarial; the rest take the step
        moving = index[still_correct]
        total[moving] += step[still_correct]
        adversarial[moving] = (images[moving] + (1 + overshoot) * total[moving]).clamp(0, 1)
        active[index[~still_correct]] = False
    return _classification_result(model, images, adversarial, labels, None)


def ddn(model: Callable, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 100, gamma: float = 0.05,
        init_epsilon: float = 1.0, alpha: float = 1.0, alpha_min: float = 0.01,
        target_labels: Optional[torch.Tensor] = None) -> AttackResult:
    """Decoupled Direction and Norm (Rony et al. 2019): minimal-L2 adversarial examples.

    A perturbation δ takes a gradient step of L2 length α_k on the cross-entropy (ascent when
    untargeted, descent towards ``target_labels`` when targeted), then is rescaled to the norm ε_k,
    which shrinks by (1 − γ) while ``x + δ`` is adversarial and grows by (1 + γ) while it is not;
    ``x + δ`` is clipped to [0, 1]. α follows a cosine schedule from ``alpha`` to ``alpha_min``.
    The smallest adversarial perturbation seen is returned (the last iterate where none was found).

    Args:
        model: images [N, C, H, W] in [0, 1] → logits [N, K].
        images: Tensor[N, C, H, W] in [0, 1].
        labels: LongTensor[N], the true classes.
        steps: iterations.
        gamma: relative change of the norm per iteration.
        init_epsilon: the first norm ε_0 (L2, [0, 1] scale).
        alpha, alpha_min: the step length's cosine schedule.
        target_labels: LongTensor[N] for a targeted attack, None for untargeted.
    """
    images, labels, target_labels, num_classes = _classification_inputs(model, images, labels, target_labels)
    if steps < 1 or not 0 < gamma < 1 or init_epsilon <= 0 or alpha <= 0 or alpha_min < 0:
        raise ValueError(f"need steps >= 1, 0 < gamma < 1, init_epsilon > 0, alpha > 0, alpha_min >= 0; got "
                         f"steps={steps}, gamma={gamma}, init_epsilon={init_epsilon}, alpha={alpha}, "
                         f"alpha_min={alpha_min}")
    goal, sign = (target_labels, -1.0) if target_labels is not None else (labels, 1.0)
    delta = torch.zeros_like(images)
    epsilon = torch.full((len(images),), float(init_epsilon), device=images.device, dtype=images.dtype)
    # no perturbation inside the [0, 1] box is longer than the one to the farthest corner
    worst = torch.maximum(images, 1 - images).flatten(1).norm(dim=1)
    best_l2 = torch.full((len(images),), math.inf, device=images.device, dtype=images.dtype)
    best_delta = torch.zeros_like(images)
    for k in range(steps):
        step_length = alpha_min + (alpha - alpha_min) * (1 + math.cos(math.pi * k / steps)) / 2
        delta.requires_grad_(True)
        logits = _classifier_logits(model, images + delta)
        gradient = _cross_entropy_direction_gradient(logits, delta, goal, sign)
        delta = delta.detach()
        with torch.no_grad():
            prediction = logits.argmax(1)
            is_adversarial = (prediction == target_labels) if target_labels is not None \
                else (prediction != labels)
            l2 = delta.flatten(1).norm(dim=1)
            better = is_adversarial & (l2 < best_l2)
            best_l2 = torch.where(better, l2, best_l2)
            best_delta[better] = delta[better]
            gradient_norm = gradient.flatten(1).norm(dim=1)
            flat = gradient_norm == 0
            if flat.any():  # a zero gradient has no direction: try a random one
                gradient[flat] = torch.randn_like(gradient[flat])
            delta = delta + step_length * _l2_normalized(gradient)
            epsilon = torch.minimum(epsilon * torch.where(is_adversarial, 1 - gamma, 1 + gamma), worst)
            delta = delta * _view(epsilon / delta.flatten(1).norm(dim=1).clamp_min(1e-12), delta)
            delta = (images + delta).clamp(0, 1) - images
    with torch.no_grad():
        logits = _classifier_logits(model, images + delta)
        prediction = logits.argmax(1)
        is_adversarial = prediction == target_labels if target_labels is not None else prediction != labels
        l2 = delta.flatten(1).norm(dim=1)
        better = is_adversarial & (l2 < best_l2)
        best_l2 = torch.where(better, l2, best_l2)
        best_delta[better] = delta[better]
        found = torch.isfinite(best_l2)
        adversarial = torch.where(_view(found, images), images + best_delta, images + delta).clamp(0, 1)
    return _classification_result(model, images, adversarial, labels, target_labels)


# --- bounded attacks ----------------------------------------------------------------------------

def _cross_entropy_direction_gradient(logits: torch.Tensor, x: torch.Tensor, goal: torch.Tensor,
                                     sign: float) -> torch.Tensor:
    """∇ₓ of ``sign · CE(logits, goal)`` per image, up to a positive factor per image.

    The attacks use only the gradient's direction (its sign or its L2-normalised value). Autograd's
    CE gradient on the logits, ``softmax − onehot``, loses the goal class's entry on a confidently
    classified image: ``p_goal = 1 − 3e-8`` rounds to 1 in float32, the entry becomes 0 and the
    direction raises the true logit instead of lowering it (seen as DDN never fooling such an
    image). Here the goal entry is minus the sum of the others, all scaled by the largest other
    probability (in log space, so nothing underflows), which is exact in any precision.
    """
    log_p = logits.detach().log_softmax(1)
    goal_column = goal[:, None]
    others = log_p.scatter(1, goal_column, -math.inf)
    weights = (others - others.amax(1, keepdim=True)).exp()       # p_k / max_{j≠goal} p_j; goal: 0
    weights = weights.scatter(1, goal_column, -weights.sum(1, keepdim=True))
    (gradient,) = torch.autograd.grad(logits, x, grad_outputs=sign * weights)
    return gradient


def _cross_entropy_gradient(model, x, goal, sign):
    x = x.detach().requires_grad_(True)
    return _cross_entropy_direction_gradient(_classifier_logits(model, x), x, goal, sign)


def fgsm(model: Callable, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
         target_labels: Optional[torch.Tensor] = None) -> AttackResult:
    """Fast Gradient Sign Method (Goodfellow et al. 2015): one L∞ step of size ``eps``.

    ``x' = clip(x + eps · sign(∇ₓ CE(f(x), y)), 0, 1)``; targeted: descend the cross-entropy of
    ``target_labels`` instead.
    """
    images, labels, target_labels, num_classes = _classification_inputs(model, images, labels, target_labels)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    goal, sign = (target_labels, -1.0) if target_labels is not None else (labels, 1.0)
    gradient = _cross_entropy_gradient(model, images, goal, sign)
    adversarial = (images + eps * gradient.sign()).clamp(0, 1)
    return _classification_result(model, images, adversarial, labels, target_labels)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = delta.flatten(1).norm(dim=1)
    return delta * _view((eps / length.clamp_min(1e-12)).clamp(max=1), delta)


def pgd(model: Callable, images: torch.Tensor, labels: torch.Tensor, *, eps: float,
        alpha: Optional[float] = None,
        steps: int = 10, norm: str = "linf", random_start: bool = False,
        target_labels: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None) -> AttackResult:
    """Projected Gradient Descent (Madry et al. 2018) in an L∞ or L2 ball of radius ``eps``.

    Each step moves by ``alpha`` along the sign of the cross-entropy gradient (L∞) or along its
    L2-normalised direction (L2), projects onto the ball around the clean image, then clips to
    [0, 1] (foolbox's order). Targeted: descends the cross-entropy of ``target_labels``.

    Args:
        eps: radius of the ball ([0, 1] scale).
        alpha: step size; default 2.5 · eps / steps.
        steps: iterations.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a uniform point of the ball (L∞: uniform per value; L2: uniform in
            the ball) instead of the clean image.
        generator: for the random start (CPU generator; the noise is moved to the images' device).
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    images, labels, target_labels, num_classes = _classification_inputs(model, images, labels, target_labels)
    if alpha is None:
        alpha = 2.5 * eps / max(steps, 1)
    if not eps >= 0 or not alpha >= 0 or steps < 0:
        raise ValueError(f"need eps >= 0, alpha >= 0, steps >= 0; got eps={eps}, alpha={alpha}, "
                         f"steps={steps}")
    goal, sign = (target_labels, -1.0) if target_labels is not None else (labels, 1.0)
    delta = torch.zeros_like(images)
    if random_start:
        if norm == "linf":
            noise = torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1
            delta = (noise * eps).to(images.device)
        else:
            direction = torch.randn(images.shape, generator=generator, dtype=images.dtype)
            dimension = images[0].numel()
            radius = torch.rand(len(images), generator=generator, dtype=images.dtype) ** (1.0 / dimension)
            delta = (_l2_normalized(direction) * _view(radius * eps, direction)).to(images.device)
        delta = (images + delta).clamp(0, 1) - images
    for _ in range(steps):
        gradient = _cross_entropy_gradient(model, images + delta, goal, sign)
        step = gradient.sign() if norm == "linf" else _l2_normalized(gradient)
        delta = _project(delta + alpha * step, eps, norm)
        delta = (images + delta).clamp(0, 1) - images
    return _classification_result(model, images, images + delta, labels, target_labels)


# --- dense prediction ---------------------------------------------------------------------------

def _check_dense(images, labels, target_labels, mask, num_classes):
    n, _, h, w = images.shape
    expected = (n, h, w)

    def check_map(value, name, dtype_ok):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected or not dtype_ok(value):
            what = (f"a {value.dtype} tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                    else type(value).__name__)
            raise ValueError(f"{name} must be of shape [N, H, W] = {list(expected)} to match images of shape "
                             f"{tuple(images.shape)}, got {what}")
        return value.to(images.device)

    labels = check_map(labels, "labels", lambda t: not t.is_floating_point() and t.dtype != torch.bool).long()
    bad = (labels < 0) | ((labels >= num_classes) & (labels != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"labels must be class indices in [0, {num_classes}) or {IGNORE_INDEX} (ignored), "
                         f"got values {sorted(set(labels[bad].tolist()))[:8]}")
    if mask is None:
        mask = labels != IGNORE_INDEX
    else:
        mask = check_map(mask, "mask", lambda t: t.dtype == torch.bool)
        if (mask & (labels == IGNORE_INDEX)).any():
            raise ValueError(f"mask covers {int((mask & (labels == IGNORE_INDEX)).sum())} pixels whose "
                             f"label is {IGNORE_INDEX} (ignored): their true class is unknown")
    if target_labels is not None:
        target_labels = check_map(target_labels, "target_labels",
                                  lambda t: not t.is_floating_point() and t.dtype != torch.bool).long()
        bad = mask & ((target_labels < 0) | (target_labels >= num_classes))
        if bad.any():
            raise ValueError(f"target_labels must be class indices in [0, {num_classes}) on the attacked "
                             "pixels, "
                             f"got values {sorted(set(target_labels[bad].tolist()))[:8]}")
        same = mask & (target_labels == labels)
        if same.any():
            raise ValueError(f"target_labels equal labels on {int(same.sum())} attacked pixels: a pixel "
                             f"cannot be flipped to its own class (leave such pixels out of the mask)")
    return labels, target_labels, mask


def _dense_logits(model, x):
    logits = _first(model(x))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4 or logits.shape[0] != x.shape[0] \
            or logits.shape[-2:] != x.shape[-2:]:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError("the model must return dense logits [N, num_classes, H, W] at the input's size "
                         f"for images of shape {tuple(x.shape)}, got {shape}")
    return logits


def dag(model: Callable, images: torch.Tensor, labels: torch.Tensor, *,
        target_labels: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None, gamma: float = 0.5, max_iter: int = 200,
        pixel_scale: float = 255.0) -> AttackResult:
    """Dense Adversary Generation (Xie et al. 2017) against a semantic segmentation model.

    Each iteration takes the pixels of ``mask`` that are not yet where the attack wants them,
    ascends ``Σ (f_target − f_true)`` over them, and adds the step
    ``r = (gamma / pixel_scale) · g / ||g||∞`` to the image (then clips to [0, 1]). It stops, per
    image, when every pixel of its mask is flipped, or after ``max_iter`` iterations.

    Targets: with ``target_labels``, a pixel is flipped when it is predicted as its target. Without
    (untargeted), each pixel's target is its most likely wrong class on the clean image (the class
    of highest clean logit other than its label), fixed for the whole attack, and a pixel counts
    as flipped as soon as it is predicted as any class other than its label.

    Args:
        model: images [N, C, H, W] in [0, 1] → logits [N, K, H, W] (or a tuple starting with them).
        images: Tensor[N, C, H, W] in [0, 1].
        labels: LongTensor[N, H, W], the true classes (255: ignored, never attacked).
        target_labels: LongTensor[N, H, W] or None (untargeted); must differ from ``labels`` on
            the mask.
        mask: BoolTensor[N, H, W], the pixels to flip; default: every pixel with a label.
        gamma: step size. Xie et al. use 0.5 for models that read 0–255 pixels; with
            ``pixel_scale=255`` (the default) gamma is in those units, so each step's L∞ norm on
            the [0, 1] images is gamma / 255. ``pixel_scale=1`` makes gamma the step on [0, 1].
        max_iter: most iterations.

    Returns:
        :class:`AttackResult`; ``success[n]`` is True when every pixel of image n's mask is flipped.
        :func:`fastladder.analysis._report.flipped_fraction` gives the fraction per image.
    """
    images = _check_images(images)
    _warn_if_training(model)
    if not gamma > 0 or max_iter < 0 or not pixel_scale > 0:
        raise ValueError(f"need gamma > 0, max_iter >= 0, pixel_scale > 0; got gamma={gamma}, "
                         f"max_iter={max_iter}, "
                         f"pixel_scale={pixel_scale}")
    with torch.no_grad():
        clean = _dense_logits(model, images)
    num_classes = clean.shape[1]
    labels, target_labels, mask = _check_dense(images, labels, target_labels, mask, num_classes)
    true = labels.clamp(max=num_classes - 1)  # ignored pixels are outside the mask; any class index will do
    targeted = target_labels is not None
    if not targeted:
        target_labels = clean.scatter(1, true[:, None], float("-inf")).argmax(1)
    target = target_labels.clamp(0, num_classes - 1)
    step_size = gamma / pixel_scale
    adversarial = images.clone()

    def unflipped(prediction, index):
        if targeted:
            return mask[index] & (prediction != target[index])
        return mask[index] & (prediction == labels[index])

    active = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    for iteration in range(max_iter + 1):
        index = active.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        x = adversarial[index].requires_grad_(True)
        logits = _dense_logits(model, x)
        pending = unflipped(logits.argmax(1), index)                            # [n, H, W]
        finished = ~pending.flatten(1).any(1)
        active[index[finished]] = False
        if iteration == max_iter or bool(finished.all()):
            break
        margin = logits.gather(1, target[index][:, None]) - logits.gather(1, true[index][:, None])
        (gradient,) = torch.autograd.grad((margin.squeeze(1) * pending).sum(), x)
        scale = gradient.flatten(1).abs().amax(1).clamp_min(1e-12)
        step = step_size * gradient / _view(scale, gradient)
        moving = index[~finished]
        adversarial[moving] = (adversarial[moving] + step[~finished]).clamp(0, 1)
    with torch.no_grad():
        prediction = _dense_logits(model, adversarial).argmax(1)
    all_index = torch.arange(images.shape[0], device=images.device)
    success = ~unflipped(prediction, all_index).flatten(1).any(1)
    l2, linf = perturbation_norms(adversarial, images)
    return AttackResult(adversarial, success, l2, linf)


# --- detection ----------------------------------------------------------------------------------

_NORMALIZATION_AND_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                              nn.modules.instancenorm._InstanceNorm, nn.modules.dropout._DropoutNd,
                              nn.Dropout)


@contextmanager
def _raw_outputs(model: nn.Module):
    """Runs an SSD whose train-mode forward gives raw head outputs with inference-time layers:
    the model in train mode, its normalisation and dropout layers in eval mode; modes restored after."""
    modes = {module: module.training for module in model.modules()}
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, _NORMALIZATION_AND_DROPOUT):
                module.eval()
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _ssd_outputs(forward, x):
    output = forward(x)
    if not isinstance(output, (tuple, list)) or len(output) < 2:
        raise ValueError(f"the detector must return (loc [B, P, 4], conf_logits [B, P, C]), got "
                         f"{type(output).__name__}")
    loc, conf = output[0], output[1]
    if conf.dim() != 3 or conf.shape[0] != x.shape[0] or loc.shape[:2] != conf.shape[:2]:
        raise ValueError("the detector must return loc [B, P, 4] and conf_logits [B, P, C] for images of "
                         f"shape {tuple(x.shape)}, got loc {tuple(loc.shape)} and conf_logits "
                         f"{tuple(conf.shape)}")
    return loc, conf


def ssd_attack(model: Callable, images: torch.Tensor, *, mode: str = "suppress",
               target_label: Optional[int] = None,
               score_thresh: float = 0.5, background: int = 0, gamma: float = 0.5, max_iter: int = 200,
               pixel_scale: float = 255.0, forward: Optional[Callable] = None) -> AttackResult:
    """DAG on an SSD's per-prior class scores (Xie et al. 2017 attack the proposals of Faster R-CNN
    the same way): remove every detection, or give every detection a wrong class.

    A prior *detects* when its highest non-background softmax score reaches ``score_thresh``; its
    class is that score's class.

    * ``mode="suppress"``: every detecting prior ascends ``f_background − f_class``; the attack is
      done when no prior detects anything.
    * ``mode="mislabel"``: the priors detecting on the clean image ascend ``f_target − f_class0``
      (class0: their clean class; target: ``target_label``, or else each prior's second most likely
      non-background class on the clean image); done when all of them are predicted (argmax over
      all classes) as their target.

    Steps are DAG's: ``r = (gamma / pixel_scale) · g / ||g||∞``, clipped to [0, 1] (see :func:`dag`).

    Args:
        model: an SSD whose forward in train mode returns ``(loc [B, P, 4], conf_logits [B, P, C])``;
            it is run in train mode with its normalisation and dropout layers in eval mode (and its
            modes restored afterwards). Pass ``forward`` instead for any other way to get those outputs.
        images: Tensor[B, 3, H, W] in [0, 1].
        forward: optional callable images → (loc, conf_logits); replaces the call of ``model``.

    Returns:
        :class:`AttackResult`, ``success[b]``: the goal is reached for image b.
    """
    images = _check_images(images)
    if mode not in ("suppress", "mislabel"):
        raise ValueError(f"mode must be 'suppress' or 'mislabel', got {mode!r}")
    if not 0 < score_thresh < 1 or not gamma > 0 or max_iter < 0 or not pixel_scale > 0:
        raise ValueError(f"need 0 < score_thresh < 1, gamma > 0, max_iter >= 0, pixel_scale > 0; got "
                         f"score_thresh={score_thresh}, gamma={gamma}, max_iter={max_iter}, "
                         f"pixel_scale={pixel_scale}")
    context = _raw_outputs(model) if forward is None and isinstance(model, nn.Module) else _nullcontext()
    forward = forward if forward is not None else model
    with context:
        with torch.no_grad():
            _, clean = _ssd_outputs(forward, images)
        num_classes = clean.shape[2]
        if not 0 <= background < num_classes:
            raise ValueError(f"background must be a class index in [0, {num_classes}), got {background}")
        if target_label is not None and (not 0 <= target_label < num_classes or target_label == background):
            raise ValueError(f"target_label must be a non-background class in [0, {num_classes}), got "
                             f"{target_label}")
        if mode == "mislabel" and num_classes < 3 and target_label is None:
            raise ValueError("mode='mislabel' needs at least two object classes, the detector has "
                             f"{num_classes - 1}")

        def detections(conf):
            """(detecting [B, P] bool, class [B, P]) from conf_logits."""
            scores = conf.softmax(2)
            scores = scores.index_fill(2, torch.tensor([background], device=conf.device), -1.0)
            best, cls = scores.max(2)
            return best >= score_thresh, cls

        detecting0, class0 = detections(clean)
        if mode == "mislabel":
            if target_label is not None:
                target = torch.full_like(class0, target_label)
            else:
                masked = clean.index_fill(2, torch.tensor([background], device=clean.device), float("-inf"))
                target = masked.scatter(2, class0[..., None], float("-inf")).argmax(2)
            # a prior whose clean class is already the target needs no attack
            detecting0 = detecting0 & (class0 != target)

        def pending(conf, index):
            if mode == "suppress":
                return detections(conf)[0]
            return detecting0[index] & (conf.argmax(2) != target[index])

        step_size = gamma / pixel_scale
        adversarial = images.clone()
        active = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        for iteration in range(max_iter + 1):
            index = active.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            x = adversarial[index].requires_grad_(True)
            _, conf = _ssd_outputs(forward, x)
            todo = pending(conf, index)
            finished = ~todo.any(1)
            active[index[finished]] = False
            if iteration == max_iter or bool(finished.all()):
                break
            if mode == "suppress":
                current = detections(conf)[1]
                margin = conf[..., background] - conf.gather(2, current[..., None]).squeeze(2)
            else:
                margin = conf.gather(2, target[index][..., None]) - conf.gather(2, class0[index][..., None])
                margin = margin.squeeze(2)
            (gradient,) = torch.autograd.grad((margin * todo).sum(), x)
            scale = gradient.flatten(1).abs().amax(1).clamp_min(1e-12)
            step = step_size * gradient / _view(scale, gradient)
            moving = index[~finished]
            adversarial[moving] = (adversarial[moving] + step[~finished]).clamp(0, 1)
        with torch.no_grad():
            _, conf = _ssd_outputs(forward, adversarial)
            success = ~pending(conf, torch.arange(images.shape[0], device=images.device)).any(1)
    l2, linf = perturbation_norms(adversarial, images)
    return AttackResult(adversarial, success, l2, linf)


@contextmanager
def _nullcontext():
    yield
