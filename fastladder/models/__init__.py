"""Model registry and models: DenseNet backbones, ladder-style DenseNets and SSD (timm-like files)."""
from fastladder.models._checkpoint import (ModelMeta, load_model, load_model_and_meta, read_checkpoint,
                                          read_state_dict, strip_wrapper_prefixes)
from fastladder.models._registry import create_model, list_models, register_model
from fastladder.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from fastladder.models.ladder_densenet import (LadderDenseNet, densenet121_32x, dilated8_densenet121,
                                               ladder_densenet121, ladder_densenet169)
from fastladder.models._inference import optimize_for_inference
from fastladder.models.ssd import SSD, ssd300_vgg16, ssd512_vgg16, ssd_priors

__all__ = [
    "create_model", "list_models", "register_model", "optimize_for_inference",
    "ModelMeta", "load_model", "load_model_and_meta", "read_checkpoint", "read_state_dict",
    "strip_wrapper_prefixes",
    "DenseNet", "densenet121", "densenet161", "densenet169", "densenet201",
    "LadderDenseNet", "ladder_densenet121", "ladder_densenet169", "densenet121_32x", "dilated8_densenet121",
    "SSD", "ssd300_vgg16", "ssd512_vgg16", "ssd_priors",
]
