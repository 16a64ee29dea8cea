"""Drop-in torch.nn modules built on fastladder's fused operators."""
from fastladder.nn.densenet import BNReluConv, DenseBlock, DenseLayer, Transition
from fastladder.nn.detection import DetectionPostprocess
from fastladder.nn.ladder_upsample import LadderUpsample
from fastladder.nn.normalize import Normalize
from fastladder.nn.spp import SpatialPyramidPooling
from fastladder.nn.ssd import L2Norm, SSDHead

__all__ = ["LadderUpsample", "DenseLayer", "DenseBlock", "Transition", "BNReluConv", "SpatialPyramidPooling",
           "DetectionPostprocess", "L2Norm", "SSDHead", "Normalize"]
