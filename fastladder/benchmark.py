"""Side-by-side speed and memory measurements of fastladder against its baselines.

Used by the pytest-benchmark suites in benchmarks/ and by ``fastladder bench`` / ``fastladder demo``.
Every figure is taken for fastladder and its baseline in the same run and reported as a ratio:
the build machines are shared and noisy, so an absolute time is not stable, a ratio is.

Memory is the peak that one no-grad call adds on top of what was in use before it (its inputs),
so that the figure counts the output and every temporary the call needs: on CUDA,
torch.cuda.max_memory_allocated above the memory in use before the call; on CPU, the RSS
high-water mark of a fresh subprocess minus its RSS just before the call, with
MALLOC_MMAP_THRESHOLD_=131072 so that freed tensors go back to the OS.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

__all__ = ["LadderBlendCase", "ladder_blend_cases", "make_ladder_blend_inputs", "ladder_blend_impls",
           "time_side_by_side", "peak_extra_memory", "run_ladder_blend_benchmark", "format_table"]


@dataclass(frozen=True)
class LadderBlendCase:
    """One LDN transition-up: low [1, channels, *low_size] upsampled to skip [1, channels, *skip_size]."""
    name: str
    low_size: tuple
    skip_size: tuple
    channels: int = 128
    batch: int = 1


def ladder_blend_cases(height: int = 1024, width: int = 2048) -> List[LadderBlendCase]:
    """The four LDN-121 transition-up shapes for an input of height×width: 1/64→1/32 … 1/8→1/4.

    The low input is the 128-channel output of the level below; the skip is the DenseNet block output
    projected to 128 channels, so the blend convolution sees 256 channels."""
    cases = []
    for low_stride in (64, 32, 16, 8):
        skip_stride = low_stride // 2
        cases.append(LadderBlendCase(
            name=f"1/{low_stride}->1/{skip_stride}",
            low_size=(-(-height // low_stride), -(-width // low_stride)),
            skip_size=(-(-height // skip_stride), -(-width // skip_stride))))
    return cases


def make_ladder_blend_inputs(case: LadderBlendCase, *, device="cpu", dtype=torch.float32,
                             channels_last=False, seed=0) -> Dict[str, torch.Tensor]:
    """Random inputs of a case: low, skip, the 3×3 weight, and a folded BatchNorm (scale, shift)."""
    gen = torch.Generator().manual_seed(seed)
    c = case.channels
    tensors = dict(
        low=torch.randn(case.batch, c, *case.low_size, generator=gen),
        skip=torch.randn(case.batch, c, *case.skip_size, generator=gen),
        weight=torch.randn(c, 2 * c, 3, 3, generator=gen) * (2.0 / (9 * 2 * c)) ** 0.5,
        scale=torch.rand(2 * c, generator=gen) + 0.5,
        shift=torch.randn(2 * c, generator=gen) * 0.1,
    )
    tensors = {k: v.to(device=device, dtype=dtype) for k, v in tensors.items()}
    if channels_last:
        for k in ("low", "skip"):
            tensors[k] = tensors[k].contiguous(memory_format=torch.channels_last)
    return tensors


def ladder_blend_impls(with_compile: bool = True) -> Dict[str, Callable]:
    """name -> f(low, skip, weight, scale, shift): fastladder and its baselines."""
    from fastladder import ops, reference

    def fused(low, skip, weight, scale, shift):
        return ops.ladder_blend(low, skip, weight, scale=scale, shift=shift)

    def eager(low, skip, weight, scale, shift):
        return reference.ladder_blend(low, skip, weight, scale=scale, shift=shift)

    impls = {"fastladder": fused, "reference": eager}
    if with_compile:
        impls["reference+compile"] = torch.compile(eager)
    return impls


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_side_by_side(fns: Dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1,
                      device="cpu") -> Dict[str, float]:
    """Median seconds per call of each fn, interleaving the fns so that they share the machine's noise."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _synchronize(device)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _synchronize(device)
            start = time.perf_counter()
            fn()
            _synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


# --- memory ---------------------------------------------------------------------------------------

def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _measure_here(case: LadderBlendCase, impl: str, device: str) -> int:
    """Peak extra bytes of one no-grad call, measured in this process (a fresh one, for CPU)."""
    fn = ladder_blend_impls(with_compile=impl.endswith("compile"))[impl]
    inputs = make_ladder_blend_inputs(case, device=device)
    with torch.no_grad():
        fn(**inputs)  # warm-up: one-time allocations (thread pools, compiled code) are not the call's
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn(**inputs)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the RSS high-water mark (VmHWM) to the current RSS
        fn(**inputs)
        return (_status_kib("VmHWM") - before) * 1024


def peak_extra_memory(case: LadderBlendCase, impl: str, device: str = "cpu") -> int:
    """Peak memory (bytes) that one call of `impl` adds on top of its inputs, output included."""
    if device == "cuda":
        return _measure_here(case, impl, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    spec = json.dumps(dict(name=case.name, low_size=case.low_size, skip_size=case.skip_size,
                           channels=case.channels, batch=case.batch, impl=impl))
    # -P: import the fastladder this process uses, not a source folder that happens to be the cwd
    result = subprocess.run([sys.executable, "-P", "-m", "fastladder.benchmark", "--memory-child", spec],
                            env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement of {impl} on {case.name} failed:\n{result.stderr[-2000:]}")
    return int(result.stdout.strip().splitlines()[-1])


# --- the ladder_blend benchmark -------------------------------------------------------------------

def run_ladder_blend_benchmark(height: int = 1024, width: int = 2048, *, device: str = "cpu",
                               dtype=torch.float32, channels_last: bool = False, with_compile: bool = True,
                               memory: bool = True, repeats: int = 5,
                               progress: Optional[Callable[[str], None]] = None) -> List[dict]:
    """Times ladder_blend against its baselines on the four LDN-121 shapes (and their sum).

    Returns one row per case: seconds and peak extra bytes per implementation, and the ratios
    fastladder / baseline (below 1 means fastladder is faster or smaller)."""
    impls = ladder_blend_impls(with_compile)
    rows = []
    for case in ladder_blend_cases(height, width):
        if progress:
            progress(case.name)
        inputs = make_ladder_blend_inputs(case, device=device, dtype=dtype, channels_last=channels_last)
        with torch.no_grad():
            times = time_side_by_side({name: (lambda fn=fn: fn(**inputs)) for name, fn in impls.items()},
                                      repeats=repeats, device=device)
        row = dict(case=case.name, low=list(case.low_size), skip=list(case.skip_size), seconds=times)
        if memory and dtype == torch.float32:
            row["peak_bytes"] = {name: peak_extra_memory(case, name, device)
                                 for name in impls if not name.endswith("compile")}
        rows.append(row)
    total = dict(case="total", seconds={name: sum(r["seconds"][name] for r in rows) for name in impls})
    if all("peak_bytes" in r for r in rows):
        total["peak_bytes"] = {name: max(r["peak_bytes"][name] for r in rows)
                               for name in rows[0]["peak_bytes"]}
    rows.append(total)
    for row in rows:
        row["time_ratio"] = {name: row["seconds"]["fastladder"] / row["seconds"][name]
                             for name in impls if name != "fastladder"}
        if "peak_bytes" in row:
            row["memory_ratio"] = {name: row["peak_bytes"]["fastladder"] / max(1, row["peak_bytes"][name])
                                   for name in row["peak_bytes"] if name != "fastladder"}
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """A text table of run_ladder_blend_benchmark's rows: ms per implementation and the ratios."""
    impls = list(rows[0]["seconds"])
    header = ["case"] + [f"{n} ms" for n in impls] + [f"time vs {n}" for n in impls[1:]]
    has_memory = "peak_bytes" in rows[0]
    if has_memory:
        mem_impls = list(rows[0]["peak_bytes"])
        header += [f"{n} MB" for n in mem_impls] + [f"memory vs {n}" for n in mem_impls[1:]]
    lines = [header]
    for row in rows:
        line = [row["case"]] + [f"{row['seconds'][n] * 1e3:.1f}" for n in impls]
        line += [f"{row['time_ratio'][n]:.2f}x" for n in impls[1:]]
        if has_memory and "peak_bytes" in row:
            line += [f"{row['peak_bytes'][n] / 2**20:.0f}" for n in mem_impls]
            line += [f"{row['memory_ratio'][n]:.2f}x" for n in mem_impls[1:]]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in lines)


def _memory_child_main(spec_json: str):
    spec = json.loads(spec_json)
    case = LadderBlendCase(spec["name"], tuple(spec["low_size"]), tuple(spec["skip_size"]), spec["channels"],
                           spec["batch"])
    print(_measure_here(case, spec["impl"], "cpu"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: memory measurement in a fresh process")
    parser.add_argument("--memory-child", required=True)
    _memory_child_main(parser.parse_args().memory_child)
