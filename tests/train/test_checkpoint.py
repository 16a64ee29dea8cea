"""fastladder.train.checkpoint: atomic writes, random generator states; the reader's errors on bad files."""
import os
import random

import numpy as np
import pytest
import torch

from fastladder.errors import CheckpointError
from fastladder.models import read_checkpoint
from fastladder.train import checkpoint as ckpt


def _state(generator):
    return {"model": {"weight": torch.randn(64, 32, generator=generator)}, "step": 7, "config": {"lr": 0.1},
            "metrics": {"miou": 0.5, "iou": [0.25, float("nan")]}}


def test_round_trip_loads_with_plain_weights_only_torch_load(tmp_path, generator):
    path = tmp_path / "run" / "last.pt"  # the folder is created
    state = _state(generator)
    assert ckpt.save_checkpoint(path, **state, rng=ckpt.rng_state()) == str(path)
    loaded = torch.load(path, weights_only=True)  # what an evaluation tool does with it
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["step"] == 7 and loaded["config"] == {"lr": 0.1}
    assert read_checkpoint(path)["metrics"]["iou"][0] == 0.25
    assert os.stat(path).st_mode & 0o044, "the checkpoint should be readable like any file open() creates"


def test_failure_while_pickling_leaves_the_old_file_intact(tmp_path, generator):
    path = tmp_path / "last.pt"
    old = _state(generator)
    ckpt.save_checkpoint(path, **old)
    before = path.read_bytes()
    # Pickling the lambda fails after torch.save has begun the file: a torch.save straight to
    # `path` would leave a broken half-kilobyte zip header in place of the checkpoint.
    with pytest.raises(Exception):
        ckpt.save_checkpoint(path, weight=torch.randn(256, 256, generator=generator), bad=lambda: 0)
    assert path.read_bytes() == before
    assert torch.equal(read_checkpoint(path)["model"]["weight"], old["model"]["weight"])
    assert sorted(os.listdir(tmp_path)) == ["last.pt"], "the temporary file must be removed"


def test_crash_before_the_rename_leaves_the_old_file_intact(tmp_path, generator, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, **_state(generator))
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_checkpoint(path, **_state(generator))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pt: checkpoint file does not exist"):
        read_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("damage, message", [("truncate", "is truncated"), ("empty", "is empty"),
                                             ("garbage", "is not a PyTorch checkpoint")])
def test_corrupt_file_is_a_clear_error(tmp_path, generator, damage, message):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, **_state(generator))
    data = path.read_bytes()
    damaged = {"truncate": data[:len(data) // 2], "garbage": bytes(range(256)) * 4, "empty": b""}
    path.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError, match=rf"last\.pt: {message}"):
        read_checkpoint(path)


def test_a_file_that_is_not_a_dict_is_rejected(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=r"tensor\.pt: is not a checkpoint \(holds a Tensor"):
        read_checkpoint(path)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path, seed):
    np.random.seed(seed % 2**32)
    state = ckpt.rng_state()
    expected = (torch.rand(5), random.random(), np.random.rand(3))
    ckpt.save_checkpoint(tmp_path / "rng.pt", rng=state)
    torch.rand(7), random.random(), np.random.rand(2)  # move every generator on
    ckpt.set_rng_state(read_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(5), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    np.testing.assert_array_equal(expected[2], again[2])
