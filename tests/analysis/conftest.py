"""Tiny models trained once per test session (seconds on CPU), reproducible from the printed seed."""
import os
import random
import sys
from types import SimpleNamespace

import pytest
import torch

# the tests run with --import-mode=importlib: make the task helpers beside this file importable
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _analysis_tasks import train_classifier, train_segmenter  # noqa: E402


def _session_seed():
    return int(os.environ.get("FASTLADDER_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture(scope="session")
def _trained_classifier():
    seed = _session_seed()
    return seed, train_classifier(torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def _trained_segmenter():
    seed = _session_seed()
    return seed, train_segmenter(torch.Generator().manual_seed(seed))


def _task(request, trained):
    seed, model = trained
    # one seed reproduces the model and the test: FASTLADDER_SEED=<seed> (printed on failure)
    request.node._fastladder_seed = seed
    torch.manual_seed(seed)
    return SimpleNamespace(model=model, seed=seed, generator=torch.Generator().manual_seed(seed + 1))


@pytest.fixture
def classifier(request, _trained_classifier):
    """The oriented-bars classifier (4 classes, 16×16 images), its seed and a generator for the test."""
    return _task(request, _trained_classifier)


@pytest.fixture
def segmenter(request, _trained_segmenter):
    """The rectangle-scenes segmenter (4 classes), its seed and a generator for the test."""
    return _task(request, _trained_segmenter)
