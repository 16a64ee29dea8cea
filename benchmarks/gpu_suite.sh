#!/usr/bin/env bash
# The GPU suite: on a machine with a CUDA GPU and torch already installed (no network), build
# fastladder in place, run the CUDA tests and the GPU benchmarks, and write a JSON summary (device,
# build, exit codes, each benchmark's ratio) under OUTPUT_DIR.
#
#   bash benchmarks/gpu_suite.sh [OUTPUT_DIR]          default run: within 8 minutes on one H100 with
#                                                      16 cores, build included (default OUTPUT_DIR:
#                                                      benchmarks/results)
#   bash benchmarks/gpu_suite.sh --full [OUTPUT_DIR]   everything: every CUDA test, every benchmark,
#                                                      compute-sanitizer memcheck and racecheck
#   bash benchmarks/gpu_suite.sh --check [OUTPUT_DIR]  everything short of launching a kernel (CI, on a
#                                                      CPU): preflight, the CUDA tests collect, every
#                                                      benchmark module imports, a dry-run summary
#
# The build is pinned to the visible GPU (TORCH_CUDA_ARCH_LIST unset: setup.py detects it) with
# MAX_JOBS=16; set either to override. --check uses the fastladder that is importable (an in-place
# build of this folder, else the installed one) and builds nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

mode=default
case "${1:-}" in
  --full) mode=full; shift ;;
  --check) mode=check; shift ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
esac
if [ "$mode" = check ]; then
  out_dir="${1:-${TMPDIR:-/tmp}/fastladder-gpu-suite-check}"
else
  out_dir="${1:-benchmarks/results}"
fi
mkdir -p "$out_dir" && out_dir="$(cd "$out_dir" && pwd)"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
python="${PYTHON:-python3}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" MAX_JOBS="${MAX_JOBS:-16}" FASTLADDER_CUDA=1 PYTHONUNBUFFERED=1
nvcc="$CUDA_HOME/bin/nvcc"

# --- preflight: every missing piece named at once, before anything is built -----------------------
echo "== preflight ($mode)"
missing=()
if ! command -v "$python" > /dev/null; then
  echo "gpu_suite: $python not found (set PYTHON=...)" >&2
  exit 2
fi
torch_cuda="$("$python" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)" \
  || missing+=("torch (python -c 'import torch' fails)")
for module in pytest pytest_benchmark torchvision numpy tqdm; do
  "$python" -c "import $module" 2> /dev/null || missing+=("python package ${module/_/-}")
done
if [ ! -x "$nvcc" ]; then
  missing+=("nvcc ($nvcc not found: set CUDA_HOME to the CUDA toolkit)")
else
  nvcc_cuda="$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  if [ -z "$torch_cuda" ]; then
    missing+=("a CUDA build of torch (torch.version.cuda is None)")
  elif [ "${nvcc_cuda%%.*}" != "${torch_cuda%%.*}" ]; then
    missing+=("nvcc of CUDA ${torch_cuda%%.*}.x: $nvcc is CUDA $nvcc_cuda, torch was built with CUDA $torch_cuda")
  fi
fi
if [ "$mode" = full ] && [ ! -x "$CUDA_HOME/bin/compute-sanitizer" ]; then
  missing+=("compute-sanitizer ($CUDA_HOME/bin/compute-sanitizer, for --full)")
fi
if [ "$mode" != check ] && ! "$python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  missing+=("a CUDA GPU (torch.cuda.is_available() is False)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  printf 'gpu_suite: missing: %s\n' "${missing[@]}" >&2
  exit 2
fi
echo "torch CUDA $torch_cuda, nvcc CUDA $nvcc_cuda"

# The CUDA tests and benchmarks: the default run is a curated selection, --full runs everything.
cuda_tests=(tests -m cuda)
bench_files=(benchmarks/bench_*.py)
default_benchmarks=(benchmarks/bench_ladder_blend.py benchmarks/bench_boxes.py benchmarks/bench_ssd.py)
build_log="$out_dir/gpu-build-$stamp.log"

# --- check: no build, no kernel ----------------------------------------------------------------------
if [ "$mode" = check ]; then
  # Run from the output folder: the in-place build of this folder when there is one (PYTHONPATH),
  # else the installed fastladder (the source folder itself, without _C, would shadow it).
  if compgen -G "fastladder/_C*.so" > /dev/null; then export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"; fi
  cd "$out_dir" || exit 2
  "$python" -m pytest "$repo/tests" -m cuda --collect-only -q -p no:cacheprovider --rootdir="$repo" \
    -c "$repo/pyproject.toml" > "$out_dir/gpu-collect-$stamp.log" 2>&1
  collect_rc=$?
  tail -3 "$out_dir/gpu-collect-$stamp.log"
  "$python" - "$repo" "$out_dir" "$stamp" "$collect_rc" "${cuda_tests[*]}" "${default_benchmarks[*]}" <<'PY'
import glob, importlib.util, json, os, re, sys
import torch
import fastladder
repo, out_dir, stamp, collect_rc, cuda_tests, default_benchmarks = sys.argv[1:]
log = open(f"{out_dir}/gpu-collect-{stamp}.log").read()
found = re.search(r"(\d+)(?:/\d+)? tests? collected", log) or re.search(r"(\d+) tests? selected", log)
collected = int(found.group(1)) if found else 0
sys.path.insert(0, f"{repo}/benchmarks")  # the benchmark modules' conftest helpers
imported, failed = [], {}
for path in sorted(glob.glob(f"{repo}/benchmarks/bench_*.py")):
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        spec = importlib.util.spec_from_file_location(f"_gpu_suite_check_{name}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        imported.append(name)
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the check fails
        failed[name] = f"{type(error).__name__}: {error}"
info = fastladder.build_info()
summary = dict(mode="check", device=None, torch=torch.__version__, cuda=torch.version.cuda, build=info,
               cuda_tests_collected=collected, collect_exit_code=int(collect_rc),
               benchmark_modules=imported, benchmark_import_errors=failed,
               would_run=dict(default=[cuda_tests, *default_benchmarks.split()],
                              full=[cuda_tests, "benchmarks/bench_*.py",
                                    f"compute-sanitizer memcheck + racecheck: {cuda_tests}"]))
path = f"{out_dir}/gpu-suite-check-{stamp}.json"
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
print("wrote", path)
problems = []
if not info["with_cuda"]:
    problems.append("fastladder was built without its CUDA kernels")
if int(collect_rc) != 0 or collected == 0:
    problems.append(f"the CUDA tests do not collect (pytest exit {collect_rc}, {collected} collected): "
                    f"see {out_dir}/gpu-collect-{stamp}.log")
problems += [f"benchmarks/{name}.py does not import: {error}" for name, error in failed.items()]
for problem in problems:
    print("gpu_suite --check:", problem, file=sys.stderr)
print(f"gpu_suite --check: {collected} CUDA tests collect, {len(imported)} benchmark modules import")
sys.exit(1 if problems else 0)
PY
  exit $?
fi

# --- build (in place), the whole log kept ---------------------------------------------------------
echo "== build (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-the visible GPU})"
"$python" setup.py build_ext --inplace > "$build_log" 2>&1
build_rc=$?
if [ "$build_rc" != 0 ]; then
  tail -40 "$build_log"
  echo "gpu_suite: the build failed (exit $build_rc); the whole log: $build_log" >&2
  exit 1
fi
grep "building the CUDA kernels for" "$build_log" || true
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c "import fastladder, json; print(json.dumps(fastladder.build_info()))" || exit 1

echo "== CUDA tests"
"$python" -m pytest "${cuda_tests[@]}" -q -rs -p no:cacheprovider --junitxml="$out_dir/gpu-tests-$stamp.xml" 2>&1 \
  | tee "$out_dir/gpu-tests-$stamp.log" | tail -30
tests_rc=${PIPESTATUS[0]}

sanitizer_rc=skipped
if [ "$mode" = full ]; then
  echo "== compute-sanitizer (memcheck, racecheck)"
  sanitizer_rc=0
  for tool in memcheck racecheck; do
    "$CUDA_HOME/bin/compute-sanitizer" --tool "$tool" --error-exitcode 99 --target-processes all \
      "$python" -m pytest "${cuda_tests[@]}" -q -p no:cacheprovider -x > "$out_dir/gpu-sanitizer-$tool-$stamp.log" 2>&1
    rc=$?
    tail -5 "$out_dir/gpu-sanitizer-$tool-$stamp.log"
    [ "$rc" = 0 ] || sanitizer_rc=$rc
  done
fi

echo "== GPU benchmarks"
if [ "$mode" = full ]; then
  benchmarks=("${bench_files[@]}")
  size=full
else
  benchmarks=("${default_benchmarks[@]}")
  size=small
fi
"$python" -m pytest "${benchmarks[@]}" --benchmark-enable --bench-device cuda --bench-size "$size" -q -s \
  -p no:cacheprovider --ratios-json="$out_dir/gpu-benchmarks-$stamp.json" 2>&1 \
  | tee "$out_dir/gpu-benchmarks-$stamp.log" | tail -60
bench_rc=${PIPESTATUS[0]}

"$python" - "$out_dir" "$stamp" "$mode" "$build_rc" "$tests_rc" "$sanitizer_rc" "$bench_rc" <<'PY'
import json, sys
import torch
import fastladder
out_dir, stamp, mode, build_rc, tests_rc, sanitizer_rc, bench_rc = sys.argv[1:]
path = f"{out_dir}/gpu-suite-{stamp}.json"
try:
    with open(f"{out_dir}/gpu-benchmarks-{stamp}.json") as f:
        benchmarks = json.load(f)
except OSError:
    benchmarks = None
summary = dict(mode=mode, device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               torch=torch.__version__, cuda=torch.version.cuda, build=fastladder.build_info(),
               exit_codes=dict(build=int(build_rc), cuda_tests=int(tests_rc), sanitizer=sanitizer_rc,
                               benchmarks=int(bench_rc)),
               build_log=f"gpu-build-{stamp}.log", tests_log=f"gpu-tests-{stamp}.log",
               benchmarks_log=f"gpu-benchmarks-{stamp}.log", benchmarks=benchmarks)
with open(path, "w") as f:
    json.dump(summary, f, indent=2)
print("wrote", path)
PY
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && { [ "$sanitizer_rc" = skipped ] || [ "$sanitizer_rc" = 0 ]; }
