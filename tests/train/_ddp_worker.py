"""One process of a torchrun-like launch for test_distributed.py (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT come from the environment).

    python _ddp_worker.py OUT BATCH_SIZE STEPS [train|syncbn]

train: the Trainer on a tiny convolutional network without BatchNorm (per-process batch statistics
would make a DDP step differ from one step on the joined batch); saves its weights as OUT/rank{RANK}.pt.
syncbn: wrap_model(sync_bn=True) around two fused DenseBlocks (BatchNorm inside, one memory-efficient
with a split), SGD steps on this process's share of a fixed batch of 4; saves the first step's outputs
and gradients and the final state (weights and running statistics) as OUT/rank{RANK}.pt.
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tiny import tiny_factory  # noqa: E402

from fastladder.models import register_model  # noqa: E402
from fastladder.train.config import TrainConfig  # noqa: E402
from fastladder.nn.densenet import DenseBlock  # noqa: E402
from fastladder.train.distributed import init_distributed, unwrap_model, wrap_model  # noqa: E402
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


class TinyDenseNet(nn.Module):
    """conv → DenseBlock → DenseBlock (memory-efficient, 2×2 pool after its first layer) → 1×1 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block1 = DenseBlock(2, 4, growth_rate=4, bn_size=2)
        self.block2 = DenseBlock(2, 12, growth_rate=4, bn_size=2, memory_efficient=True, split=1)
        self.head = nn.Conv2d(20, 2, 1)

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x)))[1])  # a split block: (before, after)


def sync_bn_steps(out: str, batch_size: int, steps: int):
    context = init_distributed("cpu")
    torch.manual_seed(0)  # the same initial weights and data in every process
    model = wrap_model(TinyDenseNet(), context, sync_bn=True)
    images = torch.randn(4, 3, 8, 8) * 2 + 0.5
    targets = torch.randn(4, 2, 4, 4)
    share = slice(context.rank * batch_size, (context.rank + 1) * batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    saved = {}
    for step in range(steps):
        optimizer.zero_grad()
        output = model(images[share])
        loss = (output - targets[share]).square().mean()  # DDP averages: the joined batch's mean
        loss.backward()
        if step == 0:
            saved["output"] = output.detach()
            parameters = unwrap_model(model).named_parameters()
            saved.update({f"grad.{name}": p.grad.clone() for name, p in parameters})
        optimizer.step()
    saved.update({f"state.{name}": value for name, value in unwrap_model(model).state_dict().items()})
    os.makedirs(out, exist_ok=True)
    torch.save(saved, os.path.join(out, f"rank{context.rank}.pt"))
    context.close()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode = sys.argv[4] if len(sys.argv) > 4 else "train"
    (sync_bn_steps if mode == "syncbn" else main)(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
