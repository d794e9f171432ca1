"""The benchmark suite's CLI (what `make bench` runs):

    python -m benchmarks [--device cpu|cuda] [--quick] [--sizes 64K,1M,16M] [--providers native,compile]
                         [--dtypes float32,bfloat16] [--losses mse_loss] [--modes forward] [--repeats N]
                         [--out DIR | --folder DIR] [--no-plots]

For every loss, mode (forward, forward+backward), dtype and size, it times every available
provider (eager reference, torch.jit, torch.compile, native, triton) in one run, the providers
taking turns round by round, and reports the median time, the speed-ups over eager and over
torch.compile, the bandwidth reached on the compulsory bytes (read input and target, write the
gradient) and its fraction of a copy of the same bytes timed in the same run, the peak extra
memory (GPU), and apart from all that the first call's time (compilation). It prints a table and
writes JSON, Markdown and PNG plots under benchmarks/results/<device>-<date>/: results.json and
results.md after every cell, so that a run stopped midway keeps every cell it finished, and the
plots at the end.
"""

import argparse
import json
import os
import sys

import torch

from benchmarks import report
from benchmarks.common import (DTYPES, LOSSES, MODES, PROVIDERS, REFERENCE_TOLERANCE, available_providers,
                               compulsory_bytes, copy_workload, device_name, first_call_seconds, format_size,
                               fresh_compilations, loss_fn, loss_shape, machine, make_inputs, median_seconds,
                               outputs, parse_size, peak_extra_bytes, reference_error, workload)

# default sweeps, launch-bound to bandwidth-bound; --quick: a smoke run of a few cells
SIZES = {"cpu": ["64K", "256K", "1M", "4M", "16M"], "cuda": ["64K", "1M", "4M", "16M", "64M", "256M"]}
QUICK_SIZES = {"cpu": ["64K", "1M"], "cuda": ["1M", "16M"]}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16", "float16"]}
REPEATS = {"cpu": 10, "cuda": 20}


def _list(text, choices, what):
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in choices]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
                                         f"choose from {', '.join(choices)}")
    return items


def _sizes(text):
    try:
        sizes = [parse_size(x) for x in text.split(",")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return [format_size(n) for n in sizes]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to run (default: cuda when a GPU is present, else cpu)")
    parser.add_argument("--quick", action="store_true", help="a small subset (float32, two sizes, fewer repeats)")
    parser.add_argument("--sizes", type=_sizes, help="elements per tensor, e.g. 64K,1M,16M")
    parser.add_argument("--providers", type=lambda s: _list(s, PROVIDERS, "provider"),
                        help=f"a subset of {','.join(PROVIDERS)} (reference is always timed: the baseline)")
    parser.add_argument("--dtypes", type=lambda s: _list(s, list(DTYPES), "dtype"), help="float32,bfloat16,float16")
    parser.add_argument("--losses", type=lambda s: _list(s, LOSSES, "loss"), help=",".join(LOSSES))
    parser.add_argument("--modes", type=lambda s: _list(s, MODES, "mode"), help=",".join(MODES))
    parser.add_argument("--repeats", type=int, default=None, help="timed calls of each provider; the median is reported")
    parser.add_argument("--back-to-back", action="store_true",
                        help="each provider's repeats in a row (warm cache on the CPU) instead of taking turns")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                        help="parent folder of the results folder <device>-<date>")
    parser.add_argument("--folder", help="write into this folder instead of <out>/<device>-<date> "
                                         "(make device-check: next to its own files)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU on this machine")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    have = available_providers(args.device)
    wanted = args.providers or list(PROVIDERS)
    missing = [p for p in wanted if p not in have]
    if args.providers and missing:
        parser.error(f"--providers: {', '.join(missing)} not available on {args.device} (available: {', '.join(have)})")
    args.providers = ["reference"] + [p for p in wanted if p in have and p != "reference"]
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)[args.device]
    args.dtypes = args.dtypes or (["float32"] if args.quick else DEFAULT_DTYPES[args.device])
    args.losses = args.losses or list(LOSSES)
    args.modes = args.modes or list(MODES)
    args.repeats = args.repeats or (5 if args.quick else REPEATS[args.device])
    return args


def measure_cell(loss, mode, dtype, size, args):
    """Every provider on one (loss, mode, dtype, size), timed in one run with the copy."""
    device = args.device
    shape = loss_shape(loss, size)
    x, t = make_inputs(loss, shape, DTYPES[dtype], device)
    nbytes = compulsory_bytes(mode, x, t, loss)
    fresh_compilations()
    steps = {p: workload(loss, p, mode, x, t) for p in args.providers}
    first = {p: first_call_seconds(step, device) for p, step in steps.items()}  # compiles
    peaks = {p: peak_extra_bytes(step, device) for p, step in steps.items()}
    want = outputs(loss_fn(loss, "reference"), mode, x, t)
    errors = {p: 0.0 if p == "reference" else reference_error(outputs(loss_fn(loss, p), mode, x, t), want)
              for p in args.providers}
    del want
    steps["copy"] = copy_workload(nbytes, device)
    times = median_seconds(steps, args.repeats, device, back_to_back=args.back_to_back)
    copy_s = times.pop("copy")
    rows = []
    for p, seconds in times.items():
        rows.append({
            "loss": loss, "mode": mode, "dtype": dtype, "numel": x.numel(), "shape": list(shape),
            # the size measured: the one asked for, or what its shape rounded it to
            "size": size if parse_size(size) == x.numel() else format_size(x.numel()),
            "provider": p, "median_ms": seconds * 1e3,
            "speedup_vs_eager": times["reference"] / seconds,
            "speedup_vs_compile": times["compile"] / seconds if "compile" in times else None,
            "compulsory_bytes": nbytes,
            "bandwidth_gbs": nbytes / seconds / 1e9,
            "copy_ms": copy_s * 1e3,
            "bandwidth_fraction": copy_s / seconds,
            "peak_extra_mb": None if peaks[p] is None else peaks[p] / 2**20,
            "first_call_s": first[p],
            "reference_error": errors[p],
            "agrees_with_reference": errors[p] <= REFERENCE_TOLERANCE[DTYPES[dtype]],
        })
    del x, t, steps
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def _replace(path, text):
    """Writes path whole or not at all: a run killed while writing leaves the previous version."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def save(folder, info, rows):
    """results.json and results.md from the cells measured so far; returns the Markdown."""
    table = report.markdown(rows, info)
    _replace(os.path.join(folder, "results.json"), json.dumps({"machine": info, "results": rows}, indent=1))
    _replace(os.path.join(folder, "results.md"), table)
    return table


def main(argv=None):
    args = parse_args(argv)
    info = machine(args.device)
    cells = [(loss, mode, dtype, size) for loss in args.losses for mode in args.modes for dtype in args.dtypes
             for size in args.sizes]
    info.update(repeats=args.repeats, timing="back to back" if args.back_to_back else "providers take turns",
                timer="CUDA events, L2 flushed before each call" if args.device == "cuda" else "wall clock",
                command="python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
                cells=len(cells))  # planned: a stopped run's results.json says how far it got
    folder = args.folder or os.path.join(args.out, f"{device_name(info)}-{info['date']}"
                                         + ("-quick" if args.quick else ""))
    os.makedirs(folder, exist_ok=True)
    for name in report.PLOTS:  # a previous run's plots in the folder would show other results
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    rows = []
    progress = report.Progress(len(cells))
    for loss, mode, dtype, size in cells:
        progress.show(f"{loss} {mode} {dtype} {size}")
        rows.extend(measure_cell(loss, mode, dtype, size, args))
        table = save(folder, info, rows)
    progress.done()

    print(table)
    written = ["results.json", "results.md"]
    if not args.no_plots:
        written += report.plots(rows, info, folder)
    print(f"written under {folder}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
