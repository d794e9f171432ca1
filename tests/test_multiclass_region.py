"""The region losses over several classes (softmax=True, to_onehot_y=True, ignore_index) and
DiceCELoss: the reference against MONAI's own classes (and torch's cross-entropy), every backend
against the reference, and the API's errors."""

import os
import warnings

import pytest
import torch

import pylosses

# (pylosses class, MONAI class name, options): the target is a label map (B, 1, spatial...) with
# to_onehot_y, else one-hot of the input's shape
CASES = [
    ("DiceLoss", {"softmax": True, "to_onehot_y": True}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "include_background": False, "weight": 2.0}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "squared_pred": True, "batch": True}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "jaccard": True, "reduction": "none"}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "soft_label": True, "reduction": "sum"}),
    ("DiceLoss", {"softmax": True}),
    ("DiceLoss", {"to_onehot_y": True}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "ignore_index": 1}),
    ("DiceLoss", {"softmax": True, "to_onehot_y": True, "ignore_index": 255, "include_background": False}),
    ("DiceLoss", {"softmax": True, "ignore_index": 0}),
    ("DiceLoss", {"softmax": True, "ignore_index": -1}),
    ("TverskyLoss", {"softmax": True, "to_onehot_y": True}),
    ("TverskyLoss", {"softmax": True, "to_onehot_y": True, "alpha": 0.3, "beta": 0.7, "include_background": False}),
    ("TverskyLoss", {"softmax": True, "to_onehot_y": True, "ignore_index": 2, "reduction": "none"}),
    ("GeneralizedDiceLoss", {"softmax": True, "to_onehot_y": True}),
    ("GeneralizedDiceLoss", {"softmax": True, "to_onehot_y": True, "w_type": "simple", "batch": True}),
    ("DiceCELoss", {"softmax": True, "to_onehot_y": True}),
    ("DiceCELoss", {"softmax": True, "to_onehot_y": True, "include_background": False, "lambda_dice": 0.3,
                    "lambda_ce": 2.0, "label_smoothing": 0.1, "reduction": "sum"}),
    ("DiceCELoss", {"softmax": True, "to_onehot_y": True, "squared_pred": True, "batch": True, "jaccard": True}),
    ("DiceCELoss", {"softmax": True}),
    ("DiceCELoss", {"to_onehot_y": True, "softmax": True, "weight": "classes"}),
]
# (B, C, spatial...): class counts 2 to 40, 1-D to 3-D
SHAPES = [(2, 4, 7, 6), (3, 2, 9), (2, 3, 4, 5, 6), (1, 14, 5, 6), (1, 40, 3, 4)]


def _case_id(case):
    name, options = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in options.items())


def _labels(shape, seed=0, ignore=None):
    """A float label map (B, 1, spatial...) as MONAI takes it, every class present; ignore: a label
    put on some pixels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    if ignore is not None:
        labels[torch.rand(labels.shape, generator=g) < 0.2] = ignore
    return labels.double()


def _logits(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64) * 2


def _one_hot(labels, classes):
    return torch.nn.functional.one_hot(labels.long().squeeze(1), classes).movedim(-1, 1).double()


def _target(options, shape, seed=0):
    """The case's target: a label map with to_onehot_y (with ignore_index's label on some pixels
    where it is not a class), else a one-hot target."""
    ignore = options.get("ignore_index")
    labels = _labels(shape, seed, ignore if ignore is not None and not 0 <= ignore < shape[1] else None)
    return labels if options.get("to_onehot_y") else _one_hot(labels.clamp(0, shape[1] - 1), shape[1])


def _monai(name, options, classes):
    """MONAI's loss for the case ("classes": a weight for each class). DiceCELoss with
    ignore_index, which MONAI's has not, is test_dice_ce_ignore_index_is_removed_from_both_terms's."""
    monai_losses = pytest.importorskip("monai.losses")
    options = dict(options)
    if options.get("weight") == "classes":
        options["weight"] = torch.linspace(0.5, 2.0, classes, dtype=torch.float64)
    return getattr(monai_losses, name)(**options)


def _ours(name, options, classes, backend="reference"):
    options = dict(options)
    if options.get("weight") == "classes":
        options["weight"] = torch.linspace(0.5, 2.0, classes, dtype=torch.float64)
    return getattr(pylosses, name)(**options, backend=backend)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_reference_matches_monai(case):
    """Values and input gradients of MONAI's class and of pylosses' with the same arguments, in
    float64, over class counts 2 to 40 and 1-D to 3-D inputs."""
    name, options = case
    for shape in SHAPES:
        classes = shape[1]
        if options.get("ignore_index", 0) >= classes and "to_onehot_y" not in options:
            continue
        theirs, ours = _monai(name, options, classes), _ours(name, options, classes)
        x, t = _logits(shape), _target(options, shape)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want, got = theirs(x1, t), ours(x2, t)
        assert got.shape == want.shape
        # MONAI's one-hot target is float32, and its norms of it (squared_pred, soft_label) are
        # rounded to float32 before they are squared: 1e-8 apart from the exact sums
        tol = 1e-6 if options.get("to_onehot_y") and ("squared_pred" in options or "soft_label" in options) else 1e-10
        torch.testing.assert_close(got, want.to(got.dtype), rtol=tol, atol=1e-12)
        g = torch.rand(want.shape, dtype=torch.float64) + 0.5
        torch.testing.assert_close(torch.autograd.grad(got, x2, g)[0], torch.autograd.grad(want, x1, g)[0],
                                   rtol=10 * tol, atol=1e-12 if tol < 1e-6 else 1e-9)


@pytest.mark.parametrize("ignore_index", [1, 255])
def test_dice_ce_ignore_index_is_removed_from_both_terms(ignore_index):
    """DiceCELoss(ignore_index=i) is MONAI's DiceLoss(ignore_index=i) plus torch's cross-entropy
    with ignore_index=i (MONAI's DiceCELoss has no ignore_index)."""
    monai_losses = pytest.importorskip("monai.losses")
    shape = (2, 4, 6, 5)
    x, t = _logits(shape), _labels(shape, ignore=ignore_index if ignore_index >= 4 else None)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    dice = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=ignore_index)(x1, t)
    want = dice + torch.nn.functional.cross_entropy(x1, t.long().squeeze(1), ignore_index=ignore_index)
    got = pylosses.DiceCELoss(softmax=True, to_onehot_y=True, ignore_index=ignore_index, backend="reference")(x2, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, x2)[0], torch.autograd.grad(want, x1)[0],
                               rtol=1e-9, atol=1e-12)


def test_dice_ce_one_channel_is_monai_bce():
    """One channel: MONAI's BCE with logits (weight its pos_weight) plus Dice; softmax and
    to_onehot_y are ignored with MONAI's warnings."""
    monai_losses = pytest.importorskip("monai.losses")
    shape = (2, 1, 6, 5)
    x, t = _logits(shape), _labels((2, 2, 6, 5))
    options = {"sigmoid": True, "weight": torch.tensor([2.0], dtype=torch.float64)}
    want = monai_losses.DiceCELoss(**options)(x, t)
    got = pylosses.DiceCELoss(**options, backend="reference")(x, t)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with pytest.warns(UserWarning, match="single channel prediction, `softmax=True` ignored"):
        got = pylosses.dice_loss(x, t, softmax=True, backend="reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(got, monai_losses.DiceLoss(softmax=True)(x, t))


def test_label_map_dtypes_agree():
    """A label map of int64, int32, uint8, bool or float, (B, 1, spatial...) or (B, spatial...),
    gives the same loss."""
    shape = (2, 2, 5, 6)
    x, labels = _logits(shape), _labels(shape)
    want = pylosses.dice_ce_loss(x, labels, softmax=True, to_onehot_y=True, backend="reference")
    for t in (labels.long(), labels.int(), labels.to(torch.uint8), labels.bool()):
        for backend in BACKENDS + ["reference"]:
            got = pylosses.dice_ce_loss(x, t, softmax=True, to_onehot_y=True, backend=backend)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
            got = pylosses.dice_loss(x, t.squeeze(1), softmax=True, to_onehot_y=True, backend=backend)
            torch.testing.assert_close(got, pylosses.dice_loss(x, labels, softmax=True, to_onehot_y=True),
                                       rtol=1e-12, atol=1e-12)


_KERNELS = [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")]


@pytest.mark.parametrize("ignore_index", [257, -255, 2**32 + 1])
def test_an_ignore_index_no_label_dtype_holds_ignores_nothing(ignore_index):
    """ignore_index outside a uint8 or int32 map's range matches no label (as for an int64 map),
    where a comparison in the map's dtype would wrap it onto a class (257 onto a uint8's 1)."""
    shape = (2, 3, 4, 5)
    x, labels = _logits(shape), _labels(shape)
    for backend in _KERNELS + ["reference"]:
        for fn in (pylosses.dice_loss, pylosses.tversky_loss, pylosses.dice_ce_loss):
            want = fn(x, labels.long(), softmax=True, to_onehot_y=True, backend=backend)
            for dtype in (torch.uint8, torch.int32):  # (257 and -255 int32 holds, and no label is them)
                got = fn(x, labels.to(dtype), softmax=True, to_onehot_y=True, ignore_index=ignore_index,
                         backend=backend)
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_class_masked_out_with_minus_inf_is_monais_loss():
    """DiceCE over logits with one class at -inf everywhere (masked out): MONAI's finite loss and
    gradient, on every backend (its cross-entropy must not turn 0 x -inf into NaN)."""
    shape = (2, 4, 5, 6)
    x, labels = _logits(shape), _labels(shape).clamp(max=2)
    x[:, 3] = float("-inf")
    monai_losses = pytest.importorskip("monai.losses")
    want = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True)(x, labels.double())
    for backend in _KERNELS + ["reference"]:
        xa = x.detach().requires_grad_(True)
        got = pylosses.dice_ce_loss(xa, labels, softmax=True, to_onehot_y=True, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        grad, = torch.autograd.grad(got, xa)
        assert grad[:, :3].isfinite().all() and (grad[:, 3] == 0).all()


def test_lambda_tv_adds_the_total_variation_of_the_softmax():
    """lambda_tv adds the segmentation loss's total variation of the softmax probabilities (of
    the sigmoid for one channel), values and gradients."""
    for shape in [(2, 3, 6, 5), (1, 4, 3, 4, 5), (2, 1, 6, 5)]:
        x, t = _logits(shape), _labels(shape)
        if shape[1] == 1:
            t = t.clamp(max=1)
        x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        spatial = len(shape) - 2
        got = pylosses.dice_ce_loss(x1, t, softmax=shape[1] > 1, to_onehot_y=shape[1] > 1, sigmoid=shape[1] == 1,
                                    lambda_tv=0.3, backend="reference")
        p = torch.sigmoid(x2) if shape[1] == 1 else torch.softmax(x2, 1)
        tv = pylosses.segmentation_loss(p, torch.zeros_like(p), alpha=0.0, beta=0.3, spatial_dims=spatial,
                                        backend="reference")
        want = pylosses.dice_ce_loss(x2, t, softmax=shape[1] > 1, to_onehot_y=shape[1] > 1, sigmoid=shape[1] == 1,
                                     backend="reference") + tv
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(got, x1)[0], torch.autograd.grad(want, x2)[0],
                                   rtol=1e-10, atol=1e-12)


# every backend against the reference --------------------------------------------------------

BACKENDS = [b for b in ("native", "triton", "jit", "compile") if b in pylosses.available_backends("cpu")]
BACKEND_CASES = [
    (pylosses.dice_loss, {"softmax": True, "to_onehot_y": True}),
    (pylosses.dice_loss, {"softmax": True, "to_onehot_y": True, "include_background": False, "ignore_index": 1,
                          "reduction": "none"}),
    (pylosses.tversky_loss, {"softmax": True, "to_onehot_y": True, "alpha": 0.3, "beta": 0.7}),
    (pylosses.generalized_dice_loss, {"softmax": True, "to_onehot_y": True, "batch": True}),
    (pylosses.dice_loss, {"softmax": True, "squared_pred": True}),
    (pylosses.dice_ce_loss, {"softmax": True, "to_onehot_y": True, "label_smoothing": 0.1, "ignore_index": 2}),
    (pylosses.dice_ce_loss, {"softmax": True, "to_onehot_y": True, "lambda_tv": 0.2, "reduction": "sum"}),
]


def _fn_id(case):
    fn, options = case
    return fn.__name__ + "-" + "-".join(f"{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BACKEND_CASES, ids=_fn_id)
def test_backends_match_reference(case, backend):
    """Values and input gradients against the reference in float64, for float64 and float32
    inputs, label maps of uint8 and int64, with and without a mask."""
    fn, options = case
    for shape in [(2, 3, 8, 7), (1, 14, 4, 5, 6)]:
        x, t = _logits(shape), _target(options, shape)
        mask = torch.rand((shape[0], 1) + shape[2:], generator=torch.Generator().manual_seed(2)) > 0.3
        masks = [None] if fn is pylosses.dice_ce_loss else [None, mask]
        for dtype, t_dtype in [(torch.float64, torch.int64), (torch.float32, torch.uint8)]:
            for m in masks:
                tt = t.to(t_dtype) if options.get("to_onehot_y") else t.to(dtype)
                kwargs = {} if m is None else {"mask": m}
                exact = x.clone().requires_grad_(True)
                xg = x.to(dtype).requires_grad_(True)
                want = fn(exact, tt, **options, **kwargs, backend="reference")
                got = fn(xg, tt, **options, **kwargs, backend=backend)
                tol = 1e-12 if dtype == torch.float64 else 2e-5
                assert got.dtype == dtype and got.shape == want.shape
                torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
                g = torch.rand(want.shape, dtype=torch.float64) + 0.5
                mine, = torch.autograd.grad(got, xg, g.to(dtype))
                truth, = torch.autograd.grad(want, exact, g)
                torch.testing.assert_close(mine.double(), truth, rtol=tol, atol=tol * float(truth.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_softmax_mask_keeps_padding_out(backend):
    """A pixel the mask leaves out in every channel is not read: NaN logits there change neither
    the loss nor the other gradients, and get a zero gradient."""
    shape = (2, 3, 6, 7)
    x, t = _logits(shape), _labels(shape)
    mask = torch.ones((2, 1, 6, 7), dtype=torch.bool)
    mask[:, :, -2:] = False
    padded = x.clone()
    padded[:, :, -2:] = float("nan")
    for fn in (pylosses.dice_loss, pylosses.tversky_loss, pylosses.generalized_dice_loss):
        xg, xc = padded.clone().requires_grad_(True), x.clone().requires_grad_(True)
        loss = fn(xg, t, softmax=True, to_onehot_y=True, mask=mask, backend=backend)
        clean = fn(xc, t, softmax=True, to_onehot_y=True, mask=mask, backend="reference")
        torch.testing.assert_close(loss, clean, rtol=1e-12, atol=1e-12)
        grad, = torch.autograd.grad(loss, xg)
        assert (grad[:, :, -2:] == 0).all() and torch.isfinite(grad).all(), fn.__name__


# the API ------------------------------------------------------------------------------------

def test_bad_arguments_name_themselves():
    x, labels = _logits((2, 3, 4, 4)), _labels((2, 3, 4, 4))
    cases = [
        (lambda: pylosses.DiceLoss(sigmoid=True, softmax=True), ValueError, "sigmoid=True, softmax=True"),
        (lambda: pylosses.DiceCELoss(sigmoid=True, softmax=True), ValueError, "sigmoid=True, softmax=True"),
        (lambda: pylosses.DiceLoss(ignore_index=1.0), TypeError, "ignore_index"),
        (lambda: pylosses.DiceCELoss(reduction="none"), ValueError, "reduction"),
        (lambda: pylosses.DiceCELoss(lambda_ce=-1.0), ValueError, "lambda_ce"),
        (lambda: pylosses.DiceCELoss(label_smoothing=1.5), ValueError, "label_smoothing"),
        (lambda: pylosses.dice_loss(x, labels[:, :, :3], to_onehot_y=True), ValueError, "label map"),
        (lambda: pylosses.dice_loss(x, labels + 3, softmax=True, to_onehot_y=True), IndexError, "out of bounds"),
        (lambda: pylosses.dice_ce_loss(x, labels[:, :, :3], softmax=True), ValueError, "label map"),
        (lambda: pylosses.dice_ce_loss(x, labels + 3, softmax=True, to_onehot_y=True), IndexError, "out of bounds"),
        (lambda: pylosses.dice_ce_loss(x, _one_hot(labels, 3), softmax=True, ignore_index=1), NotImplementedError,
         "ignore_index"),
        (lambda: pylosses.dice_ce_loss(x[..., 0], labels[..., 0], softmax=True, to_onehot_y=True, lambda_tv=0.1),
         ValueError, "lambda_tv"),
        (lambda: pylosses.dice_ce_loss(x, labels, to_onehot_y=True, other_act=torch.tanh), NotImplementedError,
         "other_act"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_dice_ce_names_the_first_label_out_of_range(backend):
    """On the CPU every backend raises torch's IndexError for the first label outside [0, C) that
    is not ignore_index, in the map's order, with ignored labels among them (native: in its op,
    one pass in C++; the others: the Python check)."""
    shape = (2, 3, 4, 4)
    x, labels = _logits(shape), _labels(shape, ignore=255)
    labels[0, 0, 1, 2], labels[1, 0, 0, 0] = 5, -1
    with pytest.raises(IndexError, match="Target 5 is out of bounds"):
        pylosses.dice_ce_loss(x, labels, softmax=True, to_onehot_y=True, ignore_index=255, backend=backend)
    assert labels[0, 0, 1, 2] == 5 and labels[1, 0, 0, 0] == -1  # nothing the user passed is changed


def test_ignored_labels_may_be_out_of_range():
    """A label equal to ignore_index is not a class error, even outside [0, C)."""
    shape = (2, 3, 4, 4)
    x, labels = _logits(shape), _labels(shape, ignore=255)
    for backend in BACKENDS + ["reference"]:
        for fn in (pylosses.dice_ce_loss, pylosses.dice_loss, pylosses.tversky_loss):  # (no ignore_index on GDL)
            for label_dtype in (torch.uint8, torch.int64):
                loss = fn(x, labels.to(label_dtype), softmax=True, to_onehot_y=True, ignore_index=255,
                          backend=backend)
                assert torch.isfinite(loss), (backend, fn.__name__, label_dtype)


def test_module_repr_and_buffers():
    loss = pylosses.DiceCELoss(softmax=True, to_onehot_y=True, weight=[1.0, 2.0, 3.0], lambda_tv=0.1)
    assert "lambda_tv=0.1" in repr(loss) and "to_onehot_y=True" in repr(loss)
    assert torch.equal(loss.class_weight, torch.tensor([1.0, 2.0, 3.0]))


# the fused op softmax_region_sums: the native CPU kernel and the Triton kernels -------------

OP_BACKENDS = [b for b in ("native", "triton") if b in BACKENDS]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# (B, C, spatial...): odd sizes, 2 to 40 classes (above 32 the Triton kernels walk chunks of
# classes), 1-D to 3-D, empty batch and plane; LARGE is split into several CPU work items and
# blocks, too slow for Triton's interpreter, which takes SMALL in its place: several Triton tiles a
# sample, with PROGRAMS = 3 (the fixture op_backend) several a program and several programs a sample.
# ALIASED_*: class rows a multiple of 4 KiB apart (1024 pixels), which the CPU kernels read in
# place with up to 4 classes and copy into their scratch first with more (gather_class_rows);
# the interpreter leaves them out
LARGE, SMALL = (2, 4, 70, 90), (2, 4, 9, 23)
ALIASED_FEW, ALIASED_MANY = (2, 3, 32, 32), (1, 6, 32, 32)
OP_SHAPES = [(2, 3, 5, 7), (3, 2, 11), (1, 14, 3, 4, 5), (2, 40, 6), (0, 3, 4, 4), (2, 3, 0, 4), ALIASED_FEW,
             ALIASED_MANY, LARGE]  # LARGE last: some tests take the last


@pytest.fixture(params=OP_BACKENDS)
def op_backend(request, monkeypatch):
    """A backend of the op; triton's launches aim at 3 programs (not 8192), so that small shapes
    give programs of several tiles."""
    if request.param == "triton":
        from pylosses.triton_kernels import softmax_region
        monkeypatch.setattr(softmax_region, "PROGRAMS", 3)
    return request.param


CHUNKED_CASES = (4, 20)  # (float64, masked, squared) and (bfloat16, unmasked, l1): see _op_shapes


def _op_shapes(backend, case=None):
    """OP_SHAPES for the backend; in Triton's interpreter SMALL for LARGE, and for a test case
    numbered `case` two of the others in turn (each in several of the cases), the 40 classes (a
    chunk walk of 10 to 40 steps, slow there) only in CHUNKED_CASES, on one sample."""
    if not (backend == "triton" and INTERPRETED):
        return OP_SHAPES
    shapes = [SMALL if s == LARGE else s for s in OP_SHAPES if s not in (ALIASED_FEW, ALIASED_MANY)]
    if case is None:
        return shapes
    chunked = [s for s in shapes if s[1] > 32]
    shapes = [s for s in shapes if s[1] <= 32]
    picked = [shapes[case % len(shapes)], shapes[(case + 3) % len(shapes)]]
    return picked + [(1,) + s[1:] for s in chunked] if case in CHUNKED_CASES else picked


def _op(backend, name):
    return getattr(torch.ops.pylosses, pylosses._ops.PREFIX[backend] + name)


def _op_inputs(shape, dtype, label_dtype, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g).to(label_dtype)
    mask = torch.rand((shape[0], 1) + tuple(shape[2:]), generator=g) > 0.3 if masked else None
    return x, labels, mask


DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_op_matches_reference_sums(op_backend, mode, masked, dtype):
    """The sums and the input gradient of softmax_region_sums against the reference's region_sums
    of softmax(input) and a one-hot target, in float64 on the same values."""
    from pylosses import _ops
    case = (DTYPES.index(dtype) * 2 + masked) * 3 + mode
    for shape in _op_shapes(op_backend, case):
        label_dtype = [torch.int64, torch.int32, torch.uint8][(shape[1] + len(shape)) % 3]
        check_op_sums(lambda *args: _ops.softmax_region_sums(op_backend, *args)[0], shape, dtype, label_dtype, mode,
                      masked)


def check_op_sums(op, shape, dtype, label_dtype, mode, masked, tol=None):
    """op(x, labels, mask, mode) -> sums (differentiable), a softmax_region_sums kernel's: its sums
    and input gradient against the reference's region_sums of softmax(input) and a one-hot target,
    in float64 on the same values (also tests/test_cuda_emulation.py's, for the CUDA kernel).
    tol: the sums' tolerance (float32 and 16-bit inputs: 2e-6 of the largest sum)."""
    from pylosses import reference
    x, labels, mask = _op_inputs(shape, dtype, label_dtype, masked)
    x.requires_grad_(True)
    sums = op(x, labels, mask, mode)
    x64 = x.detach().double().requires_grad_(True)
    one_hot = torch.nn.functional.one_hot(labels.long(), shape[1]).movedim(-1, 1) if x.numel() else \
        torch.zeros(shape, dtype=torch.bool)
    want = reference.region_sums(x64, one_hot.bool(), mask, False, mode, True)
    assert sums.shape == want.shape and sums.dtype == reference.compute_dtype(x, x)
    scale = want.abs().amax(dim=(0, 1), keepdim=True).clamp_min(1) if want.numel() else 1
    tol = tol or (1e-12 if dtype == torch.float64 else 2e-6)
    torch.testing.assert_close(sums.double() / scale, want / scale, rtol=0, atol=tol)
    if x.numel() == 0:
        grad, = torch.autograd.grad(sums, x, torch.ones_like(sums))
        assert grad.shape == x.shape
        return
    grad_sums = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mine, = torch.autograd.grad(sums, x, grad_sums.to(sums.dtype))
    truth, = torch.autograd.grad(want, x64, grad_sums)
    assert mine.dtype == dtype
    rtol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5}.get(dtype, 1e-12)
    torch.testing.assert_close(mine.double(), truth, rtol=rtol, atol=rtol * truth.abs().max().item())
    if masked:
        assert (mine[~mask.expand_as(mine)] == 0).all()


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 40, 6)], ids=str)
def test_op_cross_entropy_sums(op_backend, shape):
    """with_ce: the cross-entropy's sum of losses, D and count against torch's, with weights,
    ignore_index and label smoothing; a label out of range adds nothing to them (and counts for
    the Dice, in sums[b, 0, 3], where the mask keeps it; the native CPU op raises on it instead,
    and takes in-range labels in their place here). The gradient of the loss's sum and of
    the sums at once against the reference's, and the gradient of the sums alone when ce's is 0."""
    from pylosses import _ops, reference
    dtype = torch.float64 if shape[1] > 32 else torch.float32  # (the interpreter's fewest chunks)
    x, labels, mask = _op_inputs(shape, dtype, torch.int64, True, seed=3)
    out_of_range = [-3, shape[1], 200] if op_backend != "native" else [0, shape[1] - 1, 1]
    labels[0].view(-1)[:5] = torch.tensor([2, *out_of_range, 2])  # ignore_index 2, then out of range
    mask[0].view(-1)[:4] = torch.tensor([True, True, False, True])
    w = torch.rand(shape[1], generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.5
    kept = (labels >= 0) & (labels < shape[1])
    for weight, smoothing in ((None, 0.0), (w, 0.2)):
        xg = x.clone().requires_grad_(True)
        sums, ce = _ops.softmax_region_sums(op_backend, xg, labels, mask, 1, weight, 2, smoothing, True)
        x64 = x.double().requires_grad_(True)
        safe = torch.where(kept, labels, torch.full_like(labels, 2))  # out of range: as ignored for torch
        loss = torch.nn.functional.cross_entropy(x64, safe, weight, ignore_index=2, reduction="sum",
                                                 label_smoothing=smoothing)
        counts = kept & (labels != 2)
        d = (weight[safe] if weight is not None else torch.ones(labels.shape, dtype=torch.float64))[counts].sum()
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(ce, torch.stack([loss.detach(), d, counts.sum().double()]).to(ce.dtype),
                                   rtol=tol, atol=tol)
        assert sums[0, 0, 3] == (2 if op_backend != "native" else 0)
        assert (sums[1:, 0, 3] == 0).all() and (sums[:, 1:, 3] == 0).all()
        keep = mask & (labels != 2).unsqueeze(1)
        one_hot = torch.nn.functional.one_hot(safe, shape[1]).movedim(-1, 1).bool() & kept.unsqueeze(1)
        want = reference.region_sums(x64, one_hot, keep, False, 1, True)
        torch.testing.assert_close(sums[..., :3].double(), want[..., :3], rtol=tol, atol=tol)
        grad_sums = torch.randn(sums.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        for scale in (0.7, 0.0) if shape[1] <= 32 else (0.7,):  # (the interpreter's chunk walks are slow)
            mine, = torch.autograd.grad((sums, ce), xg, (grad_sums.to(sums.dtype), torch.tensor([scale, 1.0, 1.0],
                                                                                             dtype=ce.dtype)),
                                        retain_graph=True)
            truth, = torch.autograd.grad((want[..., :3] * grad_sums[..., :3]).sum() + scale * loss, x64,
                                         retain_graph=True)
            torch.testing.assert_close(mine.double(), truth, rtol=tol * 10, atol=tol * 10 * truth.abs().max().item())


def test_op_counts_labels_out_of_range_and_is_deterministic(op_backend):
    """A label outside [0, C) where the mask keeps the pixel counts in sums[b, 0, 3] (the loss is
    then NaN); one under the mask does not. Run twice, the same bits, the gradient too. The
    native CPU op raises torch's IndexError instead, for the first such label wherever it lies
    (the Python API leaves that check to it)."""
    from pylosses import _ops
    x, labels, mask = _op_inputs(_op_shapes(op_backend)[-1], torch.float32, torch.int64, True)
    labels[0, 0, 0], labels[1, 5, 5] = 7, -1
    mask[0, 0, 0, 0], mask[1, 0, 5, 5] = True, False
    x.requires_grad_(True)
    if op_backend == "native":
        with pytest.raises(IndexError, match="Target 7 is out of bounds"):
            _ops.softmax_region_sums(op_backend, x, labels, mask, 0, None, None, 0.1, True)
        labels[0, 0, 0] = 1
        with pytest.raises(IndexError, match="Target -1 is out of bounds"):  # under the mask too
            _ops.softmax_region_sums(op_backend, x, labels, mask, 0, None, None, 0.1, True)
        return
    runs = []
    for _ in range(2):
        sums, ce = _ops.softmax_region_sums(op_backend, x, labels, mask, 0, None, None, 0.1, True)
        runs.append((sums, ce, torch.autograd.grad((sums, ce), x, (torch.ones_like(sums), torch.ones_like(ce)))[0]))
    sums = runs[0][0]
    assert sums[0, 0, 3] == 1 and sums[1, 0, 3] == 0 and (sums[:, 1:, 3] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_op_opcheck_and_errors(op_backend):
    from pylosses import _ops
    op = _op(op_backend, "softmax_region_sums")
    x, labels, mask = _op_inputs((2, 3, 5, 7), torch.float32, torch.int64, True)
    w = torch.tensor([0.5, 1.0, 2.0])
    for args in [(x.requires_grad_(True), labels, None, 0, None, -100, 0.0, False),
                 (x, labels.to(torch.uint8), mask, 1, w, 2, 0.1, True),
                 (x.detach().double(), labels.int(), mask, 2, None, _ops.NO_IGNORE, 0.0, True)]:
        torch.library.opcheck(op, args)
    torch.library.opcheck(_op(op_backend, "softmax_region_sums_backward"),
                          (torch.randn(2, 3, 4), torch.randn(3), x.detach(), labels, mask, 0, w, 1, 0.2))
    cases = [((x, labels.float(), None, 0), TypeError, "labels"),
             ((x, labels[:, :4], None, 0), ValueError, "labels"),
             ((x, labels, mask.expand(2, 3, 5, 7), 0), ValueError, "mask"),
             ((x, labels, None, 3), ValueError, "mode"),
             ((x, labels, None, 0, torch.ones(2)), ValueError, "weight"),
             ((x, labels, None, 0, None, None, 1.5), ValueError, "label_smoothing")]
    for args, error, match in cases:
        with pytest.raises(error, match=match):
            _ops.softmax_region_sums(op_backend, *args)


@pytest.mark.parametrize("options", [{}, {"weight": [0.5, 1.0, 2.0, 1.5], "label_smoothing": 0.2},
                                     {"ignore_index": 1, "reduction": "sum", "include_background": False},
                                     {"ignore_index": 255, "squared_pred": True, "batch": True, "lambda_tv": 0.1},
                                     {"lambda_dice": 0.3, "lambda_ce": 2.0, "jaccard": True}])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_fused_dice_ce_matches_the_composed_losses(op_backend, options, dtype):
    """DiceCELoss(softmax=True, to_onehot_y=True) on the fused op (one op for the Dice's sums and
    the cross-entropy, one pass for their summed gradient) against the reference in float64:
    values and input gradients, over label dtypes, 2-D and 3-D (in Triton's interpreter one of
    them a case, in turn), and with every pixel ignored (NaN, as torch's mean)."""
    options = dict(options)
    if "weight" in options:
        options["weight"] = torch.tensor(options["weight"], dtype=torch.float64)
    shapes = [((2, 4, 9, 7), torch.int64), ((1, 4, 3, 5, 6), torch.uint8), (LARGE, torch.int32)]
    if op_backend == "triton" and INTERPRETED:
        shapes = [[((2, 4, 9, 7), torch.int64), ((1, 4, 3, 5, 6), torch.uint8), (SMALL, torch.int32)][
            (len(options) + DTYPES.index(dtype)) % 3]]
    for shape, label_dtype in shapes:
        x = _logits(shape)
        t = _labels(shape, ignore=options.get("ignore_index") if options.get("ignore_index", 0) >= 4 else None)
        t = t.to(label_dtype) if label_dtype != torch.uint8 or t.max() < 256 else t
        exact, xg = x.clone().requires_grad_(True), x.to(dtype).requires_grad_(True)
        want = pylosses.dice_ce_loss(exact, t, softmax=True, to_onehot_y=True, **options, backend="reference")
        got = pylosses.dice_ce_loss(xg, t, softmax=True, to_onehot_y=True, **options, backend=op_backend)
        # bfloat16: with lambda_tv the gradient is the kernel's, rounded, plus torch's total variation's, rounded
        tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 3e-2)
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
        mine, = torch.autograd.grad(got, xg)
        truth, = torch.autograd.grad(want, exact)
        torch.testing.assert_close(mine.double(), truth, rtol=tol, atol=tol * float(truth.abs().max()))
    x = _logits((2, 3, 4, 4)).requires_grad_(True)
    t = torch.full((2, 1, 4, 4), 7)
    loss = pylosses.dice_ce_loss(x, t, softmax=True, to_onehot_y=True, ignore_index=7, backend=op_backend)
    want = pylosses.dice_ce_loss(x.detach(), t, softmax=True, to_onehot_y=True, ignore_index=7, backend="reference")
    assert torch.isnan(loss) and torch.isnan(want)
    assert (torch.autograd.grad(loss, x)[0] == 0).all()
