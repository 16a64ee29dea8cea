"""Training checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint of :class:`fastladder.train.loop.Trainer` is a dict with the keys

    model          the model's state_dict (no ``module.`` prefix of DistributedDataParallel)
    model_name     its name in the model registry (``fastladder.models.create_model``)
    model_kwargs   the keyword arguments it was built with (besides num_classes)
    num_classes    int
    optimizer, scheduler, scaler   their state_dicts (scaler None without float16 AMP)
    step, epoch    optimizer steps done, and the epoch the next step belongs to
    rng            {"torch", "cuda", "python", "numpy"} generator states (see :func:`rng_state`)
    config         the run's TrainConfig as a dict
    metrics        the last evaluation's metrics (floats; per-class lists)

so ``create_model(ckpt["model_name"], ckpt["num_classes"], **ckpt["model_kwargs"])`` followed by
``load_state_dict(ckpt["model"])`` restores the model. Every value is a tensor or a plain Python
type (numpy's RNG state is stored as a tensor), so the file loads with ``weights_only=True``.
"""
import os
import random
import tempfile
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "strip_prefix"]

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


def load_checkpoint(path: PathLike, map_location: Optional[Union[str, torch.device]] = "cpu",
                    weights_only: bool = True) -> Dict[str, Any]:
    """Reads a checkpoint written by :func:`save_checkpoint` (or any ``torch.save`` dict).

    Args:
        path: the file.
        map_location: where tensors go (``torch.load``'s argument); CPU by default.
        weights_only: only tensors and plain Python types (safe on files from elsewhere).

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file is not a readable checkpoint (truncated, corrupt, another format),
            naming the file and the underlying error.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        where = os.path.dirname(os.path.abspath(path))
        raise FileNotFoundError(f"checkpoint {path!r} does not exist (looked in {where})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as error:
        raise RuntimeError(f"checkpoint {path!r} ({os.path.getsize(path)} bytes) cannot be read: it is "
                           f"truncated, corrupt or not a torch checkpoint ({type(error).__name__}: "
                           f"{error})") from error
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {path!r} holds a {type(state).__name__}, expected a dict")
    return state


def strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    """The state_dict without ``prefix`` on its keys (DistributedDataParallel's ``module.``,
    torch.compile's ``_orig_mod.``); keys without it are kept as they are."""
    return {(key[len(prefix):] if key.startswith(prefix) else key): value
            for key, value in state_dict.items()}


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
