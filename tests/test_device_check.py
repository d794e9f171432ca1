"""make device-check's script, as far as a machine without a GPU can run it: the dry run names
every step and the budget; the watchdog stops a step that hangs without a word, with every
process of its group, at its deadline, and what the steps wrote before is kept and reported;
the results folder stays within what a device call brings back; the test counts are read from
the JUnit XML or, without it, from the -v log. (Bounds on time here are generous: they show that
a kill happened, not how fast.)"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import device_check  # noqa: E402

# A step that hangs printing nothing, with a grandchild that ignores SIGTERM (only SIGKILL to
# the whole group stops it) and whose pid goes to argv[1]. Both sleep far longer than the test
# would take, but not for ever should the watchdog miss them.
SILENT_HANG = textwrap.dedent("""
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c",
                                   "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
    with open(sys.argv[1], "w") as f:
        f.write(str(grandchild.pid))
    time.sleep(120)
""")


def _running(pid):
    """Whether pid is a live process (a zombie only waits to be reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _step(name, code, folder, log):
    return device_check.Step(name, [sys.executable, "-c", textwrap.dedent(code), str(folder)], str(folder / log))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without a GPU does")
def test_dry_run_names_every_step_and_the_budget():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "device_check.py"), "--dry-run"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "dry run" in out
    assert "FORCE_CUDA=1" in out and "setup.py build_ext --inplace" in out
    # the checkout is installed offline (no package index there), the Python package only
    assert "PYLOSSES_NO_EXTENSION=1" in out and "pip install --no-build-isolation --no-deps --no-index" in out
    assert "tests/test_gpu.py" in out and "PYLOSSES_REQUIRE_CUDA=1" in out
    assert "-m benchmarks --device cuda --sizes 1M,16M,64M --dtypes float32" in out
    assert "--providers reference,jit,native,triton" in out  # no cold torch.compile
    assert "device-check.md" in out and "$OUT/" in out
    assert f"within {device_check.BUDGET_S} s in all" in out and "SIGKILL" in out
    for name, limit in device_check.LIMITS_S.items():
        assert f"(stopped after {limit} s" in out, name


def test_budget_fits_one_device_call():
    # a device call ends at 10 minutes; python, torch and the transfers need some of them
    assert device_check.BUDGET_S <= 540
    assert device_check.REPORT_S >= 3 * device_check.GRACE_S  # stopping a step: SIGTERM, SIGKILL, the echo thread
    assert "compile" not in device_check.BENCH_ARGS[device_check.BENCH_ARGS.index("--providers") + 1].split(",")


def test_silent_hang_is_stopped_with_its_whole_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    start = time.monotonic()
    rc, seconds, timed_out = device_check.run([sys.executable, "-c", SILENT_HANG, str(pidfile)], timeout=5,
                                              log=str(tmp_path / "step.log"))
    assert (rc, timed_out) == (124, True)
    assert 5 <= seconds and time.monotonic() - start < 5 + 20
    pid = int(pidfile.read_text())
    end = time.monotonic() + 10
    while _running(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _running(pid), "the grandchild outlived its step"
    assert "stopped after" in (tmp_path / "step.log").read_text()


TESTS_THEN_HANG = """
    import sys, time
    print("tests/test_gpu.py::test_a PASSED                 [ 33%]")
    print("tests/test_gpu.py::test_b[float32] SKIPPED (why)  [ 66%]")
    time.sleep(120)
"""
BENCH_THEN_HANG = """
    import json, os, sys, time
    row = dict(loss="mse_loss", mode="forward", dtype="float32", size="1M", numel=1 << 20, provider="native",
               median_ms=0.01, bandwidth_fraction=0.9)
    info = dict(device="cuda", gpu="NVIDIA H200", date="2026-01-01", cells=12)
    with open(os.path.join(sys.argv[1], "results.json"), "w") as f:
        json.dump({"machine": info, "results": [row]}, f)
    with open(os.path.join(sys.argv[1], "results.md"), "w") as f:
        f.write("Machine: NVIDIA H200\\n\\n| the summary |\\n\\n### mse_loss, forward, float32\\n")
    time.sleep(120)
"""


def test_what_steps_wrote_before_their_kill_is_kept_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(device_check, "LIMITS_S", {"tests": 4, "benchmark": 4})
    monkeypatch.setattr(device_check, "MIN_STEP_S", 1)
    folder = tmp_path / "out" / "nvidia-h200-2026-01-01"
    folder.mkdir(parents=True)
    steps = [_step("tests", TESTS_THEN_HANG, folder, "gpu-tests.log"),
             _step("benchmark", BENCH_THEN_HANG, folder, "benchmark.log")]
    outcomes = device_check.run_steps(steps, time.monotonic() + 120)
    assert [(o.rc, o.timed_out) for o in outcomes] == [(124, True), (124, True)]
    line = device_check.finish(str(folder), ["# Device check"], outcomes, limit=True, copy_to=str(tmp_path / "copy"))

    assert line.startswith("device-check: tests 1 passed 0 failed 0 errors 1 skipped (timeout: yes)")
    assert "; benchmark 1/12 cells (timed out)" in line and line.endswith(f"results in {folder}")
    md = (folder / "device-check.md").read_text()
    assert "- tests: stopped at its limit of 4 s (exit status 124)" in md
    assert "- GPU tests: 1 passed, 0 failed, 0 errors, 1 skipped (gpu-tests.log" in md
    assert "- benchmark cells: 1 of 12" in md and "| the summary |" in md and "### " not in md
    assert "test_b[float32] SKIPPED" in (folder / "gpu-tests.log").read_text()
    assert json.loads((folder / "results.json").read_text())["results"][0]["provider"] == "native"
    names = {p.name for p in folder.iterdir()}
    assert names <= set(device_check.FILES) and len(names) <= device_check.MAX_FILES
    assert {p.name for p in (tmp_path / "copy").iterdir()} == names


def test_a_failed_required_step_or_a_spent_budget_skips_what_follows(tmp_path, monkeypatch):
    monkeypatch.setattr(device_check, "LIMITS_S", {"build": 60, "tests": 60, "benchmark": 60})
    monkeypatch.setattr(device_check, "MIN_STEP_S", 1)
    marker = tmp_path / "ran"
    build = device_check.Step("build", [sys.executable, "-c", "raise SystemExit(3)"], required=True)
    tests = device_check.Step("tests", [sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    outcomes = device_check.run_steps([build, tests], time.monotonic() + 120)
    assert (outcomes[0].rc, outcomes[0].timed_out) == (3, False)
    assert outcomes[1].rc is None and outcomes[1].why == "build failed" and not marker.exists()
    assert "build failed (exit 3)" in device_check.summary_line(str(tmp_path), outcomes)

    outcomes = device_check.run_steps([tests], time.monotonic())
    assert outcomes[0].rc is None and "budget" in outcomes[0].why and not marker.exists()


def test_results_folder_fits_what_a_device_call_brings_back(tmp_path):
    limit = 1 << 20  # the limits scaled down: the rules are the same
    (tmp_path / "device-check.md").write_text("# report\n")
    with open(tmp_path / "gpu-tests.log", "w") as f:
        for i in range(40000):
            f.write(f"tests/test_gpu.py::test_{i} PASSED\n")
        f.write("the last line\n")
    (tmp_path / "results.json").write_text("[" + "0," * limit + "0]")  # not a log: cutting would break it
    for i in range(8):
        (tmp_path / f"extra{i}.txt").write_text("x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "x.txt").write_text("x")
    os.symlink(tmp_path / "device-check.md", tmp_path / "link.md")

    notes = device_check.enforce_limits(str(tmp_path), max_files=8, max_bytes=limit)
    entries = list(tmp_path.iterdir())
    assert all(p.is_file() and not p.is_symlink() for p in entries)
    assert len(entries) <= 8 and all(p.stat().st_size <= limit for p in entries)
    names = {p.name for p in entries}
    assert {"device-check.md", "gpu-tests.log"} <= names and "results.json" not in names
    log = (tmp_path / "gpu-tests.log").read_text()
    assert log.startswith("[device-check: only the end") and log.endswith("the last line\n")
    assert log.splitlines()[1].startswith("tests/test_gpu.py::test_")  # cut at a line's start
    assert any("gpu-tests.log cut" in n for n in notes) and any("results.json" in n for n in notes)
    assert any(n.startswith("removed sub") for n in notes) and any(n.startswith("removed extra") for n in notes)


def test_junit_counts(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="10" failures="2" '
                   'errors="1" skipped="3"></testsuite></testsuites>')
    assert device_check.junit_counts(xml) == (4, 2, 1, 3)
    assert device_check.junit_counts(tmp_path / "missing.xml") is None


def test_log_counts_without_and_with_xdist(tmp_path):
    plain = tmp_path / "plain.log"
    plain.write_text("\n".join([
        "tests/test_gpu.py::test_a PASSED                                  [ 20%]",
        "tests/test_gpu.py::test_b[float16-mean] FAILED                    [ 40%]",
        "tests/test_gpu.py::test_c SKIPPED (no CUDA GPU on this machine)   [ 60%]",
        "tests/test_gpu.py::test_d PASSED                                  [ 80%]",
        "tests/test_gpu.py::test_d ERROR                                   [ 80%]",  # its teardown
        "tests/test_gpu.py::test_e XFAIL                                   [100%]",
        "FAILED tests/test_gpu.py::test_b[float16-mean] - AssertionError",  # the short summary
        "SKIPPED [1] tests/test_gpu.py:10: no CUDA GPU on this machine",
    ]))
    assert device_check.log_counts(plain) == (1, 1, 1, 2)
    xdist = tmp_path / "xdist.log"
    xdist.write_text("\n".join([
        "[gw1] [ 25%] PASSED tests/test_gpu.py::test_a ",
        "[gw0] [ 50%] FAILED tests/test_gpu.py::test_b[float16-mean] ",
        "[gw3] [ 75%] ERROR tests/test_gpu.py::test_c ",
        "[gw2] [100%] SKIPPED tests/test_build.py::test_d ",
        "ERROR tests/test_gpu.py::test_c - RuntimeError",
    ]))
    assert device_check.log_counts(xdist) == (1, 1, 1, 1)
    assert device_check.log_counts(tmp_path / "missing.log") is None


def test_a_stopped_test_step_still_says_why_its_failures_failed(tmp_path):
    """-p early_failures: the error of a failure is in the log the moment it fails, before the
    step is stopped at its limit (pytest writes its own failure report only at the end)."""
    (tmp_path / "test_x.py").write_text(textwrap.dedent("""
        import time, torch
        def test_a():
            torch.testing.assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.5]))
        def test_b():
            time.sleep(120)
    """))
    (planned,) = [s for s in device_check.plan(sys.executable, str(tmp_path), {}) if s.name == "tests"]
    assert "early_failures" in planned.cmd and "tests" in planned.env["PYTHONPATH"].split(os.pathsep)
    log = tmp_path / "tests.log"
    step = device_check.Step("tests", [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p",
                                       "early_failures", "test_x.py"], str(log),
                             {"PYTHONPATH": os.path.join(ROOT, "tests")})
    proc = subprocess.Popen(step.cmd, cwd=tmp_path, env={**os.environ, **step.env}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while "test_b" not in log.read_text() and time.monotonic() < deadline:  # test_a is done
        time.sleep(0.2)
    os.killpg(proc.pid, 9)
    proc.wait()
    text = log.read_text()
    assert "--- test_x.py::test_a failed (call):" in text
    assert "Greatest absolute difference: 0.5" in text
    assert "short test summary" not in text  # pytest's own report never came
    assert device_check.log_counts(log) == (0, 1, 0, 0)
