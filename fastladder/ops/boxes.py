"""Box operators: IoU, non-maximum suppression, SSD box coding and SSD post-processing.

Boxes are ``(x1, y1, x2, y2)`` with x1 <= x2 and y1 <= y2; priors (SSD default boxes) are
``(cx, cy, w, h)``. Areas are ``(x2 - x1) * (y2 - y1)`` (no "+1"), as in torchvision.

Non-finite input: boxes or scores that are NaN or infinite are dropped by :func:`nms`,
:func:`batched_nms` and :func:`ssd_postprocess` (they are never kept and never suppress
another box; a prior whose logits or decoded box are not finite yields no detection), so the
results never contain NaN and nothing crashes. torchvision instead keeps such boxes in an
unspecified order; on finite input the results are the same.
"""
import math
from typing import List, NamedTuple, Sequence, Tuple

import torch

from fastladder import _extension  # noqa: F401  (loads the operators, or explains why not)

__all__ = [
    "box_iou", "nms", "batched_nms", "encode_boxes", "decode_boxes", "ssd_postprocess", "Detections",
    "to_list",
]

# torchvision's BoxCoder clamp of the decoded log-scale: exp() stays finite for wild regressions.
BOX_SCALE_CLIP = math.log(1000.0 / 16)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise intersection-over-union, as torchvision.ops.box_iou.

    Args:
        boxes1 (Tensor[N, 4]), boxes2 (Tensor[M, 4]): ``(x1, y1, x2, y2)``, same floating dtype.

    Returns:
        Tensor[N, M] in the boxes' dtype (computed in float32 for float16/bfloat16). Where the union
        of two boxes has no area (two zero-area boxes) the IoU is 0, where torchvision gives NaN.
        Differentiable in both inputs.
    """
    return torch.ops.fastladder.box_iou(boxes1, boxes2)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression with torchvision.ops.nms semantics.

    Boxes are visited by decreasing score (ties by increasing index); each box that is still
    there suppresses every later box whose IoU with it is strictly greater than
    ``iou_threshold``. Boxes with zero area overlap nothing (they are kept). Boxes whose
    coordinates or score are not finite are dropped.

    Args:
        boxes (Tensor[N, 4]): ``(x1, y1, x2, y2)``, floating point.
        scores (Tensor[N]): the boxes' dtype.
        iou_threshold (float): in [0, 1].

    Returns:
        Tensor[int64] of the kept boxes' indices, by decreasing score.
    """
    return torch.ops.fastladder.nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor,
                iou_threshold: float) -> torch.Tensor:
    """:func:`nms` within each category: boxes of different ``idxs`` never suppress each other.

    Same result as torchvision.ops.batched_nms (its coordinate-offset trick and its per-class loop
    agree up to the rounding of the offset coordinates; this computes every IoU on the original
    coordinates, like the loop). Categories run in parallel on the CPU.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]): as in :func:`nms`.
        idxs (Tensor[N]): integer category of each box (any values).
        iou_threshold (float): in [0, 1].

    Returns:
        Tensor[int64] of the kept indices, by decreasing score (ties by increasing index).
    """
    return torch.ops.fastladder.batched_nms(boxes, scores, idxs, float(iou_threshold))


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.2)) -> torch.Tensor:
    """SSD regression targets: the offsets of ``boxes`` from ``priors``.

    ``dx = (cx - prior_cx) / prior_w / variances[0]``, ``dw = log(w / prior_w) / variances[1]``
    (and the same for y, h); torchvision's BoxCoder.encode with weights
    ``(1/v0, 1/v0, 1/v1, 1/v1)``. A box of zero width or height gives ``-inf`` for dw or dh.

    Args:
        boxes (Tensor[..., P, 4]): ``(x1, y1, x2, y2)``, one box per prior.
        priors (Tensor[P, 4]): ``(cx, cy, w, h)``, boxes' dtype.
        variances: (center, size) scale factors.

    Returns:
        Tensor[..., P, 4] of ``(dx, dy, dw, dh)``. Differentiable in boxes.
    """
    return torch.ops.fastladder.encode_boxes(boxes, priors, _variances(variances))


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor,
                 variances: Sequence[float] = (0.1, 0.2)) -> torch.Tensor:
    """The boxes that SSD offsets ``loc`` describe relative to ``priors``: the inverse of
    :func:`encode_boxes`, equal to torchvision's BoxCoder.decode with weights (10, 10, 5, 5) for the
    default variances, including its clamp of dw, dh at log(1000/16).

    Args:
        loc (Tensor[..., P, 4]): ``(dx, dy, dw, dh)``.
        priors (Tensor[P, 4]): ``(cx, cy, w, h)``, loc's dtype.
        variances: (center, size) scale factors.

    Returns:
        Tensor[..., P, 4] of ``(x1, y1, x2, y2)``, not clipped. Differentiable in loc.
    """
    return torch.ops.fastladder.decode_boxes(loc, priors, _variances(variances))


class Detections(NamedTuple):
    """Padded detections of a batch: row ``b`` holds ``num_detections[b]`` valid entries, by
    decreasing score; the rest are zeros with label -1."""
    boxes: torch.Tensor           # [B, K, 4] (x1, y1, x2, y2), clipped to [0, 1]
    scores: torch.Tensor          # [B, K]
    labels: torch.Tensor          # [B, K] int64 class index
    num_detections: torch.Tensor  # [B] int64

    def to_list(self) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image ``(boxes [n, 4], scores [n], labels [n])`` without the padding."""
        return to_list(*self)


def to_list(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
            num_detections: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes [n, 4], scores [n], labels [n])`` of padded :func:`ssd_postprocess` outputs.

    Reads num_detections once (one device-to-host copy for the whole batch)."""
    counts = num_detections.tolist()
    return [(boxes[b, :n], scores[b, :n], labels[b, :n]) for b, n in enumerate(counts)]


def ssd_postprocess(loc: torch.Tensor, conf_logits: torch.Tensor, priors: torch.Tensor, *,
                    score_thresh: float = 0.01, nms_thresh: float = 0.45, topk: int = 400,
                    max_detections: int = 200, variances: Sequence[float] = (0.1, 0.2),
                    background: int = 0) -> Detections:
    """SSD head outputs -> final detections for a whole batch, in one call.

    Per image: softmax over the classes; for every class but ``background``, the priors whose
    probability is > ``score_thresh``, the ``topk`` most probable of them, their boxes decoded
    (:func:`decode_boxes`) and clipped to [0, 1] (priors are in image-relative coordinates),
    NMS among them at ``nms_thresh``; then the ``max_detections`` best over all classes. These
    are torchvision's SSD postprocess_detections rules (on image size 1 × 1). Priors whose logits
    or decoded box are not finite are dropped. On CUDA nothing waits for the device.

    Args:
        loc (Tensor[B, P, 4]): box offsets ``(dx, dy, dw, dh)``.
        conf_logits (Tensor[B, P, C]): class logits, loc's dtype.
        priors (Tensor[P, 4]): ``(cx, cy, w, h)``, loc's dtype.
        score_thresh (float): in [0, 1). nms_thresh (float): in [0, 1].
        topk (int): candidates per class before NMS. max_detections (int): K.
        variances: (center, size). background (int): the class never reported, -1 for none.

    Returns:
        :class:`Detections` ``(boxes [B, K, 4], scores [B, K], labels [B, K], num_detections [B])``,
        a tuple; ``.to_list()`` gives per-image ``(boxes, scores, labels)``.
    """
    boxes, scores, labels, count = torch.ops.fastladder.ssd_postprocess(
        loc, conf_logits, priors, float(score_thresh), float(nms_thresh), int(topk), int(max_detections),
        _variances(variances), int(background))
    return Detections(boxes, scores, labels, count)


def _variances(variances) -> List[float]:
    values = [float(v) for v in variances]
    if len(values) != 2:
        raise ValueError(f"variances must be two numbers (center, size), got {variances!r}")
    return values


# --- registration: fake kernels ------------------------------------------------------------------

def _check_boxes(t, name, rows="N"):
    torch._check(t.dim() == 2 and t.shape[1] == 4,
                 lambda: f"{name} must be an [{rows}, 4] tensor of (x1, y1, x2, y2), got shape "
                         f"{tuple(t.shape)}")


@torch.library.register_fake("fastladder::box_iou")
def _box_iou_fake(boxes1, boxes2):
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2", "M")
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@torch.library.register_fake("fastladder::nms")
def _nms_fake(boxes, scores, iou_threshold):
    _check_boxes(boxes, "boxes")
    torch._check(scores.dim() == 1 and scores.shape[0] == boxes.shape[0],
                 lambda: f"scores must be an [N] tensor, got {tuple(scores.shape)} for boxes "
                         f"{tuple(boxes.shape)}")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


@torch.library.register_fake("fastladder::batched_nms")
def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_boxes(boxes, "boxes")
    torch._check(scores.shape == idxs.shape and scores.dim() == 1 and scores.shape[0] == boxes.shape[0],
                 lambda: "scores and idxs must be [N] tensors")
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def _box_coder_fake(boxes, priors, variances):
    torch._check(boxes.dim() >= 2 and boxes.shape[-1] == 4, lambda: "expected a [..., P, 4] tensor")
    return boxes.new_empty(boxes.shape)


torch.library.register_fake("fastladder::encode_boxes")(_box_coder_fake)
torch.library.register_fake("fastladder::decode_boxes")(_box_coder_fake)


@torch.library.register_fake("fastladder::ssd_postprocess")
def _ssd_postprocess_fake(loc, conf_logits, priors, score_thresh, nms_thresh, topk, max_detections, variances,
                          background):
    torch._check(loc.dim() == 3 and conf_logits.dim() == 3, lambda: "loc and conf_logits must be 3-D")
    batch = loc.shape[0]
    return (loc.new_empty((batch, max_detections, 4)), loc.new_empty((batch, max_detections)),
            loc.new_empty((batch, max_detections), dtype=torch.int64),
            loc.new_empty((batch,), dtype=torch.int64))


# --- registration: autograd (closed-form gradients, in torch ops) -------------------------------

def _box_iou_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _box_iou_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    a = boxes1.float()[:, None, :]
    b = boxes2.float()[None, :, :]
    g = grad.float()
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = rb - lt
    overlaps = wh > 0
    wh = wh.clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    valid = union > 0
    safe = torch.where(valid, union, torch.ones_like(union))
    # IoU = I / U with U = A + B - I: dIoU = dI * (U + I) / U^2 - (dA + dB) * I / U^2
    g_inter = torch.where(valid, g * (safe + inter) / safe ** 2, torch.zeros_like(g))
    g_area = torch.where(valid, -g * inter / safe ** 2, torch.zeros_like(g))
    # dI/d(w, h) = (h, w), only where the intersection is open along that axis
    g_w = g_inter * wh[..., 1] * overlaps[..., 0]
    g_h = g_inter * wh[..., 0] * overlaps[..., 1]
    # which box supplies the intersection's edges: the larger x1 (ties: the first, as torch.maximum)
    a_left = a[..., 0] >= b[..., 0]
    a_top = a[..., 1] >= b[..., 1]
    a_right = a[..., 2] <= b[..., 2]
    a_bottom = a[..., 3] <= b[..., 3]

    def area_grad(box):  # dA/d(x1, y1, x2, y2) = (-h, -w, h, w)
        w = box[..., 2] - box[..., 0]
        h = box[..., 3] - box[..., 1]
        return torch.stack([-g_area * h, -g_area * w, g_area * h, g_area * w], dim=-1)

    grad_a = area_grad(a) + torch.stack(
        [-g_w * a_left, -g_h * a_top, g_w * a_right, g_h * a_bottom], dim=-1)
    grad_b = area_grad(b) + torch.stack(
        [-g_w * ~a_left, -g_h * ~a_top, g_w * ~a_right, g_h * ~a_bottom], dim=-1)
    grad1 = grad_a.sum(dim=1).to(boxes1.dtype) if ctx.needs_input_grad[0] else None
    grad2 = grad_b.sum(dim=0).to(boxes2.dtype) if ctx.needs_input_grad[1] else None
    return grad1, grad2


torch.library.register_autograd("fastladder::box_iou", _box_iou_backward,
                                setup_context=_box_iou_setup_context)


def _box_coder_setup_context(ctx, inputs, output):
    values, priors, variances = inputs
    ctx.save_for_backward(values, priors)
    ctx.variances = variances


def _decode_boxes_backward(ctx, grad):
    loc, priors = ctx.saved_tensors
    v_center, v_size = ctx.variances
    g = grad.float()
    p = priors.float()
    scaled = loc.float()[..., 2:] / (1.0 / v_size)
    # the clamp at BOX_SCALE_CLIP passes no gradient beyond it (as torch.clamp)
    half = 0.5 * torch.exp(scaled.clamp(max=BOX_SCALE_CLIP)) * p[:, 2:] * (scaled <= BOX_SCALE_CLIP)
    grad_center = (g[..., :2] + g[..., 2:]) * v_center * p[:, 2:]
    grad_size = (g[..., 2:] - g[..., :2]) * half * v_size
    return torch.cat([grad_center, grad_size], dim=-1).to(loc.dtype), None, None


def _encode_boxes_backward(ctx, grad):
    boxes, priors = ctx.saved_tensors
    v_center, v_size = ctx.variances
    g = grad.float()
    b = boxes.float()
    p = priors.float()
    size = b[..., 2:] - b[..., :2]
    # d(center offset)/d(x1, x2) = 0.5 / (prior_w * v0); d(log size)/d(x1, x2) = -+1 / (w * v1)
    g_center = g[..., :2] * 0.5 / (p[:, 2:] * v_center)
    g_size = g[..., 2:] / (size * v_size)
    return torch.cat([g_center - g_size, g_center + g_size], dim=-1).to(boxes.dtype), None, None


torch.library.register_autograd("fastladder::decode_boxes", _decode_boxes_backward,
                                setup_context=_box_coder_setup_context)
torch.library.register_autograd("fastladder::encode_boxes", _encode_boxes_backward,
                                setup_context=_box_coder_setup_context)
