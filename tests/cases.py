"""The tables of cases that the tests run over: one place to add a shape, a dtype or a loss."""

import dataclasses
import math
from typing import Callable, Tuple

import torch

import pylosses
from pylosses import reference

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
REDUCTIONS = ("mean", "sum", "none")
EPS = {dtype: torch.finfo(dtype).eps for dtype in FLOAT_DTYPES}


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the input and target are laid out in memory: the values are the same."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]


def _non_contiguous(t: torch.Tensor) -> torch.Tensor:
    # the same values, every other element of a tensor twice as wide
    if t.dim() == 0:
        return t
    wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    return wide[..., ::2]


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _misaligned(t: torch.Tensor) -> torch.Tensor:
    # contiguous, but one element into its storage: no vector access lines up with it
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    flat[1:] = t.reshape(-1)
    return flat[1:].view(t.shape)


CONTIGUOUS = Layout("contiguous", lambda t: t)
NON_CONTIGUOUS = Layout("strided", _non_contiguous)
CHANNELS_LAST = Layout("channels_last", _channels_last)
MISALIGNED = Layout("misaligned", _misaligned)


@dataclasses.dataclass(frozen=True)
class LossCase:
    """One loss configuration: how to call it on a backend and on the reference."""

    name: str
    spatial_dims: int = 0  # 0: MSE
    from_logits: bool = False
    alpha: float = 0.7
    beta: float = 0.3

    @property
    def is_seg(self) -> bool:
        return self.spatial_dims > 0

    def call(self, input, target, reduction, backend):
        if not self.is_seg:
            return pylosses.mse_loss(input, target, reduction=reduction, backend=backend)
        return pylosses.segmentation_loss(
            input, target, alpha=self.alpha, beta=self.beta, from_logits=self.from_logits,
            spatial_dims=self.spatial_dims, reduction=reduction, backend=backend,
        )

    def reference(self, input, target, reduction):
        if not self.is_seg:
            return reference.mse_loss(input, target, reduction)
        return reference.segmentation_loss(
            input, target, self.alpha, self.beta, self.from_logits, self.spatial_dims, reduction
        )

    def make_input(self, shape, dtype, generator) -> torch.Tensor:
        if not self.is_seg:
            return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        if self.from_logits:
            return (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
        # probabilities away from 0 and 1, where BCE's gradient is moderate and every term of the
        # gradient (the TV's included) is visible at the tolerance
        return (0.02 + 0.96 * torch.rand(shape, generator=generator, dtype=torch.float64)).to(dtype)

    def make_target(self, shape, dtype, generator) -> torch.Tensor:
        if not self.is_seg:
            return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        soft = torch.rand(shape, generator=generator, dtype=torch.float64)
        if dtype == torch.bool:
            return soft > 0.5
        if dtype == torch.uint8:
            return (soft > 0.5).to(torch.uint8)
        return soft.to(dtype)


MSE = LossCase("mse")
SEG = LossCase("seg2d", spatial_dims=2)
SEG_LOGITS = LossCase("seg2d_logits", spatial_dims=2, from_logits=True)
SEG3D = LossCase("seg3d", spatial_dims=3)
SEG3D_LOGITS = LossCase("seg3d_logits", spatial_dims=3, from_logits=True)
SEG_TV_ONLY = LossCase("seg2d_tv_only", spatial_dims=2, alpha=0.0, beta=1.0)
SEG_BCE_ONLY = LossCase("seg2d_bce_only", spatial_dims=2, alpha=1.0, beta=0.0)
SEG3D_TV_ONLY = LossCase("seg3d_tv_only", spatial_dims=3, from_logits=True, alpha=0.0, beta=1.0)

# shapes by loss kind: odd sizes, size-1 axes, empty tensors
MSE_SHAPES = [(), (7,), (3, 5, 7), (2, 1, 33, 17), (0, 3), (1000,)]
# (rows of 17 and more elements that do not start at a multiple of 16, e.g. W = 33 or 37, take
# the Triton kernels' path that aligns tiles to the flattened tensor rather than to the rows)
SEG2D_SHAPES = [(2, 1, 5, 7), (4, 1, 17, 33), (2, 3, 6, 5), (3, 2, 1, 9), (2, 3, 8, 1), (1, 1, 1, 1), (5, 9, 11),
                (1, 2, 3, 40, 70), (0, 1, 4, 4), (2, 1, 0, 5), (2, 3, 1, 37)]
SEG3D_SHAPES = [(2, 1, 3, 5, 7), (1, 2, 4, 9, 6), (1, 2, 1, 4, 4), (2, 1, 4, 1, 6), (2, 3, 5, 4, 1), (1, 1, 0, 2, 2),
                (1, 1, 9, 20, 24), (2, 2, 3, 5, 17)]
# large enough that the CPU kernels split them into several chunks (a sample's rows into several
# bands); too slow for Triton's interpreter, whose tiling the small shapes exercise already
LARGE_SHAPES = {0: [(70001,)], 2: [(2, 1, 1100, 61)], 3: [(2, 1, 16, 21, 509)]}


def shapes_for(loss: LossCase, large: bool = True):
    small = {0: MSE_SHAPES, 2: SEG2D_SHAPES, 3: SEG3D_SHAPES}[loss.spatial_dims]
    return small + (LARGE_SHAPES[loss.spatial_dims] if large else [])


def target_dtype_for(loss: LossCase, input_dtype, kind: str):
    """kind: "same" (the input's dtype), "float32", or "label" (bool for a seg loss)."""
    if kind == "same":
        return input_dtype
    if kind == "float32":
        return torch.float32
    return torch.bool if loss.is_seg else input_dtype


def make_pair(loss: LossCase, shape, dtype, target_dtype, layout: Layout = CONTIGUOUS, seed: int = 0,
              grad: Tuple[bool, bool] = (True, False), device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = layout.apply(loss.make_input(shape, dtype, g).to(device)).requires_grad_(grad[0])
    t = layout.apply(loss.make_target(shape, target_dtype, g).to(device))
    if grad[1] and t.is_floating_point():
        t.requires_grad_(True)
    return x, t


def as_float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def error_vs(value: torch.Tensor, exact: torch.Tensor) -> float:
    """max |value - exact| relative to max |exact| (NaN and inf must sit where exact has them)."""
    value = value.detach().to(torch.float64)
    exact = exact.detach()
    if value.shape != exact.shape:
        raise AssertionError(f"shape {tuple(value.shape)} != {tuple(exact.shape)}")
    if value.numel() == 0:
        return 0.0
    special = ~torch.isfinite(exact)
    if not torch.equal(special, ~torch.isfinite(value)) or not torch.equal(value[special].nan_to_num(),
                                                                          exact[special].nan_to_num()):
        return float("inf")
    finite = ~special
    if not finite.any():
        return 0.0
    scale = exact[finite].abs().max().clamp_min(1e-30)
    return float((value[finite] - exact[finite]).abs().max() / scale)


def tolerance(dtype, torch_error: float) -> float:
    """What a backend may be off by: a small multiple of the error of torch's own computation in
    the same dtype (the reference), and never less than a few units of rounding of that dtype."""
    return 4 * max(torch_error, 4 * EPS[dtype])


def check_against_reference(loss, backend, shape, dtype, target_dtype, reduction, layout=CONTIGUOUS, seed=0,
                            device="cpu"):
    """backend's loss and both gradients (under a random grad_output) against the reference in
    float64, within tolerance() of the error of the reference in the same dtypes."""
    want_target_grad = target_dtype.is_floating_point
    x, t = make_pair(loss, shape, dtype, target_dtype, layout, seed, grad=(True, want_target_grad), device=device)
    check_tensors_against_reference(loss, backend, x, t, reduction, seed)


def check_tensors_against_reference(loss, backend, x, t, reduction, seed=0):
    """check_against_reference for a given input and target (leaves or views of leaves): the
    gradients taken are those of x, and of t when it requires grad."""
    device = x.device
    want_target_grad = t.requires_grad
    x64, t64 = as_float64(x), (as_float64(t) if t.is_floating_point() else t)

    exact = loss.reference(x64, t64, reduction)
    torch_own = loss.reference(x, t, reduction)  # torch in the same dtypes: its own error
    ours = loss.call(x, t, reduction, backend)

    assert ours.dtype == torch_own.dtype, (ours.dtype, torch_own.dtype)
    assert ours.shape == exact.shape
    err, own = error_vs(ours, exact), error_vs(torch_own, exact)
    assert err <= tolerance(ours.dtype, own), f"loss off by {err:.3g} (torch: {own:.3g})"

    wrt = [x, t] if want_target_grad else [x]
    wrt64 = [x64, t64] if want_target_grad else [x64]
    g = torch.Generator().manual_seed(seed + 1)
    grad_out = (torch.rand(exact.shape, generator=g, dtype=torch.float64) + 0.5).to(device)  # not all ones
    ours_grads = torch.autograd.grad(ours, wrt, grad_out.to(ours.dtype))
    own_grads = torch.autograd.grad(torch_own, wrt, grad_out.to(torch_own.dtype))
    exact_grads = torch.autograd.grad(exact, wrt64, grad_out)
    for name, mine, theirs, truth, leaf in zip(("input", "target"), ours_grads, own_grads, exact_grads, wrt):
        assert mine.dtype == leaf.dtype and mine.shape == leaf.shape
        err, own = error_vs(mine, truth), error_vs(theirs, truth)
        assert err <= tolerance(leaf.dtype, own), f"grad of {name} off by {err:.3g} (torch: {own:.3g})"


def check_bce_element_by_element(loss, target_dtype, from_logits=False, device="cpu", points=400):
    """The float32 BCE of hard labels element by element, loss(x, target) giving one loss a
    sample of shape (n, 1, 1, 1) (alpha 1, beta 0, reduction "none"). Probabilities from 1e-9 to
    1 away from their label, or logits from 1e-4 to 60 in size: near the label (p within 1/8 of
    it, or exp(-|x|) below 1/8) float32's relative accuracy (p = 1e-9 against label 0 has the
    loss 1e-9); elsewhere within 2^-22 ln 2 of float64's loss, the bound of CUDA's fast log2
    (MUFU.LG2), which the CUDA kernel takes there. `points` sizes on a log scale, and a few edges.
    Returns the largest error of the second kind."""
    if from_logits:
        size = torch.cat([torch.logspace(-4, math.log10(60), points, dtype=torch.float64),
                          torch.tensor([0.0, math.log(8), math.log(8) - 1e-6], dtype=torch.float64)])
    else:  # 1 - q: how far p is from its label
        size = torch.cat([torch.logspace(-9, 0, points, dtype=torch.float64),
                          torch.tensor([0.0, 0.125, 0.125 - 2**-27, 0.5, 1 - 2**-24, 1e-45], dtype=torch.float64)])
    even = torch.arange(size.numel()) % 2 == 0
    worst = 0.0
    for label in (even, ~even):
        if from_logits:  # both signs against both labels
            x = (torch.where(label, size, -size) * (1 if label is even else -1)).float()
            # the stable form in float64 (torch's own cancels: 0 for x = -40, label 0)
            x64, t64 = x.double(), label.double()
            want = x64.clamp(min=0) - x64 * t64 + torch.log1p(torch.exp(-x64.abs()))
            near = torch.exp(-x64.abs()) < 0.125 * (1 - 2**-20)  # clear of float32 exp's rounding at 1/8
        else:
            x = torch.where(label, 1 - size, size).float()  # rounded: the loss below is for this p
            want = torch.nn.functional.binary_cross_entropy(x.double(), label.double(), reduction="none")
            near = torch.where(label, 1 - x.double(), x.double()) < 0.125
        got = loss(x.view(-1, 1, 1, 1).to(device), label.to(target_dtype).view(-1, 1, 1, 1).to(device))
        err = (got.double().cpu() - want).abs()
        bound = 4 * EPS[torch.float32] * want + torch.where(near, 0.0, 2**-22 * math.log(2))
        assert (err <= bound).all(), (x[err > bound], err[err > bound])
        worst = max(worst, float(err[~near].max()))
    return worst


def assert_same_bits_for_thread_counts(run: Callable, counts=(1, 2, 3, 1)) -> None:
    """run() (a list of tensors) gives the same bits with each number of CPU threads in counts."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def check_fullgraph_training_step(backend, device, shape):
    """A small conv model plus both losses: torch.compile(fullgraph=True) (which raises on any
    graph break; AOTAutograd traces the backward with the forward) gives eager's loss and grads."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 1, 1)).to(device)
    criterion = pylosses.SegmentationLoss(from_logits=True, backend=backend)
    mse = pylosses.MSELoss(backend=backend)

    def forward(image, mask):
        logits = model(image)
        return criterion(logits, mask) + 0.1 * mse(logits, mask.float())

    image, mask = torch.rand(shape, device=device), torch.rand(shape, device=device) > 0.5
    eager_loss = forward(image, mask)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled_loss = torch.compile(forward, fullgraph=True)(image, mask)
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g)


def chunked_seg_reference(x: torch.Tensor, t: torch.Tensor, alpha: float, beta: float, rows: int = 4096):
    """The "mean" segmentation loss of one (1, 1, H, W) probability map in float64, a band of
    rows at a time: for inputs too large for the reference's float64 temporaries."""
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    bce = tv_w = tv_h = 0.0
    for r0 in range(0, H, rows):
        r1 = min(H, r0 + rows)
        band = x[0, 0, r0:min(H, r1 + 1)].double()  # one row more: the vertical pairs across the cut
        bce += F.binary_cross_entropy(band[:r1 - r0], t[0, 0, r0:r1].double(), reduction="sum")
        tv_w += (band[:r1 - r0, 1:] - band[:r1 - r0, :-1]).abs().sum()
        tv_h += (band[1:] - band[:-1]).abs().sum()
    n = H * W
    return alpha * bce / n + beta * (tv_w / (H * (W - 1)) + tv_h / ((H - 1) * W))


# A loss of each CPU op that returns a gradient, on an input x (B, C, spatial...) of any float
# dtype, its target made from x (so not differentiable), on backend b.
GRADIENT_LOSSES = {
    "mse": lambda x, b: pylosses.mse_loss(x, torch.zeros_like(x), backend=b),
    "segmentation": lambda x, b: pylosses.segmentation_loss(x, x > 0, from_logits=True, backend=b),
    "dice": lambda x, b: pylosses.dice_loss(x, (x > 0.5).float(), sigmoid=True, backend=b),
    "cross_entropy": lambda x, b: pylosses.cross_entropy(x, (x[:, 0] > 0).long(), backend=b),
    "dice_ce": lambda x, b: pylosses.dice_ce_loss(x, (x[:, :1] > 0).long(), softmax=True, to_onehot_y=True,
                                                  backend=b),
}


def confident_logits(batch_spatial, n_classes, seed=0):
    """float32 logits (B, C, spatial...) whose label leads the others by 2 to 17, and the labels
    (B, spatial...), a fifth of them ignored (-100): pixel losses from about 0.1 down to 1e-7, a
    confident model's."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_spatial[0], n_classes) + tuple(batch_spatial[1:])
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, n_classes, batch_spatial, generator=g)
    lead = 2 + 15 * torch.rand(batch_spatial, generator=g, dtype=torch.float64)
    x = x + torch.nn.functional.one_hot(t, n_classes).movedim(-1, 1) * lead.unsqueeze(1)
    t = torch.where(torch.rand(batch_spatial, generator=g) < 0.2, torch.full_like(t, -100), t)
    return x.float(), t


def assert_relative_to_each(got, want, what, tol, floor=0.0):
    """Each element of got within tol of want's own size (not the largest element's), or of floor."""
    got, want = got.detach().double(), want.detach().double()
    err = (got - want).abs() / want.abs().clamp_min(floor or 1e-300)
    worst = float(err.max())
    assert worst <= tol, f"{what}: off by {worst:.3g} of the element (tolerance {tol:.3g})"
