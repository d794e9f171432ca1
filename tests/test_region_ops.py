"""The region losses' ops, region_sums and region_sums_backward, on every backend against the
reference's sums (pylosses.reference.region_sums) and their autograd gradients, in float64."""

import functools
import itertools

import pytest
import torch

import pylosses
from pylosses import _ops, reference

ops = torch.ops.pylosses
BACKENDS = [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")]
MODES = (0, 1, 2)  # linear, squared, l1
# the same with DiceBCE's BCE sums (reference.REGION_WITH_BCE): logits only (CUDA's kernels in
# test_cuda_emulation.py and test_gpu.py)
BCE_MODES = tuple(m + reference.REGION_WITH_BCE for m in MODES)
# (B, C, spatial...): odd sizes, one channel, no spatial axis, 1-D to 3-D, empty batch and plane;
# the last two are large enough that a plane is split into several chunks / blocks
SHAPES = [(2, 3, 5, 7), (1, 1, 4, 4), (3, 2), (2, 3, 11), (2, 2, 3, 4, 5), (0, 3, 4, 4), (2, 2, 0, 3),
          (1, 2, 33, 65)]
LARGE = [(2, 3, 300, 301)]  # the native backend's only: minutes in Triton's interpreter, where
# (1, 2, 33, 65) already splits each plane into chunks
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MASK_KINDS = ("none", "broadcast", "full")  # no mask, (B, 1, spatial...), the input's shape


def _shapes(backend):
    return SHAPES + (LARGE if backend == "native" else [])


def _inputs(shape, dtype, target_dtype, sigmoid, mask_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) if sigmoid else \
        torch.rand(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    if target_dtype == torch.bool:
        t = t > 0.5
    elif target_dtype == torch.uint8:
        t = (t > 0.5).to(torch.uint8)
    else:
        t = t.to(target_dtype)
    if mask_kind == "none":
        mask = None
    else:
        mask_shape = (shape[0], 1) + tuple(shape[2:]) if mask_kind == "broadcast" else shape
        mask = torch.rand(mask_shape, generator=g) > 0.3
    return x.to(dtype), t, mask


def _tolerance(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}[dtype]


def _check(backend, shape, dtype, target_dtype, sigmoid, mode, mask_kind, seed=0, device="cpu"):
    """backend: a name in BACKENDS, or an op with region_sums' signature and autograd (the CUDA
    kernels' emulation, tests/test_cuda_emulation.py); the op runs on `device`, the reference
    on the CPU."""
    x, t, mask = (None if a is None else a.to(device) for a in _inputs(shape, dtype, target_dtype, sigmoid, mask_kind,
                                                                       seed))
    x.requires_grad_(True)
    t_grad = target_dtype.is_floating_point
    t.requires_grad_(t_grad)
    op = backend if callable(backend) else functools.partial(_ops.region_sums, backend)
    sums = op(x, t, mask, sigmoid, mode)
    # the reference on the same values in float64 (the inputs' rounding is in both)
    x64 = x.detach().cpu().double().requires_grad_(True)
    t64 = t.detach().cpu().double().requires_grad_(t_grad) if t_grad else t.cpu()
    want = reference.region_sums(x64, t64, None if mask is None else mask.cpu(), sigmoid, mode)
    assert sums.shape == want.shape and sums.dtype == reference.compute_dtype(x, t)
    scale = want.abs().amax(dim=(0, 1), keepdim=True).clamp_min(1) if want.numel() else 1
    tol = _tolerance(dtype) if dtype == torch.float64 and target_dtype in (torch.float64, torch.bool, torch.uint8) \
        else 1e-5
    torch.testing.assert_close(sums.cpu().double() / scale, want / scale, rtol=0, atol=tol)
    if x.numel() == 0:
        return
    g = torch.Generator().manual_seed(seed + 1)
    grad_sums = torch.randn(want.shape, generator=g, dtype=torch.float64)
    wrt, wrt64 = ([x, t], [x64, t64]) if t_grad else ([x], [x64])
    got = [g.cpu() for g in torch.autograd.grad(sums, wrt, grad_sums.to(sums.device, sums.dtype))]
    exact = torch.autograd.grad(want, wrt64, grad_sums)
    for name, mine, truth, leaf in zip(("input", "target"), got, exact, wrt):
        assert mine.dtype == leaf.dtype and mine.shape == leaf.shape, name
        # a low-precision gradient is the exact one rounded once
        rtol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 1e-5}.get(mine.dtype, 1e-12)
        torch.testing.assert_close(mine.double(), truth, rtol=rtol, atol=rtol * truth.abs().max().item(),
                                   msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_sums_and_gradients(backend, mode, sigmoid, mask_kind):
    for shape in _shapes(backend):
        _check(backend, shape, torch.float64, torch.float64, sigmoid, mode, mask_kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", BCE_MODES)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_bce_sums_and_gradients(backend, mode, mask_kind):
    """The region sums with DiceBCE's two BCE sums (mode + 4), and the gradients of all six."""
    for shape in _shapes(backend):
        _check(backend, shape, torch.float64, torch.float64, True, mode, mask_kind)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool, torch.uint8, "same"], ids=str)
def test_dtypes(backend, dtype, target_dtype):
    target_dtype = dtype if target_dtype == "same" else target_dtype
    pairs = list(itertools.product(MODES, (False, True))) + [(mode, True) for mode in BCE_MODES]
    for mode, sigmoid in pairs:
        _check(backend, (2, 3, 6, 9), dtype, target_dtype, sigmoid, mode, "broadcast", seed=mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_sums_need_logits(backend):
    """mode + 4 without sigmoid is an error that says why, and its gradient takes six sums a
    (sample, channel); 3 and 7 are no modes."""
    x, t = torch.randn(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    with pytest.raises(ValueError, match="region_sums: the BCE sums .* need sigmoid=True"):
        _ops.region_sums(backend, x, t, None, False, 4)
    with pytest.raises(ValueError, match=r"region_sums_backward: grad_sums must have the shape \(B, C, 6\)"):
        getattr(ops, _ops.PREFIX[backend] + "region_sums_backward")(torch.zeros(2, 3, 4), x, t, None, True, 4,
                                                                     True, False)
    for mode in (3, 7):
        with pytest.raises(ValueError, match="region_sums: mode must be 0 .* plus 4 for the BCE sums"):
            _ops.region_sums(backend, x, t, None, True, mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_are_read_as_values(backend):
    """Non-contiguous and channels_last inputs give the sums of their values."""
    x, t, mask = _inputs((2, 3, 6, 5), torch.float32, torch.float32, True, "broadcast")
    want = _ops.region_sums(backend, x, t, mask, True, 0)
    for layout in (lambda a: a.contiguous(memory_format=torch.channels_last), lambda a: a.transpose(2, 3).mT):
        torch.testing.assert_close(_ops.region_sums(backend, layout(x), layout(t), layout(mask), True, 0), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_mask_targets_are_counted(backend):
    """A uint8 target above 1 (a 0/255 mask) counts in the fourth sum where the mask keeps the
    pixel; on the CPU the native kernel raises the mask error instead."""
    x, t, _ = _inputs((2, 3, 4, 5), torch.float32, torch.uint8, False, "none")
    t[1, 2, 0, 0] = 255
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    if backend == "native":
        with pytest.raises(RuntimeError, match="must hold only 0 and 1"):
            _ops.region_sums(backend, x, t, mask, False, 0)
    else:
        sums = _ops.region_sums(backend, x, t, mask, False, 0)
        assert sums[1, 2, 3] == 1 and sums[..., 3].sum() == 1
    mask[1, 0, 0, 0] = False  # masked out: no longer counted, no error
    sums = _ops.region_sums(backend, x, t, mask, False, 0)
    assert sums[..., 3].sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend):
    x, t, mask = _inputs(_shapes(backend)[-1], torch.float32, torch.float32, True, "full")
    x.requires_grad_(True)
    a = _ops.region_sums(backend, x, t, mask, True, 1)
    ga, = torch.autograd.grad(a, x, torch.ones_like(a))
    b = _ops.region_sums(backend, x, t, mask, True, 1)
    gb, = torch.autograd.grad(b, x, torch.ones_like(b))
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    prefix = _ops.PREFIX[backend]
    op, op_backward = getattr(ops, prefix + "region_sums"), getattr(ops, prefix + "region_sums_backward")
    x = torch.rand(2, 3, 5, 7, requires_grad=True)
    t = torch.rand(2, 3, 5, 7, requires_grad=True)
    mask = torch.rand(2, 1, 5, 7) > 0.5
    labels = torch.rand(2, 3, 5, 7) > 0.5
    samples = [(x, t, None, False, 0), (x, t, mask, True, 1), (x.detach().half(), labels, None, True, 2),
               (x.double(), t.double(), mask, False, 2), (x, t, mask, True, 4),
               (x.detach().half(), labels, None, True, 6)]
    for args in samples:
        torch.library.opcheck(op, args)
    grad_sums = torch.randn(2, 3, 4)
    torch.library.opcheck(op_backward, (grad_sums, x.detach(), t.detach(), mask, True, 0, True, True))
    torch.library.opcheck(op_backward, (grad_sums, x.detach(), labels, None, False, 2, True, False))
    torch.library.opcheck(op_backward, (torch.randn(2, 3, 6), x.detach(), t.detach(), mask, True, 5, True, True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["shape", "mask dtype", "mask shape", "mode", "target dtype"])
def test_bad_arguments(backend, case):
    x, t = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5)
    mask, mode = None, 0
    if case == "shape":
        t = torch.rand(2, 3, 4, 6)
    elif case == "mask dtype":
        mask = torch.ones(2, 1, 4, 5)
    elif case == "mask shape":
        mask = torch.ones(2, 2, 4, 5, dtype=torch.bool)
    elif case == "mode":
        mode = 3
    else:
        t = t.int()
    with pytest.raises((ValueError, TypeError, RuntimeError), match="region_sums"):
        _ops.region_sums(backend, x, t, mask, False, mode)
