"""Model benchmarks: LadderDenseNet-121 inference and training, fastladder vs its unfused twin.

Run:  PYTHONPATH=. pytest benchmarks/bench_models.py --benchmark-enable -s
      (FASTLADDER_SLOW=1 adds the 1024×2048 cases; FASTLADDER_BENCH_COMPILE=0 skips torch.compile
      of the reference, which takes minutes on the 2-core build machines.)

Every comparison times candidate and baseline interleaved in one process (the build machines are
shared and noisy: a ratio is stable, an absolute time is not) and prints ``baseline / candidate``
(> 1: fastladder is faster or smaller). Memory is measured in a fresh subprocess as the RSS
high-water mark during the measured call minus the RSS just before it, with
MALLOC_MMAP_THRESHOLD_=131072 so that freed tensors go back to the OS (DESIGN.md, "Performance").
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
SIZES = [(448, 1024), pytest.param((1024, 2048), marks=pytest.mark.skipif(not SLOW, reason="FASTLADDER_SLOW=1"))]
RESULTS = {}


def interleaved(functions, rounds):
    """Best-of-rounds seconds per function, the functions taking turns (drift hits all alike)."""
    best = {name: float("inf") for name in functions}
    for fn in functions.values():  # warm-up: oneDNN primitives, allocator, lazy initialisation
        fn()
    for _ in range(rounds):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def report(title, values, candidate, unit="s"):
    """Prints values and the ratio of every baseline to the candidate."""
    lines = [f"\n[{title}]"]
    for name, value in values.items():
        ratio = "" if name == candidate else f"   {name} / {candidate} = {value / values[candidate]:.2f}×"
        shown = f"{value:.3f} s" if unit == "s" else f"{value / 2**20:.1f} MiB"
        lines.append(f"  {name:<28} {shown}{ratio}")
    print("\n".join(lines))
    RESULTS[title] = values


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

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ldn121_inference(benchmark, size):
    from fastladder.models import optimize_for_inference
    model, reference = build_ldn()
    model.eval()
    reference.eval()
    x = torch.randn(1, 3, *size)
    candidates = {"fastladder eager": model, "reference eager": reference}
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
           "fastladder eager")
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
measured()  # warm-up: oneDNN primitives, allocator pools and lazy inits are not activations
gc.collect()
before = rss("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current RSS
measured()
print(json.dumps({"peak": rss("VmHWM") - before}))
"""


def measure_peak(setup, body, spec):
    """Peak RSS growth in bytes during one call of ``body`` in a fresh interpreter."""
    script = (f"ROOT = {ROOT!r}\n" + _MEMORY_PRELUDE + textwrap.dedent(setup) + "\ndef measured():\n"
              + textwrap.indent(textwrap.dedent(body).strip(), "    ") + "\n" + _MEMORY_MEASURE)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


_LDN_SETUP = """
from fastladder.models import create_model
from fastladder.reference.models import reference_twin
model = create_model("ladder_densenet121", memory_efficient=spec.get("memory_efficient", False))
if spec["which"] == "reference":
    model = reference_twin(model)
model.train(spec["train"])
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


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_ldn121_inference_activation_memory(size):
    peaks = {}
    for which in ("fastladder", "reference"):
        spec = dict(which=which, train=False, batch=1, height=size[0], width=size[1])
        peaks[which] = measure_peak(_LDN_SETUP, _INFERENCE_BODY, spec)
    report(f"LDN-121 inference activation memory {size[0]}x{size[1]}", peaks, "fastladder", unit="bytes")


def test_ldn121_training_step_memory_and_time():
    """Reduced size on CPU: batch 2 at 224×512 (the GPU suite runs 448×1024)."""
    height, width = 224, 512
    peaks = {}
    for name, which, efficient in [("memory_efficient", "fastladder", True), ("naive", "fastladder", False),
                                   ("reference (torch.cat)", "reference", False)]:
        spec = dict(which=which, train=True, batch=2, height=height, width=width, memory_efficient=efficient)
        peaks[name] = measure_peak(_LDN_SETUP, _TRAIN_BODY, spec)
    report(f"LDN-121 training step peak memory, batch 2, {height}x{width}", peaks, "memory_efficient",
           unit="bytes")

    from fastladder.models import create_model
    from fastladder.reference.models import reference_twin
    from fastladder.train.losses import ladder_loss
    torch.manual_seed(0)
    efficient = create_model("ladder_densenet121", memory_efficient=True)
    naive = create_model("ladder_densenet121")
    naive.load_state_dict(efficient.state_dict())
    reference = reference_twin(naive)
    x = torch.randn(2, 3, height, width)
    target = torch.randint(0, 19, (2, height, width))

    def step(model):
        def run():
            ladder_loss(model(x), target).backward()
            model.zero_grad(set_to_none=True)
        return run

    times = interleaved({"memory_efficient": step(efficient), "naive": step(naive),
                         "reference (torch.cat)": step(reference)}, rounds=3)
    report(f"LDN-121 training step time, batch 2, {height}x{width}", times, "memory_efficient")


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


def test_dense_block_training_memory_vs_depth():
    """Peak training memory of one block (batch 1, 64 → 64 + 32·L channels at 48×48) against depth L.

    Shared-buffer storage grows linearly (the memory-efficient per-layer increment stays constant);
    the torch.cat reference grows quadratically (its increment grows with L)."""
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
        increments = [(b - a) / (d2 - d1) / 2**20 for a, b, d1, d2 in zip(peaks, peaks[1:], depths, depths[1:])]
        print("  " + f"{name:<24}" + "".join(f"{p / 2**20:9.1f}" for p in peaks) + "   "
              + ", ".join(f"{i:.2f}" for i in increments))
    RESULTS["block depth"] = table


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


def test_densenet121_backbone_training_vs_torchvision():
    """DenseNet-121 classification training step, batch 2 at 224×448: fastladder vs torchvision,
    both with memory_efficient=True (torchvision: checkpointed cat-BN-ReLU-1×1, which also runs
    those BatchNorms twice per step)."""
    import torchvision
    from fastladder.models import densenet121
    spec = dict(batch=2, height=224, width=448, memory_efficient=True)
    peaks = {}
    for name, which, efficient in [("fastladder memory_efficient", "fastladder", True),
                                   ("torchvision memory_efficient", "torchvision", True),
                                   ("torchvision", "torchvision", False)]:
        peaks[name] = measure_peak(_BACKBONE_SETUP, _BACKBONE_BODY, dict(spec, which=which, memory_efficient=efficient))
    report("DenseNet-121 training step peak memory, batch 2, 224x448", peaks, "fastladder memory_efficient",
           unit="bytes")
    torch.manual_seed(0)
    ours = densenet121(memory_efficient=True)
    theirs = torchvision.models.densenet121(weights=None, memory_efficient=True)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 224, 448)

    def step(model):
        def run():
            model(x).sum().backward()
            model.zero_grad(set_to_none=True)
        return run

    times = interleaved({"fastladder memory_efficient": step(ours), "torchvision memory_efficient": step(theirs)},
                        rounds=3)
    report("DenseNet-121 training step time, batch 2, 224x448", times, "fastladder memory_efficient")
