import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/cases.py


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run by make device-check)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
