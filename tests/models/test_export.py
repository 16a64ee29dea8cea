"""ONNX export (fastladder.models.export_onnx) checked with ONNX Runtime on the CPU: every registry
model at tiny width, at the export size and another size, standard-domain operators only, metadata;
the SSD post-processing graph against fastladder.ops.ssd_postprocess; torch.export of the models
that optimize_for_inference returns (the custom operators' fake kernels)."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from fastladder.errors import ArgumentError
from fastladder.models import create_model, export_onnx, list_models, onnx_metadata, optimize_for_inference
from fastladder.models.export import _min_side
from fastladder.nn.detection import DetectionPostprocess
from fastladder.reference.models import reference_twin
from fastladder.testing import randomize_batch_norm

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TINY_LDN = dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=(2, 2, 4, 2), context_channels=16,
                upsample_channels=8)
TINY_DENSENET = dict(growth_rate=4, num_init_features=8, bn_size=2, block_config=(2, 2, 2, 2))
TINY_SSD = dict(width=0.0625)
# (model, extra kwargs): every registry model, and the LDN with the pyramid-pooling context
CASES = [(name, {}) for name in list_models()] + [("ladder_densenet121", dict(context="spp"))]
METADATA = {"model": "x", "classes": ["road", "car", "sky"], "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375], "input_size": [64, 96], "dataset": None}


def tiny_model(name, generator, **kwargs):
    """A tiny registry model whose BatchNorms look trained (random affine and running statistics)."""
    if name.startswith("ssd"):
        model = create_model(name, num_classes=4, **TINY_SSD, **kwargs)
        for m in model.modules():  # the head's zero biases would give tied scores
            if isinstance(m, nn.Conv2d):
                m.bias.data.normal_(0, 0.1, generator=generator)
    else:
        backbone = name.startswith("densenet") and not name.endswith("_32x")
        tiny = TINY_DENSENET if backbone else TINY_LDN
        model = create_model(name, num_classes=5, **tiny, **kwargs)
    return randomize_batch_norm(model, generator).eval()


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refused sizes below are expected errors: no log
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_logits_close(actual, expected, axis=1):
    """Within 1e-3 of the reference relative to its max abs value; >= 99.9% argmax agreement (classes
    along axis; None: values that are not logits)."""
    expected = expected.detach().float().numpy()
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= 1e-3 * scale
    if axis is not None:
        agreement = (actual.argmax(axis) == expected.argmax(axis)).mean()
        assert agreement >= 0.999


def assert_standard(proto):
    onnx.checker.check_model(proto, full_check=True)
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}


@pytest.mark.parametrize("name, kwargs", CASES, ids=[n + ("-spp" if k else "") for n, k in CASES])
def test_export_matches_model(tmp_path, generator, name, kwargs):
    model = tiny_model(name, generator, **kwargs)
    ssd = name.startswith("ssd")
    size = model.image_size if ssd else (64, 96)
    example = torch.randn(1, 3, *size, generator=generator)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, example, path, metadata=METADATA)
    assert_standard(onnx.load(str(path)))
    assert onnx_metadata(path) == METADATA
    assert proto.opset_import[0].version == 18
    runner = session(path)
    # export size, then another batch (and another H×W where the architecture allows it)
    fixed = ssd or kwargs.get("context") == "spp"
    for shape in [(1, 3, *size), (2, 3, *size) if fixed else (2, 3, 67, 131)]:
        x = torch.randn(*shape, generator=generator)
        outputs = runner.run(None, {"image": x.numpy()})
        if ssd:
            model.train()  # the head's raw outputs (SSD has no BatchNorm: same network as eval)
            with torch.no_grad():
                loc, conf_logits = model(x)
            model.eval()
            assert_logits_close(outputs[0], loc, axis=None)
            assert_logits_close(outputs[1], conf_logits, axis=2)
            np.testing.assert_array_equal(outputs[2], model.priors.numpy())
        else:
            with torch.no_grad():
                expected = model(x)
            assert_logits_close(outputs[0], expected)
    if fixed:  # H and W are fixed: another size is refused by the runtime, never silently wrong
        with pytest.raises(Exception, match="(?i)dimension|shape"):
            runner.run(None, {"image": torch.randn(1, 3, size[0] + 32, size[1] + 32).numpy()})
    else:  # the smallest size the model accepts runs; below it the graph fails as the model does
        side = _min_side(model, reference_twin(model))
        x = torch.randn(1, 3, side, side + 3, generator=generator)
        with torch.no_grad():
            assert_logits_close(runner.run(None, {"image": x.numpy()})[0], model(x))
        with pytest.raises(Exception):
            model(x[..., 1:, :])
        with pytest.raises(Exception, match="cannot be reshaped"):
            runner.run(None, {"image": x[..., 1:, :].numpy()})


def test_dynamic_false_fixes_every_dimension(tmp_path, generator):
    model = tiny_model("ladder_densenet121", generator)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    proto = export_onnx(model, x, tmp_path / "m.onnx", dynamic=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 64, 64]
    dynamic = export_onnx(model, x[:1], tmp_path / "d.onnx", opset=17)
    assert [d.dim_param for d in dynamic.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height",
                                                                                       "width"]
    assert dynamic.opset_import[0].version == 17


# --- SSD post-processing in the graph ----------------------------------------------------------------

def postprocess_graph(tmp_path, priors, post):
    """An ONNX model (loc, conf_logits) → the appended post-processing, as export_onnx builds it."""
    from onnx import TensorProto, helper

    from fastladder.models._export_ssd import append_ssd_postprocess
    P, C = priors.shape[0], post.num_classes
    graph = helper.make_graph(
        [helper.make_node("Identity", ["loc_in"], ["loc"]),
         helper.make_node("Identity", ["conf_in"], ["conf_logits"])],
        "post", [helper.make_tensor_value_info("loc_in", TensorProto.FLOAT, ["batch", P, 4]),
                 helper.make_tensor_value_info("conf_in", TensorProto.FLOAT, ["batch", P, C])],
        [helper.make_tensor_value_info("loc", TensorProto.FLOAT, ["batch", P, 4]),
         helper.make_tensor_value_info("conf_logits", TensorProto.FLOAT, ["batch", P, C])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    append_ssd_postprocess(proto, priors, post)
    assert_standard(proto)
    path = tmp_path / "post.onnx"
    onnx.save(proto, str(path))
    return session(path)


def assert_same_detections(onnx_out, expected, min_matched=0.99):
    """Same counts, same padding, and (nearly) every detection found with its label, score and box:
    scores within rounding may swap places (see fastladder.models._export_ssd)."""
    boxes, scores, labels, counts = onnx_out
    e_boxes, e_scores, e_labels, e_counts = (t.numpy() for t in expected)
    assert boxes.shape == e_boxes.shape and labels.dtype == np.int64 and counts.dtype == np.int64
    assert np.abs(counts - e_counts).max() <= 1
    matched = total = 0
    for b, n in enumerate(counts):
        assert (labels[b, n:] == -1).all() and (scores[b, n:] == 0).all() and (boxes[b, n:] == 0).all()
        assert (np.diff(scores[b, :n]) <= 0).all()
        m = e_counts[b]
        same = ((labels[b, :n, None] == e_labels[b, None, :m])
                & (np.abs(scores[b, :n, None] - e_scores[b, None, :m]) <= 1e-5)
                & (np.abs(boxes[b, :n, None] - e_boxes[b, None, :m]).max(-1) <= 1e-5))
        matched += same.any(1).sum()
        total += max(n, m)
    assert matched >= min_matched * total, (matched, total)


@pytest.mark.parametrize("classes, topk, max_detections, background", [
    (4, 20, 30, 0),     # the best max_detections of classes × topk candidates
    (3, 400, 200, 0),   # topk > priors, max_detections > candidates: padded
    (5, 10, 15, -1),    # no background class
])
def test_postprocess_graph_matches_ssd_postprocess(tmp_path, generator, classes, topk, max_detections,
                                                   background):
    P = 150
    centers = torch.rand(P, 2, generator=generator)
    priors = torch.cat([centers, 0.05 + 0.3 * torch.rand(P, 2, generator=generator)], 1)
    post = DetectionPostprocess(priors, classes, score_thresh=0.05, nms_thresh=0.45, topk=topk,
                                max_detections=max_detections, background=background)
    runner = postprocess_graph(tmp_path, priors, post)
    loc = torch.randn(3, P, 4, generator=generator)
    conf = 3 * torch.randn(3, P, classes, generator=generator)
    conf[2, :, :] = -20.0  # image 2: no class passes the threshold ...
    conf[2, :, 0] = 20.0
    if background == -1:
        conf[2, :, :] = -20.0 * torch.arange(classes)  # ... or, without background, only class 0
    loc[0, :5, 2] = float("nan")  # non-finite boxes and logits are dropped
    conf[1, :5, 1] = float("inf")
    expected = post(loc, conf)
    out = runner.run(None, {"loc_in": loc.numpy(), "conf_in": conf.numpy()})
    assert_same_detections(out, expected)
    assert out[3][0] > 0 and out[3][1] > 0


def test_ssd_export_with_postprocess_matches_eval(tmp_path, generator):
    model = tiny_model("ssd300_vgg16", generator)
    x = torch.randn(2, 3, 300, 300, generator=generator)
    path = tmp_path / "ssd.onnx"
    export_onnx(model, x[:1], path, postprocess=True, metadata={"classes": ["bg", "a", "b", "c"]})
    proto = onnx.load(str(path))
    assert_standard(proto)
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    assert "NonMaxSuppression" in {n.op_type for n in proto.graph.node}
    with torch.no_grad():
        expected = model(x)
    out = session(path).run(None, {"image": x.numpy()})
    assert_same_detections(out, expected)
    # the network's outputs agree to float rounding, so nearly every detection is the same
    assert out[3].sum() > 0


# --- torch.export of the optimized models: the fake kernels of fastladder's operators --------------

@pytest.mark.parametrize("name", ["ladder_densenet121", "densenet121", "ssd300_vgg16"])
def test_torch_export_of_optimized_model(tmp_path, generator, name):
    model = tiny_model(name, generator)
    size = model.image_size if name.startswith("ssd") else (64, 96)
    x = torch.randn(1, 3, *size, generator=generator)
    optimized = optimize_for_inference(model, x)
    module = getattr(optimized, "module", optimized)
    with torch.no_grad():
        program = torch.export.export(module, (x,))
        actual, expected = program.module()(x), module(x)
    targets = {str(node.target) for node in program.graph.nodes}
    assert any(t.startswith("fastladder.") for t in targets), targets  # the custom operators were traced
    for a, e in zip(actual if isinstance(actual, tuple) else [actual], expected if isinstance(expected, tuple)
                    else [expected]):
        torch.testing.assert_close(a, e)
    if name == "ladder_densenet121":  # the converted copy has no BatchNorms left to export: one clear error
        with pytest.raises(ArgumentError, match="not what optimize_for_inference returned"):
            export_onnx(optimized, x, tmp_path / "m.onnx")
        assert not (tmp_path / "m.onnx").exists()


# --- errors ---------------------------------------------------------------------------------------------

def test_errors(tmp_path, generator):
    model = tiny_model("ladder_densenet121", generator)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    path = tmp_path / "m.onnx"
    with pytest.raises(ArgumentError, match="opset"):
        export_onnx(model, x, path, opset=11)
    with pytest.raises(ArgumentError, match=r"metadata\['mean'\] is not JSON-able"):
        export_onnx(model, x, path, metadata={"mean": torch.zeros(3)})
    with pytest.raises(ArgumentError, match="metadata keys"):
        export_onnx(model, x, path, metadata={1: "a"})
    with pytest.raises(ArgumentError, match="postprocess=True is for SSD"):
        export_onnx(model, x, path, postprocess=True)
    with pytest.raises(ArgumentError, match="example_input must be an image batch"):
        export_onnx(model, x[0], path)
    with pytest.raises(ArgumentError, match="example_input: .*at least"):
        export_onnx(model, torch.randn(1, 3, 16, 16), path)
    with pytest.raises(ArgumentError, match="supports DenseNet, LadderDenseNet and SSD"):
        export_onnx(nn.Conv2d(3, 3, 1), x, path)
    with pytest.raises(ArgumentError, match="path: the folder of .* does not exist"):
        export_onnx(model, x, tmp_path / "missing" / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    model.train()  # the model is not changed: still in train mode after an export
    export_onnx(model, x, path)
    assert model.training and list(tmp_path.iterdir()) == [path]
