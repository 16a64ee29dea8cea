"""SSD's outputs in an exported ONNX graph: the priors as a constant output, or the whole
post-processing (softmax, per-class threshold and top-k, box decoding, NonMaxSuppression, best K per
image) in standard ONNX operators, appended after the graph's ``loc`` and ``conf_logits``.

The same as :func:`fastladder.ops.ssd_postprocess`: softmax over all classes, the background
never reported, a candidate kept when its probability is > ``score_thresh`` (ONNX Runtime's
NonMaxSuppression drops a score equal to the threshold too), the ``topk`` most probable per class
(ties by lower prior index, as ONNX TopK), boxes decoded with the same log-scale clamp and
clipped to [0, 1], a box suppressed by a kept one of its class when their IoU is > ``nms_thresh``
(not at equality, in ONNX Runtime as in torchvision), the best ``max_detections`` per image by
decreasing score (ties by class, then by rank within the class), padded with zeros and label -1
after ``num_detections`` rows. The differences:

- ONNX NonMaxSuppression does not say in which order it visits candidates of equal score: where
  two boxes of one class have exactly the same score and overlap more than ``nms_thresh``, the
  one kept may differ (fastladder keeps the lower prior index).
- The IoU, the decoded boxes and the softmax are computed by the runtime's kernels (values within
  a few float32 ulps of fastladder's): a score or an IoU within rounding of ``score_thresh`` or
  ``nms_thresh`` may fall the other way, and two detections whose scores differ by a rounding
  may come out in the other order.
Priors whose logits or decoded box are not finite are dropped, as in ``ssd_postprocess``.
"""
from typing import List

import torch

from fastladder.ops.boxes import BOX_SCALE_CLIP

__all__ = ["append_priors_output", "append_ssd_postprocess"]


class _Graph:
    """Appends named nodes and constants to an onnx GraphProto (names prefixed to stay unique)."""

    def __init__(self, graph, prefix: str):
        import onnx
        from onnx import helper, numpy_helper
        self.onnx, self.helper, self.numpy_helper = onnx, helper, numpy_helper
        self.graph, self.prefix, self.count = graph, prefix, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}{hint}_{self.count}"

    def const(self, value, dtype, hint: str = "const") -> str:
        name = self.name(hint)
        tensor = torch.as_tensor(value, dtype=dtype).cpu().numpy()
        self.graph.initializer.append(self.numpy_helper.from_array(tensor, name))
        return name

    def op(self, op_type: str, inputs: List[str], hint: str = "", outputs: int = 1, **attrs):
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        node = self.helper.make_node(op_type, inputs, names, name=self.name(op_type), **attrs)
        self.graph.node.append(node)
        return names[0] if outputs == 1 else names

    def output(self, source: str, name: str, elem_type, shape):
        self.graph.node.append(self.helper.make_node("Identity", [source], [name], name=self.name("output")))
        self.graph.output.append(self.helper.make_tensor_value_info(name, elem_type, shape))


def append_priors_output(model, priors: torch.Tensor):
    """Adds the output ``priors`` [P, 4] ``(cx, cy, w, h)`` (a constant) to the exported SSD graph."""
    g = _Graph(model.graph, "priors/")
    g.output(g.const(priors, torch.float32, "priors"), "priors", g.onnx.TensorProto.FLOAT, list(priors.shape))


def append_ssd_postprocess(model, priors: torch.Tensor, post):
    """Replaces the outputs ``loc`` [B, P, 4] and ``conf_logits`` [B, P, C] of the exported SSD graph
    by its detections ``boxes`` [B, K, 4], ``scores`` [B, K], ``labels`` [B, K] (int64),
    ``num_detections`` [B] (int64), K = ``post.max_detections``; ``post`` is the model's
    :class:`fastladder.nn.DetectionPostprocess` (thresholds, topk, variances, background).

    The per-class top-k candidates of every (image, class) pair are one NonMaxSuppression batch
    entry, so that each class keeps its own ``topk`` candidates before NMS, as in ssd_postprocess."""
    g = _Graph(model.graph, "postprocess/")
    T = g.onnx.TensorProto
    num_priors, num_classes = priors.shape[0], post.num_classes
    classes = [c for c in range(num_classes) if c != post.background]  # the reported ones, R
    R, k = len(classes), min(post.topk, num_priors)
    K = post.max_detections
    kept_outputs = [o for o in model.graph.output if o.name not in ("loc", "conf_logits")]
    del model.graph.output[:]
    model.graph.output.extend(kept_outputs)
    i64 = torch.int64

    # probabilities of the reported classes, [B, R, P]
    probabilities = g.op("Softmax", ["conf_logits"], axis=-1)
    probabilities = g.op("Gather", [probabilities, g.const(classes, i64, "classes")], axis=2)
    probabilities = g.op("Transpose", [probabilities], perm=[0, 2, 1])

    # decoded boxes [B, P, 4], as fastladder.ops.decode_boxes, then clipped to [0, 1]
    w_center, w_size = 1.0 / post.variances[0], 1.0 / post.variances[1]
    prior_center = g.const(priors[:, :2], torch.float32, "prior_center")
    prior_size = g.const(priors[:, 2:], torch.float32, "prior_size")
    two, four, axis2 = g.const([2], i64), g.const([4], i64), g.const([2], i64)
    offsets = g.op("Slice", ["loc", g.const([0], i64), two, axis2])
    scales = g.op("Slice", ["loc", two, four, axis2])
    center = g.op("Add", [g.op("Mul", [g.op("Div", [offsets, g.const(w_center, torch.float32)]), prior_size]),
                          prior_center])
    scales = g.op("Min", [g.op("Div", [scales, g.const(w_size, torch.float32)]),
                          g.const(BOX_SCALE_CLIP, torch.float32)])
    half = g.op("Mul", [g.const(0.5, torch.float32), g.op("Mul", [g.op("Exp", [scales]), prior_size])])
    boxes = g.op("Concat", [g.op("Sub", [center, half]), g.op("Add", [center, half])], axis=2)

    # drop priors whose box or probabilities are not finite (x - x == 0 only for finite x)
    def finite(x):
        return g.op("Equal", [g.op("Sub", [x, x]), g.const(0.0, torch.float32)])

    box_finite = finite(g.op("ReduceSum", [boxes, g.const([2], i64)], keepdims=1))  # [B, P, 1]
    box_finite = g.op("Transpose", [box_finite], perm=[0, 2, 1])  # [B, 1, P]
    valid = g.op("And", [box_finite, finite(probabilities)])
    probabilities = g.op("Where", [valid, probabilities, g.const(-1.0, torch.float32)])
    boxes = g.op("Clip", [boxes, g.const(0.0, torch.float32), g.const(1.0, torch.float32)])

    # the top k candidates of each (image, class): scores [B, R, k], prior indices [B, R, k]
    top_scores, top_priors = g.op("TopK", [probabilities, g.const([k], i64)], outputs=2, axis=2, largest=1,
                                  sorted=1)
    # their boxes [B, R·k, 4], class-major
    candidate_boxes = g.op("GatherND", [boxes, g.op("Reshape", [top_priors, g.const([0, -1, 1], i64)])],
                           batch_dims=1)

    # NMS with one batch entry per (image, class): boxes [B·R, k, 4], scores [B·R, 1, k]
    selected = g.op("NonMaxSuppression", [
        g.op("Reshape", [candidate_boxes, g.const([-1, k, 4], i64)]),
        g.op("Reshape", [top_scores, g.const([-1, 1, k], i64)]),
        g.const([k], i64), g.const([post.nms_thresh], torch.float32),
        g.const([post.score_thresh], torch.float32)],
        center_point_box=0)  # corners; NMS does not care whether they are xyxy or yxyx
    # kept candidate (image·R + class, 0, rank) → flat position (image·R + class)·k + rank
    pair = g.op("Gather", [selected, g.const([0], i64)], axis=1)
    rank = g.op("Gather", [selected, g.const([2], i64)], axis=1)
    position = g.op("Add", [g.op("Mul", [pair, g.const(k, i64)]), rank])  # [N, 1]
    flat_scores = g.op("Reshape", [top_scores, g.const([-1], i64)])
    kept = g.op("ScatterND", [
        g.op("ConstantOfShape", [g.op("Shape", [flat_scores])],
             value=g.helper.make_tensor("fill", T.FLOAT, [1], [-1.0])),
        position, g.op("GatherND", [flat_scores, position])])
    kept = g.op("Reshape", [kept, g.const([-1, R * k], i64)])  # [B, R·k], -1 where not kept

    # the best K per image; ties by lower index: by class, then by rank within the class
    k_out = min(K, R * k)
    scores, order = g.op("TopK", [kept, g.const([k_out], i64)], outputs=2, axis=1, largest=1, sorted=1)
    is_kept = g.op("Greater", [scores, g.const(-0.5, torch.float32)])  # kept scores are >= 0
    out_boxes = g.op("GatherND", [candidate_boxes, g.op("Unsqueeze", [order, g.const([2], i64)])],
                     batch_dims=1)
    out_boxes = g.op("Where", [g.op("Unsqueeze", [is_kept, g.const([2], i64)]), out_boxes,
                               g.const(0.0, torch.float32)])
    labels = g.op("Gather", [g.const([c for c in classes for _ in range(k)], i64, "labels"), order], axis=0)
    labels = g.op("Where", [is_kept, labels, g.const(-1, i64)])
    scores = g.op("Where", [is_kept, scores, g.const(0.0, torch.float32)])
    count = g.op("ReduceSum", [g.op("Cast", [is_kept], to=T.INT64), g.const([1], i64)], keepdims=0)
    if k_out < K:  # fewer candidates than max_detections: pad as ssd_postprocess does
        missing = K - k_out
        out_boxes = g.op("Pad", [out_boxes, g.const([0, 0, 0, 0, missing, 0], i64),
                                 g.const(0.0, torch.float32)])
        scores = g.op("Pad", [scores, g.const([0, 0, 0, missing], i64), g.const(0.0, torch.float32)])
        labels = g.op("Pad", [labels, g.const([0, 0, 0, missing], i64), g.const(-1, i64)])
    g.output(out_boxes, "boxes", T.FLOAT, ["batch", K, 4])
    g.output(scores, "scores", T.FLOAT, ["batch", K])
    g.output(labels, "labels", T.INT64, ["batch", K])
    g.output(count, "num_detections", T.INT64, ["batch"])
