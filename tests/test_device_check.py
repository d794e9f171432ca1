"""make device-check's script, as far as a machine without a GPU can run it: the dry run names
every step, and the JUnit counts it reports are read right."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import device_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without a GPU does")
def test_dry_run_names_every_step():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "device_check.py"), "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "dry run" in out
    assert "FORCE_CUDA=1" in out and "setup.py build_ext --inplace" in out
    assert "tests/test_gpu.py" in out and "PYLOSSES_REQUIRE_CUDA=1" in out
    assert "-m benchmarks --device cuda --sizes 1M,16M,64M" in out
    assert "device-check.md" in out


def test_time_limits_fit_one_device_call():
    # a device call ends at 10 minutes; the build takes one or two
    assert device_check.TEST_TIMEOUT_S + device_check.BENCH_TIMEOUT_S <= 420


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="10" failures="2" '
                   'errors="1" skipped="3"></testsuite></testsuites>')
    assert device_check.junit_counts(xml) == (4, 2, 1, 3)
    assert device_check.junit_counts(tmp_path / "missing.xml") is None
