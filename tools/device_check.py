"""make device-check: on a GPU machine (H100 or H200, no network), in well under 10 minutes:

1. build pylosses._C in place with its CUDA kernels, for this GPU's architecture only, on all cores;
2. run the GPU tests (tests/test_gpu.py, every test marked gpu) and tests/test_build.py;
3. run a short benchmark: both losses, forward and forward+backward, 1M, 16M and 64M elements,
   float32, every provider, with the copy bandwidth measured in the same run;
4. write everything under benchmarks/results/<gpu>-<date>/ (device-check.md with the versions
   and the outcome, the test log and JUnit XML, the benchmark's JSON, Markdown and plots) and
   print a summary.

It uses the python that runs it and installs nothing. On a machine without a GPU it builds (the
CUDA sources for sm_90, when nvcc is there) and reports what it would run; --dry-run does only
the reporting.
"""

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the whole check must end inside one device call (10 minutes) with room to spare: the build
# takes a minute or two, then at most these
TEST_TIMEOUT_S = 240
BENCH_TIMEOUT_S = 150
BENCH_ARGS = ["--device", "cuda", "--sizes", "1M,16M,64M", "--dtypes", "float32", "--repeats", "20"]


def run(cmd, env=None, timeout=None, log=None):
    """Runs cmd in the repository root, echoing its output (and into log); returns (rc, seconds)."""
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.perf_counter()
    out = open(log, "w") if log else None
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        try:
            deadline = None if timeout is None else start + timeout
            for line in proc.stdout:
                sys.stdout.write(line)
                if out:
                    out.write(line)
                if deadline and time.perf_counter() > deadline:
                    proc.kill()
                    break
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            raise
        if deadline and time.perf_counter() > deadline:
            print(f"(stopped after {timeout} s)", flush=True)
            rc = 124
    finally:
        if out:
            out.close()
    return rc, time.perf_counter() - start


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/device_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="say what would run; build and run nothing")
    parser.add_argument("--no-build", action="store_true", help="use the extension as it is built")
    args = parser.parse_args(argv)

    import torch

    has_gpu = torch.cuda.is_available()
    dry = args.dry_run or not has_gpu
    py = sys.executable
    build_env = {"FORCE_CUDA": "1", "MAX_JOBS": str(os.cpu_count() or 1)}
    if has_gpu:
        major, minor = torch.cuda.get_device_capability(0)
        build_env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"  # this GPU only
        gpu = torch.cuda.get_device_name(0)
    else:
        gpu = "no GPU"
    date = datetime.date.today().isoformat()
    slug = "".join(c if c.isalnum() else "-" for c in gpu.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    folder = os.path.join(ROOT, "benchmarks", "results", f"{slug}-{date}")
    build = [py, "setup.py", "build_ext", "--inplace"]
    # -v: every test's outcome is in the log as it ends, should the time limit stop the run
    tests = [py, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider", "tests/test_build.py", "tests/test_gpu.py",
             f"--junitxml={os.path.join(folder, 'gpu-tests.xml')}"]
    import importlib.util

    if importlib.util.find_spec("xdist"):  # Triton compiles on the CPU: four workers share the GPU
        tests += ["-n", "4", "--dist", "loadgroup"]
    if importlib.util.find_spec("pytest_timeout"):  # one hung test must not take the others' time
        tests += ["--timeout", "150"]
    bench = [py, "-m", "benchmarks", *BENCH_ARGS, "--out", os.path.join(ROOT, "benchmarks", "results")]

    print(f"device check: {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}")
    if dry:
        why = "--dry-run" if args.dry_run else "torch sees no CUDA GPU here"
        print(f"dry run ({why}): on a GPU machine this would run")
        print("  1. " + " ".join(f"{k}={v}" for k, v in build_env.items()) + " TORCH_CUDA_ARCH_LIST=<the GPU's> "
              + " ".join(build))
        print(f"  2. PYLOSSES_REQUIRE_CUDA=1 {' '.join(tests)}   (stopped after {TEST_TIMEOUT_S} s)")
        print(f"  3. {' '.join(bench)}   (stopped after {BENCH_TIMEOUT_S} s)")
        print(f"  4. write benchmarks/results/<gpu>-{date}/device-check.md and print a summary")
        if args.dry_run or args.no_build:
            return 0
        import shutil

        if not shutil.which("nvcc"):
            print("no nvcc here: nothing to build")
            return 0
        print("building here, as step 1 would (the CUDA sources for sm_90):")
        rc, _ = run(build, env=build_env)
        return rc

    os.makedirs(folder, exist_ok=True)
    steps = {}
    if not args.no_build:
        steps["build"] = run(build, env=build_env, log=os.path.join(folder, "build.log"))
        if steps["build"][0] != 0:
            print("the build failed: see build.log")
            return 1
    steps["tests"] = run(tests, env={"PYLOSSES_REQUIRE_CUDA": "1"}, timeout=TEST_TIMEOUT_S,
                         log=os.path.join(folder, "gpu-tests.log"))
    steps["benchmark"] = run(bench, timeout=BENCH_TIMEOUT_S, log=os.path.join(folder, "benchmark.log"))

    import triton

    props = torch.cuda.get_device_properties(0)
    counts = junit_counts(os.path.join(folder, "gpu-tests.xml"))
    lines = [f"# Device check, {gpu}, {date}", "",
             f"- GPU: {props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB, "
             f"compute capability {props.major}.{props.minor}",
             f"- torch {torch.__version__} (CUDA {torch.version.cuda}), Triton {triton.__version__}, "
             f"Python {sys.version.split()[0]}, {os.cpu_count()} CPU cores",
             f"- command: `make device-check` ({' '.join(BENCH_ARGS)} for the benchmark)", ""]
    for name, (rc, seconds) in steps.items():
        lines.append(f"- {name}: exit status {rc}, {seconds:.0f} s")
    if counts:
        lines.append(f"- GPU tests: {counts[0]} passed, {counts[1]} failed, {counts[2]} errors, {counts[3]} skipped "
                     "(gpu-tests.log, gpu-tests.xml)")
    table = os.path.join(folder, "results.md")
    if os.path.exists(table):
        lines += ["", "Benchmark (results.md, results.json, time.png, bandwidth.png):", ""]
        with open(table) as f:
            text = f.read()
        lines.append(text.split("### ")[0].strip())  # the machine line and the summary table
    summary = "\n".join(lines) + "\n"
    with open(os.path.join(folder, "device-check.md"), "w") as f:
        f.write(summary)
    print("\n" + summary)
    print(f"written under {folder}")
    return 0 if all(rc == 0 for rc, _ in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
