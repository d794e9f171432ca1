"""The op softmax_tv_fwd (DiceCELoss's lambda_tv term: the total variation of the softmax over the
classes, fused) on every backend against the reference in float64: values, gradients, the edge
shapes, determinism and its errors. DiceCELoss with lambda_tv is checked in test_multiclass_region.py."""

import os

import pytest
import torch

import pylosses
from pylosses import _ops, reference
from cases import assert_same_bits_for_thread_counts

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")]

# (B, C, spatial...): 2-D and 3-D, C = 1 (p = 1: no variation), 14 and 40 classes, axes of
# length 1, an empty batch
SMALL = [(2, 3, 5, 7), (1, 1, 4, 6), (2, 14, 3, 5), (1, 40, 2, 3), (2, 3, 1, 6), (1, 2, 6, 1),
         (1, 3, 3, 4, 5), (2, 4, 1, 3, 4), (1, 2, 4, 1, 3), (0, 3, 4, 5), (0, 2, 1, 1), (2, 3, 1, 1, 1)]
# several work items a sample on the CPU (at least 4 slices an item) and several blocks on GPUs
LARGE = [(2, 4, 37, 1100), (1, 3, 9, 64, 90)]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def _shapes(backend):
    # Triton's interpreter runs a program at a time: the large shapes natively only
    return SMALL + (LARGE if backend == "native" or not INTERPRETED else [])


def _logits(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 2


def _check(backend, shape, dtype, reduction, beta=0.3):
    spatial = len(shape) - 2
    # the reference on the very logits the kernel gets (a rounding of them would move ties)
    x = _logits(shape, seed=len(shape) + shape[1]).to(dtype)
    exact, xg = x.double().requires_grad_(True), x.clone().requires_grad_(True)
    want = reference.softmax_total_variation(exact, beta, spatial, reduction)
    got = _ops.softmax_tv(backend, xg, beta, spatial, reduction)
    assert got.dtype == dtype and got.shape == ()
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, equal_nan=True)
    if x.numel() == 0:  # (the mean of no pairs is NaN, as torch's; with no axis longer than 1, 0)
        return
    mine, = torch.autograd.grad(got, xg)
    # (with no axis longer than 1 the reference adds nothing: a constant 0, no graph)
    truth = torch.autograd.grad(want, exact)[0] if want.requires_grad else torch.zeros_like(exact)
    assert mine.dtype == dtype and mine.shape == x.shape
    # plus the dtype's subnormal step: float16 gradients of a mean over many pairs are subnormal
    finfo = torch.finfo(dtype)
    atol = tol * float(truth.abs().max()) + finfo.smallest_normal * finfo.eps
    torch.testing.assert_close(mine.double(), truth, rtol=tol, atol=atol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_reference(backend, dtype, reduction):
    """Loss and input gradient against the float64 reference's (torch's softmax, differences and
    autograd), every shape of the table."""
    for shape in _shapes(backend):
        _check(backend, shape, dtype, reduction)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_and_a_single_class(backend):
    """Equal neighbours (|0|'s gradient is 0, torch's sign) and C = 1 (every p is 1): no loss and
    a zero gradient where nothing varies."""
    x = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    x[:, :, :, 3:] = 1.5  # a step along W only, equal values elsewhere
    x.requires_grad_(True)
    got = _ops.softmax_tv(backend, x, 0.5, 2, "sum")
    want = reference.softmax_total_variation(x, 0.5, 2, "sum")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0], rtol=1e-12,
                               atol=1e-12)
    one = torch.randn(2, 1, 5, 6, requires_grad=True)
    loss = _ops.softmax_tv(backend, one, 0.5, 2, "mean")
    assert loss.item() == 0.0 and (torch.autograd.grad(loss, one)[0] == 0).all()


# the Triton kernel's tilings (triton_kernels/softmax_tv.py): 2-D and 3-D slices in vectors (SO a
# multiple of a thread's pixels) over several slabs and programs, with a last slab part full; slices
# of single pixels (SO odd); 3-D rows in vectors or not; W alone, in vectors or not
TILINGS = [(1, 2, 9, 132), (1, 3, 10, 45), (2, 3, 5, 6), (1, 3, 3, 5, 8), (1, 3, 3, 2, 6), (1, 2, 5, 3, 5),
           (1, 3, 1, 70), (1, 2, 1, 600), (1, 2, 7, 1, 1)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tilings(backend, dtype):
    """Shapes that take each of the Triton kernel's tilings, values and gradients."""
    for shape in TILINGS:
        _check(backend, shape, dtype, "mean")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_along_every_axis(backend, dtype):
    """Pixels with equal (or exactly shifted) logits next to each other along every axis, inside a
    thread's vector, at its edges and across the walked axis's slabs: each tie's sign is 0 on both
    of its sides, as the reference's."""
    for shape in [(1, 3, 7, 12), (1, 3, 6, 3, 8)]:
        x = torch.zeros(shape, dtype=dtype)
        x[..., 3:, :] = 1.5  # a step along the outermost axis (shifted logits above it)
        x[..., 5:] += 0.25
        x[:, 1, ..., 9:] = -2.0
        x = x.requires_grad_(True)
        spatial = len(shape) - 2
        got = _ops.softmax_tv(backend, x, 0.5, spatial, "sum")
        exact = x.detach().double().requires_grad_(True)
        want = reference.softmax_total_variation(exact, 0.5, spatial, "sum")
        tol = TOL[dtype]
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        torch.testing.assert_close(torch.autograd.grad(got, x)[0].double(), torch.autograd.grad(want, exact)[0],
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scales_and_inputs_stay_untouched(backend):
    """The backward applies grad_output (loss_backward); a non-contiguous input gives the
    contiguous one's result and neither is written to."""
    x = _logits((2, 5, 3, 4)).float()
    strided = x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_(True)
    before = strided.detach().clone()
    loss = _ops.softmax_tv(backend, strided, 0.2, 2, "mean")
    grad, = torch.autograd.grad(loss * 3.0, strided)
    dense = x.clone().requires_grad_(True)
    want = reference.softmax_total_variation(dense, 0.2, 2, "mean")
    torch.testing.assert_close(loss, want, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(grad, 3.0 * torch.autograd.grad(want, dense)[0], rtol=2e-5, atol=1e-7)
    assert torch.equal(strided.detach(), before)


@pytest.mark.skipif("native" not in BACKENDS, reason="pylosses._C is not built")
def test_native_is_bitwise_deterministic_for_any_thread_count():
    x = _logits(LARGE[1]).float().requires_grad_(True)

    def run():
        loss = _ops.softmax_tv("native", x, 0.3, 3, "mean")
        return [loss.detach(), torch.autograd.grad(loss, x)[0]]

    assert_same_bits_for_thread_counts(run)


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_calls_with_bad_arguments_raise(backend):
    op = getattr(torch.ops.pylosses, _ops.PREFIX[backend] + "softmax_tv_fwd")
    x = torch.randn(2, 3, 4, 5)
    for args, error, match in [((x, 0.3, 4, 1, False), ValueError, "spatial_dims"),
                               ((x, 0.3, 3, 1, False), ValueError, "spatial"),
                               ((x, 0.3, 2, 0, False), ValueError, "reduction"),
                               ((x.long(), 0.3, 2, 1, False), TypeError, "input")]:
        with pytest.raises(error, match=match):
            op(*args)


def test_meta_tensors_give_the_shapes():
    x = torch.empty(2, 3, 4, 5, device="meta", dtype=torch.float16)
    for backend in BACKENDS:
        loss, grad = getattr(torch.ops.pylosses, _ops.PREFIX[backend] + "softmax_tv_fwd")(x, 0.3, 2, 1, True)
        assert loss.shape == () and loss.dtype == torch.float16
        assert grad.shape == x.shape and grad.dtype == torch.float32


def test_dice_ce_lambda_tv_under_autocast_is_the_same_on_every_backend():
    """Under CPU bfloat16 autocast DiceCE's terms arrive in float32 and are added there: the fused
    path added the total variation to the bfloat16 Dice + CE before that (4e-4 apart)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, generator=generator).bfloat16()
    labels = torch.randint(0, 3, (2, 1, 8, 9), generator=generator)
    losses = {}
    for backend in ("native", "reference"):
        if backend not in pylosses.available_backends("cpu"):
            pytest.skip("pylosses._C is not built")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses[backend] = pylosses.dice_ce_loss(x, labels, softmax=True, to_onehot_y=True, lambda_tv=0.1,
                                                    backend=backend)
    assert losses["native"].dtype == losses["reference"].dtype == torch.float32
    torch.testing.assert_close(losses["native"], losses["reference"])


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not available")
def test_triton_refuses_a_plane_whose_last_program_would_pass_32_bit_lanes():
    """The Triton kernel's lanes (the slabs of its walked axis, then its last program's padding)
    are 32-bit: a plane below 2**31 pixels whose last program's lanes reach 2**31 is refused,
    naming the size, not wrapped (a wrapped lane would read before the plane)."""
    from pylosses.triton_kernels import softmax_tv

    x = torch.empty(1, 2, 1, 2**31 - 4, device="meta")  # (refused before any launch)
    with pytest.raises(ValueError, match="fewer than 2\\*\\*31 pixels, got 2147483644"):
        softmax_tv.softmax_tv_fwd(x, 1.0, 2, 1, True)
