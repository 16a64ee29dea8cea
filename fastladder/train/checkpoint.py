"""Writing training checkpoints atomically; the random generator states they carry.

A checkpoint of :class:`fastladder.train.loop.Trainer` is a dict with the keys

    model          the model's state_dict (no ``module.`` prefix of DistributedDataParallel)
    meta           :class:`fastladder.models.ModelMeta` as a dict: model name, constructor kwargs,
                   num_classes, class names, task, dataset, input mean/std (RGB, 0–255 scale) and,
                   for SSD, the input size
    optimizer, scheduler, scaler   their state_dicts (scaler None without float16 AMP)
    step, epoch    optimizer steps done, and the epoch the next step belongs to
    rng            {"torch", "cuda", "python", "numpy"} generator states (see :func:`rng_state`)
    config         the run's TrainConfig as a dict
    metrics        the last evaluation's metrics (floats; per-class lists)
    best           {"metric", "value", "step"} of the best evaluation so far

:func:`fastladder.models.load_model` rebuilds the model from it, and
:func:`fastladder.models.read_checkpoint` is the reader (also of ``--resume``). Every value is a
tensor or a plain Python type (numpy's RNG state is stored as a tensor), so the file loads with
``weights_only=True``.
"""
import os
import random
import tempfile
from typing import Any, Dict, Union

import numpy as np
import torch

__all__ = ["save_checkpoint", "rng_state", "set_rng_state"]

PathLike = Union[str, os.PathLike]


def save_checkpoint(path: PathLike, **state: Any) -> str:
    """Writes ``state`` (a dict of tensors and plain Python values) to ``path`` atomically.

    The data goes to a temporary file in the same folder, which is flushed, fsync'ed and then
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows): a crash or an error at
    any point leaves either the previous file or the complete new one, never a truncated file.

    Returns:
        The path written, as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            if hasattr(os, "fchmod"):
                # mkstemp makes the file private (0600); give it the permissions open() would.
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    # The rename itself is durable only once the folder's entry is on disk.
    try:
        folder_handle = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms (Windows)
        return path
    try:
        os.fsync(folder_handle)
    except OSError:
        pass
    finally:
        os.close(folder_handle)
    return path


def rng_state() -> Dict[str, Any]:
    """The states of torch's CPU and CUDA generators, Python's ``random`` and numpy's global one.

    numpy's state is stored as tensors and ints so that the dict loads with ``weights_only=True``.
    """
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }


def set_rng_state(state: Dict[str, Any]):
    """Restores what :func:`rng_state` returned (CUDA states only where devices are present)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda_states)
    python = state["python"]
    # weights_only loading returns the nested tuples as lists; random.setstate needs tuples.
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
