"""Helpers for testing fastladder and code built on it (used by fastladder's own tests)."""
import pytest
import torch

# Parametrize over devices; the CUDA case is marked so that it skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# Tolerances for comparing a fused kernel (float accumulation, one rounding) with the unfused
# reference (a rounding after every step) per dtype.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def assert_close_to_reference(actual, expected, *, seed=None, msg=""):
    """torch.testing.assert_close with the dtype's tolerance, comparing in float64."""
    tol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), **tol,
                               msg=lambda m: f"{msg} (seed {seed}): {m}")


def assert_same_state(a, b, where=""):
    """Recursive bit-equality of nested dicts / lists of tensors and plain values (state_dicts,
    optimizer states, metrics); ``where`` names the path of the first difference."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"
