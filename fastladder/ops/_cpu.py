"""What this CPU can do for fastladder's kernels."""
from fastladder import _C, _extension  # noqa: F401  (_extension: loads _C, or explains why not)


def fast_bfloat16() -> bool:
    """Whether this CPU runs fastladder's bfloat16 kernels (:func:`~fastladder.ops.conv3x3_winograd`'s
    F(2×2, 3×3), :func:`~fastladder.ops.bn_relu_conv1x1`) at full speed: it has AVX512_BF16, whose dot
    products they multiply with. Elsewhere they compute the same sums on portable loops, much slower, and
    the inference modules keep oneDNN's bfloat16 convolutions."""
    return _C.fast_bfloat16()
