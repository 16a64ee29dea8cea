"""ladder_blend vs the unfused reference (F.interpolate + cat + BN + ReLU + conv2d), eager and compiled.

The four LDN-121 transition-up shapes for a 1024×2048 input, batch 1 (--bench-size small: 256×512).
CPU: float32, NCHW. CUDA: float16, channels_last. Targets (issue 2): CPU time ≤ 0.7× the eager
reference and ≤ 0.9× the compiled one, peak extra memory ≤ 0.5× the eager reference; CUDA ≤ 0.6×
eager and ≤ 0.9× compiled.
"""
import functools

import pytest
import torch

from fastladder.benchmark import (ladder_blend_cases, ladder_blend_impls, make_ladder_blend_inputs,
                                  peak_extra_memory)

SIZES = {"full": (1024, 2048), "small": (256, 512)}
IMPLS = ["fastladder", "reference", "reference+compile"]


def cases(size):
    return ladder_blend_cases(*SIZES[size])


@functools.lru_cache(maxsize=None)
def impls():
    return ladder_blend_impls(with_compile=True)


@pytest.mark.parametrize("case_index", range(4), ids=[c.name for c in cases("full")])
@pytest.mark.parametrize("impl", IMPLS)
def test_ladder_blend_speed(benchmark, bench_device, bench_size, case_index, impl):
    case = cases(bench_size)[case_index]
    cuda = bench_device == "cuda"
    inputs = make_ladder_blend_inputs(case, device=bench_device,
                                      dtype=torch.float16 if cuda else torch.float32, channels_last=cuda)
    fn = impls()[impl]
    benchmark.group = f"ladder_blend {case.name} {bench_device}"
    benchmark.extra_info["impl"] = impl

    def run():
        with torch.no_grad():
            fn(**inputs)
        if cuda:
            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=5 if not cuda else 50, warmup_rounds=1)


@pytest.mark.parametrize("case_index", range(4), ids=[c.name for c in cases("full")])
def test_ladder_blend_memory(bench_device, bench_size, record_memory, case_index):
    case = cases(bench_size)[case_index]
    peak = {impl: peak_extra_memory(case, impl, bench_device) for impl in ("fastladder", "reference")}
    record_memory(f"ladder_blend {case.name} {bench_device} peak memory", peak)
    assert peak["fastladder"] > 0 and peak["reference"] > 0
