"""Data-parallel training on gloo: two processes launched as torchrun would (environment variables)."""
import json
import os
import site
import socket
import subprocess
import sys

import pytest
import torch

import fastladder
from fastladder.train.distributed import EpochBatchSampler, ShardSampler, init_distributed

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ddp_worker.py")
STEPS = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out, world_size: int, batch_size: int, mode: str = "train"):
    """Starts world_size worker processes with torchrun's environment."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastladder.__file__)))
    # The workers import the fastladder this test imported. An installed one they find by themselves:
    # putting site-packages on PYTHONPATH would put it before the standard library (and a stray
    # backport there, like the `typing` that cityscapesScripts pulls in, would shadow it).
    paths = [os.environ.get("PYTHONPATH", "")]
    if root not in site.getsitepackages():
        paths.insert(0, root)
    port = _free_port()
    processes = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join(paths))
        command = [sys.executable, WORKER, str(out), str(batch_size), str(STEPS), mode]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True))
    return processes


def _wait(processes):
    failures = []
    for index, process in enumerate(processes):
        try:
            output, _ = process.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        if process.returncode != 0:
            failures.append(f"process {index} exited with {process.returncode}:\n{output[-3000:]}")
    assert not failures, "\n".join(failures)


def test_two_process_step_equals_one_process_on_the_joined_batch(tmp_path):
    # both runs at once: three processes, each starting torch, share the cores better than in turn
    _wait(_launch(tmp_path / "ddp", world_size=2, batch_size=2) + _launch(tmp_path / "single", world_size=1,
                                                                        batch_size=4))
    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    single = torch.load(tmp_path / "single" / "rank0.pt")
    for name in rank0:
        # DDP's all-reduced gradients are identical on both ranks, and so are the updates
        assert torch.equal(rank0[name], rank1[name]), name
        # the mean of the per-process mean losses is the mean over the joined batch (every image
        # has the same number of labelled pixels); only the summation order differs
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-5, atol=1e-6, msg=name)
    assert rank0.keys() == single.keys()
    # only rank 0 wrote the run's files; its checkpoint has no DDP prefix
    checkpoint = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert checkpoint["step"] == STEPS and not any(k.startswith("module.") for k in checkpoint["model"])
    for name in rank0:
        assert torch.equal(checkpoint["model"][name], rank0[name]), name
    # the confusion matrices of the two shards (2 + 1 validation images) add up to the whole set
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["metrics"]
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())["metrics"]
    assert ddp_metrics["pixels"] == single_metrics["pixels"] == 3 * 12 * 16
    assert ddp_metrics["miou"] == pytest.approx(single_metrics["miou"], abs=0.02)


def test_sync_bn_in_fused_dense_blocks_equals_one_process_on_the_joined_batch(tmp_path):
    """--sync-bn: 2 gloo processes with batch 2 each = 1 process with batch 4, through the fused
    DenseBlocks' BatchNorms (outputs, gradients after DDP's average, weights and running statistics
    after 2 SGD steps)."""
    _wait(_launch(tmp_path / "ddp", world_size=2, batch_size=2, mode="syncbn")
          + _launch(tmp_path / "single", world_size=1, batch_size=4, mode="syncbn"))
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert ranks[0].keys() == single.keys()
    assert any(".norm1.running_var" in name for name in single)  # the blocks' BatchNorms are compared
    torch.testing.assert_close(torch.cat([ranks[0]["output"], ranks[1]["output"]]), single["output"],
                               rtol=1e-4, atol=1e-5)
    for name in single:
        if name == "output":
            continue
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # synchronized: identical everywhere
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-4, atol=1e-5, msg=name)


def test_sync_bn_on_cpu_marks_the_dense_blocks_and_names_the_other_batch_norms():
    """On CPU torch's SyncBatchNorm does not run: the fused blocks' BatchNorms are marked (they
    synchronize themselves), a BatchNorm outside them is named in a warning."""
    from fastladder.nn.densenet import SYNC_GROUP_ATTRIBUTE, DenseBlock
    from fastladder.train.distributed import DistributedContext, _synchronize_batch_norms
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4),
                                DenseBlock(2, 4, growth_rate=2))
    expected = r"1 BatchNorm layers outside fastladder DenseBlocks keep per-process statistics \(the 4 inside"
    with pytest.warns(UserWarning, match=expected):
        _synchronize_batch_norms(model, DistributedContext(rank=0, world_size=2))
    block_norms = [m for m in model[2].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(block_norms) == 4 and all(hasattr(m, SYNC_GROUP_ATTRIBUTE) for m in block_norms)
    assert not hasattr(model[1], SYNC_GROUP_ATTRIBUTE)


def test_epoch_batches_of_processes_join_to_the_single_process_batches():
    single = EpochBatchSampler(10, batch_size=4, seed=5)
    shards = [EpochBatchSampler(10, batch_size=2, seed=5, rank=r, world_size=2) for r in range(2)]
    for epoch in range(3):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        joined = [sorted(a + b) for a, b in zip(*[list(s) for s in shards])]
        assert joined == [sorted(batch) for batch in single]
        assert all(e == epoch for batch in single for e, _ in batch)
    assert [list(single)[0]] != [list(EpochBatchSampler(10, batch_size=4, seed=6))[0]]


def test_epoch_batch_sampler_skips_the_batches_done_before_a_resume():
    sampler = EpochBatchSampler(9, batch_size=2, seed=1)
    assert len(sampler) == 4  # the last odd sample is dropped
    sampler.set_epoch(2)
    everything = list(sampler)
    sampler.set_epoch(2, skip_batches=3)
    assert list(sampler) == everything[3:]
    with pytest.raises(ValueError, match="skip_batches"):
        sampler.set_epoch(0, skip_batches=5)
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatchSampler(3, batch_size=4)


def test_shard_sampler_covers_the_dataset_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert (context.rank, context.world_size, context.is_main, context.distributed) == (0, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5 and WORLD_SIZE=2"):
        init_distributed("cpu")
