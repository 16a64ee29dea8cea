"""fastladder's operators (torch.ops.fastladder.*), with checks, fake kernels and autograd."""
from fastladder.ops._cpu import fast_bfloat16
from fastladder.ops.bn_relu import bn_relu, bn_relu_conv1x1, fold_batch_norm
from fastladder.ops.boxes import (Detections, batched_nms, box_iou, decode_boxes, encode_boxes, nms,
                                  ssd_postprocess, to_list)
from fastladder.ops.upsample import ladder_blend, upsample_bilinear, upsample_concat
from fastladder.ops.winograd import conv3x3_winograd, winograd_weight

__all__ = ["upsample_concat", "upsample_bilinear", "ladder_blend", "bn_relu", "bn_relu_conv1x1",
           "fold_batch_norm", "box_iou", "nms", "batched_nms", "encode_boxes", "decode_boxes",
           "ssd_postprocess", "Detections", "to_list", "winograd_weight", "conv3x3_winograd", "fast_bfloat16"]
