"""On a GPU (tests marked gpu; `make device-check` runs them): the CUDA backends over the
parity tables and at large shapes against the float64 reference, out-of-range probabilities, no host syncs, CUDA-graph capture and replay, bitwise
determinism, torch.compile(fullgraph=True), and more than 2**31 elements."""

import pytest
import torch

import pylosses
from cases import (CHANNELS_LAST, FLOAT_DTYPES, MISALIGNED, MSE, NON_CONTIGUOUS, REDUCTIONS, SEG, SEG3D, SEG3D_LOGITS,
                   SEG3D_TV_ONLY, SEG_BCE_ONLY, SEG_LOGITS, SEG_TV_ONLY, check_against_reference,
                   check_bce_element_by_element, check_fullgraph_training_step, chunked_seg_reference, make_pair,
                   shapes_for, target_dtype_for)

pytestmark = pytest.mark.gpu
HAS_CUDA = torch.cuda.is_available()
GPU_BACKENDS = [b for b in ("native", "triton") if HAS_CUDA and b in pylosses.available_backends("cuda")]
NATIVE_CUDA = "native" in GPU_BACKENDS
# odd sizes take the kernels' scalar paths; the aligned ones (W a multiple of 8) their vector paths
LARGE = {MSE: [((1 << 22) + 3,), (1 << 22,)],
         SEG: [(4, 1, 513, 511), (4, 1, 512, 512)],
         SEG_LOGITS: [(3, 2, 257, 1001), (2, 3, 256, 1024)],
         SEG3D: [(2, 1, 33, 65, 127), (2, 1, 32, 64, 128)],
         SEG3D_LOGITS: [(1, 3, 17, 129, 65), (1, 2, 16, 128, 64)]}
LOSSES = list(LARGE)
TABLE_LOSSES = [MSE, SEG, SEG_LOGITS, SEG3D, SEG3D_LOGITS, SEG_TV_ONLY, SEG_BCE_ONLY, SEG3D_TV_ONLY]


def _shape(loss):
    return LARGE[loss][-1]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_large_shapes_against_float64(loss, dtype, reduction, backend):
    target_dtype = torch.bool if loss.is_seg and dtype == torch.bfloat16 else dtype
    for shape in LARGE[loss]:
        check_against_reference(loss, backend, shape, dtype, target_dtype, reduction, device="cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("loss", TABLE_LOSSES, ids=lambda c: c.name)
def test_tensors_on_another_gpu(loss, backend):
    """Tensors on cuda:1 while cuda:0 is current: the kernels run on cuda:1 (a launch on the
    current device would read the other GPU's addresses) and leave cuda:0 current."""
    torch.cuda.set_device(0)
    for reduction in REDUCTIONS:
        check_against_reference(loss, backend, shapes_for(loss)[1], torch.float32, torch.float32, reduction,
                                device="cuda:1")
    check_against_reference(loss, backend, shapes_for(loss)[1], torch.float64, torch.float64, "mean", device="cuda:1")
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("logits", [False, True], ids=["probabilities", "logits"])
@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8], ids=str)
def test_bce_element_by_element(backend, target_dtype, logits):
    """The float32 BCE of hard labels on the GPU within check_bce_element_by_element's bounds:
    CUDA's MUFU.LG2 within its documented error, the series near the label (the emulation
    checks the same with that error modelled; this is the hardware)."""
    def loss(x, t):
        return pylosses.segmentation_loss(x, t, alpha=1.0, beta=0.0, from_logits=logits, reduction="none",
                                          backend=backend)

    check_bce_element_by_element(loss, target_dtype, logits, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_out_of_range_probabilities(backend):
    """A probability outside [0, 1] makes the loss NaN, with no device assert: the CUDA context
    stays usable. set_input_checks(True) raises instead."""
    x, t = make_pair(SEG, (2, 1, 64, 64), torch.float32, torch.float32, device="cuda")
    bad = x.detach().clone()
    bad[1, 0, 5, 7] = 1.5
    for reduction in REDUCTIONS:
        loss = pylosses.segmentation_loss(bad, t, reduction=reduction, backend=backend)
        assert torch.isnan(loss).any(), reduction
    assert torch.isnan(pylosses.segmentation_loss(bad, t, reduction="none", backend=backend))[1]
    torch.cuda.synchronize()  # a device assert would surface here
    assert float((torch.ones(3, device="cuda") * 2).sum()) == 6.0  # the context still works
    pylosses.set_input_checks(True)
    try:
        with pytest.raises(RuntimeError, match="between 0 and 1"):
            pylosses.segmentation_loss(bad, t, backend=backend)
        pylosses.segmentation_loss(x, t, backend=backend)  # in range: fine
    finally:
        pylosses.set_input_checks(False)


def _step(loss, backend, x, t, grad_output):
    value = loss.call(x, t, "mean", backend)
    return value, torch.autograd.grad(value, x, grad_output)[0]



@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_no_host_sync(loss, backend):
    x, t = make_pair(loss, _shape(loss), torch.float32, torch.float32, device="cuda")
    for grad_output in (torch.tensor(1.0, device="cuda"), torch.tensor(0.5, device="cuda")):
        _step(loss, backend, x, t, grad_output)  # compile and cache first
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            _step(loss, backend, x, t, grad_output)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_cuda_graph_capture_and_replay(loss, backend):
    x, t = make_pair(loss, _shape(loss), torch.float32, torch.float32, device="cuda")
    grad_output = torch.tensor(1.0, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            _step(loss, backend, x, t, grad_output)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        value, grad = _step(loss, backend, x, t, grad_output)
    fresh, _ = make_pair(loss, _shape(loss), torch.float32, torch.float32, seed=7, device="cuda")
    with torch.no_grad():
        x.copy_(fresh)
    graph.replay()
    want_value, want_grad = _step(loss, "reference", x, t, grad_output)
    torch.testing.assert_close(value, want_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_bitwise_deterministic(loss, backend):
    x, t = make_pair(loss, _shape(loss), torch.float32, torch.float32, device="cuda")
    grad_output = torch.tensor(0.75, device="cuda")
    first = _step(loss, backend, x, t, grad_output)
    for _ in range(3):
        again = _step(loss, backend, x, t, grad_output)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


# reduction="none" over many samples: far more samples than a grid's blocks, so that each block's
# run of tiles crosses many samples and most samples' partial rows come from one or two blocks
MANY_SAMPLES = [((4096, 1, 64, 64), torch.float32, torch.float32),    # the vector path, 4 tiles a sample
                ((4096, 1, 64, 64), torch.bfloat16, torch.bool),
                ((1500, 3, 17, 33), torch.float32, torch.float32),    # the scalar path
                ((600, 1, 6, 16, 24), torch.float64, torch.float64)]  # 3-D


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape,dtype,target_dtype", MANY_SAMPLES, ids=str)
def test_none_over_many_samples(backend, shape, dtype, target_dtype):
    loss = SEG3D if len(shape) == 5 else SEG
    check_against_reference(loss, backend, shape, dtype, target_dtype, "none", device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_none_over_many_samples_bitwise_deterministic(backend):
    x, t = make_pair(SEG, (4096, 1, 64, 64), torch.float32, torch.float32, device="cuda")
    grad_output = torch.rand(4096, device="cuda")

    def step():
        value = SEG.call(x, t, "none", backend)
        return value, torch.autograd.grad(value, x, grad_output)[0]

    first = step()
    for _ in range(3):
        again = step()
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fullgraph_compile_on_cuda(backend):
    check_fullgraph_training_step(backend, "cuda", (4, 1, 64, 64))


@pytest.mark.xdist_group("large_memory")  # one at a time under pytest-xdist: each needs tens of GB
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_mse_more_than_2_31_elements(backend):
    n = (1 << 31) + 4099
    if torch.cuda.get_device_properties(0).total_memory < 24 * n:
        pytest.skip("not enough GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(n, device="cuda", generator=g, dtype=torch.bfloat16).requires_grad_()
    t = torch.rand(n, device="cuda", generator=g, dtype=torch.bfloat16)
    value = pylosses.mse_loss(x, t, backend=backend)
    (grad,) = torch.autograd.grad(value, x)
    exact = sum(((x[i:i + (1 << 28)].double() - t[i:i + (1 << 28)].double()) ** 2).sum()
                for i in range(0, n, 1 << 28)) / n
    # the loss is bfloat16 (the input's dtype): within its rounding, 2**-9, of the exact mean
    torch.testing.assert_close(value.double(), exact, rtol=2**-8, atol=0)
    tail = slice(n - 4099, n)  # elements past 2**31
    want = (2 * (x[tail].double() - t[tail].double()) / n).to(torch.bfloat16)
    torch.testing.assert_close(grad[tail], want, rtol=1e-2, atol=0)


@pytest.mark.xdist_group("large_memory")  # one at a time under pytest-xdist: each needs tens of GB
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_segmentation_more_than_2_31_elements(backend):
    H, W = (1 << 15) + 3, 1 << 16
    n = H * W
    if torch.cuda.get_device_properties(0).total_memory < (40 << 30):
        pytest.skip("not enough GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (0.02 + 0.96 * torch.rand((1, 1, H, W), device="cuda", generator=g)).to(torch.bfloat16).requires_grad_()
    t = torch.rand((1, 1, H, W), device="cuda", generator=g) > 0.5
    value = pylosses.segmentation_loss(x, t, alpha=0.7, beta=0.3, backend=backend)
    (grad,) = torch.autograd.grad(value, x)
    # a bfloat16 loss (the input's dtype): within its rounding of the float64 one
    torch.testing.assert_close(value.double(), chunked_seg_reference(x.detach(), t, 0.7, 0.3), rtol=2**-8, atol=0)
    # the last two rows lie past 2**31: their gradient, from a window of three rows with the
    # global counts, holds every term that reaches them
    window = x.detach()[0, 0, -3:].double().requires_grad_()
    labels = t[0, 0, -3:].double()
    part = (0.7 * torch.nn.functional.binary_cross_entropy(window[1:], labels[1:], reduction="sum") / n
            + 0.3 * ((window[1:, 1:] - window[1:, :-1]).abs().sum() / (H * (W - 1))
                     + (window[1:] - window[:-1]).abs().sum() / ((H - 1) * W)))
    (want,) = torch.autograd.grad(part, window)
    torch.testing.assert_close(grad[0, 0, -2:].double(), want[1:], rtol=2e-2, atol=1e-12)


@pytest.mark.parametrize("backend", GPU_BACKENDS + ["reference"])
@pytest.mark.parametrize("from_logits", [False, True], ids=["probabilities", "logits"])
def test_cuda_autocast(backend, from_logits):
    """Under CUDA autocast a float16 model output works in both forms, also the probability
    form that nn.BCELoss refuses there; the loss is float32 and matches float64."""
    net = torch.nn.Linear(64, 64).cuda()
    x = torch.rand(4, 1, 32, 64, device="cuda")
    t = (torch.rand(4, 1, 32, 64, device="cuda") > 0.5).float()
    with torch.autocast("cuda"):
        out = net(x)
        out = out if from_logits else torch.sigmoid(out)
        assert out.dtype == torch.float16
        if not from_logits:
            with pytest.raises(RuntimeError, match="unsafe to autocast"):
                torch.nn.BCELoss()(out, t)
        value = pylosses.segmentation_loss(out, t, from_logits=from_logits, backend=backend)
    assert value.dtype == torch.float32
    want = pylosses.reference.segmentation_loss(out.detach().double(), t.double(), 0.7, 0.3, from_logits, 2, "mean")
    torch.testing.assert_close(value.double(), want, rtol=1e-5, atol=1e-6)
    value.backward()
    assert torch.isfinite(net.weight.grad).all()


# last: the longest (Triton compiles a kernel for each new configuration), so that a run cut
# short by make device-check's time limit has done the rest
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("loss", TABLE_LOSSES, ids=lambda c: c.name)
def test_case_tables_on_cuda(loss, backend):
    """The CPU parity tables (odd sizes, size-1 axes, empty, every dtype and layout) on the GPU."""
    for dtype in FLOAT_DTYPES:
        for reduction in REDUCTIONS:
            for shape in shapes_for(loss):
                check_against_reference(loss, backend, shape, dtype, dtype, reduction, device="cuda")
        for kind in ("float32", "label"):
            target_dtype = target_dtype_for(loss, dtype, kind)
            check_against_reference(loss, backend, shapes_for(loss)[1], dtype, target_dtype, "mean", device="cuda")
    for layout in (NON_CONTIGUOUS, CHANNELS_LAST, MISALIGNED):
        for reduction in REDUCTIONS:
            check_against_reference(loss, backend, shapes_for(loss)[2], torch.float32, torch.float32, reduction,
                                    layout, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("mask_kind", ["none", "broadcast", "full"])
def test_region_sums_on_the_gpu(backend, mode, mask_kind):
    """The region ops on CUDA tensors against the reference's sums and their autograd gradients
    in float64, with logits and probabilities, small and large planes (vector and scalar paths,
    several blocks a plane), every dtype."""
    from test_region_ops import _check

    for shape in [(2, 3, 5, 7), (3, 2, 11), (2, 3, 256, 256), (1, 2, 257, 1001), (2, 2, 17, 33, 65)]:
        for sigmoid in (False, True):
            _check(backend, shape, torch.float64, torch.float64, sigmoid, mode, mask_kind, device="cuda")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for target_dtype in (torch.float32, torch.bool, torch.uint8):
            _check(backend, (2, 3, 64, 96), dtype, target_dtype, True, mode, mask_kind, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", [4, 5, 6])
@pytest.mark.parametrize("mask_kind", ["none", "broadcast", "full"])
def test_region_bce_sums_on_the_gpu(backend, mode, mask_kind):
    """The region ops with DiceBCE's BCE sums (mode + 4: logits) on CUDA tensors against the
    reference, as test_region_sums_on_the_gpu."""
    from test_region_ops import _check

    for shape in [(2, 3, 5, 7), (2, 3, 256, 256), (1, 2, 257, 1001), (2, 2, 17, 33, 65)]:
        _check(backend, shape, torch.float64, torch.float64, True, mode, mask_kind, device="cuda")
    for dtype in (torch.float32, torch.bfloat16):
        for target_dtype in (torch.float32, torch.uint8):
            _check(backend, (2, 3, 64, 96), dtype, target_dtype, True, mode, mask_kind, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_region_losses_on_the_gpu(backend):
    """Every region loss on CUDA tensors against the reference, values and gradients."""
    from test_region import FUNCTIONS, _check_backend

    for fn, options in FUNCTIONS:
        for shape in [(2, 3, 64, 65), (2, 3, 8, 16, 32)]:
            _check_backend(fn, options, backend, shape, torch.float32, torch.float32, device="cuda")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cross_entropy_on_the_gpu(backend):
    """The cross-entropy on CUDA tensors against the reference (tests/test_cross_entropy_ops.py's
    check): class counts on the register and the streaming paths, packed and one-pixel planes,
    every reduction and label dtype, 16-bit inputs, all pixels ignored, and two runs bitwise equal."""
    from test_cross_entropy_ops import OPTIONS, _case, _check, _loss_and_grad

    for k, shape in enumerate([(2, 4, 64, 64), (2, 3, 33, 65), (2, 14, 16, 32, 32), (3, 40, 48, 40), (64, 10)]):
        for label_dtype in (torch.int64, torch.uint8):
            for reduction in ("mean", "sum", "none"):
                weight, smoothing, ignore = OPTIONS[(k + len(reduction)) % len(OPTIONS)]
                x, t, w, ignore_index = _case(shape, label_dtype, ignore, weight, seed=k)
                for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6), (torch.bfloat16, 3e-2)):
                    xd = x.to(dtype).double() if dtype == torch.bfloat16 else x
                    _check(backend, xd, t, w, ignore_index, smoothing, reduction, dtype, tol, device="cuda")
    x, t, w, ignore_index = _case((4, 6, 128, 96), weight=True, dtype=torch.float32)
    runs = [_loss_and_grad(lambda *a, **kw: pylosses.cross_entropy(*a, **kw, backend=backend), x, t, w, ignore_index,
                           0.1, "mean", torch.float32, device="cuda") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_cross_entropy_small_losses_on_the_gpu(backend):
    """Confident pixels (losses from 0.1 down to 1e-7) with the GPU's own exp2 and log2: the
    native kernel's loss and gradient each within 4e-6 of itself (its accurate path for small
    losses, README "Where backends differ"; the CUDA emulation's bound), the Triton kernel's within
    1e-6 absolute (torch's accuracy), against the float64 reference; DiceCE's cross-entropy term
    (native: the fused softmax region sums) the same."""
    from cases import assert_relative_to_each, confident_logits

    for n_classes in (2, 4, 7, 14, 40):
        x, t = confident_logits((4, 32, 48), n_classes, seed=n_classes)
        exact = x.double().requires_grad_(True)
        want = pylosses.reference.cross_entropy(exact, t, None, -100, 0.0, "none")
        want_grad, = torch.autograd.grad(want.sum(), exact)
        xg = x.cuda().requires_grad_(True)
        loss = pylosses.cross_entropy(xg, t.cuda(), reduction="none", backend=backend)
        grad, = torch.autograd.grad(loss.sum(), xg)
        counted = t != -100
        keep = counted.unsqueeze(1).expand_as(x)
        what = f"{backend} C={n_classes}"
        if backend == "native":
            assert_relative_to_each(loss.cpu()[counted], want[counted], what + " loss", 4e-6)
            assert_relative_to_each(grad.cpu()[keep], want_grad[keep], what + " grad", 4e-6, floor=2**-100)
        else:
            torch.testing.assert_close(loss.cpu()[counted].double(), want[counted].detach(), rtol=0, atol=1e-6)
            torch.testing.assert_close(grad.cpu()[keep].double(), want_grad[keep], rtol=0, atol=1e-6)
        if backend == "native":
            labels = torch.where(t == -100, torch.full_like(t, 255), t).cuda()
            _, ce = torch.ops.pylosses.softmax_region_sums(x.cuda(), labels, None, 0, None, 255, 0.0, True)
            assert_relative_to_each(ce[0].cpu(), want[counted].sum(), what + " DiceCE's loss sum", 4e-6)


def _softmax_region_close(got, want, tol, what):
    """A CUDA result against the CPU kernel's: NaN where it is NaN, else within tol of the largest value."""
    got = got.cpu().double()
    want = want.double()
    assert got.shape == want.shape, what
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaNs differ"
    finite = ~torch.isnan(want)
    if finite.any():
        err = float((got - want)[finite].abs().max() / want[finite].abs().max().clamp_min(1e-30))
        assert err <= tol, f"{what}: off by {err:.3g} relative (tolerance {tol:.3g})"


@pytest.mark.skipif(not NATIVE_CUDA, reason="no native CUDA kernels")
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_softmax_region_sums_on_the_gpu(dtype, mode):
    """The fused op softmax_region_sums and its backward on CUDA tensors against the CPU kernel's
    on the same values: class counts on the register paths (2, 3, 14, 32) and the chunked one (40,
    150), 1-D to 3-D, large planes (many warps a sample), masks, every label dtype, with_ce with
    weights, ignore_index, smoothing, labels out of range, and two runs bitwise equal."""
    from test_multiclass_region import _op_inputs

    shapes = [(2, 3, 5, 7), (3, 2, 11), (1, 14, 3, 4, 5), (2, 32, 33, 17), (2, 40, 6), (2, 4, 257, 513),
              (2, 40, 64, 96), (1, 150, 32, 32), (0, 3, 4, 4), (2, 3, 0, 4)]
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 2e-5)
    grad_tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, tol)
    for k, shape in enumerate(shapes):
        label_dtype = (torch.int64, torch.int32, torch.uint8)[k % 3]
        x, labels, mask = _op_inputs(shape, dtype, label_dtype, masked=k % 2 == 0, seed=k)
        if labels.numel() and k % 4 == 1:
            labels.view(-1)[0] = shape[1] + 1  # out of range: counted in sums[b, 0, 3]
        weight = torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        for options in ((None, pylosses._ops.NO_IGNORE, 0.0, False), (weight, 1, 0.1, True), (None, 255, 0.0, True)):
            w, ignore, smoothing, with_ce = options
            args = (x, labels, mask, mode, w, ignore, smoothing, with_ce)
            on_gpu = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
            want = torch.ops.pylosses.softmax_region_sums(*args)
            got = torch.ops.pylosses.softmax_region_sums(*on_gpu)
            what = f"{shape} {dtype} {label_dtype} mode {mode} options {options[1:]}"
            assert got[0].device.type == "cuda" and got[0].dtype == want[0].dtype
            _softmax_region_close(got[0], want[0], tol, what + " sums")
            _softmax_region_close(got[1], want[1], tol, what + " ce")
            again = torch.ops.pylosses.softmax_region_sums(*on_gpu)
            assert torch.equal(got[0], again[0]) and torch.equal(got[1], again[1]), what
            g = torch.Generator().manual_seed(k)
            grad_sums = torch.randn(want[0].shape, generator=g, dtype=want[0].dtype)
            grad_ce = torch.randn(3, generator=g, dtype=want[1].dtype) if with_ce else torch.zeros(3, dtype=want[1].dtype)
            back = (grad_sums, grad_ce) + args[:-1]
            want_grad = torch.ops.pylosses.softmax_region_sums_backward(*back)
            got_grad = torch.ops.pylosses.softmax_region_sums_backward(
                *(a.cuda() if isinstance(a, torch.Tensor) else a for a in back))
            assert got_grad.dtype == dtype and got_grad.device.type == "cuda"
            _softmax_region_close(got_grad, want_grad, grad_tol, what + " grad")


@pytest.mark.skipif(not NATIVE_CUDA, reason="no native CUDA kernels")
def test_fused_dice_ce_on_the_gpu():
    """DiceCELoss(softmax=True, to_onehot_y=True) and DiceLoss(softmax=True) on the native CUDA
    backend (the fused op) against the reference, values and input gradients."""
    g = torch.Generator().manual_seed(0)
    for shape in [(2, 4, 64, 65), (2, 40, 16, 32), (1, 3, 8, 16, 32)]:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
        t = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
        weight = torch.linspace(0.5, 2, shape[1], dtype=torch.float64)
        for fn, options in ((pylosses.dice_ce_loss, {"weight": weight, "ignore_index": 1, "label_smoothing": 0.1}),
                            (pylosses.dice_loss, {"squared_pred": True})):
            want_x = x.clone().requires_grad_(True)
            want = fn(want_x, t, softmax=True, to_onehot_y=True, **options, backend="reference")
            got_x = x.cuda().float().requires_grad_(True)
            got = fn(got_x, t.cuda(), softmax=True, to_onehot_y=True, **options, backend="native")
            torch.testing.assert_close(got.double().cpu(), want, rtol=2e-5, atol=2e-5)
            mine, = torch.autograd.grad(got, got_x)
            truth, = torch.autograd.grad(want, want_x)
            torch.testing.assert_close(mine.double().cpu(), truth, rtol=2e-5, atol=2e-5 * float(truth.abs().max()))
