"""Every backend against the float64 reference: values and both gradients, over the case tables."""

import pytest
import torch

import pylosses
from cases import (CHANNELS_LAST, CONTIGUOUS, FLOAT_DTYPES, MSE, NON_CONTIGUOUS, REDUCTIONS, SEG, SEG3D,
                   SEG3D_LOGITS, SEG3D_TV_ONLY, SEG_BCE_ONLY, SEG_LOGITS, SEG_TV_ONLY, as_float64, error_vs,
                   make_pair, shapes_for, target_dtype_for, tolerance)

LOSSES = [MSE, SEG, SEG_LOGITS, SEG3D, SEG3D_LOGITS, SEG_TV_ONLY, SEG_BCE_ONLY, SEG3D_TV_ONLY]
# triton runs here under TRITON_INTERPRET=1 (tests/conftest.py)
CPU_BACKENDS = [b for b in ("native", "triton", "jit") if b in pylosses.available_backends("cpu")]


def check_against_reference(loss, backend, shape, dtype, target_dtype, reduction, layout=CONTIGUOUS, seed=0):
    want_target_grad = target_dtype.is_floating_point
    x, t = make_pair(loss, shape, dtype, target_dtype, layout, seed, grad=(True, want_target_grad))
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
    grad_out = torch.rand(exact.shape, generator=g, dtype=torch.float64) + 0.5  # not all ones
    ours_grads = torch.autograd.grad(ours, wrt, grad_out.to(ours.dtype))
    own_grads = torch.autograd.grad(torch_own, wrt, grad_out.to(torch_own.dtype))
    exact_grads = torch.autograd.grad(exact, wrt64, grad_out)
    for name, mine, theirs, truth, leaf in zip(("input", "target"), ours_grads, own_grads, exact_grads, wrt):
        assert mine.dtype == leaf.dtype and mine.shape == leaf.shape
        err, own = error_vs(mine, truth), error_vs(theirs, truth)
        assert err <= tolerance(leaf.dtype, own), f"grad of {name} off by {err:.3g} (torch: {own:.3g})"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_shapes(loss, dtype, reduction, backend):
    for shape in shapes_for(loss, large=backend != "triton"):
        check_against_reference(loss, backend, shape, dtype, dtype, reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("target_kind", ["float32", "label"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS, SEG3D], ids=lambda c: c.name)
def test_target_dtypes(loss, dtype, target_kind, backend):
    target_dtype = target_dtype_for(loss, dtype, target_kind)
    for reduction in REDUCTIONS:
        check_against_reference(loss, backend, shapes_for(loss)[1], dtype, target_dtype, reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", [NON_CONTIGUOUS, CHANNELS_LAST], ids=lambda l: l.name)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_layouts(loss, layout, backend):
    shape = (2, 3, 6, 5) if loss.is_seg and loss.spatial_dims == 2 else shapes_for(loss)[2]
    for reduction in REDUCTIONS:
        check_against_reference(loss, backend, shape, torch.float32, torch.float32, reduction, layout)


def test_uint8_targets_match_bool():
    x, t = make_pair(SEG, (2, 1, 9, 10), torch.float32, torch.bool)
    a = pylosses.segmentation_loss(x, t, backend="native")
    b = pylosses.segmentation_loss(x, t.to(torch.uint8), backend="native")
    c = pylosses.segmentation_loss(x, t.float(), backend="native")
    assert torch.equal(a, b) and torch.equal(a, c)


# torch.compile recompiles for every new configuration, so it gets a smaller table
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS, SEG3D], ids=lambda c: c.name)
def test_compile_backend(loss):
    for reduction in REDUCTIONS:
        check_against_reference(loss, "compile", shapes_for(loss)[1], torch.float32, torch.float32, reduction)
