"""The region losses (Dice, Tversky, generalised Dice): the reference against MONAI's own classes,
every backend against the reference, and the API (arguments, errors, the mask)."""

import warnings

import pytest
import torch

import pylosses
from pylosses import reference

# (pylosses class, MONAI class name, options): every option of each loss, and combinations
DICE_OPTIONS = [{}, {"sigmoid": True}, {"sigmoid": True, "squared_pred": True}, {"jaccard": True},
                {"sigmoid": True, "jaccard": True, "squared_pred": True}, {"include_background": False},
                {"sigmoid": True, "batch": True}, {"reduction": "none"}, {"reduction": "none", "batch": True},
                {"reduction": "sum", "sigmoid": True}, {"smooth_nr": 0.0, "smooth_dr": 1e-6},
                {"weight": [0.2, 0.3, 0.5]}, {"weight": 2.0, "sigmoid": True},
                {"weight": [1.0, 3.0], "include_background": False, "reduction": "none"},
                {"soft_label": True}, {"soft_label": True, "sigmoid": True, "jaccard": True, "batch": True},
                {"soft_label": True, "squared_pred": True}]
TVERSKY_OPTIONS = [{}, {"sigmoid": True}, {"alpha": 0.3, "beta": 0.7}, {"include_background": False},
                   {"batch": True, "reduction": "none"}, {"reduction": "none"}, {"reduction": "sum"},
                   {"soft_label": True, "sigmoid": True}, {"soft_label": True, "batch": True, "alpha": 0.9}]
GDL_OPTIONS = [{}, {"sigmoid": True}, {"w_type": "simple"}, {"w_type": "uniform"}, {"include_background": False},
               {"batch": True}, {"reduction": "none"}, {"reduction": "none", "batch": True}, {"reduction": "sum"},
               {"soft_label": True, "sigmoid": True}]
CASES = ([("DiceLoss", o) for o in DICE_OPTIONS] + [("TverskyLoss", o) for o in TVERSKY_OPTIONS]
         + [("GeneralizedDiceLoss", o) for o in GDL_OPTIONS])
SHAPES = [(2, 3, 8, 7), (3, 3, 5), (2, 3, 4, 5, 6)]


def _data(shape, sigmoid, soft, dtype=torch.float64, seed=0, empty_class=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) if sigmoid else \
        torch.rand(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    t = t if soft else (t > 0.5).double()
    if empty_class:  # a class absent from a sample's target (generalised Dice's infinite weight)
        t[0, 1] = 0
    return x.to(dtype), t.to(dtype)


def _case_id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reference_matches_monai(case):
    """Values and gradients (input and a soft target) of MONAI's class and of pylosses' with the
    same arguments, in float64, on 1-D to 3-D inputs, with a class absent from the target."""
    monai_losses = pytest.importorskip("monai.losses")
    name, options = case
    theirs = getattr(monai_losses, name)(**options)
    ours = getattr(pylosses, name)(**options, backend="reference")
    for shape in SHAPES:
        for soft in (False, True):
            x, t = _data(shape, options.get("sigmoid", False), soft, empty_class=not soft)
            # MONAI's generalised Dice cannot differentiate its target (its weights are written
            # in place, and autograd raises); pylosses' can (test_reference_gradcheck)
            target_grad = name != "GeneralizedDiceLoss"
            x1, t1 = x.clone().requires_grad_(True), t.clone().requires_grad_(target_grad)
            x2, t2 = x.clone().requires_grad_(True), t.clone().requires_grad_(target_grad)
            want = theirs(x1, t1)
            got = ours(x2, t2)
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, equal_nan=True)
            g = torch.rand(want.shape, dtype=torch.float64) + 0.5
            wrt_ours, wrt_theirs = ((x2, t2), (x1, t1)) if target_grad else ((x2,), (x1,))
            for mine, truth in zip(torch.autograd.grad(got, wrt_ours, g), torch.autograd.grad(want, wrt_theirs, g)):
                torch.testing.assert_close(mine, truth, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fn", [pylosses.dice_loss, pylosses.tversky_loss, pylosses.generalized_dice_loss])
def test_reference_gradcheck(fn):
    """The reference's gradients, for input and target, against finite differences in float64."""
    x, t = _data((2, 3, 4, 3), True, True)
    x.requires_grad_(True)
    t.requires_grad_(True)
    mask = torch.rand(2, 1, 4, 3, generator=torch.Generator().manual_seed(1)) > 0.3
    # generalised Dice takes its weights in float32, as MONAI does: a coarser difference quotient
    # for its target
    loose = {"eps": 1e-3, "atol": 5e-3, "rtol": 5e-3} if fn is pylosses.generalized_dice_loss else {}
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, sigmoid=True, mask=mask, backend="reference"), (x, t),
                                    **loose)


@pytest.mark.parametrize("name", ["DiceLoss", "TverskyLoss", "GeneralizedDiceLoss"])
def test_single_channel_quirks_match_monai(name):
    """One channel: include_background=False is ignored with MONAI's warning; Dice ignores its
    class weight."""
    monai_losses = pytest.importorskip("monai.losses")
    x, t = _data((2, 1, 6, 6), True, False)
    options = {"include_background": False, "sigmoid": True}
    if name == "DiceLoss":
        options["weight"] = 3.0
    with pytest.warns(UserWarning, match="single channel prediction"):
        want = getattr(monai_losses, name)(**options)(x, t)
    with pytest.warns(UserWarning, match="single channel prediction"):
        got = getattr(pylosses, name)(**options, backend="reference")(x, t)
    torch.testing.assert_close(got, want)


def test_float_losses_match_monai_in_float32():
    monai_losses = pytest.importorskip("monai.losses")
    x, t = _data((2, 3, 16, 16), True, False, dtype=torch.float32)
    for name in ("DiceLoss", "TverskyLoss", "GeneralizedDiceLoss"):
        want = getattr(monai_losses, name)(sigmoid=True)(x, t)
        got = getattr(pylosses, name)(sigmoid=True)(x, t)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# every backend against the reference --------------------------------------------------------

BACKENDS = [b for b in ("native", "triton", "jit", "compile") if b in pylosses.available_backends("cpu")]
FUNCTIONS = [(pylosses.dice_loss, {"sigmoid": True}), (pylosses.dice_loss, {"squared_pred": True, "batch": True}),
             (pylosses.dice_loss, {"soft_label": True, "sigmoid": True, "reduction": "none"}),
             (pylosses.dice_loss, {"jaccard": True, "weight": [1.0, 2.0, 0.5], "reduction": "sum"}),
             (pylosses.tversky_loss, {"sigmoid": True, "alpha": 0.3, "beta": 0.7, "reduction": "none"}),
             (pylosses.tversky_loss, {"include_background": False, "soft_label": True}),
             (pylosses.generalized_dice_loss, {"sigmoid": True}),
             (pylosses.generalized_dice_loss, {"w_type": "simple", "batch": True, "reduction": "none"}),
             (pylosses.dice_bce_loss, {"lambda_tv": 0.3}),
             (pylosses.dice_bce_loss, {"pos_weight": [2.0, 0.5, 1.5], "lambda_dice": 0.5,
                                       "reduction": "sum"})]


def _fn_id(case):
    fn, options = case
    return fn.__name__ + "-" + "-".join(f"{k}={v}" for k, v in options.items())


def _check_backend(fn, options, backend, shape, dtype, target_dtype, mask=None, seed=0, device="cpu"):
    """fn on `backend` (its tensors on `device`) against the reference in float64 on the CPU."""
    sigmoid = options.get("sigmoid", False) or fn is pylosses.dice_bce_loss  # (on logits)
    if fn is pylosses.dice_bce_loss and len(shape) not in (4, 5):
        options = {**options, "lambda_tv": 0.0}  # total variation over 2 or 3 spatial axes only
    if "pos_weight" in options:  # one a channel, broadcast over the spatial axes
        options = {**options, "pos_weight": torch.tensor(options["pos_weight"]).view((-1,) + (1,) * (len(shape) - 2))}
    x, t = _data(shape, sigmoid, target_dtype.is_floating_point, seed=seed)
    x = x.to(dtype).requires_grad_(True)
    t = t.to(target_dtype)
    if t.is_floating_point():
        t.requires_grad_(True)
    exact_x = x.detach().double().requires_grad_(True)
    exact_t = t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t
    if device != "cpu":
        x = x.detach().to(device).requires_grad_(True)
        t = t.detach().to(device).requires_grad_(t.requires_grad)
    on_device = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    got = fn(x, t, **on_device, mask=None if mask is None else mask.to(device), backend=backend)
    want = fn(exact_x, exact_t, **options, mask=mask, backend="reference")
    assert got.shape == want.shape
    assert got.dtype == reference.region_out_dtype(x, t) and got.device == x.device
    tol = 1e-12 if dtype == torch.float64 and target_dtype in (torch.float64, torch.bool, torch.uint8) else 2e-5
    if fn is pylosses.generalized_dice_loss:
        tol = max(tol, 1e-5)  # its weights are float32 (MONAI's), and the target's gradient goes through them
    # the loss is rounded once to its dtype (16-bit with a bool or uint8 target)
    loss_tol = max(tol, 4 * torch.finfo(got.dtype).eps)
    torch.testing.assert_close(got.cpu().double(), want, rtol=loss_tol, atol=loss_tol)
    wrt, wrt64 = ([x, t], [exact_x, exact_t]) if t.requires_grad else ([x], [exact_x])
    g = torch.rand(want.shape, dtype=torch.float64) + 0.5
    mine = [m.cpu() for m in torch.autograd.grad(got, wrt, g.to(got.device, got.dtype))]
    truth = torch.autograd.grad(want, wrt64, g)
    for a, b, leaf in zip(mine, truth, wrt):
        assert a.dtype == leaf.dtype
        rtol = {torch.float16: 4e-3, torch.bfloat16: 3e-2}.get(a.dtype, tol)
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=rtol * float(b.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", FUNCTIONS, ids=_fn_id)
def test_backends_match_reference(case, backend):
    fn, options = case
    for shape in [(2, 3, 8, 7), (2, 3, 4, 5, 6), (1, 3, 37)]:
        _check_backend(fn, options, backend, shape, torch.float64, torch.float64)
    if backend in ("native", "triton"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for target_dtype in (torch.float32, torch.bool, torch.uint8):
                _check_backend(fn, options, backend, (2, 3, 6, 9), dtype, target_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_removes_pixels(backend):
    """A mask gives the loss of the kept pixels alone: the same as zeroing input and target there
    in the probability form (every sum's term is 0 for p = t = 0), for a (B, 1, ...) and a full
    mask, with a zero gradient where it is False."""
    x, t = _data((2, 3, 6, 7), False, True)
    g = torch.Generator().manual_seed(3)
    for mask in (torch.rand(2, 1, 6, 7, generator=g) > 0.4, torch.rand(2, 3, 6, 7, generator=g) > 0.4,
                 torch.rand(6, 7, generator=g) > 0.4):
        for fn in (pylosses.dice_loss, pylosses.tversky_loss, pylosses.generalized_dice_loss):
            xg = x.clone().requires_grad_(True)
            got = fn(xg, t, mask=mask, backend=backend)
            zeroed = fn(x * mask, t * mask, backend="reference")
            torch.testing.assert_close(got, zeroed, rtol=1e-12, atol=1e-12)
            grad, = torch.autograd.grad(got, xg)
            assert (grad[~mask.expand_as(x)] == 0).all()
            assert (grad[mask.expand_as(x)] != 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_the_mask_leaves_out_may_be_nan(backend):
    """Padding under the mask (NaN or inf in input or target) stays out of the loss and of the
    gradients, on every loss."""
    x, t = _data((2, 3, 6, 7), True, True)
    mask = torch.ones(2, 1, 6, 7, dtype=torch.bool)
    mask[:, :, -2:] = False
    x[:, :, -2:] = float("nan")
    x[0, 0, -1, 0] = float("inf")
    t[:, :, -2:, 1] = float("nan")
    for fn, options in ((pylosses.dice_loss, {"sigmoid": True}), (pylosses.tversky_loss, {"soft_label": True}),
                        (pylosses.generalized_dice_loss, {"sigmoid": True}), (pylosses.dice_bce_loss, {})):
        xg, tg = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
        loss = fn(xg, tg, **options, mask=mask, backend=backend)
        gx, gt = torch.autograd.grad(loss, (xg, tg))
        assert torch.isfinite(loss), fn.__name__
        assert torch.isfinite(gx).all() and torch.isfinite(gt).all(), fn.__name__
        assert (gx[:, :, -2:] == 0).all() and (gt[:, :, -2:] == 0).all(), fn.__name__


@pytest.mark.parametrize("backend", BACKENDS)
def test_dice_bce_mask_and_pos_weight(backend):
    """Dice + BCE with a mask: the Dice of the kept pixels plus the mean BCE (torch's, with
    pos_weight) over them, plus the total variation of all of them."""
    x, t = _data((2, 3, 6, 7), True, False)
    mask = torch.rand(2, 1, 6, 7, generator=torch.Generator().manual_seed(5)) > 0.4
    pw = torch.tensor([2.0, 0.5, 1.0]).view(3, 1, 1)
    got = pylosses.dice_bce_loss(x, t, mask=mask, pos_weight=pw, lambda_tv=0.2, backend=backend)
    keep = mask.expand_as(x)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")[keep].mean()
    tv = pylosses.segmentation_loss(x, t, alpha=0.0, beta=0.2, from_logits=True, backend="reference")
    want = pylosses.dice_loss(x, t, sigmoid=True, mask=mask, backend="reference") + bce + tv
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("native", "triton")])
@pytest.mark.parametrize("pos_weight, fused", [(None, True), ("channel", True), ("number", True),
                                               ("along width", False)])
@pytest.mark.parametrize("mask_kind", ["none", "broadcast", "full"])
def test_dice_bce_takes_the_bce_in_the_region_pass(monkeypatch, backend, pos_weight, fused, mask_kind):
    """The kernels: Dice + BCE from one region_sums pass (mode + REGION_WITH_BCE) where pos_weight
    holds one value a channel, the composed path where it varies along space; both equal the
    reference, values and gradients, in float64."""
    x, t = _data((2, 3, 6, 7), True, True)
    g = torch.Generator().manual_seed(3)
    mask = {"none": None, "broadcast": torch.rand(2, 1, 6, 7, generator=g) > 0.4,
            "full": torch.rand(2, 3, 6, 7, generator=g) > 0.4}[mask_kind]
    pw = {None: None, "channel": torch.tensor([2.0, 0.5, 1.5]).view(3, 1, 1), "number": 3.0,
          "along width": torch.linspace(0.5, 2.0, 7)}[pos_weight]
    modes = []
    region_sums = pylosses._ops.region_sums
    monkeypatch.setattr(pylosses._ops, "region_sums", lambda *a: modes.append(a[-1]) or region_sums(*a))
    grads = []
    for name in (backend, "reference"):
        leaf = x.clone().requires_grad_(True)
        loss = pylosses.dice_bce_loss(leaf, t, mask=mask, pos_weight=pw, lambda_dice=0.7, backend=name)
        loss.backward()
        grads.append((loss.detach(), leaf.grad))
    assert [m >= reference.REGION_WITH_BCE for m in modes] == [fused]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("options", [{}, {"weight": torch.tensor([2.0]), "reduction": "sum"}, {"lambda_dice": 0.3, "lambda_ce": 2.0},
                                     {"squared_pred": True, "batch": True, "jaccard": True}])
def test_dice_bce_is_monai_dice_ce_on_one_channel(options):
    """MONAI's DiceCELoss(sigmoid=True) on one channel is Dice plus BCE with logits whose
    pos_weight is its weight: DiceBCELoss with that pos_weight, values and gradients."""
    monai_losses = pytest.importorskip("monai.losses")
    theirs = monai_losses.DiceCELoss(sigmoid=True, **options)
    ours_options = {k: v for k, v in options.items() if k not in ("weight", "lambda_ce")}
    ours = pylosses.DiceBCELoss(**ours_options, lambda_bce=options.get("lambda_ce", 1.0),
                                pos_weight=options.get("weight"), backend="reference")
    for shape in [(2, 1, 8, 7), (2, 1, 4, 5, 6)]:
        x, t = _data(shape, True, False)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want, got = theirs(x1, t), ours(x2, t)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(got, x2)[0], torch.autograd.grad(want, x1)[0],
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast(backend):
    """Under CPU autocast every region loss runs on the tensors as given and returns float32,
    the value it gives without autocast."""
    x, t = _data((2, 3, 6, 7), True, False, dtype=torch.float32)
    for fn in (pylosses.dice_loss, pylosses.tversky_loss, pylosses.generalized_dice_loss, pylosses.dice_bce_loss):
        want = fn(x, t, backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fn(x, t, backend=backend)
        assert got.dtype == torch.float32, fn.__name__
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("native", "triton")])
def test_empty_and_degenerate(backend):
    """No samples: mean NaN, sum 0, none empty (as MONAI); an empty plane: every sum 0."""
    x, t = torch.rand(0, 3, 4, 4), torch.rand(0, 3, 4, 4)
    assert torch.isnan(pylosses.dice_loss(x, t, backend=backend))
    assert pylosses.dice_loss(x, t, reduction="sum", backend=backend) == 0
    assert pylosses.dice_loss(x, t, reduction="none", backend=backend).shape == (0, 3, 1, 1)
    x, t = torch.rand(2, 3, 0, 4), torch.rand(2, 3, 0, 4)
    want = pylosses.dice_loss(x, t, backend="reference")
    torch.testing.assert_close(pylosses.dice_loss(x, t, backend=backend), want)


def test_uint8_mask_targets_are_checked():
    """A uint8 target must hold 0 and 1 where the mask keeps it: the CPU's error on every backend
    and region loss (triton's kernels do not check: its launcher's caller does)."""
    x = torch.rand(2, 1, 4, 4)
    t = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).to(torch.uint8) * 255
    losses = [pylosses.dice_loss, pylosses.tversky_loss, pylosses.generalized_dice_loss, pylosses.dice_bce_loss]
    for backend in BACKENDS + ["reference"]:
        for fn in losses[:1] if backend == "compile" else losses:  # (compile: slow here)
            with pytest.raises(RuntimeError, match="must hold only 0 and 1"):
                fn(x, t, backend=backend)
            if backend != "compile":  # where a mask leaves the 255s out, they are not an error
                assert torch.isfinite(fn(x, t, mask=t == 0, backend=backend))


# the API ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [pylosses.DiceLoss, pylosses.TverskyLoss, pylosses.GeneralizedDiceLoss])
@pytest.mark.parametrize("bad, error, match", [
    ({"softmax": True, "sigmoid": True}, ValueError, "softmax"),
    ({"to_onehot_y": 1}, TypeError, "to_onehot_y"),
    ({"other_act": torch.tanh}, NotImplementedError, "other_act"),
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"backend": "cuda"}, ValueError, "backend"),
    ({"sigmoid": 1}, TypeError, "sigmoid"),
    ({"smooth_nr": float("nan")}, ValueError, "smooth_nr"),
])
def test_bad_arguments_name_themselves(cls, bad, error, match):
    with pytest.raises(error, match=match):
        cls(**bad)


def test_bad_tensors_and_options():
    x, t = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    cases = [
        (lambda: pylosses.dice_loss(x, t[:, :2]), ValueError, "same shape"),
        (lambda: pylosses.dice_loss(x[:, :, 0, 0], t[:, :, 0, 0]), ValueError, "spatial"),
        (lambda: pylosses.dice_loss(x, t.int()), TypeError, "target"),
        (lambda: pylosses.dice_loss(x, t, mask=torch.ones(2, 3, 4, 4)), TypeError, "mask"),
        (lambda: pylosses.dice_loss(x, t, mask=torch.ones(2, 2, 4, 4, dtype=torch.bool)), ValueError, "mask"),
        (lambda: pylosses.dice_loss(x, t, weight=[1.0, 2.0]), ValueError, "weight"),
        (lambda: pylosses.dice_loss(x, t, weight=[1.0, -2.0, 1.0]), ValueError, "weight"),
        (lambda: pylosses.dice_loss(x, t, ignore_index="0"), TypeError, "ignore_index"),
        (lambda: pylosses.generalized_dice_loss(x, t, w_type="cube"), ValueError, "w_type"),
        (lambda: pylosses.tversky_loss(x, t, alpha="0.5"), TypeError, "alpha"),
        (lambda: pylosses.dice_bce_loss(x, t, reduction="none"), ValueError, "reduction"),
        (lambda: pylosses.dice_bce_loss(x, t, lambda_bce=-1.0), ValueError, "lambda_bce"),
        (lambda: pylosses.dice_bce_loss(x[..., 0], t[..., 0], lambda_tv=0.1), ValueError, "lambda_tv"),
        (lambda: pylosses.dice_bce_loss(x, t, pos_weight=torch.ones(3)), ValueError, "pos_weight"),
        (lambda: pylosses.DiceBCELoss(lambda_dice=float("inf")), ValueError, "lambda_dice"),
        (lambda: pylosses.dice_loss(x, t, weight="1"), TypeError, "weight"),
        (lambda: pylosses.DiceBCELoss(pos_weight="1"), TypeError, "pos_weight"),
        (lambda: pylosses.dice_loss(x, t, weight=torch.ones(3, device="meta")), ValueError, "weight.*meta"),
        (lambda: pylosses.dice_bce_loss(x, t, pos_weight=torch.ones(3, 1, 1, device="meta")), ValueError,
         "pos_weight.*meta"),
        (lambda: pylosses.dice_bce_loss(x, t, pos_weight=torch.ones(3, 1, 1, requires_grad=True)), RuntimeError,
         "not differentiable with respect to pos_weight"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_dice_bce_module_takes_what_the_function_takes_for_pos_weight():
    """pos_weight as torch's BCEWithLogitsLoss keeps it: one a channel, (C, 1, 1), or any number
    (a negative one too, as torch's), the module and the function alike."""
    x, t = torch.randn(2, 3, 4, 4, dtype=torch.float64), (torch.rand(2, 3, 4, 4) > 0.5).double()
    for pos_weight in (torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).view(3, 1, 1), -1.0, [2.0]):
        module = pylosses.DiceBCELoss(pos_weight=pos_weight)
        torch.testing.assert_close(module(x, t), pylosses.dice_bce_loss(x, t, pos_weight=pos_weight))


def test_module_is_a_drop_in_for_monai():
    """The same positional arguments, MONAI's class_weight buffer (moves with .to(), is in the
    state dict), the reduction enum MONAI uses, and what the module shows of itself."""
    monai = pytest.importorskip("monai")
    ours = pylosses.DiceLoss(True, False, True, weight=[1.0, 2.0, 3.0])
    theirs = monai.losses.DiceLoss(True, False, True, weight=[1.0, 2.0, 3.0])
    assert set(ours.state_dict()) == set(theirs.state_dict()) == {"class_weight"}
    ours.load_state_dict(theirs.state_dict())
    x, t = _data((2, 3, 5, 5), True, False, dtype=torch.float32)
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    enum = pylosses.DiceLoss(reduction=monai.utils.LossReduction.SUM)
    assert enum.reduction == "sum" and "sum" in repr(enum)


def test_fullgraph_compile_of_a_model_with_a_region_loss():
    """torch.compile(fullgraph=True) traces the op, its epilogue and its backward: no graph break."""
    if "native" not in pylosses.available_backends("cpu"):
        pytest.skip("pylosses._C is not built")
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    criterion = pylosses.DiceLoss(sigmoid=True, backend="native")
    image, target = torch.rand(2, 1, 8, 8), torch.rand(2, 2, 8, 8) > 0.5
    mask = torch.rand(2, 1, 8, 8) > 0.2

    def step(image, target, mask):
        return criterion(model(image), target, mask)

    eager = step(image, target, mask)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(step, fullgraph=True)(image, target, mask)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


_LABELS = "labels"  # a target of class indices (B, 1, H, W), not a 0/1 mask (B, C, H, W)
_COMPILED_CRITERIA = {
    "dice weight": (lambda: pylosses.DiceLoss(sigmoid=True, weight=[1.0, 2.0, 0.5]), False),
    "dice label map": (lambda: pylosses.DiceLoss(softmax=True, to_onehot_y=True), _LABELS),
    "dice label map ignore_index": (lambda: pylosses.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=0), _LABELS),
    "tversky label map": (lambda: pylosses.TverskyLoss(softmax=True, to_onehot_y=True), _LABELS),
    "dice_ce weight": (lambda: pylosses.DiceCELoss(softmax=True, to_onehot_y=True, weight=torch.tensor([1.0, 2.0, 0.5])),
                       _LABELS),
    "dice_bce weight": (lambda: pylosses.DiceBCELoss(weight=[1.0, 2.0, 0.5]), False),
}


@pytest.mark.parametrize("name", sorted(_COMPILED_CRITERIA))
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_fullgraph_compile_with_weights_and_label_maps(name, backend):
    """The checks of a class weight and of a label map are data-dependent: while torch.compile
    traces they are left out (as on a GPU), so that fullgraph=True holds for every option."""
    if backend not in pylosses.available_backends("cpu"):
        pytest.skip("pylosses._C is not built")
    make, target_kind = _COMPILED_CRITERIA[name]
    criterion = make()
    criterion.backend = backend
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 7, generator=generator, requires_grad=True)
    if target_kind == _LABELS:
        target = torch.randint(0, 3, (2, 1, 6, 7), generator=generator)
    else:
        target = (torch.rand(2, 3, 6, 7, generator=generator) > 0.5).float()
    eager = criterion(x, target)
    (eager_grad,) = torch.autograd.grad(eager, x)
    torch._dynamo.reset()  # (a new criterion each case: past dynamo's recompile limit otherwise)
    compiled = torch.compile(lambda a, b: criterion(a, b), fullgraph=True, backend="aot_eager")(x, target)
    (compiled_grad,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)
