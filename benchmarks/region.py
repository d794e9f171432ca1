"""The region losses at the shapes of their issue, against MONAI's own classes:

    python -m benchmarks.region [--shapes 16,3,256,256 2,4,96,96,96] [--repeats 9] [--device cpu] [--out DIR]

Dice, Tversky and generalised Dice on logits (sigmoid=True) with 0/1 float targets, float32,
and Dice + BCE (dice_bce_loss; its peer MONAI's DiceLoss plus torch's BCEWithLogitsLoss),
forward (no autograd) and forward+backward (into input.grad); providers: MONAI's class (eager),
pylosses' reference (eager), torch.compile of that reference, native (and triton on a GPU),
taking turns call by call in one run (benchmarks.common.median_seconds), with a copy of the
loss's compulsory bytes (input and target read, twice with backward, and the gradient written)
as the machine's yardstick. The table gives each median, native's speed-up over MONAI and over
torch.compile, native's and torch.compile's bandwidth as a fraction of the copy's, and the
ceiling: the speed-up over torch.compile of a kernel that ran at copy speed, the most any kernel
can reach on this machine. It prints Markdown, and with --out writes it to DIR/region.md.
"""

import argparse
import os
import sys

import torch

import pylosses
from benchmarks.common import ceiling_columns, ceiling_row, compulsory_bytes, machine, step_of, command_line


def _monai(name: str):
    """A maker of MONAI's loss class `name` with sigmoid=True (imported when made)."""
    def make():
        import monai.losses

        return getattr(monai.losses, name)(sigmoid=True)
    return make


def _monai_dice_plus_bce():
    import monai.losses

    dice, bce = monai.losses.DiceLoss(sigmoid=True), torch.nn.BCEWithLogitsLoss()
    return lambda x, t: dice(x, t) + bce(x, t)


# name: (the peer's maker, pylosses' function, its options)
LOSSES = {"dice": (_monai("DiceLoss"), pylosses.dice_loss, {"sigmoid": True}),
          "tversky": (_monai("TverskyLoss"), pylosses.tversky_loss, {"sigmoid": True}),
          "generalized_dice": (_monai("GeneralizedDiceLoss"), pylosses.generalized_dice_loss, {"sigmoid": True}),
          "dice_bce": (_monai_dice_plus_bce, pylosses.dice_bce_loss, {})}


def providers(device: str):
    """MONAI's class where MONAI is installed (the GPU machine has none), and pylosses' backends
    that run on `device` (Triton on a GPU only: its interpreter is not a measurement)."""
    try:
        import monai.losses  # noqa: F401
        names = ["monai"]
    except ImportError:
        names = []
    have = pylosses.available_backends(device)
    return names + [p for p in ("reference", "compile", "native", "triton")
                    if p in have and not (p == "triton" and device == "cpu")]


def inputs(shape, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    t = (torch.rand(shape, generator=g) > 0.5).float()
    return x.to(device), t.to(device)


def steps(loss: str, mode: str, x: torch.Tensor, t: torch.Tensor, names):
    make_peer, fn, options = LOSSES[loss]

    def make(provider):
        if provider == "monai":
            return step_of(make_peer(), mode, x, t)
        return step_of(lambda a, b: fn(a, b, **options, backend=provider), mode, x, t)
    return {p: make(p) for p in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.region", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["16,3,256,256", "2,4,96,96,96"])
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = providers(args.device)
    info = machine(args.device)
    lines = [f"Region losses on logits (sigmoid=True), 0/1 float32 targets, float32, mean. Machine: "
             f"{info.get('gpu', info['cpu'])}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), "
             f"torch {info['torch']}; {info['date']}. Median of {args.repeats} calls, providers taking turns. "
             f"Command: `{command_line('benchmarks.region', argv)}`.", "",
             "| loss | shape | mode | " + " | ".join(f"{p} ms" for p in names) + ceiling_columns("MONAI"),
             "|---|---|---|" + "---:|" * (len(names) + 6)]
    print("\n".join(lines), flush=True)
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split(","))
        x, t = inputs(shape, args.device)
        for loss in args.losses:
            for mode in ("forward", "forward+backward"):
                timed = steps(loss, mode, x, t, names)
                nbytes = compulsory_bytes(mode, x, t, LOSSES[loss][1].__name__)
                row = f"| {loss} | {text} | {mode} | " + ceiling_row(timed, nbytes, "monai", args.repeats, args.device)
                lines.append(row)
                print(row, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "region.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
