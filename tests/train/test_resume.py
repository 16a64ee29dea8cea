"""Exact resume: N steps in one run give bit-identical weights and optimizer state to N/2 steps,
a stop, and a resumed run of N/2 more (with and without data-loading workers)."""
import csv

import pytest
import torch

from fastladder.errors import CheckpointError

from fastladder.models import read_checkpoint
from fastladder.testing import assert_same_state
from fastladder.train.loop import train

TOTAL_STEPS = 4  # 2 steps per epoch: the stop at 3 falls inside the second epoch


def _config(tiny, out, workers, **changes):
    config = dict(model="ladder_densenet121", model_kwargs=tiny.TINY_LADDER_KWARGS, crop_size=64,
                  batch_size=2, steps=TOTAL_STEPS, eval_every=None, log_every=1, workers=workers, lr=3e-3,
                  out=str(out), progress=False, seed=11)
    config.update(changes)
    return config


def _train_losses(path):
    with open(path, newline="") as f:
        return [(row["step"], row["loss"]) for row in csv.DictReader(f) if row["split"] == "train"]


def test_resume_is_bit_identical_with_and_without_workers(tiny, tmp_path):
    factory = tiny.tiny_factory(num_train=4, num_val=2)
    whole = train(_config(tiny, tmp_path / "whole", workers=0), dataset_factory=factory)
    assert whole["step"] == TOTAL_STEPS
    expected = read_checkpoint(whole["checkpoint"])
    expected_losses = _train_losses(tmp_path / "whole" / "log.csv")
    assert len(expected_losses) == TOTAL_STEPS

    # The data order and augmentation do not depend on the number of workers either: the split
    # runs with 2 workers must match the uninterrupted run without any.
    for workers in (0, 2):
        out = tmp_path / f"split{workers}"
        first = train(_config(tiny, out, workers, stop_at=3), dataset_factory=factory)
        assert first["step"] == 3
        stopped = read_checkpoint(first["checkpoint"])
        assert stopped["step"] == 3 and stopped["epoch"] == 1
        second = train(_config(tiny, out, workers, resume="last"), dataset_factory=factory)
        assert second["step"] == TOTAL_STEPS
        resumed = read_checkpoint(second["checkpoint"])
        for key in ("model", "optimizer", "scheduler", "step", "epoch", "metrics", "best"):
            assert_same_state(expected[key], resumed[key], f"workers={workers}: {key}")
        # training did happen after the resume
        assert not torch.equal(stopped["model"]["classifier.conv.weight"],
                               resumed["model"]["classifier.conv.weight"])
        assert _train_losses(out / "log.csv") == expected_losses


def test_resume_drops_log_rows_written_after_the_checkpoint(tiny, tmp_path):
    factory = tiny.tiny_factory(num_train=4, num_val=1)
    out = tmp_path / "run"
    train(_config(tiny, out, 0, steps=2, stop_at=1), dataset_factory=factory)
    with open(out / "log.csv", "a") as f:  # a crash after logging step 2 but before its checkpoint
        f.write("2,0,train,9.99,0.001,1.0,,\n")
    train(_config(tiny, out, 0, steps=2, resume=str(out / "last.pt")), dataset_factory=factory)
    steps = [int(step) for step, _ in _train_losses(out / "log.csv")]
    assert steps == [1, 2]
    assert "9.99" not in (out / "log.csv").read_text()


def test_resume_from_a_missing_checkpoint_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="last.pt: checkpoint file does not exist"):
        train(_config(tiny, tmp_path, 0, resume="last"), dataset_factory=tiny.tiny_factory())
