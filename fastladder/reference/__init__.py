"""Pure-PyTorch implementations of fastladder's operators and modules.

They are the specification: tests compare the compiled operators against them, and benchmarks
use them (eager and under torch.compile) as the baseline. They never call fastladder._C.
"""
from fastladder.reference import boxes  # box_iou, nms, ..., ssd_postprocess references
from fastladder.reference import multibox  # match_priors, multibox_loss: per-image loops
from fastladder.reference.models import (BNReluConvReference, ContextBlockReference, DenseBlockReference,
                                         DenseLayerReference, DenseNetReference, LadderDenseNetReference,
                                         SpatialPyramidPoolingReference, TransitionReference, reference_twin)
from fastladder.reference.nn import LadderUpsampleReference
from fastladder.reference.ops import (bn_relu, bn_relu_conv1x1, conv3x3_winograd, ladder_blend,
                                      upsample_concat, winograd_weight)

__all__ = ["upsample_concat", "ladder_blend", "bn_relu", "bn_relu_conv1x1", "winograd_weight",
           "conv3x3_winograd",
           "LadderUpsampleReference", "boxes", "multibox",
           "BNReluConvReference", "DenseLayerReference", "DenseBlockReference", "TransitionReference",
           "SpatialPyramidPoolingReference", "ContextBlockReference", "DenseNetReference",
           "LadderDenseNetReference", "reference_twin"]
