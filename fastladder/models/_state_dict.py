"""Loading weights into a model: one check of keys and shapes, whose error lists every problem."""
from typing import Callable, Iterable, List, Mapping

import torch

__all__ = ["key_problems", "copy_into", "listing"]


def listing(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    text = ", ".join(keys[:limit])
    return text + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def key_problems(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                 optional: Callable[[str], bool] = lambda key: False) -> List[str]:
    """What keeps ``source`` (the weights) from loading into ``target`` (the model's state_dict):
    missing keys (but those ``optional`` accepts), unexpected keys, shape mismatches; [] if none."""
    missing = [k for k in target if k not in source and not optional(k)]
    unexpected = [k for k in source if k not in target]
    mismatched = [f"{k}: weights {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in target if k in source and tuple(source[k].shape) != tuple(target[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {listing(mismatched)}")
    return problems


def copy_into(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> None:
    """Copies every tensor of ``source`` into the tensor of the same key in ``target`` (a state_dict
    shares storage with its model)."""
    with torch.no_grad():
        for key, value in source.items():
            target[key].copy_(value)
