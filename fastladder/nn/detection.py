"""Detection heads' post-processing as a drop-in module."""
from typing import Sequence

import torch
from torch import nn

from fastladder.ops.boxes import Detections, ssd_postprocess

__all__ = ["DetectionPostprocess"]


class DetectionPostprocess(nn.Module):
    """SSD post-processing (softmax, per-class threshold and top-k, decoding against the priors,
    per-class NMS, best ``max_detections``) of a whole batch in one fused call; see
    :func:`fastladder.ops.ssd_postprocess`.

    Args:
        priors (Tensor[P, 4]): ``(cx, cy, w, h)`` in image-relative coordinates; stored as a
            buffer (it follows ``.to()`` and is saved in the state_dict).
        num_classes: C, including the background class. Checked against the head's output.
        score_thresh, nms_thresh, topk, max_detections, variances, background: as in
            :func:`fastladder.ops.ssd_postprocess` (SSD's defaults).

    Shape:
        forward(loc [B, P, 4], conf_logits [B, P, C]) -> :class:`fastladder.ops.Detections`
        ``(boxes [B, K, 4], scores [B, K], labels [B, K], num_detections [B])``, K = max_detections;
        the inputs are cast to the priors' dtype when they differ.
    """

    def __init__(self, priors: torch.Tensor, num_classes: int, *, score_thresh: float = 0.01,
                 nms_thresh: float = 0.45, topk: int = 400, max_detections: int = 200,
                 variances: Sequence[float] = (0.1, 0.2), background: int = 0):
        super().__init__()
        if priors.dim() != 2 or priors.shape[1] != 4:
            raise ValueError(f"priors must be a [P, 4] tensor of (cx, cy, w, h), "
                             f"got shape {tuple(priors.shape)}")
        self.register_buffer("priors", priors)
        self.num_classes = int(num_classes)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.topk = int(topk)
        self.max_detections = int(max_detections)
        self.variances = tuple(float(v) for v in variances)
        self.background = int(background)

    def forward(self, loc: torch.Tensor, conf_logits: torch.Tensor) -> Detections:
        if conf_logits.dim() != 3 or conf_logits.shape[-1] != self.num_classes:
            raise ValueError(f"conf_logits must be [B, P, {self.num_classes}], "
                             f"got shape {tuple(conf_logits.shape)}")
        dtype = self.priors.dtype
        return ssd_postprocess(loc.to(dtype), conf_logits.to(dtype), self.priors,
                               score_thresh=self.score_thresh, nms_thresh=self.nms_thresh, topk=self.topk,
                               max_detections=self.max_detections, variances=self.variances,
                               background=self.background)

    def extra_repr(self) -> str:
        return (f"priors={self.priors.shape[0]}, num_classes={self.num_classes}, "
                f"score_thresh={self.score_thresh}, "
                f"nms_thresh={self.nms_thresh}, topk={self.topk}, max_detections={self.max_detections}, "
                f"variances={self.variances}, background={self.background}")
