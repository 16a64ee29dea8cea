"""Model registry and models: DenseNet backbones and ladder-style DenseNets (timm-like files)."""
from fastladder.models._registry import create_model, list_models, register_model
from fastladder.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from fastladder.models.ladder_densenet import (LadderDenseNet, densenet121_32x, dilated8_densenet121,
                                               ladder_densenet121, ladder_densenet169)
from fastladder.models._inference import optimize_for_inference

__all__ = [
    "create_model", "list_models", "register_model", "optimize_for_inference",
    "DenseNet", "densenet121", "densenet161", "densenet169", "densenet201",
    "LadderDenseNet", "ladder_densenet121", "ladder_densenet169", "densenet121_32x", "dilated8_densenet121",
]
