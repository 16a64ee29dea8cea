"""Model benchmarks: LadderDenseNet-121 inference and training, fastladder vs its unfused twin.

Run:  pytest benchmarks/bench_models.py --benchmark-enable -s                      (CPU)
      pytest benchmarks/bench_models.py --benchmark-enable -s --bench-device cuda  (the GPU suite)
      (FASTLADDER_SLOW=1 adds the CPU's 1024×2048 inference and 448×1024 training cases, which CUDA
      always runs; FASTLADDER_BENCH_COMPILE=0 skips torch.compile, which takes minutes on the
      2-core build machines.)

Every comparison times candidate and baselines interleaved in one process (the build machines are
shared and noisy: a ratio is stable, an absolute time is not) and prints ``baseline / candidate``
(> 1: fastladder is faster or smaller); ``record_comparison`` puts the tables in --ratios-json.
CPU memory is measured in a fresh subprocess as the RSS high-water mark during the measured call
minus the RSS just before it, with MALLOC_MMAP_THRESHOLD_=131072 so that freed tensors go back to
the OS (without it the same run varies by about 30%); CUDA memory is torch.cuda.max_memory_allocated
during the call minus the allocation before it.

On CUDA the inference cases run in float16: fastladder through ``optimize_for_inference(model, x,
dtype=torch.float16)`` (channels_last, BatchNorm folded into the fused operators), the reference
twin converted to float16 and channels_last (its fastest eager form), eager and compiled; the
frame rate in Hz is printed beside the ratios (the paper: 13 Hz at 1024×2048 on a Titan X).
"""
import copy
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

SLOW = os.environ.get("FASTLADDER_SLOW") == "1"
COMPILE = os.environ.get("FASTLADDER_BENCH_COMPILE", "1") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFERENCE_SIZES = [(448, 1024), (1024, 2048)]
TRAINING_SIZES = [(224, 512), (448, 1024)]


def skip_large_on_cpu(device, size, largest):
    if device == "cpu" and size == largest and not SLOW:
        pytest.skip(f"{size[0]}x{size[1]} on CPU takes minutes: FASTLADDER_SLOW=1 runs it")


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(functions, rounds, device="cpu"):
    """Best-of-rounds seconds per function, the functions taking turns (drift hits all alike)."""
    best = {name: float("inf") for name in functions}
    for fn in functions.values():  # warm-up: oneDNN / cuDNN primitives, allocator, lazy initialisation
        fn()
    synchronize(device)
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(title, values, candidate, unit="s", record=None):
    """Prints values and the ratio of every baseline to the candidate; ``record`` (the
    record_comparison fixture) puts them in --ratios-json."""
    lines = [f"\n[{title}]"]
    for name, value in values.items():
        ratio = "" if name == candidate else f"   {name} / {candidate} = {value / values[candidate]:.2f}×"
        shown = f"{value:.4f} s ({1 / value:.1f} Hz)" if unit == "s" else f"{value / 2**20:.1f} MiB"
        lines.append(f"  {name:<32} {shown}{ratio}")
    print("\n".join(lines))
    if record is not None:
        record(title, values, candidate, "s" if unit == "s" else "bytes")


def cuda_peak(fn):
    """Bytes allocated at the peak of one ``fn()`` on the current CUDA device, beyond those before it."""
    synchronize("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    synchronize("cuda")
    return torch.cuda.max_memory_allocated() - before


def build_ldn(**kwargs):
    from fastladder.models import create_model
    from fastladder.reference.models import reference_twin
    torch.manual_seed(0)
    model = create_model("ladder_densenet121", **kwargs)
    with torch.no_grad():  # trained-looking BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model, reference_twin(model)


# --- inference speed ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", INFERENCE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ldn121_inference(benchmark, bench_device, record_comparison, size):
    skip_large_on_cpu(bench_device, size, INFERENCE_SIZES[-1])
    if bench_device == "cuda":
        return _cuda_inference(benchmark, record_comparison, size)
    from fastladder.models import optimize_for_inference
    model, reference = build_ldn()
    model.eval()
    reference.eval()
    x = torch.randn(1, 3, *size)
    candidates = {"fastladder eval model": model, "reference eager": reference}
    with torch.inference_mode():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, rtol=1e-3, atol=1e-3)
    # a copy: optimize_for_inference converts the model in place (channels_last weights)
    optimized = optimize_for_inference(copy.deepcopy(model), x)
    candidates["optimize_for_inference"] = optimized
    if COMPILE:
        compiled = torch.compile(reference)
        candidates["reference compiled"] = compiled
    with torch.inference_mode():
        for fn in candidates.values():  # warm up (and compile)
            fn(x)
        torch.testing.assert_close(optimized(x), expected, rtol=1e-3, atol=1e-3)
        times = interleaved({name: (lambda fn=fn: fn(x)) for name, fn in candidates.items()},
                            rounds=5 if size[0] < 1024 else 2)
        benchmark.pedantic(model, args=(x,), rounds=1, iterations=1)
    report(f"LDN-121 inference {size[0]}x{size[1]}, batch 1, {torch.get_num_threads()} threads", times,
           "optimize_for_inference", record=record_comparison)
    benchmark.extra_info.update({name: value for name, value in times.items()})


def _cuda_inference(benchmark, record_comparison, size):
    """float16 on CUDA: fastladder's inference path against the reference's fastest eager form and
    its compiled form; then the activation memory of both (same weights, same dtype)."""
    from fastladder.models import optimize_for_inference
    model, reference = build_ldn()
    model, reference = model.cuda().eval(), reference.cuda().eval()
    x = torch.randn(1, 3, *size, device="cuda")
    with torch.inference_mode():
        expected = reference(x)  # float32: the accuracy anchor of every float16 candidate
    reference16 = copy.deepcopy(reference).half().to(memory_format=torch.channels_last)
    x16 = x.half().contiguous(memory_format=torch.channels_last)
    candidates = {"fastladder": optimize_for_inference(copy.deepcopy(model), x, dtype=torch.float16),
                  "reference eager": lambda _: reference16(x16)}
    if COMPILE:
        compiled_reference = torch.compile(reference16)
        candidates["reference compiled"] = lambda _: compiled_reference(x16)
        candidates["fastladder compiled"] = optimize_for_inference(copy.deepcopy(model), x,
                                                                   dtype=torch.float16, compile=True)
    tolerance = 0.02 * expected.abs().amax().item()
    with torch.inference_mode():
        for name, fn in candidates.items():  # warm up (and compile); every candidate computes the model
            torch.testing.assert_close(fn(x).float(), expected, rtol=0.02, atol=tolerance,
                                       msg=lambda m, name=name: f"{name}: {m}")
        times = interleaved({name: (lambda fn=fn: fn(x)) for name, fn in candidates.items()}, rounds=30,
                            device="cuda")
        benchmark.pedantic(candidates["fastladder"], args=(x,), rounds=10, iterations=1)
        peaks = {"fastladder": cuda_peak(lambda: candidates["fastladder"](x)),
                 "reference eager": cuda_peak(lambda: reference16(x16))}
    device = torch.cuda.get_device_name()
    report(f"LDN-121 inference {size[0]}x{size[1]}, batch 1, float16, {device}", times, "fastladder",
           record=record_comparison)
    report(f"LDN-121 inference activation memory {size[0]}x{size[1]}, float16, {device}", peaks, "fastladder",
           unit="bytes", record=record_comparison)
    benchmark.extra_info.update({name: value for name, value in times.items()})


# --- memory (fresh subprocesses) ----------------------------------------------------------------

_MEMORY_PRELUDE = """
import gc, json, sys, torch
sys.path.insert(0, ROOT)

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

spec = json.loads(sys.argv[1])
torch.manual_seed(0)
"""

_MEMORY_MEASURE = """
gc.collect()
start = rss("VmRSS")
measured()  # warm-up: oneDNN primitives, allocator pools and lazy inits are not activations
gc.collect()
before = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
measured()
# held: what the first call left allocated (caches, and an inference arena's blocks kept for the next call)
print(json.dumps({"peak": rss("VmHWM") - before, "held": before - start}))
"""


def measure_peak(setup, body, spec, held=False):
    """Peak RSS growth in bytes during one call of ``body`` in a fresh interpreter (after a warm-up call);
    with ``held``, also the RSS growth the warm-up call left behind: (peak, held)."""
    script = (f"ROOT = {ROOT!r}\n" + _MEMORY_PRELUDE + textwrap.dedent(setup) + "\ndef measured():\n"
              + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n" + _MEMORY_MEASURE)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return (result["peak"], result["held"]) if held else result["peak"]


_LDN_SETUP = """
from fastladder.models import create_model
from fastladder.reference.models import reference_twin
model = create_model("ladder_densenet121", memory_efficient=spec.get("memory_efficient", False))
if spec["which"] == "reference":
    model = reference_twin(model)
model.train(spec["train"])
if spec["which"].startswith("optimize_for_inference"):
    from fastladder.models import optimize_for_inference
    # the fused copy; the training model is freed
    model = optimize_for_inference(model, reuse_memory=spec["which"] == "optimize_for_inference")

x = torch.randn(spec["batch"], 3, spec["height"], spec["width"])
target = torch.randint(0, 19, (spec["batch"], spec["height"], spec["width"]))
from fastladder.train.losses import ladder_loss
"""

_INFERENCE_BODY = """
with torch.inference_mode():
    model(x)
"""
# The measured body must not keep its result: only the peak during the call counts.

_TRAIN_BODY = """
loss = ladder_loss(model(x), target)
loss.backward()
del loss
model.zero_grad(set_to_none=True)
"""


@pytest.mark.parametrize("size", INFERENCE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ldn121_inference_activation_memory(bench_device, record_comparison, size):
    if bench_device == "cuda":
        pytest.skip("on CUDA, test_ldn121_inference measures the activation memory")
    skip_large_on_cpu(bench_device, size, INFERENCE_SIZES[-1])
    """The peak during a call (the activations), and that peak plus what a call leaves held for the next
    (optimize_for_inference's CPU arena keeps the large blocks; reuse_memory=False frees them)."""
    peaks, totals = {}, {}
    names = {"optimize_for_inference_no_reuse": "optimize_for_inference reuse_memory=False",
             "optimize_for_inference": "optimize_for_inference", "fastladder": "fastladder eval model",
             "reference": "reference"}
    for which, name in names.items():
        spec = dict(which=which, train=False, batch=1, height=size[0], width=size[1])
        peak, held = measure_peak(_LDN_SETUP, _INFERENCE_BODY, spec, held=True)
        peaks[name], totals[name] = peak, peak + held
    candidate = "optimize_for_inference reuse_memory=False"
    report(f"LDN-121 inference activation memory {size[0]}x{size[1]}", peaks, candidate, unit="bytes",
           record=record_comparison)
    report(f"LDN-121 inference activation memory + held between calls {size[0]}x{size[1]}", totals,
           candidate, unit="bytes", record=record_comparison)


@pytest.mark.parametrize("size", TRAINING_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ldn121_training_step_memory_and_time(bench_device, record_comparison, size):
    """One float32 training step (forward, 0.7/0.3 ladder loss, backward), batch 2: memory_efficient
    against the naive shared-buffer version and the torch.cat reference twin (same weights)."""
    skip_large_on_cpu(bench_device, size, TRAINING_SIZES[-1])
    height, width = size
    variants = [("memory_efficient", "fastladder", True), ("naive", "fastladder", False),
                ("reference (torch.cat)", "reference", False)]
    where = "CPU" if bench_device == "cpu" else torch.cuda.get_device_name()
    from fastladder.models import create_model
    from fastladder.reference.models import reference_twin
    from fastladder.train.losses import ladder_loss
    torch.manual_seed(0)
    efficient = create_model("ladder_densenet121", memory_efficient=True)
    naive = create_model("ladder_densenet121")
    naive.load_state_dict(efficient.state_dict())
    models = {"memory_efficient": efficient, "naive": naive, "reference (torch.cat)": reference_twin(naive)}
    models = {name: model.to(bench_device).train() for name, model in models.items()}
    x = torch.randn(2, 3, height, width, device=bench_device)
    target = torch.randint(0, 19, (2, height, width), device=bench_device)

    def step(model):
        def run():
            ladder_loss(model(x), target).backward()
            model.zero_grad(set_to_none=True)
        return run

    if bench_device == "cuda":
        for model in models.values():
            step(model)()  # warm-up: cuDNN autotuning and allocator pools are not activations
        peaks = {name: cuda_peak(step(model)) for name, model in models.items()}
    else:
        peaks = {name: measure_peak(_LDN_SETUP, _TRAIN_BODY, dict(which=which, train=True, batch=2,
                                                                   height=height, width=width,
                                                                   memory_efficient=efficient))
                 for name, which, efficient in variants}
    report(f"LDN-121 training step peak memory, batch 2, {height}x{width}, {where}", peaks,
           "memory_efficient", unit="bytes", record=record_comparison)
    times = interleaved({name: step(model) for name, model in models.items()},
                        rounds=3 if bench_device == "cpu" else 10, device=bench_device)
    report(f"LDN-121 training step time, batch 2, {height}x{width}, {where}", times, "memory_efficient",
           record=record_comparison)


_BLOCK_SETUP = """
from fastladder.nn import DenseBlock
from fastladder.reference.models import DenseBlockReference
cls = DenseBlock if spec["which"] == "fastladder" else DenseBlockReference
block = cls(spec["layers"], 64, growth_rate=32, memory_efficient=spec["memory_efficient"]).train()
x = torch.randn(1, 64, 48, 48, requires_grad=True)
"""

_BLOCK_BODY = """
block(x).sum().backward()
x.grad = None
block.zero_grad(set_to_none=True)
"""


def test_dense_block_training_memory_vs_depth(bench_device):
    """Peak training memory of one block (batch 1, 64 → 64 + 32·L channels at 48×48) against depth L.

    Shared-buffer storage grows linearly (the memory-efficient per-layer increment stays constant);
    the torch.cat reference grows quadratically (its increment grows with L). Memory layout does not
    depend on the device: CPU only."""
    if bench_device == "cuda":
        pytest.skip("the block-depth memory table is a CPU measurement")
    depths = (4, 8, 16, 24)
    table = {}
    for name, which, efficient in [("memory_efficient", "fastladder", True), ("naive", "fastladder", False),
                                   ("reference (torch.cat)", "reference", False)]:
        table[name] = [measure_peak(_BLOCK_SETUP, _BLOCK_BODY,
                                    dict(which=which, layers=layers, memory_efficient=efficient))
                       for layers in depths]
    print("\n[DenseBlock training peak memory (MiB) vs depth L, batch 1, 48x48, k=32]")
    print("  " + f"{'L':<24}" + "".join(f"{d:>9}" for d in depths) + "   increments per layer (MiB)")
    for name, peaks in table.items():
        increments = [(b - a) / (d2 - d1) / 2**20
                      for a, b, d1, d2 in zip(peaks, peaks[1:], depths, depths[1:])]
        print("  " + f"{name:<24}" + "".join(f"{p / 2**20:9.1f}" for p in peaks) + "   "
              + ", ".join(f"{i:.2f}" for i in increments))


_BACKBONE_SETUP = """
import torchvision
from fastladder.models import densenet121
if spec["which"] == "torchvision":
    model = torchvision.models.densenet121(weights=None, memory_efficient=spec["memory_efficient"])
else:
    model = densenet121(memory_efficient=spec["memory_efficient"])
model.train()
x = torch.randn(spec["batch"], 3, spec["height"], spec["width"])
"""

_BACKBONE_BODY = """
model(x).sum().backward()
model.zero_grad(set_to_none=True)
"""


def test_densenet121_backbone_training_vs_torchvision(bench_device, record_comparison):
    """DenseNet-121 classification training step, batch 2 at 224×448: fastladder vs torchvision,
    both with memory_efficient=True (torchvision: checkpointed cat-BN-ReLU-1×1, which also runs
    those BatchNorms twice per step), and torchvision's plain version."""
    import torchvision
    from fastladder.models import densenet121
    spec = dict(batch=2, height=224, width=448)
    variants = [("fastladder memory_efficient", "fastladder", True),
                ("torchvision memory_efficient", "torchvision", True), ("torchvision", "torchvision", False)]
    torch.manual_seed(0)
    ours = densenet121(memory_efficient=True)
    models = {"fastladder memory_efficient": ours}
    for name, efficient in (("torchvision memory_efficient", True), ("torchvision", False)):
        models[name] = torchvision.models.densenet121(weights=None, memory_efficient=efficient)
        models[name].load_state_dict(ours.state_dict())
    models = {name: model.to(bench_device).train() for name, model in models.items()}
    x = torch.randn(2, 3, 224, 448, device=bench_device)

    def step(model):
        def run():
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        return run

    where = "CPU" if bench_device == "cpu" else torch.cuda.get_device_name()
    if bench_device == "cuda":
        for model in models.values():
            step(model)()
        peaks = {name: cuda_peak(step(model)) for name, model in models.items()}
    else:
        peaks = {name: measure_peak(_BACKBONE_SETUP, _BACKBONE_BODY,
                                    dict(spec, which=which, memory_efficient=efficient))
                 for name, which, efficient in variants}
    report(f"DenseNet-121 training step peak memory, batch 2, 224x448, {where}", peaks,
           "fastladder memory_efficient", unit="bytes", record=record_comparison)
    times = interleaved({name: step(models[name]) for name in ("fastladder memory_efficient",
                                                               "torchvision memory_efficient")},
                        rounds=3 if bench_device == "cpu" else 10, device=bench_device)
    report(f"DenseNet-121 training step time, batch 2, 224x448, {where}", times,
           "fastladder memory_efficient", record=record_comparison)
