"""Drop-in torch.nn modules built on fastladder's fused operators."""
from fastladder.nn.densenet import BNReluConv, DenseBlock, DenseLayer, Transition
from fastladder.nn.detection import DetectionPostprocess
from fastladder.nn.inference import (FoldedBNReluConv, FoldedConv2d, FoldedDenseBlock, FoldedDenseLayer,
                                     FoldedLadderUpsample, FoldedTransition, fuse_for_inference)
from fastladder.nn.ladder_upsample import LadderUpsample
from fastladder.nn.normalize import Normalize
from fastladder.nn.spp import SpatialPyramidPooling
from fastladder.nn.ssd import L2Norm, SSDHead

__all__ = ["LadderUpsample", "DenseLayer", "DenseBlock", "Transition", "BNReluConv", "SpatialPyramidPooling",
           "DetectionPostprocess", "L2Norm", "SSDHead", "Normalize", "fuse_for_inference", "FoldedConv2d",
           "FoldedBNReluConv", "FoldedDenseLayer", "FoldedDenseBlock", "FoldedTransition",
           "FoldedLadderUpsample"]
