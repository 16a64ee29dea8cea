"""CUDA graphs and host synchronizations: a tiny LadderDenseNet's eval forward and training step
are captured in CUDA graphs and replayed (a host synchronization or a host-to-device copy, such as
index tables built on the host, fails the capture), and the training step runs under
torch.cuda.set_sync_debug_mode("error"). All need a GPU."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fastladder.models import create_model

pytestmark = pytest.mark.cuda

TINY_LDN = dict(growth_rate=4, block_config=(1, 1, 1, 2), num_init_features=8, context_channels=16,
                upsample_channels=8)
CLASSES = 5


def tiny_ldn():
    model = create_model("ladder_densenet121", CLASSES, **TINY_LDN)
    for module in model.modules():  # non-trivial running statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.cuda()


def batch(generator, n=2, size=(64, 96)):
    images = torch.randn(n, 3, *size, generator=generator).cuda()
    labels = torch.randint(0, CLASSES, (n, *size), generator=generator).cuda()
    labels[:, :2] = 255  # some ignored pixels, as in Cityscapes
    return images, labels


def train_step(model, optimizer, images, labels):
    optimizer.zero_grad(set_to_none=False)
    logits = model(images)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    loss.backward()
    optimizer.step()
    return loss


def warm_up(fn, steps=3):
    """Runs fn on a side stream first, as CUDA-graph capture requires (lazy initialization, allocator)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(steps):
            fn()
    torch.cuda.current_stream().wait_stream(stream)


@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_forward_in_a_cuda_graph(seed, generator, channels_last):
    model = tiny_ldn().eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    static_input = batch(generator)[0].contiguous(memory_format=memory_format)
    with torch.no_grad():
        warm_up(lambda: model(static_input))
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = model(static_input)
        for _ in range(2):
            fresh = batch(generator)[0]
            static_input.copy_(fresh)
            graph.replay()
            torch.testing.assert_close(static_output, model(fresh.contiguous(memory_format=memory_format)),
                                       rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")


def test_training_step_in_a_cuda_graph(seed, generator):
    """The whole step (forward through the fused DenseBlocks and ladder upsampling, backward,
    SGD) captured once and replayed equals the same steps run eagerly on a copy."""
    model = tiny_ldn().train()
    eager_model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    eager_optimizer = torch.optim.SGD(eager_model.parameters(), lr=0.05, momentum=0.9)
    images, labels = batch(generator)
    static_images, static_labels = images.clone(), labels.clone()
    # warm-up steps on both, so that both start the captured steps from the same state
    warm_up(lambda: train_step(model, optimizer, static_images, static_labels))
    for _ in range(3):
        train_step(eager_model, eager_optimizer, images, labels)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = train_step(model, optimizer, static_images, static_labels)
    for _ in range(3):
        images, labels = batch(generator)
        static_images.copy_(images)
        static_labels.copy_(labels)
        graph.replay()
        eager_loss = train_step(eager_model, eager_optimizer, images, labels)
        torch.testing.assert_close(static_loss, eager_loss, rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"seed {seed}: {m}")
    for (name, a), b in zip(model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m: f"{name} (seed {seed}): {m}")


def test_training_step_never_synchronizes(generator):
    model = tiny_ldn().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images, labels = batch(generator)
    train_step(model, optimizer, images, labels)  # warm-up: lazy initialization, momentum buffers
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = train_step(model, optimizer, images, labels)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.isfinite(loss).item()
