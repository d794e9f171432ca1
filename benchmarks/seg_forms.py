"""The segmentation loss at one shape in each of its forms, native against eager and torch.compile:

    python -m benchmarks.seg_forms [--shape 16,1,512,512] [--repeats 15] [--device cpu] [--out DIR]

Probabilities and logits, float (0/1 values) and bool targets, forward (no autograd) and
forward+backward (into input.grad), float32; the providers take turns, call by call, in one run
(benchmarks.common.median_seconds), with a copy of the loss's compulsory bytes (input and target
read, the gradient written) as the machine's yardstick. The table gives each median, native's
speed-up over the others, native's and torch.compile's fraction of the copy's bandwidth, and the
ceiling (torch.compile over the copy: the most any kernel can gain over it on this machine). `make bench` sweeps sizes on one form; this is the table of issue 13's targets.
It prints Markdown, and with --out writes it to DIR/seg-forms.md.
"""

import argparse
import os
import sys

import torch

import pylosses
from benchmarks.common import ceiling_columns, ceiling_row, command_line, compulsory_bytes, machine

PROVIDERS = ("reference", "compile", "native")


def inputs(form: str, target: str, shape, device: str):
    g = torch.Generator().manual_seed(0)
    if form == "logits":
        x = torch.randn(shape, generator=g)
    else:
        x = torch.rand(shape, generator=g).clamp_(1e-3, 1 - 1e-3)
    mask = torch.rand(shape, generator=g) > 0.5
    t = mask.float() if target == "float" else mask
    return x.to(device), t.to(device)


def steps(form: str, mode: str, x: torch.Tensor, t: torch.Tensor):
    logits = form == "logits"

    def make(provider):
        if mode == "forward":
            def step():
                with torch.no_grad():
                    pylosses.segmentation_loss(x, t, from_logits=logits, backend=provider)
            return step
        leaf = x.detach().requires_grad_(True)

        def step():
            leaf.grad = None
            pylosses.segmentation_loss(leaf, t, from_logits=logits, backend=provider).backward()
        return step
    return {p: make(p) for p in PROVIDERS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seg_forms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="16,1,512,512")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split(","))
    info = machine(args.device)
    try:
        from pylosses import _C
        isa = _C.cpu_capability
    except ImportError:
        isa = "(no extension built)"
    where = (f"{info['gpu']}, CUDA {info['cuda']}, Triton {info['triton']}" if args.device == "cuda" else
             f"{info['cpu']}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), pylosses CPU kernels "
             f"built for {isa}")
    lines = [f"Segmentation loss, shape {shape}, float32, alpha 0.7, beta 0.3, mean. Machine: {where}, torch "
             f"{info['torch']}; {info['date']}. Median of {args.repeats} calls, providers "
             f"taking turns. Command: `{command_line('benchmarks.seg_forms', argv)}`.", "",
             "| form | target | mode | eager ms | compile ms | native ms" + ceiling_columns("eager"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for form in ("probabilities", "logits"):
        for target in ("float", "bool"):
            x, t = inputs(form, target, shape, args.device)
            for mode in ("forward", "forward+backward"):
                row = f"| {form} | {target} | {mode} | " + ceiling_row(
                    steps(form, mode, x, t), compulsory_bytes(mode, x, t), "reference", args.repeats, args.device)
                lines.append(row)
                print(row, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "seg-forms.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
