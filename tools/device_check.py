"""make device-check: on a GPU machine (H100 or H200, no network), inside one 10-minute device call:

1. install this checkout (pip install --no-build-isolation --no-deps --no-index -e ., the Python
   package only: setuptools and wheel are there, no package index is needed) and build
   pylosses._C in place with its CUDA kernels, for this GPU's architecture only, on all cores;
2. run the GPU tests (tests/test_gpu.py, every test marked gpu) and tests/test_build.py;
3. run a short benchmark: every loss of the sweep (segmentation, MSE, Dice, cross-entropy, DiceCE), forward and
   forward+backward, 1M, 16M and 64M elements,
   float32, the providers reference, jit, native and triton (not torch.compile, whose cold
   compilation takes tens of seconds a cell), with the copy bandwidth measured in the same run;
4. write at most 8 files into $OUT/<gpu>-<date>/ when OUT is set (what a device call brings back;
   copied to benchmarks/results/<gpu>-<date>/ at the end), else into benchmarks/results/<gpu>-<date>/:
   device-check.md (versions, steps, exit statuses, durations, test counts, the benchmark table),
   build.log, gpu-tests.log, gpu-tests.xml, benchmark.log, results.json, results.md and
   bandwidth.png; and print a one-line summary last.

A watchdog keeps whatever finished: the whole check has BUDGET_S seconds and each step a limit,
shrunk to what is left of them; a step past its time has its whole process group stopped
(SIGTERM, then SIGKILL) whether it prints or not, and is reported as exit status 124. The logs
are written line by line and the benchmark rewrites its results after every cell.

It uses the python that runs it and installs only this checkout, editable. On a machine without a GPU it builds (the
CUDA sources for sm_90, when nvcc is there) and reports what it would run; --dry-run does only
the reporting.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.report import plots, slug  # noqa: E402  (no torch, no pylosses: safe before the build)

# A device call ends at 10 minutes; starting python and torch, and the transfers, need some of them.
BUDGET_S = 510
# The 2026-11-30 H200 run: install 3 s, build 156 s, tests past 240 s at 97% with 4 workers, the
# benchmark 7 s; the tests get what the build leaves
LIMITS_S = {"install": 60, "build": 240, "tests": 290, "benchmark": 180}
TEST_WORKERS = 8  # pytest-xdist processes (16 cores there); the large-memory tests run one at a time
REPORT_S = 30  # kept back from the budget: stopping the last step, the plot and the report
MIN_STEP_S = 15  # less time than this left: the step is not started, as it could not finish
GRACE_S = 5  # between SIGTERM and SIGKILL: pytest and torch get to exit cleanly
TEST_TIMEOUT_S = 150  # pytest-timeout: one hung test must not take all the others' time
# What a device call brings back from $OUT: at most 8 files of at most 16 MiB, 2 folders deep.
MAX_FILES = 8
MAX_BYTES = 16 << 20
# Every file the check writes, in the order they are kept should there be too many.
FILES = ("device-check.md", "gpu-tests.log", "gpu-tests.xml", "results.json", "results.md", "build.log",
         "benchmark.log", "bandwidth.png")
PLOT = "bandwidth.png"
BENCH_ARGS = ["--device", "cuda", "--sizes", "1M,16M,64M", "--dtypes", "float32",
              "--providers", "reference,jit,native,triton", "--repeats", "20", "--no-plots"]


@dataclass
class Step:
    name: str
    cmd: List[str]
    log: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    required: bool = False  # when it fails, the steps after it are pointless


@dataclass
class Outcome:
    name: str
    rc: Optional[int]  # None: not run
    seconds: float = 0.0
    timed_out: bool = False
    limit_s: float = 0.0
    why: str = ""  # why it did not run


def _echo(pipe, log):
    """Copies a step's output to ours and to its log, flushing every line: a kill loses none."""
    try:
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if log:
                log.write(line)
                log.flush()
    except (OSError, ValueError):
        pass  # the pipe or the log was closed under us: the step is over


def stop_group(proc, grace=GRACE_S):
    """SIGTERM to proc's whole process group (it leads one: start_new_session), SIGKILL to what
    is left after grace seconds. The group, not proc alone: pytest's xdist workers and torch's
    compile workers hold the GPU too."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        proc.poll()  # reaps the leader, which would otherwise keep the group alive as a zombie
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass  # stuck in the kernel (a driver call): nothing more can be done from here


def run(cmd, env=None, timeout=None, log=None):
    """Runs cmd in the repository root in a process group of its own, echoing its output (and
    into log, line by line). At timeout seconds the whole group is stopped, whether or not it
    prints; so are any processes it leaves behind when it ends. Returns (rc, seconds, timed_out),
    rc 124 when stopped."""
    print("+ " + shlex.join(cmd), flush=True)
    start = time.monotonic()
    out = open(log, "a") if log else None  # (main removes an earlier run's logs; steps may share one)
    # unbuffered: a child killed at its deadline has printed everything it did before
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    echo = threading.Thread(target=_echo, args=(proc.stdout, out), daemon=True)
    echo.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:  # also on Ctrl-C or SIGTERM: the group is in a session of its own and would not get them
        stop_group(proc)
        echo.join(GRACE_S)
        seconds = time.monotonic() - start
        if timed_out:
            note = f"[device-check: stopped after {seconds:.0f} s, its limit being {timeout:.0f} s]\n"
            sys.stdout.write(note)
            if out:
                out.write(note)
        if out:
            out.close()
        # A process that left the group can hold the pipe open for ever; closing it under the
        # echo thread would wait for that thread's read, so the pipe is then left to it.
        if not echo.is_alive():
            proc.stdout.close()
    return (124 if timed_out else proc.returncode), seconds, timed_out


def run_steps(steps, deadline):
    """Runs the steps in order, each within its limit (LIMITS_S) and what is left until deadline
    (a time.monotonic()); a required step that fails skips the rest."""
    outcomes = []
    skip = ""
    for step in steps:
        left = deadline - time.monotonic()
        if not skip and left < MIN_STEP_S:
            skip = f"{left:.0f} s of the budget left"
        if skip:
            outcomes.append(Outcome(step.name, None, why=skip))
            continue
        limit = min(LIMITS_S[step.name], left)
        rc, seconds, timed_out = run(step.cmd, step.env, limit, step.log)
        outcomes.append(Outcome(step.name, rc, seconds, timed_out, limit))
        if step.required and rc != 0:
            skip = f"{step.name} failed"
    return outcomes


def junit_counts(path):
    """(passed, failed, errors, skipped) from pytest's JUnit XML, or None."""
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    return total - failed - errors - skipped, failed, errors, skipped


_WORDS = "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS"
# pytest -v: "tests/a.py::test_b[x] PASSED   [ 10%]"; with xdist: "[gw0] [ 10%] PASSED tests/a.py::test_b[x]".
# The short summary at the end ("FAILED tests/a.py::test_b - ...") has no percentage: not counted twice.
_PLAIN = re.compile(rf"^(?P<id>\S+::.*?) (?P<word>{_WORDS})\b.*\[\s*\d+%\]\s*$")
_XDIST = re.compile(rf"^\[gw\d+\] \[\s*\d+%\] (?P<word>{_WORDS}) (?P<id>\S+::.*?)\s*$")
_KIND = {"PASSED": 0, "XPASS": 0, "FAILED": 1, "ERROR": 2, "SKIPPED": 3, "XFAIL": 3}  # as JUnit counts them


def log_counts(path):
    """(passed, failed, errors, skipped) from the outcome lines of pytest -v, or None: what a run
    stopped before it wrote its JUnit XML had done. A test with an error in its teardown after
    it passed or failed counts as an error, as in the JUnit XML."""
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    kinds = {}
    for line in lines:
        match = _PLAIN.match(line) or _XDIST.match(line)
        if match and kinds.get(match["id"]) != 2:
            kinds[match["id"]] = _KIND[match["word"]]
    if not kinds:
        return None
    counts = [0, 0, 0, 0]
    for kind in kinds.values():
        counts[kind] += 1
    return tuple(counts)


def gpu_test_counts(folder):
    """((passed, failed, errors, skipped), where from) or (None, "")."""
    counts = junit_counts(os.path.join(folder, "gpu-tests.xml"))
    if counts:
        return counts, "gpu-tests.xml"
    counts = log_counts(os.path.join(folder, "gpu-tests.log"))
    return (counts, "gpu-tests.log, no JUnit XML: the run did not finish") if counts else (None, "")


def bench_results(folder):
    """(machine, rows) from the benchmark's results.json, as far as it got; (None, []) without one."""
    try:
        with open(os.path.join(folder, "results.json")) as f:
            data = json.load(f)
        return data["machine"], data["results"]
    except (OSError, ValueError, KeyError):
        return None, []


def cells_done(rows):
    return len({(r["loss"], r["mode"], r["dtype"], r["size"]) for r in rows})


def _cut_to_tail(path, size, max_bytes):
    head = (f"[device-check: only the end of this {size}-byte file is kept: "
            f"a device call brings back at most {max_bytes} bytes a file]\n").encode()
    with open(path, "rb") as f:
        f.seek(size - (max_bytes - len(head)))
        tail = f.read()
    newline = tail.find(b"\n")
    tail = tail[newline + 1:] if 0 <= newline < 4096 else tail  # start at a whole line
    with open(path + ".tmp", "wb") as f:
        f.write(head + tail)
    os.replace(path + ".tmp", path)


def enforce_limits(folder, max_files=MAX_FILES, max_bytes=MAX_BYTES, keep=FILES):
    """Makes folder what a device call brings back whole: plain files only, no folders or links
    in it (so nothing is deeper than $OUT/<name>/file), at most max_files files (keep's names
    first, in keep's order), none over max_bytes: a log is cut to its last max_bytes, any other
    file that large is removed. Returns what it did, one line each, for the report."""
    notes, files = [], []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            files.append(name)
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        notes.append(f"removed {name}: not a plain file")
    files.sort(key=lambda name: (keep.index(name) if name in keep else len(keep), name))
    for name in files[max_files:]:
        os.remove(os.path.join(folder, name))
        notes.append(f"removed {name}: more than {max_files} files")
    for name in files[:max_files]:
        path = os.path.join(folder, name)
        size = os.path.getsize(path)
        if size <= max_bytes:
            continue
        if name.endswith(".log"):
            _cut_to_tail(path, size, max_bytes)
            notes.append(f"{name} cut to its last {max_bytes / 2**20:.0f} MiB (it had {size / 2**20:.1f} MiB)")
        else:
            os.remove(path)
            notes.append(f"removed {name}: {size / 2**20:.1f} MiB, over {max_bytes / 2**20:.0f} MiB")
    return notes


def _status(o):
    if o.rc is None:
        return f"not run ({o.why})"
    if o.timed_out:
        return f"stopped at its limit of {o.limit_s:.0f} s (exit status 124)"
    return f"exit status {o.rc}, {o.seconds:.0f} s (limit {o.limit_s:.0f} s)"


def report(folder, header, outcomes, notes):
    """device-check.md's text: header lines (the GPU, the versions), then every step's outcome,
    the test counts, the benchmark's progress and table, and what the file limits changed."""
    lines = list(header)
    lines.append(f"- budget: {BUDGET_S} s in all; limits " + ", ".join(f"{k} {v} s" for k, v in LIMITS_S.items())
                 + ", each shrunk to what was left; a step past its time has its process group stopped")
    lines.append("")
    for o in outcomes:
        lines.append(f"- {o.name}: {_status(o)}")
    counts, source = gpu_test_counts(folder)
    if counts:
        lines.append(f"- GPU tests: {counts[0]} passed, {counts[1]} failed, {counts[2]} errors, {counts[3]} skipped "
                     f"({source})")
    info, rows = bench_results(folder)
    if info:
        lines.append(f"- benchmark cells: {cells_done(rows)} of {info.get('cells', '?')} "
                     f"(results.json, results.md{', ' + PLOT if os.path.exists(os.path.join(folder, PLOT)) else ''})")
        try:
            with open(os.path.join(folder, "results.md")) as f:
                lines += ["", f.read().split("### ")[0].strip()]  # the machine line and the summary table
        except OSError:
            pass
    if notes:
        lines += ["", "What a device call brings back is limited; so:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def summary_line(folder, outcomes):
    """The last line printed: every step's outcome at a glance."""
    parts = []
    for o in outcomes:
        if o.rc is None:
            parts.append(f"{o.name} not run ({o.why})")
            continue
        if o.name == "tests":
            counts, _ = gpu_test_counts(folder)
            what = (f"{counts[0]} passed {counts[1]} failed {counts[2]} errors {counts[3]} skipped" if counts
                    else "no outcomes") + f" (timeout: {'yes' if o.timed_out else 'no'})"
        elif o.name == "benchmark":
            info, rows = bench_results(folder)
            what = f"{cells_done(rows)}/{info.get('cells', '?') if info else '?'} cells"
            what += " (timed out)" if o.timed_out else ""
        else:
            what = "timed out" if o.timed_out else "ok" if o.rc == 0 else "failed"
        if not o.timed_out and o.rc != 0:
            what += f" (exit {o.rc})"
        parts.append(f"{o.name} {what} {o.seconds:.0f} s")
    return "device-check: " + "; ".join(parts) + f"; results in {folder}"


def finish(folder, header, outcomes, limit=False, copy_to=None):
    """After the steps: the plot from whatever cells finished, the file limits (limit: the folder
    is under $OUT), device-check.md, the copy into the checkout, and the summary. Returns the
    summary line."""
    info, rows = bench_results(folder)
    if rows:
        try:  # a plot is not worth losing the report for
            plots(rows, info, folder, names=(PLOT,))
        except Exception as error:  # noqa: BLE001
            print(f"no {PLOT}: {error!r}")
    with open(os.path.join(folder, "device-check.md"), "w") as f:
        f.write(report(folder, header, outcomes, []))
    notes = enforce_limits(folder) if limit else []
    text = report(folder, header, outcomes, notes)
    if notes:
        with open(os.path.join(folder, "device-check.md"), "w") as f:
            f.write(text)
    if copy_to:
        try:
            shutil.copytree(folder, copy_to, dirs_exist_ok=True)
        except OSError as error:
            print(f"not copied to {copy_to}: {error}")
    line = summary_line(folder, outcomes)
    print("\n" + text)
    print(line, flush=True)
    return line


def plan(py, folder, build_env, build=True):
    """The steps of the check, as they run on a GPU machine."""
    # -p early_failures (tests/early_failures.py): each failure's error in the log as it happens,
    # so that a step stopped at its limit still says what failed and how
    tests = [py, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "-p", "early_failures",
             "tests/test_build.py", "tests/test_gpu.py", f"--junitxml={os.path.join(folder, 'gpu-tests.xml')}"]
    import importlib.util

    if importlib.util.find_spec("xdist"):  # Triton compiles on the CPU: the workers share the GPU
        tests += ["-n", str(TEST_WORKERS), "--dist", "loadgroup"]
    if importlib.util.find_spec("pytest_timeout"):
        tests += ["--timeout", str(TEST_TIMEOUT_S)]
    build_log = os.path.join(folder, "build.log")
    install = [py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
               "--disable-pip-version-check", "-e", "."]
    # (a throwaway machine: its Python may call itself externally managed)
    steps = [Step("install", install, build_log, {"PYLOSSES_NO_EXTENSION": "1", "PIP_BREAK_SYSTEM_PACKAGES": "1"},
                  required=True),
             Step("build", [py, "setup.py", "build_ext", "--inplace"], build_log, build_env, required=True)] if build else []
    return steps + [
        Step("tests", tests, os.path.join(folder, "gpu-tests.log"),
             {"PYLOSSES_REQUIRE_CUDA": "1", "PYTHONPATH": os.pathsep.join(filter(None, ["tests", os.environ.get("PYTHONPATH")]))}),
        Step("benchmark", [py, "-m", "benchmarks", *BENCH_ARGS, "--folder", folder],
             os.path.join(folder, "benchmark.log")),
    ]


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # through run()'s finally, which stops the running step's group


def main(argv=None):
    started = time.monotonic()
    parser = argparse.ArgumentParser(prog="tools/device_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would run; build and run nothing")
    parser.add_argument("--no-build", action="store_true", help="use the extension as it is built")
    args = parser.parse_args(argv)

    import torch

    has_gpu = torch.cuda.is_available()
    dry = args.dry_run or not has_gpu
    build_env = {"FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 1)}
    if has_gpu:
        major, minor = torch.cuda.get_device_capability(0)
        build_env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # this GPU only
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = "no GPU"
    date = datetime.date.today().isoformat()
    name = f"{slug(gpu)}-{date}"
    checkout = os.path.join(ROOT, "benchmarks", "results", name)
    out = os.environ.get("OUT")
    folder = os.path.join(out, name) if out else checkout
    steps = plan(sys.executable, folder, build_env, build=not args.no_build)

    print(f"device check: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}")
    if dry:
        why = "--dry-run" if args.dry_run else "torch sees no CUDA GPU here"
        print(f"dry run ({why}): on a GPU machine this would run, within {BUDGET_S} s in all")
        for i, step in enumerate(steps, 1):
            env = " ".join(f"{k}={v}" for k, v in step.env.items())
            env += " TORCH_CUDA_ARCH_LIST=<the GPU's>" if step.name == "build" else ""
            print(f"  {i}. {env + ' ' if env else ''}{shlex.join(step.cmd)}   "
                  f"(stopped after {LIMITS_S[step.name]} s, or when the budget runs out)")
        print(f"  {len(steps) + 1}. write device-check.md, the logs and the results ({MAX_FILES} files at most) into "
              f"$OUT/<gpu>-{date}/, copied to benchmarks/results/<gpu>-{date}/ (only there when OUT is not set; "
              f"here OUT {'= ' + out if out else 'is not set'}), and print a one-line summary")
        print(f"watchdog: each step in a process group of its own, stopped at its limit whether it prints or not "
              f"(SIGTERM to the group, SIGKILL {GRACE_S} s later: exit status 124); {REPORT_S} s of the "
              f"{BUDGET_S} s kept for the report")
        if args.dry_run or args.no_build:
            return 0
        if not shutil.which("nvcc"):
            print("no nvcc here: nothing to build")
            return 0
        build_step = next(step for step in steps if step.name == "build")
        print("building here, as the build step would (the CUDA sources for sm_90):")
        rc, _, _ = run(build_step.cmd, env=build_env, timeout=LIMITS_S["build"])
        return rc

    os.makedirs(folder, exist_ok=True)
    for stale in FILES:  # an earlier run's files would pass for this one's
        if os.path.exists(os.path.join(folder, stale)):
            os.remove(os.path.join(folder, stale))
    signal.signal(signal.SIGTERM, _terminate)
    outcomes = run_steps(steps, started + BUDGET_S - REPORT_S)

    props = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    header = [f"# Device check, {gpu}, {date}", "",
              f"- GPU: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
              f"compute capability {props.major}.{props.minor}",
              f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Triton {triton_version}, "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU cores",
              f"- command: `make device-check` ({' '.join(BENCH_ARGS)} for the benchmark)"]
    finish(folder, header, outcomes, limit=bool(out), copy_to=checkout if out else None)
    return 0 if all(o.rc == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
