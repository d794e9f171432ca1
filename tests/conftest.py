import glob
import os
import sys

# Without a GPU the Triton kernels run in Triton's interpreter, on CPU tensors; it must be
# chosen before Triton is imported. (A GPU is looked for without importing torch.)
if not glob.glob("/dev/nvidia[0-9]*"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch._inductor.config  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/cases.py

# torch.compile's on-disk caches key a graph by its forward: a cached backward of an earlier
# pylosses (whose Python autograd they cannot see) would be reused. Tests compile afresh.
torch._inductor.config.force_disable_caches = True


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run by make device-check)")
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist runs in one worker (--dist loadgroup)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
