"""The public API: argument checks, modules, backend selection, autocast, edge values."""

import os
import warnings

import pytest
import torch
import torch.nn as nn

import pylosses
from pylosses import functional
from cases import GRADIENT_LOSSES, MSE, SEG, SEG_LOGITS, make_pair

HAS_NATIVE = "native" in pylosses.available_backends("cpu")
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="pylosses._C is not built")

X = torch.rand(2, 1, 4, 5)
T = torch.rand(2, 1, 4, 5)

# (function, kwargs, exception, words the message must contain)
BAD_CALLS = [
    (pylosses.mse_loss, dict(input=[1.0], target=T), TypeError, ["input", "Tensor"]),
    (pylosses.mse_loss, dict(input=X, target=1.0), TypeError, ["target", "Tensor"]),
    (pylosses.mse_loss, dict(input=X.long(), target=T), TypeError, ["input", "int64"]),
    (pylosses.mse_loss, dict(input=X, target=T.bool()), TypeError, ["target", "bool"]),
    (pylosses.mse_loss, dict(input=X, target=T[:1]), ValueError, ["(2, 1, 4, 5)", "(1, 1, 4, 5)"]),
    (pylosses.mse_loss, dict(input=X, target=T, reduction="avg"), ValueError, ["reduction", "'avg'"]),
    (pylosses.mse_loss, dict(input=X, target=T, backend="cuDNN"), ValueError, ["backend", "'cuDNN'"]),
    (pylosses.mse_loss, dict(input=X, target=T.to("meta")), ValueError, ["device", "meta"]),
    (pylosses.mse_loss, dict(input=X.to_sparse(), target=T.to_sparse()), TypeError, ["input", "layout"]),
    (pylosses.segmentation_loss, dict(input=X, target=T.long()), TypeError, ["target", "int64"]),
    (pylosses.segmentation_loss, dict(input=X.to(torch.complex64), target=T), TypeError, ["input", "complex64"]),
    (pylosses.segmentation_loss, dict(input=X, target=T.transpose(2, 3)), ValueError, ["(2, 1, 4, 5)", "(2, 1, 5, 4)"]),
    (pylosses.segmentation_loss, dict(input=X[0, 0], target=T[0, 0]), ValueError, ["input", "(4, 5)", "3"]),
    (pylosses.segmentation_loss, dict(input=X[0], target=T[0], spatial_dims=3), ValueError, ["input", "(1, 4, 5)", "4"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, spatial_dims=1), ValueError, ["spatial_dims", "1"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, spatial_dims=2.0), TypeError, ["spatial_dims", "2.0"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, alpha="0.7"), TypeError, ["alpha", "'0.7'"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, beta=float("nan")), ValueError, ["beta", "nan"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, alpha=True), TypeError, ["alpha", "True"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, alpha=10**400), ValueError, ["alpha", "finite"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, from_logits=1), TypeError, ["from_logits", "1"]),
    (pylosses.segmentation_loss, dict(input=X, target=T, reduction=None), ValueError, ["reduction", "None"]),
    (pylosses.SegmentationLoss, dict(reduction="elementwise_mean"), ValueError, ["reduction", "elementwise_mean"]),
    (pylosses.SegmentationLoss, dict(spatial_dims=4), ValueError, ["spatial_dims", "4"]),
    (pylosses.MSELoss, dict(backend="fast"), ValueError, ["backend", "'fast'"]),
    (pylosses.set_input_checks, dict(enabled="yes"), TypeError, ["enabled", "'yes'"]),
]


@pytest.mark.parametrize("fn,kwargs,error,words", BAD_CALLS)
def test_bad_input_is_a_clear_error(fn, kwargs, error, words):
    with pytest.raises(error) as info:
        fn(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"


@pytest.mark.parametrize("backend", pylosses.available_backends("cpu"))
def test_probabilities_outside_0_1_raise_torchs_error(backend):
    x = torch.rand(1, 1, 4, 4)
    for bad in (1.5, -0.25, float("nan")):
        y = x.clone()
        y[0, 0, 2, 1] = bad
        if backend == "compile":  # inductor drops BCELoss's check: the loss is NaN (README)
            assert torch.isnan(pylosses.segmentation_loss(y, x, backend=backend))
            continue
        with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
            pylosses.segmentation_loss(y, x, backend=backend)
    # logits may be anything
    assert torch.isfinite(pylosses.segmentation_loss(x * 50 - 25, x, from_logits=True, backend=backend))


# (target, its kind, whether it is bad with probabilities, and with logits): nn.BCELoss checks a
# float target, nn.BCEWithLogitsLoss does not; a mask must hold 0 and 1 in either form
_P = torch.rand(2, 1, 6, 7)
_MASK = _P > 0.5
TARGETS = [
    ("mask 0/255", _MASK.to(torch.uint8) * 255, "mask", True, True),
    ("mask 0/2", _MASK.to(torch.uint8) * 2, "mask", True, True),
    ("mask 0/1", _MASK.to(torch.uint8), "mask", False, False),
    ("bool", _MASK, "mask", False, False),
    ("float 2", torch.where(_MASK, 2.0, 0.0), "float", True, False),
    ("float -0.5", torch.where(_MASK, -0.5, 0.0), "float", True, False),
    ("float NaN", torch.where(_MASK, float("nan"), 0.0), "float", True, False),
    ("float soft", torch.rand(2, 1, 6, 7), "float", False, False),
]
MESSAGES = {"mask": "target masks (uint8 or bool) must hold only 0 and 1; for a 0/255 mask, divide it by 255",
            "float": "all elements of target should be between 0 and 1"}


@pytest.mark.parametrize("backend", pylosses.available_backends("cpu"))
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("name,target,kind,bad_probs,bad_logits", TARGETS, ids=[c[0] for c in TARGETS])
def test_targets_are_checked_as_torch_checks_them(name, target, kind, bad_probs, bad_logits, from_logits, backend):
    x = torch.randn(2, 1, 6, 7) if from_logits else _P.clone()
    t = target.clone()
    bad = bad_logits if from_logits else bad_probs
    if not bad:
        value = pylosses.segmentation_loss(x, t, from_logits=from_logits, backend=backend)
        want = pylosses.reference.segmentation_loss(x, t.float() if kind == "mask" else t, 0.7, 0.3, from_logits)
        assert torch.isfinite(value) == torch.isfinite(want) and torch.allclose(value, want, equal_nan=True)
    elif backend == "compile" and kind == "float":  # inductor leaves nn.BCELoss's check out: NaN (README)
        assert torch.isnan(pylosses.segmentation_loss(x, t, from_logits=from_logits, backend=backend))
    else:
        with pytest.raises(RuntimeError, match=MESSAGES[kind].replace("(", r"\(").replace(")", r"\)")):
            pylosses.segmentation_loss(x, t, from_logits=from_logits, backend=backend)
    assert torch.equal(t, target) or torch.equal(t.isnan(), target.isnan())  # untouched


def test_the_kernels_and_the_reference_say_the_same():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def header(name):
        with open(os.path.join(root, "csrc", name)) as f:
            return f.read().replace('"\n    "', "")

    assert f'"{pylosses.reference.MASK_MESSAGE}"' in header("kernel_common.h")
    assert f'"{pylosses.reference.TARGET_RANGE_MESSAGE}"' in header("seg_loss_math.h")


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("from_logits", [False, True])
def test_extreme_values_match_nn(from_logits, dtype):
    # p exactly 0 and 1 (BCE's clamps at -100, its gradient's floor of p (1 - p), torch's float
    # 1e-12 also in float64, infinite target grads)
    values = [0.0, 1.0, 0.0, 1.0, 0.5, 1e-30] if not from_logits else [-200.0, 200.0, 80.0, -80.0, 0.0, 30.0]
    x = torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 3).requires_grad_()
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 1.0], dtype=dtype).reshape(1, 1, 2, 3).requires_grad_()
    ours = pylosses.segmentation_loss(x, t, alpha=1.0, beta=0.0, from_logits=from_logits, reduction="sum",
                                      backend="native")
    bce = nn.BCEWithLogitsLoss(reduction="sum") if from_logits else nn.BCELoss(reduction="sum")
    theirs = bce(x, t)
    torch.testing.assert_close(ours, theirs)
    tol = {"rtol": 1e-12, "atol": 0.0} if dtype == torch.float64 else {}
    for a, b in zip(torch.autograd.grad(ours, (x, t)), torch.autograd.grad(theirs, (x, t))):
        torch.testing.assert_close(a, b, equal_nan=True, **tol)


def test_modules_are_losses_and_carry_configuration():
    seg = pylosses.SegmentationLoss(alpha=0.5, beta=0.5, from_logits=True, reduction="sum", backend="reference")
    assert isinstance(seg, nn.modules.loss._Loss) and isinstance(pylosses.MSELoss(), nn.modules.loss._Loss)
    assert "alpha=0.5" in repr(seg) and "reduction='sum'" in repr(seg)
    x, t = make_pair(SEG_LOGITS, (2, 1, 5, 6), torch.float64, torch.float64)
    want = pylosses.reference.segmentation_loss(x, t, 0.5, 0.5, True, 2, "sum")
    torch.testing.assert_close(seg(x, t), want)
    torch.testing.assert_close(pylosses.MSELoss(reduction="none")(x, t), nn.MSELoss(reduction="none")(x, t))


def test_available_backends_and_auto():
    backends = pylosses.available_backends("cpu")
    assert backends[-3:] == ["compile", "jit", "reference"]
    assert ("triton" in backends) == (HAS_NATIVE and os.environ.get("TRITON_INTERPRET") == "1")
    assert pylosses.available_backends(torch.device("cpu")) == backends
    if HAS_NATIVE:
        assert backends[0] == "native"
        assert functional._pick_backend("auto", torch.device("cpu")) == "native"


def test_auto_takes_a_loss_own_order_where_it_has_one(monkeypatch):
    """backend="auto" on CUDA tensors: the segmentation loss's order (Triton first, from the H200
    measurement) where FASTEST_FOR has one, the device's (native first) for the other losses;
    each falls to the next available backend. Availability is stubbed: no GPU here."""
    missing = set()
    monkeypatch.setattr(functional, "_unavailable_reason", lambda b, d: "stubbed" if b in missing else "")
    assert functional._auto_backend("cuda", "segmentation_loss") == "triton"
    assert functional._auto_backend("cuda", "mse_loss") == functional._auto_backend("cuda") == "native"
    assert functional._pick_backend("auto", torch.device("cuda"), 8, "segmentation_loss") == "triton"
    missing.add("triton")
    assert functional._auto_backend("cuda", "segmentation_loss") == "native"
    missing.add("native")
    assert functional._auto_backend("cuda", "segmentation_loss") == "reference"
    assert functional.FASTEST_FOR[("cuda", "segmentation_loss")][0] == "triton"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_backend_choice_traces_under_fullgraph_compile(device):
    """The backend checks run inside the user's compiled code, for any device: no call dynamo
    cannot trace (the H200 run found _dispatch_has_kernel_for_dispatch_key, which returns a bool,
    in the check for cuda tensors). Tracing needs no such device: the checks look at torch.device."""
    dev = torch.device(device)

    def choose(x):
        return x + len(functional._unavailable_reason("native", dev)) + len(functional._auto_backend(dev))

    torch._dynamo.reset()
    x = torch.zeros(3)
    torch.testing.assert_close(torch.compile(choose, fullgraph=True, backend="eager")(x), choose(x))


@needs_native
def test_triton_on_cpu_tensors_only_in_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in pylosses.available_backends("cpu")
    with pytest.raises(RuntimeError, match="backend='triton'.*TRITON_INTERPRET"):
        pylosses.segmentation_loss(X, T, backend="triton")


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setattr(functional._ops, "EXTENSION_ERROR", ImportError("not built"))
    monkeypatch.setattr(functional, "_warned", set())
    x, t = make_pair(SEG, (1, 1, 4, 4), torch.float32, torch.float32)
    with pytest.warns(UserWarning, match="reference.*not built"):
        a = pylosses.segmentation_loss(x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = pylosses.segmentation_loss(x, t)  # once only
    torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="native.*not built"):
        pylosses.segmentation_loss(x, t, backend="native")


@pytest.mark.parametrize("backend", pylosses.available_backends("cpu"))
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS], ids=lambda c: c.name)
def test_cpu_autocast_bfloat16(loss, backend):
    net = nn.Linear(6, 6)
    x = torch.rand(2, 1, 5, 6)
    t = torch.rand(2, 1, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        if loss.is_seg and not loss.from_logits:
            out = torch.sigmoid(out)
        assert out.dtype == torch.bfloat16
        value = loss.call(out, t, "mean", backend)
    assert value.dtype == torch.float32  # as torch's losses under autocast
    want = loss.reference(out.detach().double(), t.double(), "mean")
    assert abs(value.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))
    value.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


@pytest.mark.parametrize("backend", pylosses.available_backends("cpu"))
@pytest.mark.parametrize("loss", [MSE, SEG], ids=lambda c: c.name)
def test_empty_inputs(loss, backend):
    x, t = make_pair(loss, (0, 1, 4, 4), torch.float32, torch.float32)
    assert torch.isnan(loss.call(x, t, "mean", backend))
    assert loss.call(x, t, "sum", backend).item() == 0
    none = loss.call(x, t, "none", backend)
    assert none.numel() == 0
    none.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("backend", pylosses.available_backends("cpu"))
def test_seed_example_gives_a_finite_loss(backend):
    pred = torch.rand(1, 1, 28, 28)
    target = torch.randint(0, 2, (1, 1, 28, 28)).float()
    loss = pylosses.SegmentationLoss(alpha=0.7, beta=0.3, backend=backend)(pred, target)
    assert loss.shape == () and torch.isfinite(loss)


def test_input_checks_flag():
    assert pylosses.input_checks_enabled() is False
    pylosses.set_input_checks(True)
    try:
        assert pylosses.input_checks_enabled() is True
    finally:
        pylosses.set_input_checks(False)


@pytest.mark.parametrize("name,target,kind,bad_probs,bad_logits", TARGETS, ids=[c[0] for c in TARGETS])
def test_checking_mode_raises_what_the_cpu_raises(name, target, kind, bad_probs, bad_logits):
    # set_input_checks(True) on CUDA runs these checks (a host sync) before the kernel, which
    # alone would give a NaN loss; the logic is device-independent, so the CPU can test it
    from pylosses import _ops

    for from_logits, bad in ((False, bad_probs), (True, bad_logits)):
        x = torch.randn(2, 1, 6, 7) if from_logits else _P
        if bad:
            with pytest.raises(RuntimeError, match=MESSAGES[kind].replace("(", r"\(").replace(")", r"\)")):
                _ops._check_inputs(x, target, from_logits)
        else:
            _ops._check_inputs(x, target, from_logits)
    with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
        _ops._check_inputs(_P + 1, torch.rand(2, 1, 6, 7), False)


@pytest.mark.parametrize("name", sorted(GRADIENT_LOSSES))
def test_forward_mode_and_func_transforms_take_the_reference(name):
    """The ops' derivatives are reverse mode only, and torch would drop a tangent through them
    without a word (a derivative of 0): under forward-mode AD and torch.func's transforms
    backend="auto" takes the reference, and native says it does not support them."""
    from torch.autograd import forward_ad

    loss = GRADIENT_LOSSES[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=generator)
    v = torch.randn(x.shape, dtype=torch.float64, generator=generator)
    value, tangent = torch.func.jvp(lambda a: loss(a, "reference"), (x,), (v,))
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(leaf, "reference"), leaf)
    torch.testing.assert_close(tangent, (grad * v).sum())  # the reference's own derivatives agree
    assert tangent.abs() > 1e-6
    got_value, got_tangent = torch.func.jvp(lambda a: loss(a, "auto"), (x,), (v,))
    torch.testing.assert_close(got_value, value)
    torch.testing.assert_close(got_tangent, tangent)
    with forward_ad.dual_level():
        dual_tangent = forward_ad.unpack_dual(loss(forward_ad.make_dual(x, v), "auto")).tangent
    torch.testing.assert_close(dual_tangent, tangent)
    torch.testing.assert_close(torch.func.grad(lambda a: loss(a, "auto"))(x), grad)
    with pytest.raises(RuntimeError, match="backend='native' does not support torch.func"):
        torch.func.jvp(lambda a: loss(a, "native"), (x,), (v,))
    with pytest.raises(RuntimeError, match="backend='native' does not support torch.func"):
        torch.func.grad(lambda a: loss(a, "native"))(x)
    with forward_ad.dual_level(), pytest.raises(RuntimeError, match="does not support forward-mode AD"):
        loss(forward_ad.make_dual(x, v), "native")


@pytest.mark.parametrize("make", [pylosses.MSELoss, pylosses.SegmentationLoss, pylosses.DiceLoss, pylosses.TverskyLoss,
                                  pylosses.GeneralizedDiceLoss, pylosses.DiceBCELoss, pylosses.DiceCELoss,
                                  pylosses.CrossEntropyLoss])
def test_a_model_holding_a_loss_module_scripts(make):
    """torch.jit.script of a model with the criterion as a submodule (as torch's and MONAI's
    losses allow): its forward is left out of TorchScript, and calling it there raises."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.criterion = make()

        def forward(self, x):
            return self.conv(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (torch.jit.script is deprecated)
        scripted = torch.jit.script(Net())
    x = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(scripted(x), scripted.conv(x))
