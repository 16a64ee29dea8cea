"""fastladder.ops.ssd_postprocess against torchvision's SSD postprocess_detections on the same head
outputs and against the reference (detections compared as sets, tolerant of exact score ties);
padding, background, non-finite input, dtypes, DetectionPostprocess, opcheck, torch.compile, bad
input."""
import types

import pytest
import torch
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD

from fastladder import nn as fl_nn
from fastladder import ops
from fastladder._box_samples import priors_to_xyxy, ssd300_priors, ssd_head_outputs
from fastladder.reference import boxes as reference
from fastladder.testing import DEVICES, assert_same_detections


def torchvision_detections(loc, conf_logits, priors, *, score_thresh=0.01, nms_thresh=0.45, topk=400,
                           max_detections=200):
    """torchvision's SSD.postprocess_detections itself, on a 1 x 1 image (clip to [0, 1])."""
    ssd = types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
                                score_thresh=score_thresh, nms_thresh=nms_thresh, topk_candidates=topk,
                                detections_per_img=max_detections)
    anchors = [priors_to_xyxy(priors)] * len(loc)
    out = SSD.postprocess_detections(ssd, {"bbox_regression": loc, "cls_logits": conf_logits}, anchors,
                                     [(1, 1)] * len(loc))
    return [(d["boxes"], d["scores"], d["labels"]) for d in out]


def as_list(detections):
    return ops.to_list(*detections)


@pytest.mark.parametrize("classes", [21, 2])
@pytest.mark.parametrize("objects", [None, 5])
def test_matches_torchvision_postprocess_detections(classes, objects, generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(2, priors, classes, generator, objects=objects)
    got = ops.ssd_postprocess(loc, conf, priors)
    assert got.boxes.shape == (2, 200, 4) and got.scores.shape == (2, 200) and got.labels.shape == (2, 200)
    assert got.num_detections.dtype == torch.int64 and got.labels.dtype == torch.int64
    want = torchvision_detections(loc, conf, priors)
    assert_same_detections(got.to_list(), want, score_tol=1e-6, box_tol=1e-5, seed=seed, what="torchvision")


def test_many_classes_in_several_image_groups(generator, seed):
    # 80 classes x 8732 priors: the CPU kernel works through such a batch an image at a time
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(3, priors, 81, generator, objects=6)
    got = ops.ssd_postprocess(loc, conf, priors)
    want = torchvision_detections(loc, conf, priors)
    assert_same_detections(got.to_list(), want, score_tol=1e-6, box_tol=1e-5, seed=seed, what="C=81")
    for b in range(3):  # each image alone gives the same: no state leaks between the groups
        alone = ops.ssd_postprocess(loc[b:b + 1], conf[b:b + 1], priors)
        for g, a in zip(got, alone):
            assert torch.equal(g[b:b + 1], a), seed


@pytest.mark.parametrize("kw", [dict(score_thresh=0.2, nms_thresh=0.3, topk=50, max_detections=30),
                                dict(score_thresh=0.0, nms_thresh=0.7, topk=1000, max_detections=500),
                                dict(score_thresh=0.05, nms_thresh=0.0, topk=10, max_detections=1),
                                dict(nms_thresh=1.0, topk=3, max_detections=400)])
def test_parameters_match_torchvision(kw, generator, seed):
    priors = ssd300_priors()[:3000]
    loc, conf = ssd_head_outputs(2, priors, 6, generator)
    got = ops.ssd_postprocess(loc, conf, priors, **kw)
    assert got.boxes.shape == (2, kw["max_detections"], 4)
    want = torchvision_detections(loc, conf, priors, **kw)
    assert_same_detections(got.to_list(), want, score_tol=1e-6, box_tol=1e-5, seed=seed, what=str(kw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_reference(dtype, generator, seed):
    priors = ssd300_priors(dtype)
    loc, conf = ssd_head_outputs(2, priors, 5, generator, objects=4, dtype=dtype)
    got = ops.ssd_postprocess(loc, conf, priors, variances=(0.1, 0.2))
    assert got.boxes.dtype == dtype and got.scores.dtype == dtype
    want = reference.ssd_postprocess(loc, conf, priors, variances=(0.1, 0.2))
    assert torch.equal(got.labels >= 0, want[2] >= 0)
    assert torch.equal(got.num_detections, want[3])
    # float16/bfloat16: computed in float32, the scores then rounded: ties appear in the output
    tol = {torch.float32: 1e-6, torch.float64: 1e-12}.get(dtype, 1e-2)
    assert_same_detections(got.to_list(), ops.to_list(*want), score_tol=tol, box_tol=10 * tol, seed=seed,
                           what=str(dtype))


def test_padding_and_to_list(generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(3, priors, 4, generator, objects=2)
    conf[1] = -20.0
    conf[1, :, 0] = 20.0  # an image where the background wins everywhere: no detection at all
    got = ops.ssd_postprocess(loc, conf, priors, score_thresh=0.3, max_detections=50)
    n = got.num_detections
    assert n[1] == 0 and (n[[0, 2]] > 0).all()
    for b in range(3):
        assert torch.all(got.labels[b, n[b]:] == -1) and torch.all(got.scores[b, n[b]:] == 0)
        assert torch.all(got.boxes[b, n[b]:] == 0)
        assert torch.all((got.labels[b, :n[b]] >= 1) & (got.labels[b, :n[b]] < 4))
        assert torch.all(got.scores[b, :n[b]] > 0.3)
    boxes, scores, labels = got.to_list()[2]
    assert boxes.shape == (int(n[2]), 4) and scores.shape == labels.shape == (int(n[2]),)
    assert torch.all((got.boxes >= 0) & (got.boxes <= 1))


def test_background_choice(generator, seed):
    priors = ssd300_priors()[:2000]
    loc, conf = ssd_head_outputs(2, priors, 4, generator)
    for background in (-1, 2):
        got = ops.ssd_postprocess(loc, conf, priors, background=background, max_detections=100)
        want = reference.ssd_postprocess(loc, conf, priors, background=background, max_detections=100)
        labels = got.labels[got.labels >= 0]
        assert background not in labels.tolist()
        if background == -1:
            assert 0 in labels.tolist()
        assert_same_detections(got.to_list(), ops.to_list(*want), score_tol=1e-6, box_tol=1e-5, seed=seed)


def test_single_class_that_is_background_gives_no_detections(generator):
    priors = ssd300_priors()[:100]
    loc, conf = ssd_head_outputs(2, priors, 1, generator)
    got = ops.ssd_postprocess(loc, conf, priors, score_thresh=0.0)
    assert got.num_detections.tolist() == [0, 0]


def test_non_finite_inputs_are_dropped(generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(2, priors, 3, generator, objects=3)
    best = conf[0].softmax(-1)[:, 1:].amax(-1).argsort(descending=True)[:6]
    conf[0, best[0], 1] = float("nan")
    conf[0, best[1], 2] = float("inf")
    loc[0, best[2], 0] = float("nan")
    loc[0, best[3], 1] = float("inf")
    loc[0, best[4], 2] = float("inf")   # clamped at log(1000/16): finite, kept
    loc[0, best[5], 3] = -float("inf")  # a zero-height box: finite, kept
    got = ops.ssd_postprocess(loc, conf, priors)
    for t in got[:3]:
        assert not torch.isnan(t.double()).any()
    assert torch.isfinite(got.boxes).all()
    want = reference.ssd_postprocess(loc, conf, priors)
    assert_same_detections(got.to_list(), ops.to_list(*want), score_tol=1e-6, box_tol=1e-5, seed=seed)
    # every logit NaN: nothing, no crash
    got = ops.ssd_postprocess(loc, torch.full_like(conf, float("nan")), priors)
    assert got.num_detections.tolist() == [0, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs(device):
    priors = ssd300_priors().to(device)
    got = ops.ssd_postprocess(torch.zeros(0, len(priors), 4, device=device),
                              torch.zeros(0, len(priors), 21, device=device), priors)
    assert got.boxes.shape == (0, 200, 4) and got.num_detections.shape == (0,)
    got = ops.ssd_postprocess(torch.zeros(2, 0, 4, device=device), torch.zeros(2, 0, 21, device=device),
                              priors[:0], max_detections=7)
    assert got.boxes.shape == (2, 7, 4) and got.num_detections.tolist() == [0, 0]
    assert torch.all(got.labels == -1)


def test_detection_postprocess_module(generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(2, priors, 21, generator, objects=5)
    module = fl_nn.DetectionPostprocess(priors, num_classes=21, nms_thresh=0.5, max_detections=100)
    assert "num_classes=21" in repr(module) and "priors" in module.state_dict()
    got = module(loc, conf)
    want = ops.ssd_postprocess(loc, conf, priors, nms_thresh=0.5, max_detections=100)
    for g, w in zip(got, want):
        assert torch.equal(g, w), seed
    with pytest.raises(ValueError, match=r"conf_logits must be \[B, P, 21\], got shape \(2, 8732, 20\)"):
        module(loc, conf[..., :20])
    with pytest.raises(ValueError, match=r"priors must be a \[P, 4\] tensor"):
        fl_nn.DetectionPostprocess(priors[:, :3], num_classes=21)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("classes,objects", [(21, None), (21, 6), (2, None)])
def test_cuda_matches_cpu(dtype, classes, objects, generator, seed):
    priors = ssd300_priors(dtype)
    loc, conf = ssd_head_outputs(4, priors, classes, generator, objects=objects, dtype=dtype)
    cpu = ops.ssd_postprocess(loc, conf, priors)
    cuda = ops.ssd_postprocess(loc.cuda(), conf.cuda(), priors.cuda())
    assert all(t.device.type == "cuda" for t in cuda)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert_same_detections(as_list([t.cpu() for t in cuda]), cpu.to_list(), score_tol=tol, box_tol=10 * tol,
                           seed=seed, what="cuda")


@pytest.mark.cuda
def test_cuda_tie_order_equals_cpu(generator, seed):
    """Many priors with identical logits (equal scores on each device): both backends order them by
    prior index, in every class and across classes, so the detections come in the same order."""
    priors = ssd300_priors()[:3000]
    rows = torch.randn(6, 21, generator=generator) * 3
    conf = rows[torch.randint(0, 6, (2, 3000), generator=generator)]
    loc = torch.randn(2, 3000, 4, generator=generator) * 0.1
    cpu = ops.ssd_postprocess(loc, conf, priors, score_thresh=0.01, topk=200)
    cuda = [t.cpu() for t in ops.ssd_postprocess(loc.cuda(), conf.cuda(), priors.cuda(), score_thresh=0.01,
                                                 topk=200)]
    assert torch.equal(cuda[3], cpu.num_detections) and torch.equal(cuda[2], cpu.labels), seed
    torch.testing.assert_close(cuda[0], cpu.boxes, rtol=1e-5, atol=1e-5)  # expf: a few ulp, see box_coder.h
    torch.testing.assert_close(cuda[1], cpu.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_batch_times_classes_beyond_the_grid_limit(generator, seed):
    """batch x reported classes = 820 x 80 = 65600 NMS problems: more than gridDim.z (65535) allows;
    the launch is capped and the kernel loops over the rest."""
    priors = ssd300_priors()[:6]
    loc, conf = ssd_head_outputs(820, priors, 81, generator)
    cpu = ops.ssd_postprocess(loc, conf, priors, score_thresh=0.001)
    cuda = [t.cpu() for t in ops.ssd_postprocess(loc.cuda(), conf.cuda(), priors.cuda(), score_thresh=0.001)]
    assert cpu.num_detections.sum() > 0
    assert torch.equal(cuda[3], cpu.num_detections), seed
    assert torch.equal(cuda[2] >= 0, cpu.labels >= 0), seed
    torch.testing.assert_close(cuda[1], cpu.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_never_synchronizes(generator):
    """The whole batch runs without a host synchronization (sync debug mode "error" raises on one)."""
    priors = ssd300_priors().cuda()
    loc, conf = ssd_head_outputs(2, priors.cpu(), 21, generator, objects=4)
    loc, conf = loc.cuda(), conf.cuda()
    ops.ssd_postprocess(loc, conf, priors)  # warm-up: allocations, lazy initialization
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        result = ops.ssd_postprocess(loc, conf, priors)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert result.boxes.shape == (2, 200, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, generator):
    priors = ssd300_priors()[:500].to(device)
    loc, conf = ssd_head_outputs(2, priors.cpu(), 4, generator)
    args = (loc.to(device), conf.to(device), priors, 0.01, 0.45, 100, 50, [0.1, 0.2], 0)
    torch.library.opcheck(torch.ops.fastladder.ssd_postprocess.default, args)


def test_torch_compile_fullgraph(generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(2, priors, 21, generator, objects=3)
    module = fl_nn.DetectionPostprocess(priors, num_classes=21)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(loc, conf), module(loc, conf)):
        assert torch.equal(got, want), seed


@pytest.mark.parametrize("change,match", [
    (dict(loc=(2, 100, 3)), r"loc must be a \[B, P, 4\] tensor of box offsets, got shape \[2, 100, 3\]"),
    (dict(conf=(2, 99, 5)), r"loc and conf_logits must have the same batch size and number of priors, got "
                            r"loc \[2, 100, 4\] and conf_logits \[2, 99, 5\]"),
    (dict(priors=(101, 4)), r"loc has 100 priors per image but priors has 101"),
    (dict(priors_dtype=torch.float64), r"loc, conf_logits and priors must have the same dtype"),
    (dict(kw=dict(nms_thresh=1.5)), r"nms_thresh must be in \[0, 1\], got 1.5"),
    (dict(kw=dict(score_thresh=-0.1)), r"score_thresh must be in \[0, 1\)"),
    (dict(kw=dict(topk=0)), r"topk must be >= 1, got 0"),
    (dict(kw=dict(max_detections=0)), r"max_detections must be >= 1"),
    (dict(kw=dict(background=5)), r"background must be a class index in \[0, 5\) or -1 for none, got 5"),
    (dict(kw=dict(variances=(0.1,))), r"variances must be two numbers"),
])
def test_bad_input(change, match):
    loc = torch.zeros(change.get("loc", (2, 100, 4)))
    conf = torch.zeros(change.get("conf", (2, 100, 5)))
    priors = torch.ones(change.get("priors", (100, 4)), dtype=change.get("priors_dtype", torch.float32))
    with pytest.raises(ValueError, match=match):
        ops.ssd_postprocess(loc, conf, priors, **change.get("kw", {}))


@pytest.mark.slow
@pytest.mark.parametrize("classes", [21, 81])
def test_large_batch_matches_torchvision(classes, generator, seed):
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(8, priors, classes, generator)
    got = ops.ssd_postprocess(loc, conf, priors)
    assert_same_detections(got.to_list(), torchvision_detections(loc, conf, priors), score_tol=1e-6,
                           box_tol=1e-5, seed=seed)
