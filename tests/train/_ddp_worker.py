"""One process of a torchrun-like launch for test_distributed.py (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT come from the environment).

    python _ddp_worker.py OUT BATCH_SIZE STEPS

trains a tiny convolutional network without BatchNorm (per-process batch statistics would make a
DDP step differ from one step on the joined batch) and saves its weights as OUT/rank{RANK}.pt.
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tiny import tiny_factory  # noqa: E402

from fastladder.models import register_model  # noqa: E402
from fastladder.train.config import TrainConfig  # noqa: E402
from fastladder.train.distributed import unwrap_model  # noqa: E402
from fastladder.train.loop import Trainer  # noqa: E402
from fastladder.train.segmentation import SegmentationTask  # noqa: E402


class TinyConvNet(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model
def tiny_convnet(num_classes: int = 3, backbone_weights=None) -> TinyConvNet:
    return TinyConvNet(num_classes)


def main(out: str, batch_size: int, steps: int):
    config = TrainConfig(model="tiny_convnet", batch_size=batch_size, steps=steps, optimizer="sgd", lr=0.5,
                         momentum=0.9, eval_every=steps, log_every=1, workers=0, out=out, progress=False,
                         seed=3, device="cpu")
    trainer = Trainer(SegmentationTask(tiny_factory(num_train=8, num_val=3, size=(16, 16))), config)
    summary = trainer.fit()
    rank = os.environ.get("RANK", "0")
    torch.save(unwrap_model(trainer.model).state_dict(), os.path.join(out, f"rank{rank}.pt"))
    assert summary["step"] == steps


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
