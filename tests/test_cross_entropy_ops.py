"""pylosses.cross_entropy and CrossEntropyLoss on the kernels (op cross_entropy_fwd, native and
triton backends) against pylosses.reference.cross_entropy, which tests/test_cross_entropy.py
holds to torch.nn.functional.cross_entropy: values and gradients over class counts 2 to 40,
(B, C) to 3-D, ignore_index absent, present and on every pixel, weights, label smoothing,
every reduction and label-map dtype, 16-bit inputs, layouts, empty and meta tensors, bad
arguments, out-of-range labels, opcheck, torch.compile(fullgraph=True), autocast, determinism."""

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

import pylosses
from pylosses import _ops, reference
from cases import assert_same_bits_for_thread_counts

ops = torch.ops.pylosses
BACKENDS = [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")]
# (B, C, spatial...): two classes to 40 (above what the GPU kernels keep in registers); pixels
# that are not a multiple of a vector; several Triton tiles a sample; (B, C) with no spatial axis;
# several CPU work items (LARGE: too slow for Triton's interpreter, whose tiles the one before
# exercises); class rows a multiple of 4 KiB apart (1024 pixels), which the CPU kernel reads in
# place with up to 4 classes (ALIASED_FEW) and copies into its scratch first with more
# (ALIASED_MANY; cross_entropy.cpp, CeProblem::gather_rows)
LARGE, ALIASED_FEW, ALIASED_MANY = (2, 4, 48, 80), (2, 3, 32, 32), (2, 6, 32, 32)
SHAPES = [(2, 2, 9, 7), (3, 3, 11), (2, 4, 5, 4, 3), (1, 14, 6, 5), (2, 40, 3, 5), (5, 3), (2, 3, 9, 40), LARGE,
          ALIASED_FEW, ALIASED_MANY]
REDUCTIONS = ["mean", "sum", "none"]
LABEL_DTYPES = [torch.int64, torch.int32, torch.uint8]
# (weight, label_smoothing, where labels are ignore_index), in turn over the shapes
OPTIONS = [(False, 0.0, "absent"), (True, 0.0, "present"), (False, 0.1, "present"), (True, 0.25, "absent"),
           (True, 0.1, "all")]


def _case(shape, label_dtype=torch.int64, ignore="present", weight=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    t = torch.randint(0, shape[1], shape[:1] + shape[2:], generator=g)
    ignore_index = 255 if label_dtype == torch.uint8 else -100
    if ignore == "present":
        t = torch.where(torch.rand(t.shape, generator=g) < 0.3, torch.full_like(t, ignore_index), t)
    elif ignore == "all":
        t = torch.full_like(t, ignore_index)
    w = torch.rand(shape[1], generator=g, dtype=torch.float64) + 0.25 if weight else None
    return x, t.to(label_dtype), w, ignore_index


def _loss_and_grad(fn, x, t, w, ignore_index, smoothing, reduction, dtype, seed=1, device="cpu"):
    """fn's loss and input gradient (on the CPU) for a random grad_output, x and w taken as
    `dtype` and put on `device`."""
    xa = x.detach().to(device, dtype).requires_grad_(True)
    loss = fn(xa, t.to(device), None if w is None else w.to(device, dtype), ignore_index=ignore_index,
              label_smoothing=smoothing, reduction=reduction)
    g = torch.rand(loss.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    grad, = torch.autograd.grad(loss, xa, g.to(device, loss.dtype))
    return loss.cpu(), grad.cpu()


def _reference(x, t, w, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    return reference.cross_entropy(x, t, w, ignore_index, label_smoothing, reduction)


def _check(backend, x, t, w, ignore_index, smoothing, reduction, dtype, tol, device="cpu"):
    got, grad = _loss_and_grad(lambda *a, **k: pylosses.cross_entropy(*a, **k, backend=backend),
                               x, t, w, ignore_index, smoothing, reduction, dtype, device=device)
    want, grad_want = _loss_and_grad(_reference, x, t, w, ignore_index, smoothing, reduction, torch.float64)
    assert got.dtype == dtype and got.shape == want.shape and grad.dtype == dtype
    assert torch.equal(got.isnan(), want.isnan())
    scale = want.nan_to_num().abs().max().clamp_min(1e-3)
    assert (got.double() - want).nan_to_num().abs().max() <= tol * scale
    gscale = grad_want.abs().max().clamp_min(1e-6)
    assert (grad.double() - grad_want).abs().max() <= tol * gscale
    # the loss alone: on the CPU its own path (no pre-pass; the main pass adds up the denominator)
    with torch.no_grad():
        alone = pylosses.cross_entropy(x.to(device, dtype), t.to(device), None if w is None else w.to(device, dtype),
                                       ignore_index=ignore_index, label_smoothing=smoothing, reduction=reduction,
                                       backend=backend).cpu()
    assert alone.dtype == dtype and torch.equal(alone.isnan(), want.isnan())
    assert (alone.double() - want).nan_to_num().abs().max() <= tol * scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, shape, label_dtype, reduction):
    """float64 to a few roundings, float32 to 2e-6 of the largest value, each shape in two of the
    option sets (all of them over the shapes)."""
    if backend == "triton" and shape in (LARGE, ALIASED_FEW, ALIASED_MANY) and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("several CPU work items: too slow for Triton's interpreter")
    k = SHAPES.index(shape)
    for weight, smoothing, ignore in (OPTIONS[k % len(OPTIONS)], OPTIONS[(k + 2) % len(OPTIONS)]):
        x, t, w, ignore_index = _case(shape, label_dtype, ignore, weight, seed=k)
        _check(backend, x, t, w, ignore_index, smoothing, reduction, torch.float64, 1e-12)
        _check(backend, x, t, w, ignore_index, smoothing, reduction, torch.float32, 2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)], ids=str)
def test_16_bit_inputs(backend, dtype, tol):
    """Arithmetic in float32: the error is the 16-bit rounding of the result (and of a float16
    gradient kept in float32, rounded once to the input's dtype)."""
    x, t, w, ignore_index = _case((2, 5, 12, 10), ignore="present", weight=True)
    x = x.to(dtype).double()  # the values a 16-bit input holds
    for reduction in REDUCTIONS:
        _check(backend, x, t, w, ignore_index, 0.1, reduction, dtype, tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["transposed", "channels_last", "offset"])
def test_layouts(backend, layout):
    x, t, w, ignore_index = _case((2, 3, 10, 12), dtype=torch.float32)
    if layout == "transposed":
        x, t = x.transpose(2, 3).contiguous().transpose(2, 3), t.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    else:  # storage that starts one element in: no 16-byte alignment
        x = torch.empty(x.numel() + 1)[1:].view(x.shape).copy_(x)
    assert not x.is_contiguous() or layout == "offset"
    _check(backend, x.double(), t, w, ignore_index, 0.1, "mean", torch.float32, 2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_of_zero(backend):
    """Pixels that count but weigh 0: the mean is torch's 0 / 0, NaN, and their gradient not finite."""
    x, t, _, _ = _case((2, 3, 4, 5), ignore="absent", dtype=torch.float32)
    t = torch.zeros_like(t)
    loss, grad = _loss_and_grad(lambda *a, **k: pylosses.cross_entropy(*a, **k, backend=backend),
                                x, t, torch.tensor([0.0, 1.0, 1.0]), -100, 0.0, "mean", torch.float32)
    assert loss.isnan() and not grad.isfinite().any()


@pytest.mark.parametrize("backend", BACKENDS + ["reference"])
def test_a_class_masked_out_with_minus_inf(backend):
    """A logit of -inf (a class masked out) is p = 0 to torch: the loss stays finite where it is
    not the label's, inf where it is (with smoothing, every pixel's -log p of it is inf); never
    NaN, which 0 x -inf in the smoothing's term would give."""
    x, t, w, _ = _case((2, 3, 6, 8), ignore="absent", dtype=torch.float32, weight=True)
    t = t.clamp(0, 1)
    x[:, 2] = float("-inf")
    for reduction in REDUCTIONS:
        for weight in (None, w):
            got, grad = _loss_and_grad(lambda *a, **k: pylosses.cross_entropy(*a, **k, backend=backend),
                                       x, t, weight, -100, 0.0, reduction, torch.float32)
            want, grad_want = _loss_and_grad(F.cross_entropy, x.double(), t, weight, -100, 0.0, reduction,
                                             torch.float64)
            assert got.isfinite().all()
            torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
            torch.testing.assert_close(grad.double(), grad_want, rtol=2e-6, atol=2e-6)
    t[0, 0, 0] = 2  # the label's own logit is -inf: torch's inf
    assert pylosses.cross_entropy(x, t, backend=backend, reduction="sum") == float("inf")
    assert pylosses.cross_entropy(x, t.clamp(0, 1), backend=backend, label_smoothing=0.1) == float("inf")


@pytest.mark.parametrize("backend", BACKENDS + ["reference", "jit"])
def test_ignored_pixels_with_non_finite_logits(backend):
    """Padding: an ignored pixel's logits may be inf or NaN; its loss and gradient are 0 and the
    others' are untouched, as torch's."""
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        import triton

        if tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7):
            pytest.skip("Triton 3.6's interpreter computes tl.minimum with np.minimum, NaN in NaN out, where the "
                        "compiled code (PTX min.f32) and Triton 3.8's interpreter (np.fmin) give the other operand")
    x, t, w, _ = _case((2, 3, 6, 8), ignore="absent", dtype=torch.float32, weight=True)
    t[:, :2] = -100
    x[0, :, 0, 0] = float("nan")
    x[1, 1, 1, :] = float("inf")
    for reduction in REDUCTIONS:
        for smoothing in (0.0, 0.1):
            got, grad = _loss_and_grad(lambda *a, **k: pylosses.cross_entropy(*a, **k, backend=backend),
                                       x, t, w, -100, smoothing, reduction, torch.float32)
            kept_x = torch.where(t.unsqueeze(1) == -100, torch.zeros_like(x), x)
            want, grad_want = _loss_and_grad(F.cross_entropy, kept_x.double(), t, w, -100, smoothing, reduction,
                                             torch.float64)
            torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6)
            torch.testing.assert_close(grad.double(), grad_want, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["loss", "loss_and_grad"])
@pytest.mark.parametrize("where", ["inside", "last"])
@pytest.mark.parametrize("bad", [3, -1, 7])
def test_out_of_range_label_raises_torchs_error(backend, bad, where, grad):
    """The first label out of range in the map's order is named, with or without the gradient
    (on the CPU, a pre-pass or the main pass finds it); the last pixel is a vector's tail lane."""
    x, t, _, _ = _case((2, 3, 4, 5), ignore="present", dtype=torch.float32)
    x.requires_grad_(grad)
    t[1, 3, 4] = bad
    if where == "inside":
        t[1, 2, 3] = bad
        t[1, 3, 4] = 5  # another one, later in the map
    with pytest.raises(IndexError, match=f"Target {bad} is out of bounds"):
        pylosses.cross_entropy(x, t, backend=backend)
    assert torch.equal(t[1, 3, 4], torch.tensor(bad if where == "last" else 5))  # nothing the user passed is changed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5), (2, 3, 0, 5), (2, 3, 0)], ids=str)
def test_empty(backend, shape):
    x = torch.randn(shape, requires_grad=True)
    t = torch.zeros(shape[:1] + shape[2:], dtype=torch.int64)
    for reduction in REDUCTIONS:
        got = pylosses.cross_entropy(x, t, reduction=reduction, backend=backend)
        want = F.cross_entropy(x, t, reduction=reduction)
        assert got.shape == want.shape and torch.equal(got.isnan(), want.isnan())
        if reduction == "sum":
            assert got.item() == 0
        grad, = torch.autograd.grad(got.sum(), x)
        assert grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_tensors_give_shapes(backend):
    x = torch.empty(2, 4, 6, 7, device="meta", dtype=torch.bfloat16, requires_grad=True)
    t = torch.empty(2, 6, 7, device="meta", dtype=torch.uint8)
    assert pylosses.cross_entropy(x, t, backend=backend).shape == ()
    loss = pylosses.cross_entropy(x, t, reduction="none", backend=backend)
    assert loss.shape == (2, 6, 7) and loss.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "native"])  # (CPU threads; GPUs: tests/test_gpu.py)
def test_deterministic_for_any_thread_count(backend):
    x, t, w, ignore_index = _case((3, 5, 64, 96), weight=True, dtype=torch.float32)
    assert_same_bits_for_thread_counts(
        lambda: list(_loss_and_grad(lambda *a, **k: pylosses.cross_entropy(*a, **k, backend=backend),
                                    x, t, w, ignore_index, 0.1, "mean", torch.float32)), counts=(1, 2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    op = getattr(ops, _ops.PREFIX[backend] + "cross_entropy_fwd")
    x, t, w, _ = _case((2, 3, 5, 7), dtype=torch.float32, weight=True)
    x.requires_grad_(True)
    samples = [(x, t, None, -100, 0.0, 1, True), (x, t.to(torch.uint8).clamp(max=2), w.float(), 255, 0.1, 0, True),
               (x.detach().double(), t.int(), w, -100, 0.2, 2, False), (x.detach().half(), t.clamp(min=0), None, 1, 0.0, 1, False)]
    for args in samples:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fullgraph_compile_of_a_model(backend):
    """torch.compile(fullgraph=True) of a small segmentation model and the loss: no graph break
    (fake kernel and autograd registered), eager's loss and parameter gradients."""
    model = torch.nn.Conv2d(2, 4, 3, padding=1)
    criterion = pylosses.CrossEntropyLoss(torch.tensor([1.0, 2.0, 0.5, 1.0]), ignore_index=3, label_smoothing=0.1,
                                          backend=backend)

    def step(image, labels):
        return criterion(model(image), labels)

    image = torch.randn(2, 2, 8, 9)
    labels = torch.randint(0, 4, (2, 8, 9))
    eager = step(image, labels)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(step, fullgraph=True)(image, labels)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast(backend):
    """Under autocast the loss is float32 (torch's cross_entropy autocasts to float32) and the
    16-bit logits' own gradient dtype. The kernels compute in float32 and give the input's
    dtype, which the float32 loss then holds (as every pylosses loss: README, "Semantics")."""
    x, t, _, _ = _case((2, 3, 6, 5), dtype=torch.bfloat16)
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = pylosses.cross_entropy(x, t, backend=backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, F.cross_entropy(x.detach().float(), t), rtol=2**-8, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_order_gradient_is_refused(backend):
    x, t, _, _ = _case((2, 3, 4, 5), dtype=torch.float32)
    x.requires_grad_(True)
    grad, = torch.autograd.grad(pylosses.cross_entropy(x, t, backend=backend), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order"):
        grad.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS + ["reference", "jit", "compile"])
def test_module_unbatched_and_backends(backend):
    """CrossEntropyLoss as torch's: its weight a buffer (in the state dict), an unbatched (C,)
    input with a 0-d label, and the same value on every backend."""
    w = torch.tensor([0.5, 1.0, 2.0])
    mine, torchs = pylosses.CrossEntropyLoss(w, label_smoothing=0.1, backend=backend), torch.nn.CrossEntropyLoss(
        w, label_smoothing=0.1)
    assert set(mine.state_dict()) == set(torchs.state_dict()) == {"weight"}
    x, t, _, _ = _case((3, 3, 4, 2), ignore="absent", dtype=torch.float32)
    torch.testing.assert_close(mine(x, t), torchs(x, t))
    torch.testing.assert_close(mine(x[0, :, 0, 0], t[0, 0, 0]), torchs(x[0, :, 0, 0], t[0, 0, 0]))
    none = pylosses.CrossEntropyLoss(reduction="none", backend=backend)
    assert none(x[0, :, 0, 0], t[0, 0, 0]).shape == ()


BAD_ARGUMENTS = [
    # (what, call arguments as changes to the good ones, error type, message)
    ("float target", {"t": lambda t: t.float()}, TypeError, "class probabilities"),
    ("bool target", {"t": lambda t: t.bool()}, TypeError, "int64, int32 or uint8"),
    ("integer input", {"x": lambda x: x.long()}, TypeError, "input must be logits"),
    ("target shape", {"t": lambda t: t[:, :-1]}, ValueError, "target must have the input's shape"),
    ("1-d input, 1-d target", {"x": lambda x: x[0, :, 0, 0], "t": lambda t: t[0, 0]}, ValueError, "0-d class index"),
    ("weight length", {"weight": torch.ones(4)}, ValueError, "one value a class"),
    ("weight dtype", {"weight": torch.ones(3, dtype=torch.int64)}, TypeError, "weight must be floating"),
    ("weight type", {"weight": [1.0, 1.0, 1.0]}, TypeError, "weight must be a torch.Tensor"),
    ("weight requires grad", {"weight": torch.ones(3, requires_grad=True)}, RuntimeError,
     "not differentiable with respect to weight"),
    ("ignore_index type", {"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ("smoothing range", {"label_smoothing": 1.5}, ValueError, "label_smoothing must be between"),
    ("smoothing nan", {"label_smoothing": float("nan")}, ValueError, "label_smoothing must be finite"),
    ("reduction", {"reduction": "avg"}, ValueError, "reduction must be one of"),
    ("backend", {"backend": "cuda"}, ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("what,changes,error,message", BAD_ARGUMENTS, ids=[b[0] for b in BAD_ARGUMENTS])
def test_bad_arguments_name_the_argument(what, changes, error, message):
    x, t, _, _ = _case((2, 3, 4, 5), ignore="absent", dtype=torch.float32)
    kwargs = {"weight": None, "backend": BACKENDS[0] if BACKENDS else "reference"}
    kwargs.update({k: v for k, v in changes.items() if k not in ("x", "t")})
    x = changes.get("x", lambda v: v)(x)
    t = changes.get("t", lambda v: v)(t)
    with pytest.raises(error, match=message):
        pylosses.cross_entropy(x, t, **kwargs)


def test_options_are_keyword_only():
    """torch's fourth positional argument is the deprecated size_average: ours are keywords."""
    x, t, _, _ = _case((2, 3, 4, 5), dtype=torch.float32)
    with pytest.raises(TypeError):
        pylosses.cross_entropy(x, t, None, -100)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["input dim", "target shape", "target dtype", "weight shape", "reduction",
                                  "label_smoothing"])
def test_op_checks_name_the_op_and_argument(backend, case):
    op = getattr(ops, _ops.PREFIX[backend] + "cross_entropy_fwd")
    x, t = torch.randn(2, 3, 4), torch.zeros(2, 4, dtype=torch.int64)
    args = {"input": x, "target": t, "weight": None, "ignore_index": -100, "label_smoothing": 0.0, "reduction": 1}
    if case == "input dim":
        args["input"] = torch.randn(3)
    elif case == "target shape":
        args["target"] = torch.zeros(2, 5, dtype=torch.int64)
    elif case == "target dtype":
        args["target"] = t.float()
    elif case == "weight shape":
        args["weight"] = torch.ones(2)
    elif case == "reduction":
        args["reduction"] = 3
    else:
        args["label_smoothing"] = -0.5
    name = case.split()[0]
    with pytest.raises((ValueError, TypeError), match=f"cross_entropy_fwd.*{name}"):
        op(*args.values(), False)
