"""The benchmark CLI: python -m benchmarks [--shape 16,1,512,512] [--repeats 25] [--back-to-back] [--out DIR].

Times forward and forward+backward of every loss for every CPU provider, in one run (the
providers take turns, round by round), and prints (and writes as JSON and Markdown) the medians, the speed-ups over eager and over
torch.compile, and the fraction of the machine's bandwidth reached on the compulsory bytes
(a copy of the same number of bytes, timed in the same run).
"""

import argparse
import json
import os
import re

import pylosses
from benchmarks.common import (LOSSES, MODES, PROVIDERS, compulsory_bytes, copy_workload, machine, make_inputs,
                               median_seconds, workload)


def measure(shape, repeats, back_to_back=False):
    providers = [p for p in PROVIDERS if p in pylosses.available_backends("cpu")]
    rows = []
    for loss in LOSSES:
        x, t = make_inputs(loss, shape)
        for mode in MODES:
            nbytes = compulsory_bytes(mode, x, t)
            steps = {p: workload(loss, p, mode, x, t) for p in providers}
            steps["copy"] = copy_workload(nbytes)
            times = median_seconds(steps, repeats, back_to_back=back_to_back)
            copy_s = times.pop("copy")
            for p, seconds in times.items():
                rows.append({
                    "loss": loss, "mode": mode, "provider": p, "shape": list(shape), "dtype": "float32",
                    "median_ms": seconds * 1e3,
                    "speedup_vs_eager": times["reference"] / seconds,
                    "speedup_vs_compile": times["compile"] / seconds if "compile" in times else None,
                    "compulsory_bytes": nbytes,
                    "copy_ms": copy_s * 1e3,
                    "bandwidth_fraction": copy_s / seconds,
                })
    return rows


def markdown(rows, info):
    lines = [
        f"Machine: {info['cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads, "
        f"{info['cpu_capability']}); torch {info['torch']}, Python {info['python']}.",
        "",
        "| loss | mode | provider | median ms | vs eager | vs compile | of copy bandwidth |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs_compile = f"{r['speedup_vs_compile']:.2f}x" if r["speedup_vs_compile"] else "-"
        lines.append(f"| {r['loss']} | {r['mode']} | {r['provider']} | {r['median_ms']:.2f} | "
                     f"{r['speedup_vs_eager']:.2f}x | {vs_compile} | {100 * r['bandwidth_fraction']:.0f}% |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="16,1,512,512", help="input shape (default 16,1,512,512)")
    parser.add_argument("--repeats", type=int, default=25, help="timed repeats; the median is reported")
    parser.add_argument("--back-to-back", action="store_true",
                        help="run each provider's repeats in a row (warm cache) instead of taking turns")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="folder for the JSON and Markdown results")
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    info = machine()
    rows = measure(shape, args.repeats, args.back_to_back)
    info["timing"] = "back to back" if args.back_to_back else "providers take turns"
    table = markdown(rows, info)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    name = "cpu-" + re.sub(r"[^a-z0-9]+", "-", info["cpu"].lower()).strip("-") + f"-{info['cpu_count']}c"
    if args.back_to_back:
        name += "-back-to-back"
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"machine": info, "results": rows}, f, indent=1)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(table)
    print(f"written: {os.path.join(args.out, name)}.json and .md")


if __name__ == "__main__":
    main()
