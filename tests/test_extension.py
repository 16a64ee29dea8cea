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
    assert set(info) >= {"with_cuda", "cuda_version", "torch_version", "source_hash", "cuda_available"}
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    assert (info["cuda_version"] is None) == (not info["with_cuda"])


def test_every_required_operator_is_registered():
    for name in _extension.REQUIRED_OPS:
        assert hasattr(torch.ops.fastladder, name), name


def test_missing_extension_says_how_to_rebuild(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastladder._C", None)  # makes `from fastladder import _C` fail
    monkeypatch.delattr(fastladder, "_C", raising=False)
    with pytest.raises(ImportError, match=r"(?s)is missing or cannot be loaded.*pip install --no-build-isolation"):
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
