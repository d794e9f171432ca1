"""The multi-class losses at the shapes of their issue, against torch's and MONAI's own:

    python -m benchmarks.multiclass [--loss cross_entropy|dice_ce] [--shapes 8,4,256,256 2,14,64,128,128]
                                    [--lambda-tv 0] [--repeats 9] [--device cpu] [--out DIR]

Over float32 logits (B, C, spatial...) and int64 label maps, mean, forward (no autograd) and
forward+backward (into input.grad). cross_entropy (about a tenth of the pixels ignore_index):
providers torch.nn.functional.cross_entropy (eager: torch's own kernels), pylosses' reference
(eager), torch.compile of that reference, native (and triton on a GPU). dice_ce,
DiceCELoss(softmax=True, to_onehot_y=True) on labels (B, 1, spatial...): providers MONAI's
DiceCELoss (eager), pylosses' reference backend, torch.compile of MONAI's DiceCELoss, native;
with --lambda-tv, MONAI's loss plus that times the total variation of the softmax by torch ops
(reference.softmax_total_variation), eager and compiled, against pylosses' dice_ce_loss(lambda_tv=).
The providers take turns call by call
in one run (benchmarks.common.median_seconds), with a copy of the loss's compulsory bytes (logits
and labels read, twice for dice_ce with backward, the gradient written) as the machine's yardstick. The table gives each median,
native's speed-up over torch and over torch.compile, native's and torch.compile's bandwidth as a
fraction of the copy's, and the ceiling (torch.compile over the copy: the most any kernel can
gain over it on this machine). It prints Markdown, and with --out writes DIR/multiclass-<loss>.md.
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import pylosses
from benchmarks.common import ceiling_columns, ceiling_row, compulsory_bytes, machine, step_of, command_line


PEER = {"cross_entropy": "torch", "dice_ce": "monai"}  # the eager peer each loss replaces


def providers(loss: str, device: str):
    """The eager peer (MONAI's where MONAI is installed: the GPU machine has none; its column is
    then n/a) and pylosses' backends that run on `device` (Triton on a GPU only)."""
    peer = [PEER[loss]]
    if peer == ["monai"]:
        try:
            import monai.losses  # noqa: F401
        except ImportError:
            peer = []
    have = pylosses.available_backends(device)
    return peer + [p for p in ("reference", "compile", "native", "triton")
                           if p in have and not (p == "triton" and device == "cpu")]


def inputs(loss: str, shape, device: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    if loss == "cross_entropy":
        t = torch.where(torch.rand(t.shape, generator=g) < 0.1, torch.full_like(t, -100), t)
    else:
        t = t.unsqueeze(1)  # MONAI's label map (B, 1, spatial...)
    return x.to(device), t.to(device)


def _monai_dice_ce(lambda_tv: float):
    """MONAI's DiceCELoss, plus lambda_tv times the softmax's total variation by torch ops."""
    import monai.losses

    dice_ce = monai.losses.DiceCELoss(softmax=True, to_onehot_y=True)
    if lambda_tv == 0:
        return dice_ce
    return lambda a, b: dice_ce(a, b) + pylosses.reference.softmax_total_variation(a, lambda_tv, a.dim() - 2, "mean")


def steps(loss: str, mode: str, x: torch.Tensor, t: torch.Tensor, names, lambda_tv: float = 0.0):
    def make(provider):
        if loss == "cross_entropy":
            if provider == "torch":
                return step_of(F.cross_entropy, mode, x, t)
            return step_of(lambda a, b: pylosses.cross_entropy(a, b, backend=provider), mode, x, t)
        if provider in ("monai", "compile"):
            fn = _monai_dice_ce(lambda_tv)
            return step_of(torch.compile(fn) if provider == "compile" else fn, mode, x, t)
        return step_of(lambda a, b: pylosses.dice_ce_loss(a, b, softmax=True, to_onehot_y=True, lambda_tv=lambda_tv,
                                                          backend=provider), mode, x, t)
    return {p: make(p) for p in names}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.multiclass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="cross_entropy", choices=sorted(PEER))
    parser.add_argument("--shapes", nargs="+", default=["8,4,256,256", "2,14,64,128,128"])
    parser.add_argument("--lambda-tv", type=float, default=0.0, help="dice_ce: its lambda_tv (0: none)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    names = providers(args.loss, args.device)
    info = machine(args.device)
    what = ("Cross-entropy, float32 logits, int64 labels (a tenth ignored), mean" if args.loss == "cross_entropy" else
            "DiceCELoss(softmax=True, to_onehot_y=True), float32 logits, int64 labels (B, 1, ...), mean; compile: "
            "torch.compile of MONAI's DiceCELoss")
    if args.loss == "dice_ce" and args.lambda_tv:
        what += (f"; lambda_tv={args.lambda_tv} (MONAI's provider and its compile add the softmax's total "
                 "variation by torch ops)")
    lines = [f"{what}. Machine: "
             f"{info.get('gpu', info['cpu'])}, {info['cpu_count']} cores ({info['torch_threads']} torch threads), "
             f"torch {info['torch']}; {info['date']}. Median of {args.repeats} calls, providers taking turns. "
             f"Command: `{command_line('benchmarks.multiclass', argv)}`.", "",
             "| shape | mode | " + " | ".join(f"{p} ms" for p in names) + ceiling_columns(PEER[args.loss]),
             "|---|---|" + "---:|" * (len(names) + 6)]
    print("\n".join(lines), flush=True)
    for text in args.shapes:
        shape = tuple(int(s) for s in text.split(","))
        x, t = inputs(args.loss, shape, args.device)
        for mode in ("forward", "forward+backward"):
            nbytes = compulsory_bytes(mode, x, t, args.loss + "_loss")
            row = f"| {text} | {mode} | " + ceiling_row(steps(args.loss, mode, x, t, names, args.lambda_tv), nbytes, PEER[args.loss],
                                                        args.repeats, args.device)
            lines.append(row)
            print(row, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"multiclass-{args.loss}.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
