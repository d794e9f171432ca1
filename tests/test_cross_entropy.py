"""The multi-class cross-entropy's reference (pylosses.reference.cross_entropy, the ground truth
for the kernels of the multi-class issue) against torch.nn.functional.cross_entropy, the peer it
replaces: values and gradients over a table of class counts, 2-D and 3-D shapes, ignore_index
(absent, present, every pixel), class weights, label smoothing and every reduction; label maps
of int64, int32 and uint8; its torch.jit and torch.compile variants."""

import pytest
import torch
import torch.nn.functional as F

from pylosses import reference

# (B, C, spatial...) for the class counts of the issue: 2 and 3 classes, MONAI's 4 and 14 (BTCV),
# and 40, above what a kernel keeps in registers
SHAPES = [(2, 2, 9, 7), (2, 3, 5, 4, 3), (3, 4, 11), (1, 14, 6, 5), (2, 40, 3, 4, 2)]
IGNORE = ["absent", "present", "all"]
OPTIONS = [{}, {"weight": True}, {"label_smoothing": 0.1}, {"weight": True, "label_smoothing": 0.25},
           {"ignore_index": 1}]
REDUCTIONS = ["mean", "sum", "none"]


def _data(shape, ignore, ignore_index=-100, dtype=torch.float64, target_dtype=torch.int64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=g)
    if ignore == "present":
        t = torch.where(torch.rand(t.shape, generator=g) < 0.3, torch.full_like(t, ignore_index), t)
    elif ignore == "all":
        t = torch.full_like(t, ignore_index)
    return x.to(dtype), t.to(target_dtype)


def _options(shape, options, seed=0):
    out = dict(options)
    if out.pop("weight", False):
        out["weight"] = torch.rand(shape[1], generator=torch.Generator().manual_seed(seed + 1),
                                   dtype=torch.float64) + 0.25
    return out


def _mine_and_torchs(x, t, options, reduction):
    """The reference's loss and input gradient, and torch's on the same values in float64."""
    xr = x.detach().clone().requires_grad_(True)
    xt = x.detach().double().requires_grad_(True)
    mine = reference.cross_entropy(xr, t, reduction=reduction, **options)
    # torch's own takes int64 (or uint8) class indices
    torch_options = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    want = F.cross_entropy(xt, t.long(), reduction=reduction, **torch_options)
    g = torch.rand(want.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.5
    grad, = torch.autograd.grad(mine, xr, g.to(mine.dtype), allow_unused=True)
    grad_want, = torch.autograd.grad(want, xt, g, allow_unused=True)
    return mine, grad, want, grad_want


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore", IGNORE)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_matches_torch(shape, options, ignore, reduction):
    opts = _options(shape, options)
    x, t = _data(shape, ignore, opts.get("ignore_index", -100))
    mine, grad, want, grad_want = _mine_and_torchs(x, t, opts, reduction)
    assert mine.shape == want.shape and mine.dtype == want.dtype
    torch.testing.assert_close(mine, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    if ignore == "all" and reduction == "mean":
        assert mine.isnan() and want.isnan()  # torch's 0 / 0, as the issue asks
        assert grad_want is None or not grad_want.any()  # and a zero gradient, as torch's
    if grad_want is None:
        assert grad is None or not grad.any()
    else:
        torch.testing.assert_close(grad, grad_want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("target_dtype", [torch.int32, torch.uint8], ids=str)
def test_narrow_label_maps_give_the_int64_loss(target_dtype):
    """uint8 and int32 label maps (torch takes int64 and uint8): the same loss and gradient as
    int64 indices; an ignore_index the dtype can hold."""
    x, t = _data((2, 4, 6, 5), "present", ignore_index=255)
    mine, grad, _, _ = _mine_and_torchs(x, t.to(target_dtype), {"ignore_index": 255}, "mean")
    want, grad_want, _, _ = _mine_and_torchs(x, t, {"ignore_index": 255}, "mean")
    assert torch.equal(mine, want) and torch.equal(grad, grad_want)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)], ids=str)
def test_low_precision_inputs_in_float32(dtype, tol):
    """Arithmetic in float32 whatever the input dtype, the loss in the input's dtype (torch's)."""
    x, t = _data((2, 3, 8, 9), "present", dtype=dtype)
    options = _options((2, 3, 8, 9), {"weight": True, "label_smoothing": 0.1})
    mine = reference.cross_entropy(x, t, **{k: (v.float() if isinstance(v, torch.Tensor) else v)
                                            for k, v in options.items()})
    want = F.cross_entropy(x.double(), t, **options)
    assert mine.dtype == dtype
    torch.testing.assert_close(mine.double(), want, rtol=tol, atol=tol)


def test_gradcheck():
    x, t = _data((2, 3, 4, 5), "present", ignore_index=-1)
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a: reference.cross_entropy(a, t, w, -1, 0.2, "mean"), (x.requires_grad_(True),))


@pytest.mark.parametrize("bad", [3, -2])
def test_class_index_out_of_range_is_torchs_error(bad):
    x, t = _data((2, 3, 4, 5), "absent")
    t[1, 2, 3] = bad
    with pytest.raises(IndexError, match=f"Target {bad} is out of bounds"):
        F.cross_entropy(x, t)
    with pytest.raises(IndexError, match=f"Target {bad} is out of bounds"):
        reference.cross_entropy(x, t)


@pytest.mark.parametrize("variant", ["jit", "compile"])
def test_jit_and_compile_variants_match_eager(variant):
    fn = reference.scripted("cross_entropy") if variant == "jit" else reference.compiled("cross_entropy")
    shape = (2, 4, 6, 5)
    opts = _options(shape, {"weight": True, "label_smoothing": 0.1})
    x, t = _data(shape, "present", dtype=torch.float32)
    for reduction in ("mean", "none"):
        args = (opts["weight"].float(), -100, opts["label_smoothing"], reduction)
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        got, want = fn(xa, t, *args), reference.cross_entropy(xb, t, *args)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        g = torch.rand(want.shape)
        torch.testing.assert_close(torch.autograd.grad(got, xa, g)[0], torch.autograd.grad(want, xb, g)[0],
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_zero_denominator_from_weights_is_nan(label_smoothing):
    """Pixels that count but weigh 0 (every label's class weight 0): torch's mean is 0 / 0, NaN,
    with and without smoothing (whose own term alone would be x / 0, inf)."""
    x, t = _data((2, 3, 4), "absent")
    t = torch.zeros_like(t)
    opts = {"weight": torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), "label_smoothing": label_smoothing}
    mine, grad, want, grad_want = _mine_and_torchs(x, t, opts, "mean")
    assert mine.isnan() and want.isnan()
    assert not grad.isfinite().any() and not grad_want.isfinite().any()
