#!/usr/bin/env bash
# The GPU suite: on a machine with a CUDA GPU and torch already installed (no network), build
# fastladder in place, run every CUDA test and the GPU benchmarks, and write a JSON summary
# (device, torch version, each benchmark's ratio) under benchmarks/results/.
#
#   bash benchmarks/gpu_suite.sh [OUTPUT_DIR]      (default: benchmarks/results)
set -uo pipefail
# (python -P: the installed fastladder, not the source folder, which has no compiled _C)
cd "$(dirname "$0")/.."
out_dir="${1:-benchmarks/results}"
mkdir -p "$out_dir"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
python="${PYTHON:-python3}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}" FASTLADDER_CUDA=1 PYTHONUNBUFFERED=1

echo "== build"
"$python" -m pip install --no-build-isolation --no-deps . 2>&1 | tail -3
build_rc=${PIPESTATUS[0]}
"$python" -P -c "import fastladder, json; print(json.dumps(fastladder.build_info()))" || exit 1

echo "== CUDA tests"
"$python" -P -m pytest tests -m cuda -q -rs -p no:cacheprovider --junitxml="$out_dir/gpu-tests-$stamp.xml" 2>&1 \
  | tee "$out_dir/gpu-tests-$stamp.log" | tail -30
tests_rc=${PIPESTATUS[0]}

echo "== GPU benchmarks"
"$python" -P -m pytest benchmarks/bench_ladder_blend.py benchmarks/bench_boxes.py benchmarks/bench_ssd.py \
  benchmarks/bench_models.py --benchmark-enable --bench-device cuda -q -s -p no:cacheprovider \
  --ratios-json="$out_dir/gpu-benchmarks-$stamp.json" 2>&1 | tee "$out_dir/gpu-benchmarks-$stamp.log" | tail -60
bench_rc=${PIPESTATUS[0]}

"$python" -P - "$out_dir" "$stamp" "$build_rc" "$tests_rc" "$bench_rc" <<'PY'
import json, sys, torch, fastladder
out_dir, stamp, build_rc, tests_rc, bench_rc = sys.argv[1:]
path = f"{out_dir}/gpu-suite-{stamp}.json"
try:
    with open(f"{out_dir}/gpu-benchmarks-{stamp}.json") as f:
        benchmarks = json.load(f)
except OSError:
    benchmarks = None
summary = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               torch=torch.__version__, cuda=torch.version.cuda, build=fastladder.build_info(),
               exit_codes=dict(build=int(build_rc), cuda_tests=int(tests_rc), benchmarks=int(bench_rc)),
               tests_log=f"gpu-tests-{stamp}.log", benchmarks_log=f"gpu-benchmarks-{stamp}.log",
               benchmarks=benchmarks)
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
print("wrote", path)
PY
[ "$build_rc" = 0 ] && [ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
