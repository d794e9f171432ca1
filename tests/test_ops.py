"""The ops themselves: opcheck, gradcheck, torch.compile(fullgraph=True), determinism."""

import pytest
import torch

import pylosses
from cases import (GRADIENT_LOSSES, MSE, SEG, SEG3D, SEG3D_LOGITS, SEG_LOGITS, assert_same_bits_for_thread_counts,
                   check_fullgraph_training_step, make_pair)

pytestmark = pytest.mark.skipif("native" not in pylosses.available_backends("cpu"),
                                reason="pylosses._C is not built")
ops = torch.ops.pylosses


def _seg_args(x, t, reduction=1, spatial_dims=2, logits=False, gi=True, gt=False):
    return (x, t, 0.7, 0.3, spatial_dims, logits, reduction, gi, gt)


def _opcheck_samples(ops):
    x, t = torch.rand(2, 3, 5, 7, requires_grad=True), torch.rand(2, 3, 5, 7, requires_grad=True)
    x3 = torch.rand(2, 1, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    t3 = torch.rand(2, 1, 3, 4, 5, dtype=torch.float64)
    labels = torch.rand(2, 3, 5, 7) > 0.5
    for reduction in (0, 1, 2):
        yield ops.mse_loss_fwd, (x, t, reduction, True)
        yield ops.seg_loss_fwd, _seg_args(x, t, reduction, gt=True)
    yield ops.mse_loss_fwd, (x.detach(), t.detach(), 1, False)
    yield ops.seg_loss_fwd, _seg_args(x3, t3, 0, spatial_dims=3, logits=True)
    yield ops.seg_loss_fwd, _seg_args(x.detach().half(), labels, 1, gi=False)
    yield ops.softmax_tv_fwd, (x, 0.3, 2, 1, True)
    yield ops.softmax_tv_fwd, (x3, 0.5, 3, 2, True)
    yield ops.softmax_tv_fwd, (x.detach().bfloat16(), 0.3, 2, 2, False)
    saved = torch.randn(2, 3, 5, 7)
    yield ops.loss_backward, (torch.tensor(2.0), saved, 0.5, torch.float32)
    yield ops.loss_backward, (torch.rand(2), saved, 1.0, torch.bfloat16)
    yield ops.loss_backward, (torch.rand(2, 3, 5, 7), saved, -1.0, torch.float64)


BACKENDS = [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")]


class _Ops:
    """torch.ops.pylosses for one backend: its ops by their native names."""

    def __init__(self, backend):
        self.prefix = {"native": "", "triton": "triton_"}[backend]

    def __getattr__(self, name):
        return getattr(torch.ops.pylosses, self.prefix + name)


OPCHECK = [(b, op, args) for b in BACKENDS for op, args in _opcheck_samples(_Ops(b))]


@pytest.mark.parametrize("backend,op,args", OPCHECK, ids=[f"{b}-{op.__name__}-{i}" for i, (b, op, _) in enumerate(OPCHECK)])
def test_opcheck(backend, op, args):
    torch.library.opcheck(op, args)


GRADCHECK = [
    (MSE, (3, 4, 5)), (SEG, (2, 2, 4, 5)), (SEG_LOGITS, (2, 1, 5, 4)), (SEG3D, (2, 1, 3, 4, 3)),
    (SEG3D_LOGITS, (1, 2, 3, 3, 4)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss,shape", GRADCHECK, ids=lambda v: getattr(v, "name", ""))
def test_gradcheck(loss, shape, reduction, backend):
    # probabilities whose neighbours differ (|x| has a kink at 0 that finite differences straddle)
    x, t = make_pair(loss, shape, torch.float64, torch.float64, grad=(True, True), seed=3)
    # fast mode (a random projection) for Triton: its interpreter makes every evaluation slow
    torch.autograd.gradcheck(lambda a, b: loss.call(a, b, reduction, backend), (x, t), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fullgraph_compile_of_a_training_step(backend):
    check_fullgraph_training_step(backend, "cpu", (2, 1, 12, 10))


def _run_once(loss, x, t, reduction):
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(t.is_floating_point())
    value = loss.call(x, t, reduction, "native")
    wrt = [x, t] if t.requires_grad else [x]
    grads = torch.autograd.grad(value, wrt, torch.ones_like(value))
    return [value.detach(), *grads]


@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS, SEG3D], ids=lambda c: c.name)
def test_bitwise_deterministic_for_any_thread_count(loss):
    shape = (300, 1000) if not loss.is_seg else ((3, 2, 150, 170) if loss.spatial_dims == 2 else (2, 1, 20, 60, 50))
    x, t = make_pair(loss, shape, torch.float32, torch.float32, seed=5)
    assert_same_bits_for_thread_counts(lambda: _run_once(loss, x, t, "mean") + _run_once(loss, x, t, "none"))


@pytest.mark.parametrize("loss", [MSE, SEG, SEG3D_LOGITS], ids=lambda c: c.name)
def test_forward_does_not_touch_its_inputs(loss):
    x, t = make_pair(loss, (2, 1, 4, 6, 5) if loss.spatial_dims == 3 else (2, 1, 6, 5), torch.float32,
                     torch.float32, grad=(True, True))
    x0, t0 = x.detach().clone(), t.detach().clone()
    value = loss.call(x, t, "mean", "native")
    value.backward()
    assert torch.equal(x, x0) and torch.equal(t, t0)
    assert x.requires_grad and t.requires_grad and x.grad is not None


def test_no_gradient_is_computed_without_requires_grad():
    x, t = torch.rand(2, 1, 6, 5), torch.rand(2, 1, 6, 5)
    _, grad_input, grad_target = ops.seg_loss_fwd(*_seg_args(x, t, gi=False))
    assert grad_input.numel() == 0 and grad_target.numel() == 0
    with torch.no_grad():  # the functional API asks for none under no_grad
        assert not pylosses.segmentation_loss(x.requires_grad_(), t, backend="native").requires_grad


@pytest.mark.parametrize("loss", [MSE, SEG_LOGITS], ids=lambda c: c.name)
@pytest.mark.parametrize("grad_output", [1.0, 0.25])
def test_backward_twice_with_retain_graph(loss, grad_output):
    x, t = make_pair(loss, (2, 1, 7, 6), torch.float32, torch.float32, grad=(True, True))
    value = loss.call(x, t, "mean", "native") * grad_output
    first = torch.autograd.grad(value, (x, t), retain_graph=True)
    second = torch.autograd.grad(value, (x, t))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("loss", [MSE, SEG], ids=lambda c: c.name)
def test_grad_handed_to_autograd_stays_ours_to_keep(loss):
    # backward may hand the saved gradient itself to autograd as .grad; changing .grad in place
    # (zero_(), clipping) must not change what a retained graph's second backward gives
    x, t = make_pair(loss, (2, 1, 8, 9), torch.float32, torch.float32)
    value = loss.call(x, t, "mean", "native")
    value.backward(retain_graph=True)
    first = x.grad.clone()
    x.grad.zero_()
    value.backward()
    assert torch.equal(x.grad, first)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS], ids=lambda c: c.name)
def test_double_backward_is_a_clear_error(loss, backend):
    # create_graph=True gives the right first derivative; asking for the second raises, naming
    # pylosses and the backends that have one, instead of a gradient silently cut from the graph
    x, t = make_pair(loss, (2, 1, 6, 5), torch.float64, torch.float64, grad=(True, True))
    gx, gt = torch.autograd.grad(loss.call(x, t, "mean", backend), (x, t), create_graph=True)
    want = torch.autograd.grad(loss.reference(x, t, "mean"), (x, t))
    torch.testing.assert_close((gx.detach(), gt.detach()), want)
    assert gx.requires_grad and gt.requires_grad
    for g in (gx, gt):
        with pytest.raises(RuntimeError, match=r"pylosses: second-order gradients .* backend='reference'"):
            torch.autograd.grad(g.sum(), x, retain_graph=True)
    # the reference backend does have second derivatives
    gx_ref, = torch.autograd.grad(loss.call(x, t, "mean", "reference"), x, create_graph=True)
    assert torch.autograd.grad(gx_ref.sum(), x)[0].shape == x.shape


META_BACKENDS = ["auto", *pylosses.available_backends("meta")]


@pytest.mark.parametrize("backend", META_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss", [MSE, SEG, SEG3D_LOGITS], ids=lambda c: c.name)
def test_meta_tensors_give_shapes_and_dtypes(loss, reduction, backend):
    shape = (3, 1, 4, 6, 5) if loss.spatial_dims == 3 else (3, 1, 6, 5)
    dtypes = (torch.bfloat16, torch.float32)
    x = torch.empty(shape, device="meta", dtype=dtypes[0], requires_grad=True)
    t = torch.empty(shape, device="meta", dtype=dtypes[1], requires_grad=True)
    value = loss.call(x, t, reduction, backend)
    want = loss.reference(torch.zeros(shape, dtype=dtypes[0]), torch.zeros(shape, dtype=dtypes[1]), reduction)
    assert (value.device.type, value.shape, value.dtype) == ("meta", want.shape, want.dtype)
    value.sum().backward()
    for tensor in (x, t):
        assert (tensor.grad.device.type, tensor.grad.shape, tensor.grad.dtype) == ("meta", tensor.shape, tensor.dtype)


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def _thp_eligible(address: int):
    """The THPeligible field of the mapping in /proc/self/smaps that holds `address`."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "THPeligible:":
                return line.split()[1] == "1"
    return None


# Each CPU op that returns a gradient, at 2^23 + 2^20 float32 elements (36 MiB: above
# cpu_common.h's kHugePageAdviceBytes), against the reference backend.
_BIG = 9 * 2**20
_BIG_GRADIENT_LOSSES = GRADIENT_LOSSES


@pytest.mark.parametrize("name", sorted(_BIG_GRADIENT_LOSSES))
def test_large_gradient_is_exact_and_advised_for_huge_pages(name):
    """A gradient of 32 MiB or more comes from empty_gradient (cpu_common.h): the same values,
    and on Linux with transparent huge pages on request its pages are advised for them."""
    loss = _BIG_GRADIENT_LOSSES[name]
    x = torch.randn(2, 4, _BIG // 8 // 1024, 1024, generator=torch.Generator().manual_seed(0))
    grads = {}
    for backend in ("reference", "native"):
        leaf = x.clone().requires_grad_(True)
        loss(leaf, backend).backward()
        grads[backend] = leaf.grad
    torch.testing.assert_close(grads["native"], grads["reference"], rtol=1e-4, atol=1e-10)
    if _thp_mode() not in ("madvise", "always"):
        pytest.skip(f"transparent huge pages are {_thp_mode()!r} here")
    assert _thp_eligible(grads["native"].data_ptr() + (4 << 20)) is True



def test_sums_over_2_25_elements_keep_float32_accuracy():
    """Constant inputs (every float32 lane adds the same term: the worst case for its running
    sum) of 2**25 elements against the exact value: within a few times torch's own error (BCE
    1.7e-6, MSE 7e-7, MONAI's Dice 2.3e-6). Sums in float32 lanes over whole chunks were 7e-4
    off (3-D segmentation), 2e-5 (MSE) and 1e-4 (Dice)."""
    import math

    shape = (1, 1, 256, 256, 512)
    n = math.prod(shape)
    p = torch.full(shape, 0.1)
    p32 = p[0, 0, 0, 0, 0].item()  # 0.1 in float32
    loss = pylosses.segmentation_loss(p, torch.zeros(shape, dtype=torch.bool), alpha=1.0, beta=0.0, spatial_dims=3)
    exact = -math.log1p(-p32)
    assert abs(loss.item() - exact) / exact < 1e-5
    mse = pylosses.mse_loss(p.view(-1), torch.zeros(n))
    assert abs(mse.item() - p32 * p32) / (p32 * p32) < 1e-5
    del p
    q = torch.full(shape, 0.7)
    q32 = q[0, 0, 0, 0, 0].item()
    dice = pylosses.dice_loss(q, torch.ones(shape, dtype=torch.bool))
    exact = 1 - (2 * q32 * n + 1e-5) / (q32 * n + n + 1e-5)
    assert abs(dice.item() - exact) / exact < 2e-5
