"""The multi-class cross-entropy at the shapes of its issue, against torch's own:

    python -m benchmarks.multiclass [--shapes 8,4,256,256 2,14,64,128,128] [--repeats 9] [--device cpu] [--out DIR]

Cross-entropy over float32 logits (B, C, spatial...) and int64 label maps (about a tenth of the
pixels ignore_index), mean, forward (no autograd) and forward+backward (into input.grad);
providers: torch.nn.functional.cross_entropy (eager: torch's own kernels), pylosses' reference
(eager), torch.compile of that reference, native (and triton on a GPU), taking turns call by call
in one run (benchmarks.common.median_seconds), with a copy of the loss's compulsory bytes (logits
and labels read, the gradient written) as the machine's yardstick. The table gives each median,
native's speed-up over torch and over torch.compile, native's and torch.compile's bandwidth as a
fraction of the copy's, and the ceiling (torch.compile over the copy: the most any kernel can
gain over it on this machine). It prints Markdown, and with --out writes DIR/multiclass.md.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import pylosses
from benchmarks.common import ceiling_columns, ceiling_row, compulsory_bytes, machine, step_of


def providers(device: str):
    have = pylosses.available_backends(device)
    return ["torch"] + [p for p in ("reference", "compile", "native", "triton")
                        if p in have and not (p == "triton" and device == "cpu")]


def inputs(shape, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    t = torch.where(torch.rand(t.shape, generator=g) < 0.1, torch.full_like(t, -100), t)
    return x.to(device), t.to(device)


def steps(mode: str, x: torch.Tensor, t: torch.Tensor, names):
    def make(provider):
        if provider == "torch":
            return step_of(F.cross_entropy, mode, x, t)
        return step_of(lambda a, b: pylosses.cross_entropy(a, b, backend=provider), mode, x, t)
    return {p: make(p) for p in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multiclass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["8,4,256,256", "2,14,64,128,128"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = providers(args.device)
    info = machine(args.device)
    lines = [f"Cross-entropy, float32 logits, int64 labels (a tenth ignored), mean. Machine: "
             f"{info.get('gpu', info['cpu'])}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), "
             f"torch {info['torch']}; {info['date']}. Median of {args.repeats} calls, providers taking turns. "
             f"Command: `python -m benchmarks.multiclass --repeats {args.repeats}`.", "",
             "| shape | mode | " + " | ".join(f"{p} ms" for p in names) + ceiling_columns("torch"),
             "|---|---|" + "---:|" * (len(names) + 6)]
    print("\n".join(lines), flush=True)
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split(","))
        x, t = inputs(shape, args.device)
        for mode in ("forward", "forward+backward"):
            nbytes = compulsory_bytes(mode, x, t, "cross_entropy")
            row = f"| {text} | {mode} | " + ceiling_row(steps(mode, x, t, names), nbytes, "torch", args.repeats,
                                                        args.device)
            lines.append(row)
            print(row, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "multiclass.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
