"""Drop-in torch.nn modules built on fastladder's fused operators."""
from fastladder.nn.ladder_upsample import LadderUpsample

__all__ = ["LadderUpsample"]
from fastladder.nn.detection import DetectionPostprocess  # noqa: E402

__all__ += ["DetectionPostprocess"]
