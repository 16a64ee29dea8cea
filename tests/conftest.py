"""Shared test fixtures: fresh random seeds that are printed on failure, device lists."""
import os
import random

import pytest
import torch

SLOW = os.environ.get("FASTLADDER_SLOW") == "1"


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow case: set FASTLADDER_SLOW=1 to run it")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not SLOW:
            item.add_marker(skip_slow)
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "_fastladder_seed", None)
    if report.when == "call" and report.failed and seed is not None:
        report.sections.append(("fastladder seed", f"reproduce with FASTLADDER_SEED={seed}"))


@pytest.fixture
def seed(request):
    """A fresh seed per test run (or FASTLADDER_SEED), applied to torch and random; shown on failure."""
    value = int(os.environ.get("FASTLADDER_SEED", random.SystemRandom().randrange(2**31)))
    request.node._fastladder_seed = value
    torch.manual_seed(value)
    random.seed(value)
    return value


@pytest.fixture
def generator(seed):
    """A torch.Generator seeded from the test's fresh seed."""
    return torch.Generator().manual_seed(seed)

