"""LDN-121 on the CPU: fastladder against ONNX Runtime and OpenVINO, side by side in one process.

Run:  python benchmarks/bench_runtimes.py --out benchmarks/results/runtimes-cpu-2thread.json
      (--sizes 448x1024 1024x2048 --threads 2 --runs 5 by default; --weights CKPT adds the bfloat16 vs
      float32 argmax agreement of a trained segmentation checkpoint, e.g. the demo's best.pt, on
      --agreement-images synthetic validation scenes)

Every candidate runs the same LDN-121 (batch 1, random weights with trained-looking BatchNorm
statistics): fastladder's eval model and its ``optimize_for_inference`` form in float32 and bfloat16;
ONNX Runtime (ORT_ENABLE_ALL) and OpenVINO (f32 and bf16 precision hints) on the ONNX file that
``fastladder.models.export_onnx`` writes (the plain-PyTorch reference twin, opset 18, the size's
static shape). The candidates take turns, one
call each per round, ``--runs`` rounds after a warm-up call; the reported time is the median. Ratios are
``runtime / fastladder`` (above 1: fastladder faster). ONNX Runtime and OpenVINO are benchmark-only
dependencies.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import build_ldn  # noqa: E402  (one LDN-121 builder for both benchmarks)


def parse_size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HxW, e.g. 448x1024; got {text!r}") from None
    return height, width


def onnxruntime_session(path, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"image": x})[0]


def openvino_model(path, threads, precision):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": precision,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})[0]


def alternated(functions, runs):
    """Median seconds per function over ``runs`` rounds in which the functions take turns (after one
    warm-up call each): drift of a shared machine hits all of them alike."""
    for fn in functions.values():
        fn()
    times = {name: [] for name in functions}
    for _ in range(runs):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}, times


def bench_size(model, twin, size, threads, runs, workdir, results):
    from fastladder.models import export_onnx, optimize_for_inference

    x = torch.randn(1, 3, *size)
    array = x.numpy()
    path = os.path.join(workdir, f"ldn121-{size[0]}x{size[1]}.onnx")
    export_onnx(model, x, path, dynamic=False, opset=18)  # the twin's graph, as a deploying user exports it
    with torch.inference_mode():
        expected = twin(x)
    fast = optimize_for_inference(model, x)
    fast_bf16 = optimize_for_inference(model, x, dtype=torch.bfloat16)
    ort_run = onnxruntime_session(path, threads)
    ov_f32 = openvino_model(path, threads, "f32")
    ov_bf16 = openvino_model(path, threads, "bf16")

    def torch_call(fn):
        def call():
            with torch.inference_mode():
                return fn(x)
        return call

    candidates = {
        "fastladder eval model": torch_call(model),
        "optimize_for_inference": torch_call(fast),
        "onnxruntime": lambda: ort_run(array),
        "openvino f32": lambda: ov_f32(array),
        "optimize_for_inference bf16": torch_call(fast_bf16),
        "openvino bf16": lambda: ov_bf16(array),
    }
    # every candidate computes the same logits
    outputs = {name: torch.as_tensor(fn()).float() for name, fn in candidates.items()}
    scale = expected.abs().max().item()
    errors = {name: (out - expected).abs().max().item() / scale for name, out in outputs.items()}
    agreement = {name: (out.argmax(1) == expected.argmax(1)).float().mean().item()
                 for name, out in outputs.items()}
    medians, all_times = alternated(candidates, runs)
    best_f32 = min(medians["onnxruntime"], medians["openvino f32"])
    fast_f32, fast_bf16 = medians["optimize_for_inference"], medians["optimize_for_inference bf16"]
    ratios = {  # baseline / fastladder: above 1, fastladder is faster
        "float32: faster of onnxruntime and openvino f32 / optimize_for_inference": best_f32 / fast_f32,
        "float32: onnxruntime / optimize_for_inference": medians["onnxruntime"] / fast_f32,
        "float32: openvino f32 / optimize_for_inference": medians["openvino f32"] / fast_f32,
        "bfloat16: openvino bf16 / optimize_for_inference bf16": medians["openvino bf16"] / fast_bf16,
        "float32: eval model / optimize_for_inference": medians["fastladder eval model"] / fast_f32,
    }
    key = f"{size[0]}x{size[1]}"
    results[key] = dict(median_s=medians, times_s=all_times, ratios=ratios,
                        max_error_vs_twin_relative=errors, argmax_agreement_with_twin_float32=agreement)
    print(f"\n[LDN-121 {key}, batch 1, {threads} threads, median of {runs} alternated runs]")
    for name, value in medians.items():
        print(f"  {name:<30} {value:8.3f} s   (max |error| {errors[name]:.1e} of max |logit|, argmax "
              f"agreement {100 * agreement[name]:.2f}%)")
    for name, value in ratios.items():
        print(f"  {name:<72} {value:5.2f}x")


def bf16_agreement(weights, images, size):
    """Share of pixels whose argmax agrees between optimize_for_inference in bfloat16 and in float32,
    for a trained segmentation checkpoint on synthetic validation scenes (the demo's data)."""
    from fastladder.data import SyntheticScenes
    from fastladder.data.transforms import segmentation_eval_transforms
    from fastladder.models import load_model_and_meta, optimize_for_inference

    model, meta = load_model_and_meta(weights)
    with tempfile.TemporaryDirectory() as root:
        scenes = SyntheticScenes(root, "val", num_images=images, size=size,
                                 transforms=segmentation_eval_transforms(meta.mean, meta.std))
        first = scenes[0][0].unsqueeze(0)
        f32 = optimize_for_inference(model, first)
        bf16 = optimize_for_inference(model, first, dtype=torch.bfloat16)
        same = total = 0
        for index in range(len(scenes)):
            x = scenes[index][0].unsqueeze(0)
            a, b = f32(x).argmax(1), bf16(x).float().argmax(1)
            same += (a == b).sum().item()
            total += a.numel()
    return dict(weights=os.path.abspath(weights), images=images, size=list(size), agreement=same / total)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(448, 1024), (1024, 2048)])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the results as JSON to this path")
    parser.add_argument("--weights", default=None, help="a trained segmentation checkpoint for the bf16 "
                                                        "argmax agreement (e.g. the demo's train/best.pt)")
    parser.add_argument("--agreement-images", type=int, default=60)
    parser.add_argument("--agreement-size", type=parse_size, default=(128, 256))
    parser.add_argument("--machine", default="", help="a note on the machine's state (idle or shared)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        parser.error("--threads and --runs must be at least 1")
    torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino

    results = dict(threads=args.threads, runs=args.runs, torch=torch.__version__,
                   onnxruntime=onnxruntime.__version__, openvino=openvino.__version__,
                   cpu=platform.processor() or platform.machine(), machine=args.machine, sizes={})
    model, twin = build_ldn()
    model.eval()
    twin.eval()
    with tempfile.TemporaryDirectory() as workdir:
        for size in args.sizes:
            bench_size(model, twin, size, args.threads, args.runs, workdir, results["sizes"])
    if args.weights:
        results["bf16_agreement"] = bf16_agreement(args.weights, args.agreement_images, args.agreement_size)
        print(f"\nbfloat16 vs float32 argmax agreement ({args.weights}): "
              f"{100 * results['bf16_agreement']['agreement']:.2f}% of pixels")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
