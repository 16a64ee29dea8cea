"""Losses for fastladder's models."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastladder.data.labels import IGNORE_INDEX

__all__ = ["ladder_loss"]


def ladder_loss(outputs: Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]],
                target: torch.Tensor,
                ignore_index: int = IGNORE_INDEX, weights: Sequence[float] = (0.7, 0.3)) -> torch.Tensor:
    """The ladder DenseNet loss: 0.7 · CE(logits) + 0.3 · CE(aux_logits upsampled to full resolution).

    Args:
        outputs: what the model returns: ``(logits [N, C, H, W], aux_logits [N, C, h, w] or None)``
            in train mode, or plain logits. Without aux logits the loss is CE(logits) alone.
        target (Tensor[N, H, W] int64): class indices; ``ignore_index`` marks unlabelled pixels.
        ignore_index: the label that contributes nothing.
        weights: (main, aux) weights.

    Returns:
        The scalar mean loss over labelled pixels.
    """
    if isinstance(outputs, (tuple, list)):
        if len(outputs) != 2:
            raise ValueError(f"outputs must be logits or (logits, aux_logits), got a sequence of "
                             f"{len(outputs)}")
        logits, aux = outputs
    else:
        logits, aux = outputs, None
    if logits.dim() != 4 or target.dim() != 3 or target.shape != (logits.shape[0],) + tuple(logits.shape[2:]):
        raise ValueError(f"logits must be [N, C, H, W] and target [N, H, W] with the same N, H, W; got "
                         f"logits {tuple(logits.shape)} and target {tuple(target.shape)}")
    main = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if aux is None:
        return main
    if aux.dim() != 4 or aux.shape[:2] != logits.shape[:2]:
        raise ValueError(f"aux_logits must be [N, C, h, w] with logits' N and C; got {tuple(aux.shape)} "
                         f"and logits {tuple(logits.shape)}")
    aux = F.interpolate(aux, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return weights[0] * main + weights[1] * F.cross_entropy(aux, target, ignore_index=ignore_index)
