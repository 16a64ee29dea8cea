"""CPU (and CUDA) benchmarks of the box operators, fastladder and its baseline side by side in one
run; each case's pair shares a benchmark group, and the ratios (baseline time / fastladder time)
plus the growth exponent of NMS time in the number of boxes are printed at the end.

    pytest benchmarks/bench_boxes.py --benchmark-enable                       # CPU
    pytest benchmarks/bench_boxes.py --benchmark-enable --bench-device cuda   # GPU suite

(--bench-device / --bench-size come from benchmarks/conftest.py where it exists; without it the
environment variables FASTLADDER_BENCH_DEVICE=cpu|cuda and FASTLADDER_BENCH_SIZE=full|small do the
same. "small" drops batch 32 and 20k boxes.) FASTLADDER_BENCH_JSON=path writes the summary.

Cases (issue 4): ssd_postprocess vs torchvision's SSD postprocess_detections (8732 SSD300 priors,
21 and 2 classes, batch 1, 8, 32); nms vs torchvision.ops.nms at 1k, 5k, 20k clustered boxes;
batched_nms vs torchvision.ops.batched_nms at 20k boxes in 80 classes.
"""
import json
import math
import os
import types

import pytest
import torch
import torchvision
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.ssd import SSD

from fastladder import ops
from fastladder._box_samples import clustered_boxes, priors_to_xyxy, ssd300_priors, ssd_head_outputs

RESULTS = {}  # (case, implementation) -> median time in seconds
DEVICE = os.environ.get("FASTLADDER_BENCH_DEVICE", "cpu")
SIZE = os.environ.get("FASTLADDER_BENCH_SIZE", "full")


@pytest.fixture(scope="module", autouse=True)
def options(request):
    """The device and size from the benchmark harness's options when it defines them."""
    global DEVICE, SIZE
    DEVICE = request.config.getoption("--bench-device", default=None) or DEVICE
    SIZE = request.config.getoption("--bench-size", default=None) or SIZE
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("the CUDA benchmarks need a CUDA device")


def _skip_in_small_run(large):
    if large and SIZE == "small":
        pytest.skip("a full-size case (--bench-size full)")


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _measure(benchmark, case, implementation, fn):
    benchmark.group = case
    benchmark.extra_info.update(impl=implementation, case=case, device=DEVICE,
                                threads=torch.get_num_threads())

    def run():
        out = fn()
        _sync()
        return out

    run()  # warm up (allocations, lazy initialisation)
    benchmark(run)
    if benchmark.stats is not None:  # None with --benchmark-disable
        RESULTS[(case, implementation)] = benchmark.stats.stats.median


def torchvision_postprocess(loc, conf_logits, priors):
    """torchvision's SSD.postprocess_detections (score 0.01, NMS 0.45, top-k 400, keep 200)."""
    ssd = types.SimpleNamespace(box_coder=det_utils.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
                                score_thresh=0.01, nms_thresh=0.45, topk_candidates=400,
                                detections_per_img=200)
    anchors = [priors_to_xyxy(priors)] * len(loc)
    return SSD.postprocess_detections(ssd, {"bbox_regression": loc, "cls_logits": conf_logits}, anchors,
                                      [(1, 1)] * len(loc))


@pytest.mark.parametrize("implementation", ["fastladder", "torchvision"])
@pytest.mark.parametrize("batch", [1, 8, 32])
@pytest.mark.parametrize("classes", [21, 2])
def test_ssd_postprocess(benchmark, classes, batch, implementation):
    _skip_in_small_run(batch == 32)
    generator = torch.Generator().manual_seed(classes * 100 + batch)
    priors = ssd300_priors()
    # noise logits: every class of every prior is a candidate, the heaviest case for both
    loc, conf = ssd_head_outputs(batch, priors, classes, generator)
    loc, conf, priors = loc.to(DEVICE), conf.to(DEVICE), priors.to(DEVICE)
    case = f"ssd_postprocess C={classes} B={batch}"
    if implementation == "fastladder":
        _measure(benchmark, case, implementation, lambda: ops.ssd_postprocess(loc, conf, priors))
    else:
        _measure(benchmark, case, implementation, lambda: torchvision_postprocess(loc, conf, priors))


@pytest.mark.parametrize("implementation", ["fastladder", "torchvision"])
def test_ssd_postprocess_trained_like(benchmark, implementation):
    generator = torch.Generator().manual_seed(7)
    priors = ssd300_priors()
    loc, conf = ssd_head_outputs(8, priors, 21, generator, objects=8)
    loc, conf, priors = loc.to(DEVICE), conf.to(DEVICE), priors.to(DEVICE)
    case = "ssd_postprocess trained-like C=21 B=8"
    fn = (lambda: ops.ssd_postprocess(loc, conf, priors)) if implementation == "fastladder" else (
        lambda: torchvision_postprocess(loc, conf, priors))
    _measure(benchmark, case, implementation, fn)


NMS_SIZES = [1000, 5000, 20000]


@pytest.mark.parametrize("implementation", ["fastladder", "torchvision"])
@pytest.mark.parametrize("n", NMS_SIZES)
def test_nms(benchmark, n, implementation):
    _skip_in_small_run(n > 5000)
    boxes, scores = clustered_boxes(n, torch.Generator().manual_seed(n))
    boxes, scores = boxes.to(DEVICE), scores.to(DEVICE)
    fn = ops.nms if implementation == "fastladder" else torchvision.ops.nms
    _measure(benchmark, f"nms N={n}", implementation, lambda: fn(boxes, scores, 0.5))


@pytest.mark.parametrize("implementation", ["fastladder", "torchvision"])
def test_batched_nms(benchmark, implementation):
    _skip_in_small_run(True)
    generator = torch.Generator().manual_seed(80)
    boxes, scores = clustered_boxes(20000, generator)
    idxs = torch.randint(0, 80, (20000,), generator=generator)
    boxes, scores, idxs = boxes.to(DEVICE), scores.to(DEVICE), idxs.to(DEVICE)
    fn = ops.batched_nms if implementation == "fastladder" else torchvision.ops.batched_nms
    _measure(benchmark, "batched_nms N=20000 classes=80", implementation,
             lambda: fn(boxes, scores, idxs, 0.5))


def growth_exponent(times):
    """Least-squares slope of log(time) against log(N)."""
    xs = [math.log(n) for n in times]
    ys = [math.log(t) for t in times.values()]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def summary():
    """Ratios (baseline / fastladder) per case and the NMS growth exponents, as a dict."""
    cases = sorted({case for case, _ in RESULTS})
    ratios = {}
    for case in cases:
        fast, base = RESULTS.get((case, "fastladder")), RESULTS.get((case, "torchvision"))
        if fast and base:
            ratios[case] = {"fastladder_s": fast, "torchvision_s": base, "speedup": base / fast}
    out = {"device": DEVICE, "threads": torch.get_num_threads(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "cases": ratios}
    for implementation in ("fastladder", "torchvision"):
        times = {n: RESULTS[(f"nms N={n}", implementation)] for n in NMS_SIZES
                 if (f"nms N={n}", implementation) in RESULTS}
        if len(times) >= 2:
            out[f"nms_growth_exponent_{implementation}"] = growth_exponent(times)
    return out


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    if not RESULTS:
        return
    result = summary()
    lines = [f"\nbox operators on {DEVICE} ({result['threads']} threads): torchvision time / fastladder time"]
    for case, r in result["cases"].items():
        lines.append(f"  {case:42s} fastladder {r['fastladder_s'] * 1e3:9.3f} ms   torchvision "
                     f"{r['torchvision_s'] * 1e3:9.3f} ms   speedup {r['speedup']:6.1f}x")
    for implementation in ("fastladder", "torchvision"):
        key = f"nms_growth_exponent_{implementation}"
        if key in result:
            lines.append(f"  nms time grows as N^{result[key]:.2f} ({implementation}, N = {NMS_SIZES})")
    path = os.environ.get("FASTLADDER_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n".join(lines))
    else:
        print("\n".join(lines))
