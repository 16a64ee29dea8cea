"""Fixtures of the training tests: the tiny dataset module (tests/train/_tiny.py, also imported by the
DDP worker script, so it lives in a plain file rather than here)."""
import importlib.util
import os
import sys

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_tiny():
    name = "fastladder_tests_train_tiny"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(_HERE, "_tiny.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def tiny():
    """The module with ThresholdScenes, tiny_factory and TINY_LADDER_KWARGS."""
    return _load_tiny()
