"""Training: losses, optimisation schedules, the training loop, checkpoints."""
from fastladder.train.checkpoint import save_checkpoint
from fastladder.train.config import TrainConfig
from fastladder.train.distributed import DistributedContext, init_distributed
from fastladder.train.loop import Task, Trainer, TrainingInterrupted, train
from fastladder.train.losses import ladder_loss
from fastladder.train.multibox import MultiBoxLoss, match_priors
from fastladder.train.optim import (PolyLR, WarmupCosineLR, WarmupStepLR, build_optimizer, build_scheduler,
                                    param_groups)
from fastladder.train.detection import DetectionTask
from fastladder.train.segmentation import SegmentationTask

__all__ = [
    "ladder_loss", "MultiBoxLoss", "match_priors", "TrainConfig", "Task", "Trainer", "train",
    "TrainingInterrupted", "SegmentationTask", "DetectionTask", "save_checkpoint", "param_groups",
    "build_optimizer", "build_scheduler",
    "PolyLR", "WarmupStepLR", "WarmupCosineLR", "DistributedContext", "init_distributed",
]
