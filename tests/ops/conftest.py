"""Fixtures of the operator tests."""
import pytest

from fastladder import _C


@pytest.fixture(params=[False, True], ids=["dispatched", "portable"])
def bfloat16_loops(request):
    """bfloat16 on the AVX512_BF16 kernels where the CPU has them, and on the portable loops that other
    CPUs run."""
    _C._force_portable_bfloat16(request.param)
    yield
    _C._force_portable_bfloat16(False)
