"""Data-parallel training under ``torchrun``: process group, DDP wrapping, samplers, reductions.

    torchrun --nproc_per_node=2 -m fastladder.cli train seg --config ldn121.yaml

reads RANK, WORLD_SIZE and LOCAL_RANK from the environment (NCCL on CUDA, gloo on CPU). Without
them everything here degrades to the single-process case. Only rank 0 logs and saves.
"""
import dataclasses
import math
import os
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from fastladder.errors import ArgumentError

__all__ = ["DistributedContext", "init_distributed", "wrap_model", "unwrap_model", "all_reduce_sum",
           "broadcast_buffers", "EpochBatchSampler", "ShardSampler"]


@dataclasses.dataclass
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False  # this context created the process group (and destroys it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def close(self):
        """Destroys the process group if :func:`init_distributed` created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(device: Optional[str] = None) -> DistributedContext:
    """Joins the process group that torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) describes, or returns the single-process context.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; default CUDA when available. Under several
            processes on CUDA each takes the GPU ``LOCAL_RANK``.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} from the environment are inconsistent")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(f"device: {device} was asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    context = DistributedContext(rank, world_size, local_rank, device)
    if world_size > 1:
        context.backend = "nccl" if device.type == "cuda" else "gloo"
        if dist.is_initialized():
            if dist.get_world_size() != world_size or dist.get_rank() != rank:
                raise RuntimeError(f"a process group of size {dist.get_world_size()} (rank "
                                   f"{dist.get_rank()}) exists, but the environment says "
                                   f"WORLD_SIZE={world_size}, RANK={rank}")
        else:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                if name not in os.environ:
                    raise RuntimeError(f"WORLD_SIZE={world_size} but {name} is not set: start the run with "
                                       f"torchrun, or set MASTER_ADDR and MASTER_PORT")
            dist.init_process_group(context.backend, rank=rank, world_size=world_size,
                                    device_id=device if device.type == "cuda" else None)
            context.owns_group = True
    return context


def wrap_model(model: nn.Module, context: DistributedContext, sync_bn: bool = False,
               find_unused_parameters: bool = False) -> nn.Module:
    """The model on ``context.device``, in DistributedDataParallel when there are several processes.

    ``sync_bn`` turns nn.BatchNorm layers into SyncBatchNorm first (statistics over the global
    batch). The fused dense blocks of :mod:`fastladder.nn.densenet` compute their batch statistics
    themselves, so their BatchNorms stay per-process even then (a warning says so).
    """
    model = model.to(context.device)
    if not context.distributed:
        return model
    if sync_bn:
        from fastladder.nn.densenet import DenseBlock
        if any(isinstance(m, DenseBlock) for m in model.modules()):
            warnings.warn("sync_bn: the BatchNorms inside fastladder DenseBlocks compute their own batch "
                          "statistics and stay per-process; the other BatchNorms become SyncBatchNorm",
                          stacklevel=2)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(tensor: torch.Tensor, context: Optional[DistributedContext] = None) -> torch.Tensor:
    """Sums ``tensor`` over all processes in place (e.g. confusion matrices); identity in one process."""
    if (context is None or context.distributed) and dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(model: nn.Module, context: DistributedContext):
    """Copies rank 0's buffers (BatchNorm running statistics) to every process.

    DDP broadcasts them at the start of each training forward, so after the last step every
    process holds the statistics of its own last batch; evaluating then would mix statistics."""
    if context.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class EpochBatchSampler(Sampler):
    """Training batches whose order is a pure function of (seed, epoch): the resumable sampler.

    Each epoch shuffles ``range(dataset_size)`` with a generator seeded by ``seed + epoch`` (as
    DistributedSampler does), pads it by wrapping to a multiple of ``world_size``, takes every
    ``world_size``-th index from ``rank`` on, and cuts that into full batches (the remainder is
    dropped: a batch of one breaks BatchNorm). So a single process with batch ``world_size · b``
    sees, step by step, the union of what ``world_size`` processes with batch ``b`` see.

    Items are ``(epoch, index)`` pairs: :class:`SeededDataset` derives each sample's random
    augmentation from them, wherever (in whichever worker) the sample is loaded.

    ``set_epoch(epoch, skip_batches)`` selects the epoch that the next ``iter()`` yields and how
    many of its first batches to leave out (those done before a resume).
    """

    def __init__(self, dataset_size: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1):
        if dataset_size <= 0:
            raise ValueError(f"dataset_size must be positive, got {dataset_size}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.dataset_size, self.batch_size, self.seed, self.shuffle = dataset_size, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(dataset_size / world_size)
        if self.per_rank < batch_size:
            raise ValueError(f"the dataset has {dataset_size} samples, {self.per_rank} per process of "
                             f"{world_size}: fewer than one batch of {batch_size}")
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0):
        if not 0 <= skip_batches <= len(self):
            raise ValueError(f"skip_batches must be in [0, {len(self)}], got {skip_batches}")
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        """Batches per epoch (per process)."""
        return self.per_rank // self.batch_size

    def epoch_indices(self, epoch: int) -> List[int]:
        """This process's sample indices of an epoch, in order."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        indices = self.epoch_indices(self.epoch)
        for batch in range(self.skip_batches, len(self)):
            chunk = indices[batch * self.batch_size:(batch + 1) * self.batch_size]
            yield [(self.epoch, index) for index in chunk]


class ShardSampler(Sampler):
    """Evaluation indices of one process: ``range(dataset_size)[rank::world_size]``, no padding,
    so that per-process sums (confusion matrices) add up to exactly one pass over the dataset."""

    def __init__(self, dataset_size: int, rank: int = 0, world_size: int = 1):
        self.indices: Sequence[int] = range(rank, dataset_size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
