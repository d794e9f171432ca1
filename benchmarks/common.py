"""What the benchmark CLI and the pytest-benchmark suites share: the providers, the losses,
the workloads (forward, forward+backward) and the machine's description."""

import datetime
import os
import platform
import time
from typing import Callable, Dict

import torch

import pylosses

LOSSES = ("segmentation_loss", "mse_loss")
PROVIDERS = ("reference", "jit", "compile", "native")  # eager reference first: the baseline
MODES = ("forward", "forward+backward")


def loss_fn(loss: str, provider: str) -> Callable:
    """provider's loss(input, target) with the defaults (mean; alpha 0.7, beta 0.3 on probabilities)."""
    if loss == "mse_loss":
        return lambda x, t: pylosses.mse_loss(x, t, backend=provider)
    return lambda x, t: pylosses.segmentation_loss(x, t, backend=provider)


def make_inputs(loss: str, shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    if loss == "mse_loss":
        x = torch.randn(shape, generator=g, device=device, dtype=dtype)
        t = torch.randn(shape, generator=g, device=device, dtype=dtype)
    else:  # probabilities and a 0/1 mask, as a segmentation model and its labels give them
        x = torch.rand(shape, generator=g, device=device, dtype=dtype).clamp_(1e-4, 1 - 1e-4)
        t = (torch.rand(shape, generator=g, device=device) > 0.5).to(dtype)
    return x, t


def workload(loss: str, provider: str, mode: str, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """One step of `mode`: forward alone (no autograd), or forward and backward into input.grad
    (set to None first, as optimizer.zero_grad() does)."""
    fn = loss_fn(loss, provider)
    if mode == "forward":
        x = x.detach()

        def step():
            with torch.no_grad():
                fn(x, t)
        return step
    x = x.detach().requires_grad_(True)

    def step():
        x.grad = None
        fn(x, t).backward()
    return step


def compulsory_bytes(mode: str, x: torch.Tensor, t: torch.Tensor) -> int:
    """Bytes a perfect kernel must move: read input and target, and for backward write the gradient."""
    read = x.numel() * x.element_size() + t.numel() * t.element_size()
    return read + (x.numel() * x.element_size() if mode == "forward+backward" else 0)


def copy_workload(nbytes: int, device="cpu") -> Callable[[], None]:
    """A copy that moves nbytes in all (half read, half written): the machine's bandwidth yardstick."""
    src = torch.ones(max(nbytes // 2 // 4, 1), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def median_seconds(steps: Dict[str, Callable[[], None]], repeats: int, warmup: int = 3, sync=lambda: None,
                   back_to_back: bool = False) -> Dict[str, float]:
    """The median time of each step. By default the steps take turns, one timed call each a
    round, so that a machine whose speed drifts (a shared one) slows them all alike and their
    ratios hold; back_to_back runs each step's repeats in a row instead (its data stays in cache)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    times = {name: [] for name in steps}
    order = [name for name in steps for _ in range(repeats)] if back_to_back else list(steps) * repeats
    for name in order:
        start = time.perf_counter()
        steps[name]()
        sync()
        times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def machine() -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pylosses": pylosses.__version__,
        "device": "cpu",
        "date": datetime.date.today().isoformat(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info
