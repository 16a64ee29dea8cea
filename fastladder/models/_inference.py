"""optimize_for_inference: the eval fast path of fastladder models."""
import torch
import torch.nn as nn

__all__ = ["optimize_for_inference"]


def optimize_for_inference(model: nn.Module, example_input: torch.Tensor, *, compile: bool = False) -> nn.Module:
    """Puts model in eval mode, checks it on example_input and returns a callable for inference.

    The eval forward already folds BatchNorm into the fused operators and convolutions.
    With compile=True the model is also wrapped in torch.compile (warmed up on example_input).
    """
    model.eval()
    with torch.inference_mode():
        model(example_input)
    if compile:
        compiled = torch.compile(model)
        with torch.inference_mode():
            compiled(example_input)
        return compiled
    return model
