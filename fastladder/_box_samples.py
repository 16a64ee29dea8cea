"""Sample inputs for the box operators' tests and benchmarks: random boxes (clustered, with ties,
degenerate), the SSD300 priors, and SSD head outputs. Deterministic given a torch.Generator."""
import math
from typing import Optional, Tuple

import torch

__all__ = ["random_boxes", "clustered_boxes", "ssd300_priors", "ssd_head_outputs", "priors_to_xyxy"]


def random_boxes(n: int, generator: torch.Generator, *, image_size: float = 1000.0, min_size: float = 4.0,
                 max_size: float = 200.0, dtype=torch.float32) -> torch.Tensor:
    """Tensor[n, 4] of uniformly placed (x1, y1, x2, y2) boxes with sides in [min_size, max_size]."""
    corner = torch.rand(n, 2, generator=generator, dtype=torch.float64) * image_size
    size = min_size + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (max_size - min_size)
    return torch.cat([corner, corner + size], dim=1).to(dtype)


def clustered_boxes(n: int, generator: torch.Generator, *, boxes_per_cluster: int = 20,
                    image_size: float = 1000.0, jitter: float = 0.15,
                    dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Detector-like (boxes [n, 4], scores [n]): n / boxes_per_cluster objects with sides in
    [16, 128] px at random places of an image_size square, each seen by boxes_per_cluster
    boxes whose corners are jittered by up to ±jitter of the object's size (heavy overlap).
    The density of objects grows with n, so larger n also means more overlap between objects."""
    clusters = max(1, math.ceil(n / boxes_per_cluster))
    size = 16 + torch.rand(clusters, 2, generator=generator, dtype=torch.float64) * 112
    corner = torch.rand(clusters, 2, generator=generator, dtype=torch.float64) * (image_size - size)
    owner = torch.randint(0, clusters, (n,), generator=generator)
    noise = (torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1) * jitter
    s = size[owner].repeat(1, 2)
    base = torch.cat([corner[owner], corner[owner] + size[owner]], dim=1)
    boxes = base + noise * s
    # keep x1 <= x2, y1 <= y2
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]),
                       torch.maximum(boxes[:, :2], boxes[:, 2:])], dim=1)
    scores = torch.rand(n, generator=generator, dtype=torch.float64)
    return boxes.to(dtype), scores.to(dtype)


def ssd300_priors(dtype=torch.float32) -> torch.Tensor:
    """The 8732 SSD300 priors (cx, cy, w, h) of Liu et al. (VOC config), image-relative."""
    maps = (38, 19, 10, 5, 3, 1)
    steps = (8, 16, 32, 64, 100, 300)
    min_sizes = (30, 60, 111, 162, 213, 264)
    max_sizes = (60, 111, 162, 213, 264, 315)
    ratios = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    out = []
    for k, f in enumerate(maps):
        s = min_sizes[k] / 300
        s_extra = math.sqrt(min_sizes[k] * max_sizes[k]) / 300
        shapes = [(s, s), (s_extra, s_extra)]
        for r in ratios[k]:
            shapes += [(s * math.sqrt(r), s / math.sqrt(r)), (s / math.sqrt(r), s * math.sqrt(r))]
        for i in range(f):
            for j in range(f):
                cx, cy = (j + 0.5) * steps[k] / 300, (i + 0.5) * steps[k] / 300
                out += [(cx, cy, w, h) for w, h in shapes]
    return torch.tensor(out, dtype=torch.float64).to(dtype)


def priors_to_xyxy(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), e.g. to hand the priors to torchvision as anchors."""
    return torch.cat([priors[:, :2] - 0.5 * priors[:, 2:], priors[:, :2] + 0.5 * priors[:, 2:]], dim=1)


def ssd_head_outputs(batch: int, priors: torch.Tensor, classes: int, generator: torch.Generator, *,
                     objects: Optional[int] = None, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loc [B, P, 4], conf_logits [B, P, C]) like a trained SSD head's: every prior leans to the
    background (class 0), and the priors near `objects` random objects per image lean to the
    object's class, more strongly the better they fit it. With objects=None, logits are pure noise
    (every class of every prior is a candidate: the worst case for the post-processing)."""
    p = priors.shape[0]
    loc = torch.randn(batch, p, 4, generator=generator, dtype=torch.float64) * 0.5
    if objects is None:
        conf = torch.randn(batch, p, classes, generator=generator, dtype=torch.float64) * 2
        return loc.to(dtype), conf.to(dtype)
    conf = torch.randn(batch, p, classes, generator=generator, dtype=torch.float64)
    conf[..., 0] += 6
    pri = priors.double()
    for b in range(batch):
        centers = torch.rand(objects, 2, generator=generator, dtype=torch.float64)
        sizes = 0.05 + torch.rand(objects, 2, generator=generator, dtype=torch.float64) * 0.5
        labels = torch.randint(1, classes, (objects,), generator=generator)
        # affinity of every prior to every object: close centers and similar sizes
        d_center = ((pri[:, None, :2] - centers[None]) / sizes[None]).norm(dim=-1)
        d_size = (pri[:, None, 2:] / sizes[None]).log().abs().sum(-1)
        affinity = torch.exp(-4 * d_center - d_size)  # [P, objects]
        best, which = affinity.max(dim=1)
        conf[b, torch.arange(p), labels[which]] += 12 * best
    return loc.to(dtype), conf.to(dtype)
