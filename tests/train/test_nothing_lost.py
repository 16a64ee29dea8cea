"""Nothing lost: run folders are not overwritten, bad val data stops the run before its first step,
last.pt is written before each evaluation, and SIGINT / SIGTERM / SIGKILL then --resume end exactly
where an uninterrupted run ends."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from PIL import Image

from fastladder import cli
from fastladder.data import SyntheticScenes
from fastladder.errors import ArgumentError, DataError
from fastladder.models import read_checkpoint
from fastladder.testing import assert_same_state
from fastladder.train.loop import TrainingInterrupted, train
from fastladder.train.segmentation import SegmentationTask



def _config(tiny, out, **changes):
    config = dict(model="ladder_densenet121", model_kwargs=tiny.TINY_LADDER_KWARGS, crop_size=64,
                  batch_size=2, steps=2, eval_every=None, log_every=1, workers=0, lr=1e-2, out=str(out),
                  progress=False)
    config.update(changes)
    return config


def test_a_run_folder_with_results_is_refused_unless_resume_or_overwrite(tiny, tmp_path, capsys):
    factory = tiny.tiny_factory(num_train=4, num_val=1, size=(64, 64))
    out = tmp_path / "run"
    train(_config(tiny, out), dataset_factory=factory)
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt", "log.csv")}
    with pytest.raises(ArgumentError, match=f"out: the run folder {out} is not empty .*--overwrite"):
        train(_config(tiny, out, lr=5e-3), dataset_factory=factory)
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing touched
    # the command says the same in one line, exit code 2
    argv = ["train", "seg", "--dataset", "synthetic", "--out", str(out), "--steps", "1", "--no-progress"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is not empty" in error and "Traceback" not in error
    # --overwrite starts over (the old results go), --resume auto continues the finished run
    summary = train(_config(tiny, out, steps=1, overwrite=True), dataset_factory=factory)
    assert summary["step"] == 1 and read_checkpoint(out / "last.pt")["step"] == 1
    assert "\n2," not in (out / "log.csv").read_text()  # the old run's rows are gone
    resumed = train(_config(tiny, out, steps=1, resume="auto"), dataset_factory=factory)
    assert resumed["step"] == 1
    # --resume auto in an empty folder, or in one without checkpoints (a run stopped before its first
    # one), starts a new run
    fresh = train(_config(tiny, tmp_path / "fresh", steps=1, resume="auto"), dataset_factory=factory)
    assert fresh["step"] == 1
    (tmp_path / "fresh" / "last.pt").unlink()
    with pytest.raises(ArgumentError, match="is not empty"):  # best.pt is still there
        train(_config(tiny, tmp_path / "fresh", steps=1, resume="auto"), dataset_factory=factory)
    (tmp_path / "fresh" / "best.pt").unlink()
    again = train(_config(tiny, tmp_path / "fresh", steps=1, resume="auto"), dataset_factory=factory)
    assert again["step"] == 1 and (tmp_path / "fresh" / "log.csv").read_text().count("train") == 1


def test_bad_val_data_stops_the_run_before_the_first_step(tmp_path):
    root = tmp_path / "data"
    scenes = {"num_images": 3, "size": [64, 128]}
    SyntheticScenes(root, "train", **scenes)
    broken_image, broken_label = SyntheticScenes(root, "val", **scenes).files[1]
    good_image, good_label = broken_image.read_bytes(), broken_label.read_bytes()
    config = dict(dataset="synthetic", root=str(root), dataset_kwargs=scenes, crop_size=64, batch_size=2,
                  steps=2, workers=0, out=str(tmp_path / "run"), progress=False,
                  model_kwargs={"growth_rate": 4, "block_config": [1, 1, 1, 2], "num_init_features": 8,
                                "context_channels": 16, "upsample_channels": 8})
    broken_image.write_bytes(good_image[:200])  # a truncated PNG
    with pytest.raises(DataError, match=f"^{broken_image}: cannot read the image"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "log.csv").exists()
    broken_image.write_bytes(good_image)
    # a label map of another size than its image; label values that are not Cityscapes label ids
    Image.new("L", (10, 10), 7).save(broken_label)
    with pytest.raises(DataError, match=f"is 128x64 \\(WxH\\) but its label {broken_label} is 10x10"):
        train(config)
    Image.new("L", (128, 64), 200).save(broken_label)
    with pytest.raises(DataError, match=f"{broken_label}: values \\[200\\] are not Cityscapes label ids"):
        train(config)
    # with the files repaired, the same command runs (a folder holding only config.json has no results)
    broken_label.write_bytes(good_label)
    meta = read_checkpoint(train(config)["checkpoint"])["meta"]
    assert meta["dataset"] == "synthetic" and meta["mean"] == [75.2, 85.0, 75.1]  # Cityscapes' statistics


class _FailingEvaluation(SegmentationTask):
    def evaluate(self, model, loader, runtime):
        raise RuntimeError("the evaluation crashed")


def test_last_checkpoint_is_written_before_each_evaluation(tiny, tmp_path):
    out = tmp_path / "run"
    task = _FailingEvaluation(tiny.tiny_factory(num_train=4, num_val=1, size=(64, 64)))
    with pytest.raises(RuntimeError, match="the evaluation crashed"):
        train(_config(tiny, out, steps=4, eval_every=3), task=task)
    assert read_checkpoint(out / "last.pt")["step"] == 3


@pytest.mark.parametrize("signal_number, exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_the_python_api_saves_and_raises(tiny, tmp_path, signal_number, exit_code):
    class InterruptAtStep3:
        """A training set that signals this process while the third batch is loaded."""

        def __init__(self, dataset):
            self.dataset, self.calls = dataset, 0
            self.num_classes, self.class_names = dataset.num_classes, dataset.class_names

        def __len__(self):
            return len(self.dataset)

        def __getitem__(self, index):
            self.calls += 1
            if self.calls == 5:  # batch size 2: the first sample of step 3
                os.kill(os.getpid(), signal_number)
            return self.dataset[index]

    base = tiny.tiny_factory(num_train=8, num_val=1, size=(64, 64))

    def factory(config, split):
        dataset = base(config, split)
        return InterruptAtStep3(dataset) if split == "train" else dataset

    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as raised:
        train(_config(tiny, out, steps=6), dataset_factory=factory)
    # the signal arrives while step 3's batch is loaded: the run stops after that step
    assert raised.value.exit_code == exit_code and raised.value.step == 3
    assert raised.value.checkpoint == str(out / "last.pt") and read_checkpoint(out / "last.pt")["step"] == 3
    # the handlers are restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# --- interrupted in a subprocess, the way users stop a run ----------------------------------------

CONFIG = {"dataset": "synthetic", "dataset_kwargs": {"num_images": 6, "size": [64, 128]}, "crop_size": 64,
          "model_kwargs": {"growth_rate": 4, "block_config": [1, 1, 1, 2], "num_init_features": 8,
                           "context_channels": 16, "upsample_channels": 8},
          "batch_size": 2, "steps": 1000, "stop_at": 16, "eval_every": 8, "checkpoint_every": 2,
          "log_every": 1, "workers": 0, "lr": 3e-3, "seed": 3, "progress": False}


def _start(config_path, out, *extra):
    command = [sys.executable, "-m", "fastladder.cli", "train", "seg", "--config", str(config_path), "--out",
               str(out), *extra]
    # run outside the source folder: `python -m` puts the working folder first on sys.path, and the
    # source folder's fastladder has no compiled extension when the package is installed (CI)
    return subprocess.Popen(command, cwd=os.path.dirname(os.path.abspath(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_step(out, process, step, timeout=120.0):
    """Polls log.csv until it shows a training row at ``step`` or later."""
    log = out / "log.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {process.communicate()}")
        if log.is_file():
            rows = log.read_text().splitlines()[1:]
            steps = [int(line.split(",")[0]) for line in rows if line.count(",") > 3]
            if steps and max(steps) >= step:
                return
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within {timeout} s")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The synthetic data, the config file and the last checkpoint of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = {**CONFIG, "root": str(folder / "data")}
    for split in ("train", "val"):
        SyntheticScenes(folder / "data", split, **config["dataset_kwargs"])
    config_path = folder / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    return config_path, read_checkpoint(train({**config, "out": str(folder / "whole")})["checkpoint"])


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGKILL])
def test_killed_then_resumed_run_is_bit_identical(tmp_path, uninterrupted, signal_number):
    config_path, expected = uninterrupted
    out = tmp_path / "interrupted"
    process = _start(config_path, out)
    _wait_for_step(out, process, 5)
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=120)
    if signal_number == signal.SIGINT:
        assert process.returncode == 130, stderr
        assert f"saved {out / 'last.pt'}" in stderr and "Traceback" not in stderr
    else:
        assert process.returncode == -signal.SIGKILL
    interrupted_at = read_checkpoint(out / "last.pt")["step"]
    assert 4 <= interrupted_at < CONFIG["stop_at"]

    process = _start(config_path, out, "--resume")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    resumed = read_checkpoint(out / "last.pt")
    for key in ("model", "optimizer", "scheduler", "step", "epoch", "metrics", "best"):
        assert_same_state(expected[key], resumed[key], key)
    key = "classifier.conv.weight"
    assert torch.equal(expected["model"][key], resumed["model"][key])
