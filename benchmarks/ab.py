"""Two builds of pylosses timed against each other: did a change cost anything?

    python -m benchmarks.ab BEFORE_TREE AFTER_TREE [--rounds 12] [--shape 16,1,512,512]

Each tree is a source checkout with its extension built in place (`make build`). Two builds of
one extension cannot share a process (they register the same ops), so each round runs one
process a tree, in alternating order, and each process times the native segmentation loss
(forward under no_grad, and forward+backward) on probabilities and on logits, for float, bool
and uint8 targets (hard labels): the median of 10 calls after 2 warm-ups. The table gives the medians over rounds and their ratio. A bool
target takes no range check in any build, so its ratio shows the noise of the machine.
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time


def time_tree(tree: str, shape, calls: int = 12) -> dict:
    """Median milliseconds a case, with pylosses imported from `tree` (run in its own process)."""
    sys.path.insert(0, tree)
    import torch

    import pylosses

    if not os.path.abspath(pylosses.__file__).startswith(os.path.abspath(tree)):
        raise SystemExit(f"pylosses came from {pylosses.__file__}, not from {tree}")
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(shape, generator=g).clamp_(1e-3, 1 - 1e-3)
    logits = torch.randn(shape, generator=g)
    hard = torch.rand(shape, generator=g) > 0.5
    pylosses.segmentation_loss(probs, hard, backend="native")  # the thread pool starts here, untimed
    medians = {}
    forms = (("probabilities", probs), ("logits", logits))
    targets = (("float", hard.float()), ("bool", hard), ("uint8", hard.to(torch.uint8)))
    for (form, x), (kind, target), mode in itertools.product(forms, targets, ("forward", "forward+backward")):
        xi = x.clone().requires_grad_(mode != "forward")
        times = []
        for _ in range(calls):
            xi.grad = None
            start = time.perf_counter()
            if mode == "forward":
                with torch.no_grad():
                    pylosses.segmentation_loss(xi, target, from_logits=form == "logits", backend="native")
            else:
                pylosses.segmentation_loss(xi, target, from_logits=form == "logits", backend="native").backward()
            times.append(time.perf_counter() - start)
        medians[f"{form}, {kind} target, {mode}"] = statistics.median(times[2:]) * 1e3
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--shape", default="16,1,512,512")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    if args.child:  # one tree, one process
        print(json.dumps(time_tree(args.before, shape)))
        return
    trees = [("before", args.before), ("after", args.after)]
    runs = {"before": [], "after": []}
    for r in range(args.rounds):
        for name, tree in trees if r % 2 == 0 else trees[::-1]:
            cmd = [sys.executable, "-m", "benchmarks.ab", tree, tree, "--shape", args.shape, "--child"]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    print(f"native segmentation loss, shape {shape}, float32 input; medians of {args.rounds} rounds\n")
    print("| case | before ms | after ms | after / before |\n|---|---:|---:|---:|")
    for case in runs["before"][0]:
        before = statistics.median(run[case] for run in runs["before"])
        after = statistics.median(run[case] for run in runs["after"])
        print(f"| {case} | {before:.2f} | {after:.2f} | {after / before:.3f} |")


if __name__ == "__main__":
    main()
