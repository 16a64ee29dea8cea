"""fastladder's operators (torch.ops.fastladder.*), with checks, fake kernels and autograd."""
from fastladder.ops.bn_relu import bn_relu, fold_batch_norm
from fastladder.ops.upsample import ladder_blend, upsample_concat

__all__ = ["upsample_concat", "ladder_blend", "bn_relu", "fold_batch_norm"]
