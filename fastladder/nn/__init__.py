"""Drop-in torch.nn modules built on fastladder's fused operators."""
from fastladder.nn.ladder_upsample import LadderUpsample

__all__ = ["LadderUpsample"]
from fastladder.nn.densenet import BNReluConv, DenseBlock, DenseLayer, Transition
from fastladder.nn.spp import SpatialPyramidPooling

__all__ += ["DenseLayer", "DenseBlock", "Transition", "BNReluConv", "SpatialPyramidPooling"]
