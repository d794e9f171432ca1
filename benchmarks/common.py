"""What the benchmark CLI and the pytest-benchmark suites share: the providers, the losses, the
workloads (forward, forward+backward), the sizes, the timers and the machine's description."""

import datetime
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch

import pylosses
from benchmarks.report import slug

LOSSES = ("segmentation_loss", "mse_loss", "dice_loss", "cross_entropy", "dice_ce_loss")
# The multi-class losses take logits of this many classes against a label map (int64 class
# indices), the class count of issue 15's 2-D shape (8, 4, 256, 256); the others one channel.
CLASSES = {"cross_entropy": 4, "dice_ce_loss": 4}
PROVIDERS = ("reference", "jit", "compile", "native", "triton")  # eager reference first: the baseline
MODES = ("forward", "forward+backward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_size(text: str) -> int:
    """"64K", "16M", "1G" or a plain number of elements -> int."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"a size is a number of elements such as 65536, 64K, 16M or 1G; got {text!r}")
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2).upper()]


def format_size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def shape_for(numel: int, classes: int = 1):
    """A batch of square images of `classes` channels with about numel elements in all:
    (B, classes, S, S), S a power of two up to 1024 (the shape of a segmentation model's
    output). MSE uses it too."""
    side = 1
    while side < 1024 and classes * (2 * side) ** 2 <= numel:
        side *= 2
    return (max(numel // (classes * side * side), 1), classes, side, side)


def loss_shape(loss: str, size: str):
    """The input's shape for `loss` at a size such as "16M" (elements of the input)."""
    return shape_for(parse_size(size), CLASSES.get(loss, 1))


def available_providers(device: str) -> List[str]:
    have = pylosses.available_backends(device)
    return [p for p in PROVIDERS if p in have]


def loss_fn(loss: str, provider: str) -> Callable:
    """provider's loss(input, target) with the defaults (mean; alpha 0.7, beta 0.3 on probabilities)."""
    if loss == "mse_loss":
        return lambda x, t: pylosses.mse_loss(x, t, backend=provider)
    if loss == "dice_loss":  # on logits, as MONAI's DiceLoss(sigmoid=True)
        return lambda x, t: pylosses.dice_loss(x, t, sigmoid=True, backend=provider)
    if loss == "cross_entropy":  # as torch.nn.CrossEntropyLoss()
        return lambda x, t: pylosses.cross_entropy(x, t, backend=provider)
    if loss == "dice_ce_loss":  # as MONAI's DiceCELoss(softmax=True, to_onehot_y=True)
        return lambda x, t: pylosses.dice_ce_loss(x, t, softmax=True, to_onehot_y=True, backend=provider)
    return lambda x, t: pylosses.segmentation_loss(x, t, backend=provider)


def make_inputs(loss: str, shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    if loss == "mse_loss":
        x = torch.randn(shape, generator=g, device=device, dtype=dtype)
        t = torch.randn(shape, generator=g, device=device, dtype=dtype)
    elif loss in CLASSES:  # logits and a label map: (B, S, S) for cross-entropy, (B, 1, S, S) for DiceCE
        x = torch.randn(shape, generator=g, device=device, dtype=dtype)
        labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g, device=device)
        t = labels[:, 0] if loss == "cross_entropy" else labels
    elif loss == "dice_loss":  # logits and a 0/1 mask
        x = torch.randn(shape, generator=g, device=device, dtype=dtype)
        t = (torch.rand(shape, generator=g, device=device) > 0.5).to(dtype)
    else:  # probabilities and a 0/1 mask, as a segmentation model and its labels give them
        x = torch.rand(shape, generator=g, device=device, dtype=dtype).clamp_(1e-3, 1 - 1e-3)
        t = (torch.rand(shape, generator=g, device=device) > 0.5).to(dtype)
    return x, t


def workload(loss: str, provider: str, mode: str, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    """One step of `mode`: forward alone (no autograd), or forward and backward into input.grad
    (set to None first, as optimizer.zero_grad() does)."""
    return step_of(loss_fn(loss, provider), mode, x, t)


def step_of(call: Callable, mode: str, x: torch.Tensor, t) -> Callable[[], None]:
    """One step of call(x, t) in `mode`, as make_step's."""
    if mode == "forward":
        x = x.detach()

        def step():
            with torch.no_grad():
                call(x, t)
        return step
    x = x.detach().requires_grad_(True)

    def step():
        x.grad = None
        call(x, t).backward()
    # for peak_extra_bytes: the gradient a call leaves is freed by the next call's first line
    step.forget_gradient = lambda: setattr(x, "grad", None)
    return step


# The largest relative error (loss, and gradient with backward) at which a provider counts as
# computing the reference's loss: its kernels differ by rounding, a few ulp an element.
REFERENCE_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-3, torch.float16: 3e-2, torch.bfloat16: 3e-2}


def outputs(call: Callable, mode: str, x: torch.Tensor, t) -> List[torch.Tensor]:
    """call's loss, and in forward+backward its gradient of the input, in float64."""
    leaf = x.detach().requires_grad_(mode != "forward")
    with torch.set_grad_enabled(mode != "forward"):
        loss = call(leaf, t)
        grad = torch.autograd.grad(loss, leaf)[0] if mode != "forward" else None
    return [v.detach().double() for v in (loss, grad) if v is not None]


def reference_error(got: List[torch.Tensor], want: List[torch.Tensor]) -> float:
    """max over outputs() of |a - b| / |b| (norms) against the reference's: the check that what a
    row times computes the loss."""
    errors = []
    for a, b in zip(got, want):
        scale = torch.linalg.vector_norm(b)
        errors.append(float(torch.linalg.vector_norm(a - b) / (scale if scale > 0 else 1.0)))
    return max(errors)


def fresh_compilations() -> None:
    """Forgets what torch.compile has compiled: each cell compiles its own in its warm-up (which
    the medians leave out). Without it a run of many shapes and dtypes passes dynamo's recompile
    limit (8 a function), after which torch.compile runs the loss eagerly with only a warning,
    and 'compile' would time eager code."""
    torch._dynamo.reset()


def command_line(module: str, argv: Optional[List[str]]) -> str:
    """How `python -m module` was run, for a table's header: its arguments but --out (a path of
    this machine's)."""
    args = list(sys.argv[1:] if argv is None else argv)
    shown, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            shown.append(a)
    return " ".join(["python -m", module, *shown])


def ceiling_columns(peer: str) -> str:
    """The header cells that ceiling_row fills, after the providers' times."""
    return f" | copy ms | vs {peer} | vs compile | native of copy | compile of copy | ceiling vs compile |"


def ceiling_row(timed: Dict[str, Callable[[], None]], nbytes: int, peer: str, repeats: int, device: str) -> str:
    """The providers' median times in ms, a copy of nbytes timed with them, and native's ratios:
    over `peer` and torch.compile, its and torch.compile's fraction of the copy's bandwidth, and
    the ceiling (torch.compile over the copy: the most any kernel can gain over it here)."""
    names = list(timed)
    fresh_compilations()
    timed = dict(timed, copy=copy_workload(nbytes, device))
    ms = {p: 1e3 * s for p, s in median_seconds(timed, repeats, device).items()}

    def ratio(a, b):
        return f"{ms[a] / ms[b]:.2f}x" if a in ms and b in ms else "n/a"

    def of_copy(p):
        return f"{ms['copy'] / ms[p]:.0%}" if p in ms else "n/a"

    return (" | ".join(f"{ms[p]:.2f}" for p in names) + f" | {ms['copy']:.2f} | {ratio(peer, 'native')} | "
            f"{ratio('compile', 'native')} | {of_copy('native')} | {of_copy('compile')} | {ratio('compile', 'copy')} |")


# Losses whose gradient needs sums over the whole input first (Dice and its relatives): their
# forward+backward must read input and target twice, once for the sums and once for the gradient.
TWO_PASS = ("dice_loss", "tversky_loss", "generalized_dice_loss", "dice_ce_loss", "dice_bce_loss")  # sums first, then the gradient


def compulsory_bytes(mode: str, x: torch.Tensor, t: torch.Tensor, loss: str = "segmentation_loss") -> int:
    """Bytes a perfect kernel must move: read input and target (twice with backward for a
    two-pass loss), and for backward write the gradient."""
    read = x.numel() * x.element_size() + t.numel() * t.element_size()
    if mode != "forward+backward":
        return read
    return read * (2 if loss in TWO_PASS else 1) + x.numel() * x.element_size()


def copy_workload(nbytes: int, device="cpu") -> Callable[[], None]:
    """A copy that moves nbytes in all (half read, half written): the machine's bandwidth yardstick."""
    src = torch.ones(max(nbytes // 2 // 4, 1), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class _CudaTimer:
    """GPU time of one call, between two CUDA events, with the L2 cache flushed before it (by
    writing a buffer larger than any L2), so that no step finds its data cached by the last."""

    def __init__(self):
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        self.pending = []

    def time(self, step):
        self.flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        self.pending.append((start, end))
        return len(self.pending) - 1

    def seconds(self):
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in self.pending]


def median_seconds(steps: Dict[str, Callable[[], None]], repeats: int, device: str = "cpu", warmup: int = 3,
                   back_to_back: bool = False) -> Dict[str, float]:
    """The median time of each step. By default the steps take turns, one timed call each a
    round, so that a machine whose speed drifts (a shared one) slows them all alike and their
    ratios hold; back_to_back runs each step's repeats in a row instead (on the CPU its data
    then stays in cache). On a GPU each call is timed with CUDA events after an L2 flush."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync(device)
    order = [name for name in steps for _ in range(repeats)] if back_to_back else list(steps) * repeats
    times = {name: [] for name in steps}
    if device == "cuda":
        timer = _CudaTimer()
        slots = [(name, timer.time(steps[name])) for name in order]
        seconds = timer.seconds()
        for name, slot in slots:
            times[name].append(seconds[slot])
    else:
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def first_call_seconds(step: Callable[[], None], device: str) -> float:
    """The time of a step's first call: torch.compile's (and Triton's) compilation is in it."""
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - start


def peak_extra_bytes(step: Callable[[], None], device: str) -> Optional[int]:
    """GPU memory a step allocates beyond what was allocated before it, at its peak (with the
    gradient it writes); None on the CPU, where PyTorch does not count allocations."""
    if device != "cuda":
        return None
    getattr(step, "forget_gradient", lambda: None)()  # (else the last call's, freed, cancels its own)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def machine(device: str = "cpu") -> Dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "device": device,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pylosses": pylosses.__version__,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
    return info


def device_name(info: Dict[str, object]) -> str:
    """A file-name slug for the machine: the GPU, or the CPU and its core count."""
    return slug(str(info["gpu"]) if info["device"] == "cuda" else f"cpu {info['cpu']} {info['cpu_count']}c")


# the pytest-benchmark suites (bench_*.py) ----------------------------------------------------

BENCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BENCH_SIZES = {"cpu": ["64K", "1M", "4M"], "cuda": ["1M", "16M", "64M"]}[BENCH_DEVICE]
BENCH_DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}[BENCH_DEVICE]


def parametrize_cells(test):
    """The pytest-benchmark suites' table: every provider, mode, size and dtype."""
    import pytest

    for name, values in (("mode", MODES), ("size", BENCH_SIZES), ("dtype", BENCH_DTYPES), ("provider", PROVIDERS)):
        test = pytest.mark.parametrize(name, values)(test)
    return test


def run_benchmark(benchmark, loss: str, provider: str, mode: str, size: str, dtype: str) -> None:
    """Times provider's step with pytest-benchmark and records what was timed in extra_info.
    A provider not available here is skipped, saying why."""
    import pytest

    if provider not in available_providers(BENCH_DEVICE):
        pytest.skip(f"{provider} is not available on {BENCH_DEVICE}")
    shape = loss_shape(loss, size)
    x, t = make_inputs(loss, shape, DTYPES[dtype], BENCH_DEVICE)
    step = workload(loss, provider, mode, x, t)
    first = first_call_seconds(step, BENCH_DEVICE)  # compiles; not in the timing
    info = machine(BENCH_DEVICE)
    benchmark.extra_info.update(
        loss=loss, provider=provider, mode=mode, size=size, shape=list(shape), dtype=dtype,
        device=info.get("gpu", info["cpu"]), torch=info["torch"], triton=info["triton"], cuda=info["cuda"],
        compulsory_bytes=compulsory_bytes(mode, x, t, loss), first_call_s=first)

    def timed():
        step()
        sync(BENCH_DEVICE)  # a GPU step is timed to its end, not to its launch

    benchmark.pedantic(timed, rounds=15, warmup_rounds=2)
