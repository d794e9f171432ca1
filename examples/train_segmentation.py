"""Train a small U-Net on a synthetic segmentation set with pylosses.SegmentationLoss.

    python examples/train_segmentation.py [--epochs 8] [--backend auto] [--compile] [--amp]
                                          [--device cpu|cuda] [--samples 768] [--size 64]
                                          [--log-dir runs/segmentation]

The data are generated here (discs and rectangles on a noisy, shaded background; no
downloads), and the model predicts logits, so the loss is SegmentationLoss(from_logits=True):
0.7 * BCE + 0.3 * total variation of the predicted probabilities. The loop applies the seed
tutorial's practices: gradient clipping (clip_grad_norm_), a guard that stops with a clear
message when the loss or a gradient stops being finite, and TensorBoard logging of the loss, IoU
and gradient norm (a CSV file when tensorboard is not installed). On the CPU it takes about a
minute.

--amp runs the forward under autocast: float16 with a GradScaler on CUDA, bfloat16 on the CPU.
--compile compiles the model and the loss with torch.compile(fullgraph=True).
"""

import argparse
import csv
import math
import os
import sys
import time
from typing import Dict, List

import torch
from torch import nn

import pylosses


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN or infinite: training stops rather than corrupt the model."""


# data ---------------------------------------------------------------------------------------


def make_dataset(n: int, size: int = 48, seed: int = 0):
    """n grey images (n, 1, size, size) and their masks (bool): one to three discs or rectangles,
    brighter than a shaded background, with Gaussian noise on top."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    images = torch.empty(n, 1, size, size)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.bool)
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cy, cx = (torch.rand(2, generator=g) * (size - 16) + 8).tolist()
            r = float(torch.rand(1, generator=g) * size / 8 + size / 12)
            if torch.rand(1, generator=g) < 0.5:
                mask |= (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
            else:
                mask |= ((ys - cy).abs() <= r) & ((xs - cx).abs() <= 0.7 * r)
        shade = 0.3 * (torch.rand(1, generator=g) * ys / size + torch.rand(1, generator=g) * xs / size)
        image = shade + 0.5 * mask + 0.25 * torch.randn(size, size, generator=g)
        images[i, 0] = image
        masks[i, 0] = mask
    return images, masks


# model --------------------------------------------------------------------------------------


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyUNet(nn.Module):
    """Two levels down, one bottleneck, two levels up with skip connections; logits out."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.down1, self.down2 = _block(1, width), _block(width, 2 * width)
        self.bottom = _block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), _block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2), _block(2 * width, width)
        self.head = nn.Conv2d(width, 1, 1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        b = self.bottom(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(b), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.head(u1)


# training -----------------------------------------------------------------------------------


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Intersection over union of the predicted foreground (logit > 0) with the masks."""
    pred = logits > 0
    inter = (pred & masks).sum().item()
    union = (pred | masks).sum().item()
    return inter / union if union else 1.0


class Logger:
    """TensorBoard when it is installed, else a CSV file; either under log_dir (None: no log)."""

    def __init__(self, log_dir):
        self.writer = self.csv = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir)
            self.where = f"TensorBoard logs in {log_dir} (tensorboard --logdir {log_dir})"
        except ImportError:
            os.makedirs(log_dir, exist_ok=True)
            path = os.path.join(log_dir, "metrics.csv")
            self.file = open(path, "w", newline="")
            self.csv = csv.writer(self.file)
            self.csv.writerow(["tag", "step", "value"])
            self.where = f"tensorboard is not installed: metrics in {path}"

    def log(self, tag: str, value: float, step: int) -> None:
        if self.writer:
            self.writer.add_scalar(tag, value, step)
        elif self.csv:
            self.csv.writerow([tag, step, value])

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        elif self.csv:
            self.file.close()


def _progress(epoch: int, epochs: int, done: int, total: int, loss: float) -> None:
    if not sys.stderr.isatty():
        return
    bar = "#" * (20 * done // total)
    print(f"\repoch {epoch}/{epochs} [{bar:<20}] {done}/{total} loss {loss:.4f}", end="", file=sys.stderr, flush=True)


def train(epochs: int = 6, backend: str = "auto", compile: bool = False, amp: bool = False, device: str = "cpu",
          n_train: int = 384, n_val: int = 64, size: int = 48, batch_size: int = 16, lr: float = 3e-3,
          max_grad_norm: float = 1.0, seed: int = 0, log_dir=None, verbose: bool = True) -> List[Dict[str, float]]:
    """Trains TinyUNet and returns one record a step ({"epoch", "step", "loss", "grad_norm"}) and
    one an epoch ({"epoch", "train_loss", "val_iou"}), in order."""
    torch.manual_seed(seed)
    images, masks = make_dataset(n_train + n_val, size, seed)
    images, masks = images.to(device), masks.to(device)
    train_x, train_y, val_x, val_y = images[:n_train], masks[:n_train], images[n_train:], masks[n_train:]
    model = TinyUNet().to(device)
    criterion = pylosses.SegmentationLoss(alpha=0.7, beta=0.3, from_logits=True, backend=backend)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    amp_dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=amp and amp_dtype == torch.float16)

    def forward_loss(x, y):
        return criterion(model(x), y)

    step_loss = torch.compile(forward_loss, fullgraph=True) if compile else forward_loss
    logger = Logger(log_dir)
    if verbose and log_dir:
        print(logger.where)
    history, step = [], 0
    order = torch.Generator().manual_seed(seed + 1)
    for epoch in range(1, epochs + 1):
        model.train()
        start, total, count = time.perf_counter(), 0.0, 0
        batches = torch.randperm(n_train, generator=order).split(batch_size)
        for i, idx in enumerate(batches):
            idx = idx.to(device)
            with torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=amp):
                loss = step_loss(train_x[idx], train_y[idx])
            if not torch.isfinite(loss):
                raise NonFiniteError(f"the loss became {loss.item()} at epoch {epoch}, step {step}: "
                                     "lower the learning rate, or check the data and the model's output")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            try:  # clips, and raises on a NaN or infinite gradient norm
                grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm, error_if_nonfinite=True))
            except RuntimeError as error:
                if scaler.is_enabled():  # float16 overflow: GradScaler skips the step and lowers its scale
                    grad_norm = math.inf
                else:
                    raise NonFiniteError(f"a gradient became non-finite at epoch {epoch}, step {step}: {error}") from None
            scaler.step(optimizer)
            scaler.update()
            value = loss.item()  # (a host sync on a GPU: the price of the guard and the log)
            history.append({"epoch": epoch, "step": step, "loss": value, "grad_norm": grad_norm})
            logger.log("train/loss", value, step)
            logger.log("train/grad_norm", grad_norm, step)
            total, count, step = total + value, count + 1, step + 1
            if verbose:
                _progress(epoch, epochs, i + 1, len(batches), value)
        model.eval()
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp_dtype, enabled=amp):
            val_iou = iou(model(val_x).float(), val_y)
        history.append({"epoch": epoch, "train_loss": total / count, "val_iou": val_iou})
        logger.log("val/iou", val_iou, epoch)
        logger.log("train/epoch_loss", total / count, epoch)
        if verbose:
            if sys.stderr.isatty():
                print(file=sys.stderr)
            print(f"epoch {epoch}/{epochs}: loss {total / count:.4f}, validation IoU {val_iou:.3f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    logger.close()
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--backend", default="auto", choices=pylosses.functional.BACKENDS)
    parser.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) the model and loss")
    parser.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=768, help="training images (64 more for validation)")
    parser.add_argument("--size", type=int, default=64, help="image side, a multiple of 4")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=os.path.join("runs", "segmentation"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.samples < 1 or args.batch_size < 1:
        parser.error(f"--samples and --batch-size must be at least 1, got {args.samples} and {args.batch_size}")
    if args.size < 16 or args.size % 4:
        parser.error(f"--size must be a multiple of 4 and at least 16 (the U-Net halves it twice), got {args.size}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA GPU")
    try:
        train(args.epochs, args.backend, args.compile, args.amp, args.device, n_train=args.samples, size=args.size,
              batch_size=args.batch_size, lr=args.lr, seed=args.seed, log_dir=args.log_dir)
    except NonFiniteError as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
