"""pytest-benchmark suites: fastladder and its baselines side by side, reported as ratios.

    pytest benchmarks --benchmark-enable                      CPU, full sizes
    pytest benchmarks --benchmark-enable --bench-size small   quick
    pytest benchmarks --benchmark-enable --bench-device cuda --ratios-json benchmarks/results/x.json

Each benchmark sets ``benchmark.group`` to its case and ``benchmark.extra_info["impl"]`` to the
implementation; the summary divides fastladder's median by each baseline's median in the group.
Memory figures are recorded with the ``record_ratio`` fixture.
"""
import json
import platform
from collections import defaultdict

import pytest
import torch

_memory_rows = []
_comparison_rows = []


def pytest_addoption(parser):
    group = parser.getgroup("fastladder benchmarks")
    group.addoption("--bench-device", default="cpu", choices=["cpu", "cuda"])
    group.addoption("--bench-size", default="full", choices=["full", "small"],
                    help="full: the sizes the targets are stated for; small: a quick run")
    group.addoption("--ratios-json", default=None, help="write the ratio summary to this JSON file")


@pytest.fixture(scope="session")
def bench_device(request):
    device = request.config.getoption("--bench-device")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("--bench-device cuda needs a CUDA device")
    return device


@pytest.fixture(scope="session")
def bench_size(request):
    return request.config.getoption("--bench-size")


@pytest.fixture
def record_comparison():
    """record_comparison(title, values, candidate, unit): a table of timings ("s") or peak memories
    ("bytes") measured by a benchmark script itself (bench_models.py), with every baseline's
    ratio to ``candidate``, for the summary and --ratios-json."""
    def record(title, values, candidate, unit):
        _comparison_rows.append(dict(title=title, unit=unit, candidate=candidate, values=dict(values),
                                     baseline_over_candidate={name: value / values[candidate]
                                                              for name, value in values.items()
                                                              if name != candidate}))
    return record


@pytest.fixture
def record_memory():
    """record_memory(group, {impl: bytes}): a peak-memory comparison for the summary."""
    def record(group, peak_bytes):
        _memory_rows.append(dict(group=group, peak_bytes=peak_bytes))
    return record


def _time_rows(config):
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return []
    groups = defaultdict(dict)
    for bench in session.benchmarks:
        if bench.stats is None or not bench.stats.rounds:  # --benchmark-disable: timed once, no stats
            continue
        groups[bench.group][bench.extra_info.get("impl", bench.name)] = bench.stats.median
    rows = []
    for group, medians in groups.items():
        if "fastladder" not in medians:
            continue
        rows.append(dict(group=group, median_seconds=medians,
                         time_ratio={impl: medians["fastladder"] / t for impl, t in medians.items()
                                     if impl != "fastladder"}))
    return rows


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    time_rows = _time_rows(config)
    if not time_rows and not _memory_rows and not _comparison_rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fastladder / baseline (below 1.00x: fastladder faster or smaller)")
    for row in time_rows:
        ratios = "  ".join(f"time vs {impl}: {r:.2f}x" for impl, r in row["time_ratio"].items())
        times = "  ".join(f"{impl} {t * 1e3:.2f} ms" for impl, t in row["median_seconds"].items())
        write(f"{row['group']}: {ratios}   ({times})")
    for row in _memory_rows:
        peak = row["peak_bytes"]
        ratios = "  ".join(f"memory vs {impl}: {peak['fastladder'] / max(1, b):.2f}x"
                           for impl, b in peak.items() if impl != "fastladder")
        sizes = "  ".join(f"{impl} {b / 2**20:.1f} MB" for impl, b in peak.items())
        write(f"{row['group']}: {ratios}   ({sizes})")
    for row in _comparison_rows:  # these read the other way: above 1.00x, fastladder is faster or smaller
        ratios = "  ".join(f"{name} / {row['candidate']} = {r:.2f}x"
                           for name, r in row["baseline_over_candidate"].items())
        write(f"{row['title']}: {ratios}")
    path = config.getoption("--ratios-json")
    if path:
        device = config.getoption("--bench-device")
        summary = dict(
            device=(torch.cuda.get_device_name() if device == "cuda"
                    else platform.processor() or platform.machine()),
            device_type=device, torch=torch.__version__, cpu_threads=torch.get_num_threads(),
            time=time_rows,
            memory=[dict(r, memory_ratio={i: r["peak_bytes"]["fastladder"] / max(1, b)
                                          for i, b in r["peak_bytes"].items() if i != "fastladder"})
                    for r in _memory_rows],
            comparisons=_comparison_rows)
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)
        write(f"wrote {path}")
