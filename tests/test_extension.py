"""The compiled extension: build_info, and the loader's errors when _C is missing or stale."""
import os
import subprocess
import sys

import pytest
import torch

import fastladder
from fastladder import _extension

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info():
    info = fastladder.build_info()
    assert set(info) >= {"with_cuda", "cuda_version", "cuda_archs", "torch_version", "source_hash",
                         "cuda_available"}
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    assert (info["cuda_version"] is None) == (not info["with_cuda"])
    # the arch list compiled in: non-empty exactly when the CUDA kernels are, every entry "X.Y[a][+PTX]"
    assert bool(info["cuda_archs"]) == info["with_cuda"]
    for entry in info["cuda_archs"]:
        assert _extension._capability(entry) >= (3, 5), entry


def test_setup_arch_list_default():
    """setup.py without TORCH_CUDA_ARCH_LIST: the visible GPUs (none here) or the portable list."""
    if not os.path.exists(os.path.join(REPO, "setup.py")):
        pytest.skip("needs the source checkout")
    code = "import runpy; print(runpy.run_path('setup.py')['cuda_arch_list']())"  # not __main__: no setup()
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDA_ARCH_LIST"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU visible
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    archs = _extension.parse_cuda_archs(result.stdout.strip().splitlines()[-1])
    assert {"8.0", "8.6", "8.9"} <= set(archs) and archs[-1] == "9.0+PTX"
    env["TORCH_CUDA_ARCH_LIST"] = "8.6"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.stdout.strip().splitlines()[-1] == "8.6"


@pytest.mark.parametrize("archs, capability, covered", [
    (["9.0"], (9, 0), True),
    (["9.0"], (8, 0), False),                      # an A100 on the old default: "no kernel image"
    (["9.0"], (8, 9), False),
    (["8.0"], (8, 6), True),                       # same major, higher minor: the 8.0 cubin runs
    (["8.0"], (8, 9), True),
    (["8.6"], (8, 0), False),
    (["8.0", "8.6", "8.9", "9.0+PTX"], (8, 9), True),
    (["8.0", "8.6", "8.9", "9.0+PTX"], (10, 0), True),   # later GPUs JIT-compile the PTX
    (["8.0", "8.6", "8.9", "9.0+PTX"], (12, 0), True),
    (["8.0", "8.6", "8.9", "9.0"], (10, 0), False),      # no PTX: nothing runs on a new major
    (["8.6+PTX"], (8, 0), False),                        # PTX runs only at or above its own arch
    (["9.0a"], (9, 0), True),
    (["9.0a"], (10, 0), False),
    (["7.5"], (9, 0), False),
])
def test_cuda_arch_covers(archs, capability, covered):
    assert _extension.cuda_arch_covers(archs, capability) == covered
    problem = _extension.cuda_arch_error(archs, capability, "NVIDIA A100")
    assert (problem is None) == covered
    if not covered:
        arch = f"{capability[0]}.{capability[1]}"
        assert f"NVIDIA A100 (compute capability {arch})" in problem
        assert f"TORCH_CUDA_ARCH_LIST={arch} {_extension.REBUILD_COMMAND}" in problem
        assert ";".join(archs) in problem


def test_uncovered_gpu_is_reported_at_cuda_initialization(monkeypatch):
    """check_cuda_devices (queued for torch's CUDA initialization) on a fake A100 and a 9.0 build."""
    class FakeC:
        @staticmethod
        def build_info():
            return {"cuda_archs": "9.0"}

    monkeypatch.setattr(_extension, "_C", FakeC)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: [(9, 0), (8, 0)][i])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["NVIDIA H100", "NVIDIA A100"][i])
    with pytest.raises(RuntimeError,
                       match=r"no CUDA kernels for NVIDIA A100 \(cuda:1\) \(compute capability 8\.0"):
        _extension.check_cuda_devices()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (9, 0))
    _extension.check_cuda_devices()  # covered: silent
    FakeC.build_info = staticmethod(lambda: {"cuda_archs": ""})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: (8, 0))
    _extension.check_cuda_devices()  # a CPU-only build has nothing to check


def test_arch_check_is_queued_for_cuda_initialization():
    if torch.version.cuda is None:
        pytest.skip("a CPU build of torch never initializes CUDA")
    import torch.cuda as tc
    queued = [call for call, _ in getattr(tc, "_queued_calls", [])]
    assert tc.is_initialized() or _extension.check_cuda_devices in queued


def test_every_required_operator_is_registered():
    for name in _extension.REQUIRED_OPS:
        assert hasattr(torch.ops.fastladder, name), name


def test_missing_extension_says_how_to_rebuild(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastladder._C", None)  # makes `from fastladder import _C` fail
    monkeypatch.delattr(fastladder, "_C", raising=False)
    with pytest.raises(ImportError,
                       match=r"(?s)is missing or cannot be loaded.*pip install --no-build-isolation"):
        _extension._load()


def test_other_torch_version_is_reported(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    with pytest.raises(ImportError, match=r"was built against torch .* but torch 9\.9\.9 is installed"):
        _extension._load()


def test_stale_sources_are_reported(monkeypatch):
    if not os.path.isdir(os.path.join(REPO, "csrc")):
        pytest.skip("needs the source checkout")
    monkeypatch.setattr(_extension, "_SOURCE_ROOT", REPO)
    monkeypatch.setattr(_extension, "source_hash", lambda root: "0123456789abcdef")
    with pytest.raises(ImportError, match=r"is stale: csrc/ changed since it was built"):
        _extension._load()


def test_missing_operator_is_reported(monkeypatch):
    monkeypatch.setattr(_extension, "_SOURCE_ROOT", "/nonexistent")
    monkeypatch.setattr(_extension, "REQUIRED_OPS", _extension.REQUIRED_OPS + ("no_such_operator",))
    with pytest.raises(ImportError, match=r"is stale: it lacks the operators no_such_operator"):
        _extension._load()


def test_setup_without_torch_stops_with_instructions():
    if not os.path.exists(os.path.join(REPO, "setup.py")):
        pytest.skip("needs the source checkout")
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--name']; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert "--no-build-isolation" in result.stderr and "pip install torch" in result.stderr
