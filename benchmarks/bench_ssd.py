"""SSD300 training and evaluation: fastladder's batched matching + MultiBoxLoss and fused
post-processing against the pure-PyTorch reference path (fastladder.reference.multibox's
per-image, per-ground-truth loops and fastladder.reference.boxes.ssd_postprocess), side by side in
one run. Each case's pair shares a benchmark group (impl "fastladder" / "reference"); the summary
of benchmarks/conftest.py prints fastladder time / reference time (below 1: fastladder faster).

    pytest benchmarks/bench_ssd.py --benchmark-enable                        # CPU
    pytest benchmarks/bench_ssd.py --benchmark-enable --bench-size small     # quick
    pytest benchmarks/bench_ssd.py --benchmark-enable --bench-device cuda    # GPU suite

Cases (the issue's target: the fused loss + post-processing make training-step and evaluation
throughput at least 1.5× the reference loop's):
  multibox_loss     matching + loss forward + backward on head outputs (8732 priors, 21 classes)
  train_step        SSD300 forward + loss + backward + SGD step (the same model for both paths)
  train_step_learnability_config   the same for bench_ssd_learn.py's 1/8-width 120×160 model
  postprocess       detections from trained-like head outputs (score 0.01, NMS 0.45, top-k 400, keep 200)
  eval_step         SSD300 eval forward + post-processing
The model is SSD300 at full width on CUDA; on CPU a reduced width (0.25, small: 0.125) keeps a
step within seconds on the 2-core build machines (the head, priors, loss and post-processing are
the full SSD300 ones at every width).
"""
import importlib.util
from pathlib import Path

import pytest
import torch

from fastladder._box_samples import ssd_head_outputs
from fastladder.models.ssd import ssd300_vgg16
from fastladder.ops.boxes import ssd_postprocess
from fastladder.reference import boxes as reference_boxes
from fastladder.reference import multibox as reference_multibox
from fastladder.train.multibox import MultiBoxLoss

def _learnability_model_kwargs():
    """bench_ssd_learn.MODEL_KWARGS (loaded by path: pytest imports the benchmarks in importlib mode)."""
    path = Path(__file__).with_name("bench_ssd_learn.py")
    spec = importlib.util.spec_from_file_location("bench_ssd_learn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MODEL_KWARGS


NUM_CLASSES = 21
OBJECTS_PER_IMAGE = 6


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _measure(benchmark, case, implementation, device, fn):
    benchmark.group = case
    benchmark.extra_info.update(impl=implementation, case=case, device=device,
                                threads=torch.get_num_threads())

    def run():
        out = fn()
        _sync(device)
        return out

    run()  # warm-up: allocator, oneDNN / cuDNN primitives, lazy initialisation
    benchmark(run)


def _setting(device, size):
    """(batch, width) of the model cases."""
    if device == "cuda":
        return (8, 1.0) if size == "small" else (32, 1.0)
    return (2, 0.125) if size == "small" else (8, 0.25)


def ground_truth(batch, generator, device):
    """Per-image lists of OBJECTS_PER_IMAGE random boxes (image-relative xyxy) and labels 1 … 20."""
    boxes, labels = [], []
    for _ in range(batch):
        corner = torch.rand(OBJECTS_PER_IMAGE, 2, generator=generator) * 0.7
        size = 0.05 + torch.rand(OBJECTS_PER_IMAGE, 2, generator=generator) * 0.45
        boxes.append(torch.cat([corner, (corner + size).clamp(max=1.0)], dim=1).to(device))
        labels.append(torch.randint(1, NUM_CLASSES, (OBJECTS_PER_IMAGE,), generator=generator).to(device))
    return boxes, labels


def _loss_fn(implementation, num_classes=NUM_CLASSES):
    if implementation == "fastladder":
        return MultiBoxLoss(num_classes)
    return reference_multibox.multibox_loss


def _train_step(model, optimizer, loss_fn, images, boxes, labels):
    """One training step (forward, loss, backward, optimizer step) as a closure for _measure."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        loc, conf = model(images)
        loss, _ = loss_fn(loc, conf, model.priors, boxes, labels)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _postprocess_fn(implementation):
    return ssd_postprocess if implementation == "fastladder" else reference_boxes.ssd_postprocess


@pytest.fixture(scope="module")
def model_and_data(bench_device, bench_size):
    batch, width = _setting(bench_device, bench_size)
    torch.manual_seed(0)
    model = ssd300_vgg16(num_classes=NUM_CLASSES, width=width).to(bench_device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 300, 300, generator=generator).to(bench_device)
    boxes, labels = ground_truth(batch, generator, bench_device)
    return model, images, boxes, labels


@pytest.mark.parametrize("implementation", ["fastladder", "reference"])
def test_multibox_loss(benchmark, bench_device, bench_size, implementation):
    batch = 8 if bench_size == "small" else 32
    generator = torch.Generator().manual_seed(1)
    model_priors = ssd300_vgg16(num_classes=NUM_CLASSES, width=0.125).priors.to(bench_device)
    loc = torch.randn(batch, model_priors.shape[0], 4, generator=generator).to(bench_device).requires_grad_()
    conf = torch.randn(batch, model_priors.shape[0], NUM_CLASSES, generator=generator).to(bench_device)
    conf.requires_grad_()
    boxes, labels = ground_truth(batch, generator, bench_device)
    loss_fn = _loss_fn(implementation)

    def step():
        loss, _ = loss_fn(loc, conf, model_priors, boxes, labels)
        loss.backward()
        return loss

    _measure(benchmark, f"multibox_loss B={batch}", implementation, bench_device, step)


@pytest.mark.parametrize("implementation", ["fastladder", "reference"])
def test_train_step(benchmark, bench_device, model_and_data, implementation):
    model, images, boxes, labels = model_and_data
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
    step = _train_step(model, optimizer, _loss_fn(implementation), images, boxes, labels)
    width = model.config["width"]
    _measure(benchmark, f"ssd300 train step B={len(images)} width={width}", implementation, bench_device,
             step)


@pytest.mark.parametrize("implementation", ["fastladder", "reference"])
def test_train_step_learnability_config(benchmark, bench_device, implementation):
    """The train step of the configuration that reaches the AP target on CPU (bench_ssd_learn.py:
    1/8-width SSD300 for 120×160 frames, 1584 priors, 2 classes, batch 8, Adam), on four
    pedestrian-shaped boxes per image: the model is smallest here, so the loss's share is largest."""
    torch.manual_seed(0)
    model = ssd300_vgg16(num_classes=2, image_size=(120, 160), **_learnability_model_kwargs())
    model = model.to(bench_device)
    model.train()
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(8, 3, 120, 160, generator=generator).to(bench_device)
    boxes, labels = [], []
    for _ in range(len(images)):
        centre = torch.rand(4, 2, generator=generator) * torch.tensor([0.8, 0.6]) + torch.tensor([0.1, 0.2])
        height = 0.15 + torch.rand(4, generator=generator) * 0.5
        half = torch.stack([height * 0.3 * 120 / 160, height], 1) / 2  # w/h 0.3 in pixels
        boxes.append(torch.cat([centre - half, centre + half], 1).clamp(0, 1).to(bench_device))
        labels.append(torch.ones(4, dtype=torch.int64, device=bench_device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = _train_step(model, optimizer, _loss_fn(implementation, num_classes=2), images, boxes, labels)
    _measure(benchmark, "ssd300 train step, learnability config (120x160, width 1/8, B=8)",
             implementation, bench_device, step)


@pytest.mark.parametrize("implementation", ["fastladder", "reference"])
def test_postprocess(benchmark, bench_device, bench_size, implementation):
    batch = 8 if bench_size == "small" else 32
    priors = ssd300_vgg16(num_classes=NUM_CLASSES, width=0.125).priors
    loc, conf = ssd_head_outputs(batch, priors, NUM_CLASSES, torch.Generator().manual_seed(2), objects=8)
    loc, conf, priors = loc.to(bench_device), conf.to(bench_device), priors.to(bench_device)
    postprocess = _postprocess_fn(implementation)
    _measure(benchmark, f"ssd300 postprocess B={batch}", implementation, bench_device,
             lambda: postprocess(loc, conf, priors))


@pytest.mark.parametrize("implementation", ["fastladder", "reference"])
def test_eval_step(benchmark, bench_device, model_and_data, implementation):
    model, images, _, _ = model_and_data
    model.eval()
    postprocess = _postprocess_fn(implementation)

    @torch.no_grad()
    def step():
        if implementation == "fastladder":
            return model(images)  # the model's own eval path: the fused post-processing
        loc, conf = model.head(model.forward_features(images))
        return postprocess(loc, conf, model.priors)

    width = model.config["width"]
    _measure(benchmark, f"ssd300 eval step B={len(images)} width={width}", implementation, bench_device, step)
    model.train()
