import os
import subprocess
import sys

import pytest

import pylosses


@pytest.mark.skipif(pylosses._ops.TRITON_ERROR is not None, reason="no Triton kernels")
def test_triton_kernels_compile_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "compiled for sm_90" in done.stdout
