"""The training loop: one :class:`Trainer` for every task (segmentation now, detection later).

A :class:`Task` says what to build (datasets, model), how to batch and what one training step and
one evaluation compute; the Trainer owns everything else: devices and processes, the optimizer and
schedule, mixed precision, progress bars, the CSV log and curves, evaluation and checkpoints.

Resuming is exact: training N steps in one go gives bit-identical weights and optimizer state to
training N/2 steps, stopping, and resuming for N/2 more (for any number of data-loading workers).
What makes it so:

* the order of the samples is a pure function of (seed, epoch) (:class:`EpochBatchSampler`), and
  a resumed epoch skips the batches already done;
* each sample's random augmentation is seeded from (seed, epoch, index) inside
  :class:`SeededDataset`, so it does not depend on which worker loads it, or when;
* the schedules are closed-form functions of the step; the model, optimizer, scheduler, grad
  scaler and the global random generators are restored from the checkpoint;
* the data loaders draw their worker seeds from their own generators, never the global one.
"""
import abc
import contextlib
import glob
import json
import math
import os
import random
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from fastladder.errors import ArgumentError, CheckpointError, DataError
from fastladder.train._log import CSVLog, plot_curves
from fastladder.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from fastladder.train.config import TrainConfig
from fastladder.train.distributed import (DistributedContext, EpochBatchSampler, ShardSampler, all_reduce_sum,
                                          broadcast_buffers, init_distributed, unwrap_model, wrap_model)
from fastladder.train.optim import build_optimizer, build_scheduler

__all__ = ["Task", "Runtime", "SeededDataset", "Trainer", "train", "sample_seed", "move_to_device", "TASKS",
           "TrainingInterrupted", "RUN_FILES"]

# task name -> "module:class", imported when used
TASKS = {"seg": "fastladder.train.segmentation:SegmentationTask",
         "det": "fastladder.train.detection:DetectionTask"}

# What a run writes into its folder (besides TensorBoard's events.out.tfevents.* files); --overwrite
# deletes these, and a folder holding anything but the synthetic data is refused without --resume.
RUN_FILES = ("config.json", "log.csv", "curves.png", "metrics.json", "last.pt", "best.pt")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint.

    Attributes:
        signal_name: "SIGINT" or "SIGTERM".
        exit_code: 128 + the signal number (130, 143), the shell's convention.
        checkpoint: the checkpoint written (resume with it), or None on processes that do not write.
        step: the optimizer steps done.
    """

    def __init__(self, signal_number: int, checkpoint: Optional[str], step: int):
        self.signal_name = signal.Signals(signal_number).name
        self.exit_code = 128 + int(signal_number)
        self.checkpoint, self.step = checkpoint, step
        where = f"saved {checkpoint}" if checkpoint else "checkpoint saved by the main process"
        super().__init__(f"interrupted by {self.signal_name} at step {step}: {where}; continue with --resume")



def move_to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Moves every tensor of a (nested list / tuple / dict) batch to ``device``; 4-D floating
    tensors (images) become channels_last when asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device, channels_last) for key, value in batch.items()}
    return batch


# --- tasks --------------------------------------------------------------------------------------

class Task(abc.ABC):
    """What a kind of training run builds and computes. Subclasses set the class attributes.

    Attributes:
        name: a short name (``seg``, ``det``).
        main_metric: the metric that selects the best checkpoint and is plotted.
        higher_is_better: whether a larger main metric is better.
        metric_names: the scalar metrics :meth:`evaluate` returns (columns of the CSV log).
    """

    name: str = "task"
    main_metric: str = "loss"
    higher_is_better: bool = True
    metric_names: Tuple[str, ...] = ()

    @abc.abstractmethod
    def build_datasets(self, config: TrainConfig) -> Tuple[Dataset, Optional[Dataset]]:
        """(training set, validation set or None). The training set's transforms may draw from
        torch's global random generator: :class:`SeededDataset` seeds it per sample."""

    @abc.abstractmethod
    def model_spec(self, config: TrainConfig, train_dataset: Dataset) -> Dict[str, Any]:
        """``{"model_name", "model_kwargs", "num_classes"}``: how to rebuild the model from the
        registry (also stored in checkpoints)."""

    def build_model(self, config: TrainConfig, spec: Dict[str, Any]) -> nn.Module:
        """The model from the registry (with ``config.backbone_weights`` in its backbone: a file, or
        "imagenet" for torchvision's ImageNet weights, see :mod:`fastladder.models.pretrained`)."""
        from fastladder.models import create_model
        from fastladder.models.pretrained import resolve_backbone_weights

        weights = resolve_backbone_weights(config.backbone_weights, spec["model_name"],
                                           progress=config.progress)
        return create_model(spec["model_name"], spec["num_classes"], backbone_weights=weights,
                            **spec["model_kwargs"])

    def model_meta(self, config: TrainConfig, spec: Dict[str, Any], model: nn.Module,
                   train_dataset: Dataset):
        """The :class:`fastladder.models.ModelMeta` stored in every checkpoint: the model as ``spec``
        builds it, the dataset's class names, and the normalization the data was given: the
        registry's for ``config.dataset`` (what the tasks' dataset builders apply) or, for a task
        built with its own ``dataset_factory`` whose training set is not the registry's class for
        ``config.dataset``, the training set's ``mean`` and ``std`` attributes (RGB, 0–255 scale) when
        it has them, else none (unknown)."""
        from fastladder.data.registry import dataset_info, list_datasets
        from fastladder.models import ModelMeta

        registered = config.dataset in list_datasets(self.name)
        # a factory may only reshape the registry's own data (the demo's image counts): the
        # registry's description still holds for it
        own_data = registered and isinstance(train_dataset,
                                             dataset_info(self.name, config.dataset).dataset_class)
        if getattr(self, "custom_data", False) and not own_data:
            dataset = None
            mean, std = getattr(train_dataset, "mean", None), getattr(train_dataset, "std", None)
        else:
            info = dataset_info(self.name, config.dataset)
            dataset, mean, std = config.dataset, info.mean, info.std
        class_names = getattr(self, "class_names", None)
        if class_names is not None and len(class_names) != spec["num_classes"]:
            class_names = None
        input_size = getattr(model, "image_size", None) if self.name == "det" else None
        return ModelMeta(spec["model_name"], int(spec["num_classes"]), dict(spec["model_kwargs"]),
                         task=self.name, dataset=dataset, class_names=class_names, mean=mean, std=std,
                         input_size=input_size)

    def check_sample(self, dataset: Dataset, index: int) -> None:
        """Reads sample ``index`` of the validation set once, before training, so that a bad file
        stops the run before any work is done (DataError naming the file). Default: the dataset's
        untransformed ``load(index)`` when it has one, else ``dataset[index]``."""
        load = getattr(dataset, "load", None)
        load(index) if callable(load) else dataset[index]

    def collate(self, samples: Sequence[Any]) -> Any:
        """Joins a list of samples into a batch (torch's default_collate)."""
        return default_collate(samples)

    def to_device(self, batch: Any, device: torch.device, channels_last: bool = False) -> Any:
        """The batch on ``device`` (see :func:`move_to_device`)."""
        return move_to_device(batch, device, channels_last)

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Any) -> Tuple[torch.Tensor, Dict[str, float]]:
        """(scalar loss to minimize, extra values to show in the progress bar). The model is in
        train mode and the batch is on the device; the Trainer runs this under autocast."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader: DataLoader, runtime: "Runtime") -> Dict[str, Any]:
        """Metrics over this process's share of the validation set, reduced over all processes
        with ``runtime.reduce_sum``. Must contain ``main_metric`` and ``metric_names``; may
        contain ``loss`` and tensors or lists (per-class values). The model is the bare model in
        eval mode, under torch.no_grad()."""


class Runtime:
    """What a task's evaluate needs from the Trainer: device, autocast, reductions, progress bars."""

    def __init__(self, context: DistributedContext, autocast_dtype: Optional[torch.dtype],
                 channels_last: bool, progress: bool, to_device: Callable):
        self.context, self.device = context, context.device
        self.autocast_dtype, self.channels_last, self.show_progress = autocast_dtype, channels_last, progress
        self._to_device = to_device

    def autocast(self):
        """The Trainer's mixed-precision context (a no-op without AMP)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, batch):
        return self._to_device(batch, self.device, self.channels_last)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums a tensor over all processes (in place; identity in one process)."""
        return all_reduce_sum(tensor, self.context)

    def progress(self, iterable: Iterable, desc: str, total: Optional[int] = None) -> Iterable:
        """A tqdm bar over ``iterable`` on the main process."""
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                    disable=not (self.show_progress and self.context.is_main))


# --- data ---------------------------------------------------------------------------------------

def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for the augmentation of sample ``index`` in ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0])


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is ``dataset[index]`` with torch's, Python's
    and numpy's global generators seeded from :func:`sample_seed` (seed, epoch, index).

    The generators' previous states are restored afterwards, so loading in the main process
    (``num_workers=0``) leaves the training's own random stream untouched.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Union[int, Tuple[int, int]]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = sample_seed(self.seed, epoch, index)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % 2**32)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# --- the trainer --------------------------------------------------------------------------------

def _plain(value):
    """Metrics as plain Python values (floats, lists, dicts) for JSON and weights_only checkpoints."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _json_safe(value):
    """NaN and infinities as None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


class Trainer:
    """Trains ``task`` as ``config`` says; :meth:`fit` runs it and returns a summary.

    Files written to ``config.out`` (by the main process): ``config.json``, ``log.csv``,
    ``curves.png``, ``metrics.json`` (the last evaluation), ``last.pt`` and ``best.pt``
    (checkpoints, see :mod:`fastladder.train.checkpoint`).

    After :meth:`fit`, ``model`` (possibly DDP-wrapped), ``optimizer``, ``scheduler`` and ``step``
    stay available.
    """

    def __init__(self, task: Task, config: TrainConfig, context: Optional[DistributedContext] = None):
        if not isinstance(config, TrainConfig):
            raise ArgumentError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.task, self.config, self.context = task, config, context
        self.model = self.optimizer = self.scheduler = None
        self.step = 0

    # --- setup ----------------------------------------------------------------------------------

    def _amp(self, device: torch.device) -> Tuple[Optional[torch.dtype], bool]:
        """(autocast dtype or None, whether a GradScaler is needed)."""
        config = self.config
        if not config.amp:
            return None, False
        name = config.amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
        dtype = getattr(torch, name)
        if device.type == "cpu" and dtype == torch.float16:
            raise ArgumentError("amp_dtype: float16 needs CUDA; on CPU use bfloat16")
        return dtype, dtype == torch.float16

    def _resume_path(self) -> Optional[str]:
        """The checkpoint to resume from: ``resume`` "last" is <out>/last.pt (which must exist),
        "auto" is <out>/last.pt when it exists (else a fresh start), anything else a path."""
        resume, out = self.config.resume, self.config.out
        last = os.path.join(out, "last.pt")
        if not resume:
            return None
        if resume == "auto":
            return last if os.path.isfile(last) else None
        path = last if resume == "last" else resume
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: checkpoint file does not exist (--resume)")
        return path

    def _prepare_run_folder(self, resume: Optional[str]):
        """Refuses a run folder holding earlier results unless the run resumes or overwrites them;
        --overwrite (and --resume auto in a folder without checkpoints) deletes those results,
        never the synthetic data kept there."""
        from fastladder.data.registry import SYNTHETIC_DATA_FOLDER

        out = self.config.out
        if not os.path.isdir(out):
            if os.path.exists(out):
                raise ArgumentError(f"out: {out} exists and is not a folder")
            return
        # config.json alone is what a run that failed before its first step leaves: no results
        entries = sorted(set(os.listdir(out)) - {SYNTHETIC_DATA_FOLDER, "config.json"})
        if not entries or resume is not None:
            return
        # "auto" in a folder without checkpoints: a run stopped before its first one, nothing to continue
        no_checkpoints = not any(name.endswith(".pt") for name in entries)
        if not (self.config.overwrite or (self.config.resume == "auto" and no_checkpoints)):
            shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
            raise ArgumentError(f"out: the run folder {out} is not empty ({shown}): continue that run with "
                                f"--resume (or --resume auto), replace it with --overwrite, or choose "
                                f"another --out")
        if self.context.is_main:
            for name in RUN_FILES:
                if os.path.isfile(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
            for path in glob.glob(os.path.join(out, "events.out.tfevents.*")):
                os.remove(path)

    def _setup(self):
        config, task = self.config, self.task
        self.context = context = self.context or init_distributed(config.device)
        self.main = context.is_main
        resume = self._resume_path()
        self._prepare_run_folder(resume)
        # every process has looked at the folder before the main one writes into it
        context.barrier()
        if self.main:
            os.makedirs(config.out, exist_ok=True)
            config.save(os.path.join(config.out, "config.json"))
        # The same seed on every process: identical initial weights (DDP also broadcasts rank 0's).
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)

        if context.device.type == "cuda":
            # Fixed crop sizes: let cuDNN pick the fastest convolution algorithms (not bit-reproducible).
            torch.backends.cudnn.benchmark = True

        self.train_dataset, self.val_dataset = task.build_datasets(config)
        self.spec = task.model_spec(config, self.train_dataset)
        model = task.build_model(config, self.spec)
        self.meta = task.model_meta(config, self.spec, model, self.train_dataset)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = wrap_model(model, context, sync_bn=config.sync_bn)
        self.bare_model = unwrap_model(self.model)

        self.sampler = EpochBatchSampler(len(self.train_dataset), config.batch_size, seed=config.seed,
                                         rank=context.rank, world_size=context.world_size)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = config.steps or config.epochs * self.steps_per_epoch
        self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.end_step = min(self.total_steps, config.stop_at) if config.stop_at else self.total_steps

        self.optimizer = build_optimizer(config, self.bare_model)
        self.scheduler = build_scheduler(config, self.optimizer, self.total_steps)
        self.autocast_dtype, use_scaler = self._amp(context.device)
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=use_scaler)
        self.runtime = Runtime(context, self.autocast_dtype, config.channels_last, config.progress,
                               task.to_device)

        workers = config.workers
        self.train_loader = DataLoader(
            SeededDataset(self.train_dataset, config.seed), batch_sampler=self.sampler, num_workers=workers,
            collate_fn=task.collate, pin_memory=context.device.type == "cuda", persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(config.seed))
        self.val_loader = None
        if self.val_dataset is not None:
            self.val_loader = DataLoader(
                self.val_dataset, batch_size=config.val_batch_size,
                sampler=ShardSampler(len(self.val_dataset), context.rank, context.world_size),
                num_workers=workers, collate_fn=task.collate, pin_memory=context.device.type == "cuda",
                generator=torch.Generator().manual_seed(config.seed))

        self.best = {"metric": task.main_metric, "value": None, "step": None}
        self.metrics: Dict[str, Any] = {}
        self.step = 0
        restored_rng = None
        if resume is not None:
            restored_rng = self._load(resume)
        self._check_val_data()
        self.log = self.writer = None
        if self.main:
            self.log = CSVLog(os.path.join(config.out, "log.csv"), task.metric_names,
                              resume_step=self.step if resume is not None else None)
            self.writer = _tensorboard_writer(config.out, self.step)
        self.seconds_before = self.log.last_seconds() if self.log is not None else 0.0
        if restored_rng is not None:
            # Last: nothing after this point may draw from the global generators before training does.
            set_rng_state(restored_rng)

    def _load(self, path: str):
        """Restores the state of a checkpoint; returns its random generator states."""
        from fastladder.models import read_checkpoint, strip_wrapper_prefixes
        from fastladder.models._state_dict import key_problems

        checkpoint = read_checkpoint(path, map_location="cpu")
        missing = [key for key in ("model", "optimizer", "scheduler", "step") if key not in checkpoint]
        if missing:
            raise CheckpointError(f"{path}: lacks {missing}: not a fastladder training checkpoint (--resume)")
        recorded = (checkpoint.get("meta") or {}).get("model_name", checkpoint.get("model_name"))
        if recorded not in (None, self.spec["model_name"]):
            raise CheckpointError(f"{path}: is a checkpoint of model {recorded!r}, this run trains "
                                  f"{self.spec['model_name']!r} (--resume)")
        state_dict = strip_wrapper_prefixes(checkpoint["model"])
        problems = key_problems(state_dict, self.bare_model.state_dict())
        if problems:
            raise CheckpointError(f"{path} does not fit this run's model {self.spec['model_name']!r} "
                                  f"(--resume): " + "; ".join(problems))
        self.bare_model.load_state_dict(state_dict)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = int(checkpoint["step"])
        self.metrics = checkpoint.get("metrics") or {}
        self.best = checkpoint.get("best") or self.best
        if self.main:
            epoch = self.step // self.steps_per_epoch + 1
            tqdm.write(f"resumed from {path} at step {self.step} (epoch {epoch})")
        return checkpoint.get("rng")

    # --- checkpoints and evaluation -------------------------------------------------------------

    def state(self) -> Dict[str, Any]:
        """The checkpoint dict (see :mod:`fastladder.train.checkpoint`)."""
        return {
            "model": self.bare_model.state_dict(),
            "meta": self.meta.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "best": self.best,
        }

    def _save(self, name: str) -> str:
        path = os.path.join(self.config.out, name)
        save_checkpoint(path, **self.state())
        return path

    def evaluate(self) -> Dict[str, Any]:
        """Runs the task's evaluation on the validation set (all processes take part)."""
        model = self.bare_model
        broadcast_buffers(model, self.context)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(model, self.val_loader, self.runtime)
        finally:
            model.train(was_training)
        missing = [name for name in (self.task.main_metric, *self.task.metric_names) if name not in metrics]
        if missing:
            raise RuntimeError(f"{type(self.task).__name__}.evaluate did not return {missing}; it returned "
                               f"{sorted(metrics)}")
        return _plain(metrics)

    def _improved(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        best = self.best["value"]
        if best is None:
            return True
        return value > best if self.task.higher_is_better else value < best

    def _after_evaluation(self, epoch: int, seconds: float):
        metrics, task, config = self.metrics, self.task, self.config
        self.log.write(step=self.step, epoch=epoch, split="val", loss=metrics.get("loss"), lr=None,
                       seconds=seconds, **{name: metrics[name] for name in task.metric_names})
        if self.writer is not None:
            for name in ("loss", *task.metric_names):
                if isinstance(metrics.get(name), (int, float)):
                    self.writer.add_scalar(f"val/{name}", metrics[name], self.step)
            self.writer.flush()
        with open(os.path.join(config.out, "metrics.json"), "w") as f:
            record = {"step": self.step, "epoch": epoch, "metrics": metrics, "best": self.best}
            json.dump(_json_safe(record), f, indent=2)
        plot_curves(self.log.rows, os.path.join(config.out, "curves.png"), task.main_metric,
                    title=f"{self.spec['model_name']} on {config.dataset}",
                    higher_is_better=task.higher_is_better)
        summary = ", ".join(f"{name} {metrics[name]:.4f}" for name in task.metric_names
                            if isinstance(metrics.get(name), float))
        tqdm.write(f"step {self.step}/{self.total_steps} (epoch {epoch + 1}): {summary}")

    # --- training -------------------------------------------------------------------------------

    def _backward_and_step(self, loss: torch.Tensor):
        config = self.config
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if config.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def fit(self) -> Dict[str, Any]:
        """Trains from the current (or resumed) step up to ``total_steps`` (or ``stop_at``).

        Once training has begun, SIGINT (Ctrl-C) and SIGTERM end the run after the current step:
        last.pt is saved and :class:`TrainingInterrupted` is raised (resume with ``resume="last"``).
        Before (while data is generated or checked) they act as usual: there is nothing to save.

        Returns:
            ``{"step", "total_steps", "loss" (the last logged training loss), "metrics" (the last
            evaluation), "best" ({"metric", "value", "step"}), "out", "checkpoint", "best_checkpoint",
            "log", "curves", "seconds"}`` (paths None where nothing was written).
        """
        self._stop_signal: Optional[int] = None
        try:
            self._setup()
            with self._signals_handled():
                return self._fit()
        finally:
            if getattr(self, "writer", None) is not None:
                self.writer.close()

    @contextlib.contextmanager
    def _signals_handled(self):
        """SIGINT and SIGTERM set a flag that the loop reads after each step (a second signal acts
        as usual: Ctrl-C twice forces the exit). Only the main thread can install handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(number, frame):
            self._stop_signal = number
            for restored, action in previous.items():
                signal.signal(restored, action)

        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, handler)
        try:
            yield
        finally:
            for number, action in previous.items():
                signal.signal(number, action)

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop, on any process: they all stop after the same step (a
        process that went on alone would wait forever in the next step's gradient reduction)."""
        if not self.context.distributed:
            return self._stop_signal is not None
        flags = torch.zeros(2, dtype=torch.int64, device=self.context.device)
        if self._stop_signal is not None:
            flags[0], flags[1] = 1, int(self._stop_signal)
        self.runtime.reduce_sum(flags)
        if flags[0] > 0 and self._stop_signal is None:
            self._stop_signal = int(flags[1] // flags[0])  # the signal the others received
        return bool(flags[0] > 0)

    def _interrupted(self) -> TrainingInterrupted:
        path = self._save("last.pt") if self.main else None
        self.context.close()
        if self.main:
            tqdm.write(f"interrupted by {signal.Signals(self._stop_signal).name} at step {self.step}: "
                       f"saved {path}")
        return TrainingInterrupted(self._stop_signal, path, self.step)

    def _check_val_data(self):
        """Reads every validation sample of this process once (DataError naming the file at the
        first bad one), so that bad data stops the run before the first step, not at its first
        evaluation."""
        dataset = self.val_dataset
        if dataset is None:
            return
        indices = list(ShardSampler(len(dataset), self.context.rank, self.context.world_size))
        checker = _SampleChecker(self.task, dataset)
        loader = DataLoader(checker, sampler=indices, batch_size=None, num_workers=self.config.workers,
                            collate_fn=_identity)
        for problem in self.runtime.progress(loader, desc="checking val data", total=len(indices)):
            if problem is not None:
                raise DataError(problem)

    def _fit(self) -> Dict[str, Any]:
        config, context = self.config, self.context
        started = time.perf_counter()
        # the summed loss and the number of steps since the last logged training row
        self._window = [torch.zeros((), dtype=torch.float64, device=context.device), 0]
        self._last_loss = None
        paths = {"checkpoint": None, "best_checkpoint": None}
        try:
            while self.step < self.end_step and self._stop_signal is None:
                epoch, done = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch, done)
                batches = min(self.steps_per_epoch - done, self.end_step - self.step)
                bar = tqdm(total=batches, desc=f"epoch {epoch + 1}/{self.num_epochs}", dynamic_ncols=True,
                           disable=not (config.progress and self.main))
                self.model.train()
                try:
                    for batch in self.train_loader:
                        self._train_step(batch, epoch, bar, paths, started)
                        if self.step >= self.end_step or self._stop_requested():
                            break
                except Exception:
                    # a signal also reaches the data-loading workers, which may die of it first
                    if self._stop_signal is None:
                        raise
                bar.close()
            if self._stop_signal is not None and self.step < self.end_step:
                raise self._interrupted()
            # The main process may still be writing its last checkpoint; no process leaves before it.
            context.barrier()
        finally:
            # (no barrier on an error: the failing process exits and the launcher stops the others)
            context.close()
        out = config.out
        best_path = os.path.join(out, "best.pt")
        last_path = os.path.join(out, "last.pt")
        curves_path = os.path.join(out, "curves.png")
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self._last_loss,
            "metrics": self.metrics,
            "best": self.best,
            "out": out,
            "checkpoint": paths["checkpoint"] or (last_path if os.path.isfile(last_path) else None),
            "best_checkpoint": paths["best_checkpoint"] or (best_path if os.path.isfile(best_path) else None),
            "log": os.path.join(out, "log.csv") if self.main else None,
            "curves": curves_path if os.path.isfile(curves_path) else None,
            "seconds": self.seconds_before + time.perf_counter() - started,
        }

    def _train_step(self, batch, epoch: int, bar, paths: Dict[str, Optional[str]], started: float):
        """One optimizer step, then the logging, evaluation and checkpoints due after it."""
        config, task, context = self.config, self.task, self.context
        batch = task.to_device(batch, context.device, config.channels_last)
        lr = max(group["lr"] for group in self.optimizer.param_groups)
        with self.runtime.autocast():
            loss, extra = task.training_step(self.model, batch)
        self._backward_and_step(loss)
        self.step += 1
        self._window[0] += loss.detach().double()
        self._window[1] += 1
        bar.update(1)
        end_of_epoch = self.step % self.steps_per_epoch == 0
        seconds = self.seconds_before + time.perf_counter() - started
        if self.step % config.log_every == 0 or self.step == self.end_step or end_of_epoch:
            self._last_loss = self._log_training(*self._window, epoch, lr, seconds, bar, extra)
            self._window = [torch.zeros_like(self._window[0]), 0]
        evaluate = self.val_loader is not None and (
            (config.eval_every is not None and self.step % config.eval_every == 0)
            or (config.eval_every is None and end_of_epoch) or self.step == self.total_steps)
        if evaluate:
            if self.main:
                # an evaluation that fails (or is killed) must not cost the training done so far
                paths["checkpoint"] = self._save("last.pt")
            self.metrics = self.evaluate()
            value = self.metrics[task.main_metric]
            if self._improved(value):
                self.best = {"metric": task.main_metric, "value": value, "step": self.step}
                if self.main:
                    paths["best_checkpoint"] = self._save("best.pt")
            if self.main:
                self._after_evaluation(epoch, seconds)
        every = config.checkpoint_every
        periodic = every is not None and self.step % every == 0
        if self.main and (evaluate or periodic or self.step == self.end_step):
            paths["checkpoint"] = self._save("last.pt")

    def _log_training(self, window_loss, window_steps, epoch, lr, seconds, bar, extra) -> float:
        """Logs the mean loss of the last steps (over all processes) and the lr of the last step
        (the largest group's: the head's); returns the loss."""
        reduced = self.runtime.reduce_sum(window_loss.clone()) / (window_steps * self.context.world_size)
        loss = reduced.item()
        if not math.isfinite(loss) and not self.scaler.is_enabled():
            raise FloatingPointError(f"the training loss is {loss} at step {self.step} (epoch {epoch + 1}); "
                                     f"lower the lr ({self.config.lr}) or enable clip_grad_norm")
        if self.main:
            self.log.write(step=self.step, epoch=epoch, split="train", loss=loss, lr=lr, seconds=seconds)
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, self.step)
                self.writer.add_scalar("train/lr", lr, self.step)
            postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.3g}"}
            postfix.update({key: f"{float(value):.4g}" for key, value in (extra or {}).items()})
            bar.set_postfix(postfix)
        return loss


def _identity(item):
    return item


class _SampleChecker(Dataset):
    """Item i: None when the task's ``check_sample`` reads sample i, else the one-line problem
    (returned, not raised, so that it crosses from a data-loading worker as it is)."""

    def __init__(self, task: Task, dataset: Dataset):
        self.task, self.dataset = task, dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[str]:
        try:
            self.task.check_sample(self.dataset, index)
        except (ValueError, OSError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            return f"validation sample {index}: {message}" if not isinstance(error, DataError) else message
        return None


def _tensorboard_writer(out: str, step: int):
    """A TensorBoard SummaryWriter writing into ``out`` (beside log.csv), or None when the
    ``tensorboard`` package is not installed. A resumed run (``step`` > 0) drops the events after
    ``step`` that the interrupted run had written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=out, purge_step=step if step > 0 else None)


# --- entry point --------------------------------------------------------------------------------

def _task_from_name(name: str, **kwargs) -> Task:
    if name not in TASKS:
        raise ArgumentError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    import importlib
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


def train(config: Union[TrainConfig, Dict[str, Any], str], *, task: Optional[Task] = None,
          dataset_factory: Optional[Callable] = None) -> Dict[str, Any]:
    """Runs a training and returns its summary (see :meth:`Trainer.fit`).

    Args:
        config: a TrainConfig, a dict of its fields, or a YAML/JSON file.
        task: the task object; default the one ``config.task`` names.
        dataset_factory: ``factory(config, split) -> dataset`` (``split`` ``"train"`` or ``"val"``)
            instead of the datasets ``config.dataset`` names (tests, custom data).
    """
    if isinstance(config, str):
        config = TrainConfig.from_file(config)
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if task is None:
        task_kwargs = {"dataset_factory": dataset_factory} if dataset_factory is not None else {}
        task = _task_from_name(config.task, **task_kwargs)
    elif dataset_factory is not None:
        raise ArgumentError("pass dataset_factory to the task's constructor when giving a task")
    return Trainer(task, config).fit()
