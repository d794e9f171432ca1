"""The CUDA kernels' code, run on the CPU: csrc/cuda/*.cu built as C++ with a small emulation of
CUDA (csrc/cuda/emulation.h: each block's threads on OS threads, barriers, warp shuffles, shared
memory) and registered as pylosses_cuda_emulated::*. Each loss's op is compared with the CPU
kernel's op, which the parity tables hold to the float64 reference, and the region ops and the
cross-entropy with the reference itself (tests/test_region_ops.py's checks), over shapes that take the vector and the
scalar paths, several blocks, every reduction, mode and mask, both forms, the dtypes and the
target dtypes. It checks the kernels' logic (tiling, halos, shared memory, reductions, the final
sums) on a machine without a GPU; it says nothing about their speed, and a real GPU can still
differ (memory model, compiler): the tests marked gpu run there."""

import ctypes
import itertools
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from cases import (MSE_SHAPES, SEG2D_SHAPES, SEG3D_SHAPES, assert_relative_to_each, check_bce_element_by_element,
                   confident_logits)
from test_region_ops import BCE_MODES as REGION_BCE_MODES, DTYPES as REGION_DTYPES, MASK_KINDS, MODES as REGION_MODES
from test_region_ops import SHAPES as REGION_SHAPES
from test_region_ops import _check as _check_region, _inputs as _region_inputs

import pylosses  # the native ops, and the schemas (pylosses._ops.SCHEMAS)
from pylosses import _ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, "tests", "cuda_emulation", f"{name}.cpp")
           for name in ("mse_loss", "seg_loss", "loss_backward", "region_loss", "cross_entropy", "softmax_region",
                        "softmax_tv")]
EPS = {torch.float32: 2**-23, torch.float64: 2**-52, torch.float16: 2**-10, torch.bfloat16: 2**-7}

# shapes that also take the vector path (W a multiple of 8, and for float32 4: W = 12) and
# spread over several blocks
SEG2D = SEG2D_SHAPES + [(2, 2, 16, 64), (3, 1, 40, 48), (2, 1, 6, 12)]
SEG3D = SEG3D_SHAPES + [(1, 1, 4, 8, 16), (2, 1, 3, 16, 32)]
MSE = MSE_SHAPES + [(4096,), (3, 1000)]


@pytest.fixture
def junk_memory():
    """Fresh CPU allocations filled with junk (NaN in float32, about 1.7e308 in float64) rather
    than whatever the allocator hands out, often zeros: a kernel that reads memory it did not
    write (an unwritten row of partials) gets a wrong or NaN loss."""
    libc10 = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    flag = ctypes.c_bool.in_dll(libc10, "FLAGS_caffe2_cpu_allocator_do_junk_fill")
    assert torch.isnan(torch.empty(4)).all() or not flag.value
    flag.value = True
    assert torch.isnan(torch.empty(64)).all(), "junk fill had no effect"
    yield
    flag.value = False


_LIBRARIES = []


@pytest.fixture(scope="module")
def emulated():
    from torch.utils.cpp_extension import load

    # one build folder per Python and torch: load() would reuse a build made against other headers
    build = os.path.join(ROOT, "build", f"cuda_emulation-py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")
    os.makedirs(build, exist_ok=True)
    # pylosses' own schemas, under the emulation's name (kept alive: dropping it drops the ops)
    _LIBRARIES.append(pylosses._ops.define_ops("pylosses_cuda_emulated"))
    load(name="pylosses_cuda_emulated", sources=SOURCES, build_directory=build, is_python_module=False,
         extra_cflags=["-O1", "-std=c++20", "-Wno-unknown-pragmas"])
    return torch.ops.pylosses_cuda_emulated


def _close(got, want, dtype, what):
    """got and want (loss or gradient) within a few roundings of `dtype`, relative to want's size."""
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if want.numel() == 0:
        return
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaNs differ"
    finite = ~torch.isnan(want)
    scale = want[finite].abs().max().clamp_min(1e-30) if finite.any() else 1.0
    err = float(((got - want)[finite]).abs().max() / scale) if finite.any() else 0.0
    assert err <= 16 * EPS[dtype], f"{what}: off by {err:.3g} relative"


def _inputs(shape, dtype, target_dtype, logits, misaligned=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(shape, generator=g, dtype=torch.float64) if logits else \
        0.02 + 0.96 * torch.rand(shape, generator=g, dtype=torch.float64)
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    x = x.to(dtype)
    t = (t > 0.5).to(target_dtype) if target_dtype in (torch.bool, torch.uint8) else t.to(target_dtype)
    if misaligned:  # contiguous, one element into its storage: the scalar path
        x = torch.cat([x.new_zeros(1), x.reshape(-1)])[1:].view(shape)
        t = torch.cat([t.new_zeros(1), t.reshape(-1)])[1:].view(shape)
    return x, t


def _compare_seg(emulated, shape, dtype, target_dtype, logits, reduction, misaligned=False):
    x, t = _inputs(shape, dtype, target_dtype, logits, misaligned)
    grad_t = target_dtype.is_floating_point
    args = (x, t, 0.7, 0.3, len(shape) - 2 if len(shape) == 5 else 2, logits, reduction, True, grad_t)
    got, want = emulated.seg_loss_fwd(*args), torch.ops.pylosses.seg_loss_fwd(*args)
    for name, a, b in zip(("loss", "grad_input", "grad_target"), got, want):
        _close(a, b, dtype if name == "loss" else a.dtype,  # a gradient: in its saved dtype
               f"{shape} {dtype} {target_dtype} logits={logits} reduction={reduction} {name}")


@pytest.mark.parametrize("logits", [False, True], ids=["probabilities", "logits"])
@pytest.mark.parametrize("spatial", ["2d", "3d"])
def test_segmentation_float32_every_shape(emulated, spatial, logits):
    for shape in SEG2D if spatial == "2d" else SEG3D:
        for reduction in (0, 1, 2):
            _compare_seg(emulated, shape, torch.float32, torch.float32, logits, reduction)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target_dtype", ["same", torch.bool, torch.uint8, torch.float32], ids=str)
def test_segmentation_dtypes(emulated, dtype, target_dtype):
    target_dtype = dtype if target_dtype == "same" else target_dtype
    for shape in ((2, 2, 16, 64), (2, 1, 5, 7), (1, 1, 4, 8, 16)):
        for logits in (False, True):
            _compare_seg(emulated, shape, dtype, target_dtype, logits, 1)


def test_segmentation_misaligned_takes_the_scalar_path(emulated):
    for shape in ((2, 2, 16, 64), (1, 1, 4, 8, 16)):
        for logits in (False, True):
            for reduction in (0, 1):
                _compare_seg(emulated, shape, torch.float32, torch.float32, logits, reduction, misaligned=True)


# The emulated device keeps 2 blocks of 256 threads an SM on 3 SMs, fewer where a block's shared
# memory (24 KiB an SM; 2 KiB to 16 KiB a block here) does not fit twice: grids of 3 to 6 blocks.
# A tile is a block's 256 threads of packs: all but the last shape have one tile a volume. In 2-D
# each row of threads walks a band of rows (seg_band): 1 row where H is below twice the block's
# rows, as in all but the last shape.
SPLITS = [
    # float32 packs of 8 (16 KiB, 3 blocks): 13 tiles in runs of 5, the last block 3
    ((13, 1, 8, 32), torch.float32, torch.float32),
    # 7 samples of 2 tiles, 14 tiles in runs of 5: sample 2 spans blocks 0 and 1, and block 1's
    # end meets sample 4's end at tile 10
    ((7, 2, 40, 16), torch.float32, torch.bool),
    # float64 (packs of 2), 9 samples of 3 tiles in runs of 5
    ((9, 3, 4, 16), torch.float64, torch.float64),
    # bfloat16 packs of 8 in 16 KiB of shared memory: 3 blocks for 15 tiles
    ((5, 3, 4, 64), torch.bfloat16, torch.bfloat16),
    # 3-D, the scalar path (W = 7): 11 samples, 1 tile each, more samples than blocks
    ((11, 1, 3, 4, 7), torch.float32, torch.float32),
    # one sample of 12 tiles (2 channels; W = 600 in 3 tiles of 256 columns, the last part
    # empty; 8 rows of threads in bands of 8 rows, H = 70 in 2 tiles of 64 rows, the second's
    # first band crossing H's end and its other 7 outside), 4 a block
    ((1, 2, 70, 600), torch.float32, torch.uint8),
]


@pytest.mark.parametrize("shape,dtype,target_dtype", SPLITS, ids=str)
def test_segmentation_partials_split_over_blocks(emulated, junk_memory, shape, dtype, target_dtype):
    """More tiles than blocks, a block count that does not divide them, samples that span
    blocks and blocks that span samples: every reduction matches the CPU kernel, with the
    partials read from junk-filled memory (a row read but never written spoils the loss)."""
    for logits in (False, True):
        for reduction in (0, 1, 2):
            _compare_seg(emulated, shape, dtype, target_dtype, logits, reduction)


def test_segmentation_bitwise_deterministic(emulated, junk_memory):
    for shape, dtype, target_dtype in SPLITS[:3]:
        x, t = _inputs(shape, dtype, target_dtype, False)
        grad_t = target_dtype.is_floating_point
        for reduction in (0, 1):
            args = (x, t, 0.7, 0.3, len(shape) - 2 if len(shape) == 5 else 2, False, reduction, True, grad_t)
            first, again = emulated.seg_loss_fwd(*args), emulated.seg_loss_fwd(*args)
            for a, b in zip(first, again):
                assert torch.equal(a, b), (shape, reduction)


def test_segmentation_out_of_range_is_nan_per_sample(emulated):
    x, t = _inputs((3, 1, 16, 64), torch.float32, torch.float32, False)
    x[1, 0, 3, 5] = 1.5
    loss, _, _ = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, 0, False, False)
    assert torch.isnan(loss).tolist() == [False, True, False]
    mean, _, _ = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, 1, False, False)
    assert torch.isnan(mean)


@pytest.mark.parametrize("target_dtype,bad,logits,nan", [
    (torch.uint8, 255, False, True), (torch.uint8, 255, True, True),  # a 0/255 mask, either form
    (torch.float32, 2.0, False, True), (torch.float32, float("nan"), False, True),  # as nn.BCELoss checks
    (torch.float32, 2.0, True, False),  # nn.BCEWithLogitsLoss takes any float target
], ids=["mask-probs", "mask-logits", "float-probs", "nan-probs", "float-logits"])
def test_segmentation_bad_target_is_nan_per_sample(emulated, target_dtype, bad, logits, nan):
    # where the CPU kernel raises, the CUDA kernel (no host sync, no device assert) gives NaN
    x, t = _inputs((3, 1, 16, 64), torch.float32, target_dtype, False)
    t[1, 0, 7, 9] = bad
    loss, _, _ = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, logits, 0, False, False)
    assert torch.isnan(loss).tolist() == [False, nan, False]


@pytest.mark.parametrize("logits", [False, True], ids=["probabilities", "logits"])
def test_bce_within_the_approximate_log2s_bound(emulated, logits):
    """CUDA's float32 BCE of a hard label (probabilities) and the softplus of a logit take
    MUFU.LG2, which the emulation runs at its documented worst error (2^-22 absolute in
    [0.5, 2]), and a series near the label: check_bce_element_by_element's bounds hold, and the
    emulated error shows. bool targets (uint8 takes the same math; test_gpu runs both), and 64
    sizes: each is a sample of its own, a block of 256 emulated threads."""
    def loss(x, t):
        return emulated.seg_loss_fwd(x, t, 1.0, 0.0, 2, logits, 0, False, False)[0]

    worst = check_bce_element_by_element(loss, torch.bool, logits, points=64)
    assert worst > 2**-23  # the emulated error shows: the bound is being tested


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_mse(emulated, dtype):
    for shape in MSE:
        for reduction in (0, 1, 2):
            for misaligned in (False, True):
                x, t = _inputs(shape, dtype, dtype, True, misaligned)
                got = emulated.mse_loss_fwd(x, t, reduction, True)
                want = torch.ops.pylosses.mse_loss_fwd(x, t, reduction, True)
                for name, a, b in zip(("loss", "grad"), got, want):
                    _close(a, b, dtype, f"mse {shape} {dtype} reduction={reduction} misaligned={misaligned} {name}")


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_loss_backward(emulated, out_dtype):
    g = torch.Generator().manual_seed(3)
    for saved_dtype in (torch.float32, torch.float64, torch.bfloat16):
        saved = torch.randn(3, 5, 67, generator=g).to(saved_dtype)
        for grad_output in (torch.tensor(0.75), torch.rand(3, generator=g), torch.rand(3, 5, 67, generator=g),
                            torch.rand(15, generator=g).to(torch.float16)):
            for scale in (1.0, -1.0):
                for tensor in (saved, torch.cat([saved.new_zeros(1), saved.reshape(-1)])[1:].view(saved.shape)):
                    got = emulated.loss_backward(grad_output, tensor, scale, out_dtype)
                    want = torch.ops.pylosses.loss_backward(grad_output, tensor, scale, out_dtype)
                    _close(got, want, out_dtype, f"backward {saved_dtype} -> {out_dtype}, grad_output {grad_output.shape}")


def test_loss_backward_many_grid_steps(emulated):
    """Enough elements that every thread takes several grid-stride steps, which move its group
    of grad_output by counting: groups larger than a step (9000 elements), smaller than a step
    and not dividing it (3000), smaller than a pack (3: several groups in one pack), one element,
    and one group."""
    g = torch.Generator().manual_seed(4)
    for saved_dtype in (torch.float32, torch.bfloat16, torch.float64):
        saved = torch.randn(7, 3, 3000, generator=g).to(saved_dtype)
        for groups in (1, 7, 21, saved.numel() // 3, saved.numel()):
            grad_output = torch.rand(groups, generator=g)
            for tensor in (saved, torch.cat([saved.new_zeros(1), saved.reshape(-1)])[1:].view(saved.shape)):
                got = emulated.loss_backward(grad_output, tensor, 0.5, saved_dtype)
                want = torch.ops.pylosses.loss_backward(grad_output, tensor, 0.5, saved_dtype)
                _close(got, want, saved_dtype, f"backward {saved_dtype}, {groups} groups")


def test_empty(emulated):
    for reduction in (0, 1, 2):
        for shape in ((0, 1, 4, 4), (2, 1, 0, 5)):
            x, t = torch.rand(shape), torch.rand(shape)
            got = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, reduction, True, True)
            want = torch.ops.pylosses.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, reduction, True, True)
            _close(got[0], want[0], torch.float32, f"empty {shape} reduction={reduction}")
        x = torch.rand(0, 3)
        _close(emulated.mse_loss_fwd(x, x, reduction, True)[0], torch.ops.pylosses.mse_loss_fwd(x, x, reduction, True)[0],
               torch.float32, f"empty mse reduction={reduction}")


# The region ops. The emulated device keeps 2 blocks an SM on 3 SMs: grids of up to 6 blocks. A
# tile is a block pass: 1024 elements in float32 (packs of 4) and on the one-element path (runs
# of 4), 512 in float64, 2048 for 16-bit inputs; a plane that fits into one is taken by a warp.
REGION_SPLITS = [
    (1, 3, 48, 50),  # packs for every dtype: float32 9 tiles in runs of 2 (blocks span planes), float64 15 in 3s
    (1, 5, 37, 41),  # one element at a time (odd S): 10 tiles in runs of 2, two planes spanning two blocks
    (7, 9, 4, 4),    # 63 planes of 16 taken by warps: 6 blocks of 11 planes, some warps taking 2
]


@pytest.fixture(scope="module")
def emulated_region(emulated):
    """The emulated region_sums as a backend: the native op's fake kernel and autograd, whose
    backward is the emulated region_sums_backward; test_region_ops' checks then run on it."""
    for name, fake in (("region_sums", _ops._region_sums_fake), ("region_sums_backward", _ops._region_sums_backward_fake)):
        torch.library.register_fake(f"pylosses_cuda_emulated::{name}", fake)
    torch.library.register_autograd("pylosses_cuda_emulated::region_sums",
                                    _ops._make_region_backward(emulated.region_sums_backward),
                                    setup_context=_ops._region_setup_context)
    return emulated.region_sums


# The (mode, sigmoid) pairs. The kernels' walk over tiles, blocks and partials depends on the
# shape, the dtype and the mask, not on these: the tests below take every shape with each of
# those, and the pairs in turn (each pair with several shapes), which keeps the emulation's
# minutes of OS threads to about a sixth. The math of each pair is region_loss_math.h's, which
# the CPU kernel's tests check in every combination. The last three: DiceBCE's BCE sums (mode +
# 4, logits only).
REGION_PAIRS = list(itertools.product(REGION_MODES, (False, True))) + [(mode, True) for mode in REGION_BCE_MODES]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_region_sums_and_gradients(emulated_region, junk_memory, mask_kind, dtype):
    """Sums and both gradients against the reference in float64, over test_region_ops' shapes
    (odd sizes, no spatial axis, empty ones) and more tiles than blocks, with the partials read
    from junk-filled memory; every (mode, sigmoid) pair, in turn over the shapes, starting where
    this (mask, dtype) says: over the six cases each pair meets six or more of the shapes."""
    shapes = REGION_SHAPES + REGION_SPLITS
    assert len(shapes) >= len(REGION_PAIRS)
    start = 2 * MASK_KINDS.index(mask_kind) + (dtype == torch.float32)
    for i, shape in enumerate(shapes):
        mode, sigmoid = REGION_PAIRS[(start + i) % len(REGION_PAIRS)]
        _check_region(emulated_region, shape, dtype, dtype, sigmoid, mode, mask_kind)


@pytest.mark.parametrize("dtype", REGION_DTYPES, ids=str)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool, torch.uint8, "same"], ids=str)
def test_region_dtypes(emulated_region, dtype, target_dtype):
    """Every input and target dtype, on the one-element path (S = 54), with packs (S = 128, a
    warp a plane) and with packs over several blocks (S = 2400), each with three of the (mode,
    sigmoid) pairs: all nine over the three."""
    target_dtype = dtype if target_dtype == "same" else target_dtype
    shapes = ((2, 3, 6, 9), (2, 3, 8, 16), (1, 2, 48, 50))
    for i, (mode, sigmoid) in enumerate(REGION_PAIRS):
        _check_region(emulated_region, shapes[i % len(shapes)], dtype, target_dtype, sigmoid, mode, "broadcast",
                      seed=mode)


def _misaligned(a):
    """a's values, contiguous, one element into their storage (a pointer that packs do not fit)."""
    return torch.cat([a.new_zeros(1), a.reshape(-1)])[1:].view(a.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_region_misaligned_takes_the_one_element_path(emulated, dtype):
    """The same values with the pointers off the packs' alignment (input, target or mask) give
    the sums and gradients of the vector path, which test_region_dtypes holds to the reference."""
    for mask_kind in ("broadcast", "full"):
        x, t, mask = _region_inputs((1, 3, 48, 64), dtype, torch.float32, True, mask_kind)
        grad_sums = torch.randn(1, 3, 4)
        want = emulated.region_sums(x, t, mask, True, 1)
        want_grads = emulated.region_sums_backward(grad_sums, x, t, mask, True, 1, True, True)
        for args in ((_misaligned(x), t, mask), (x, _misaligned(t), mask), (x, t, _misaligned(mask))):
            torch.testing.assert_close(emulated.region_sums(*args, True, 1), want, rtol=1e-5, atol=0)
            got_grads = emulated.region_sums_backward(grad_sums, *args, True, 1, True, True)
            for got, expected in zip(got_grads, want_grads):
                torch.testing.assert_close(got, expected)


def test_region_bitwise_deterministic(emulated, junk_memory):
    for shape in REGION_SPLITS:
        x, t, mask = _region_inputs(shape, torch.float32, torch.float32, True, "full")
        grad_sums = torch.randn(shape[0], shape[1], 4)
        sums = [emulated.region_sums(x, t, mask, True, 2) for _ in range(2)]
        grads = [emulated.region_sums_backward(grad_sums, x, t, mask, True, 2, True, True) for _ in range(2)]
        assert torch.equal(*sums), shape
        for a, b in zip(*grads):
            assert torch.equal(a, b), shape


def test_region_bad_uint8_targets_are_counted(emulated):
    """A uint8 target above 1 counts in the fourth sum where the mask keeps the pixel (no device
    assert, no host sync: the loss becomes NaN); a masked-out one does not count."""
    for shape in ((2, 3, 4, 5), (1, 3, 48, 50), (1, 3, 33, 65)):  # a warp a plane; packs; one element at a time
        x, t, _ = _region_inputs(shape, torch.float32, torch.uint8, False, "none")
        t[0, 2, 0, 3] = 255
        t[0, 1, -1, -1] = 2
        mask = torch.ones(shape[0], 1, *shape[2:], dtype=torch.bool)
        sums = emulated.region_sums(x, t, mask, False, 0)
        assert sums[0, 2, 3] == 1 and sums[0, 1, 3] == 1 and sums[..., 3].sum() == 2, shape
        mask[0, 0, 0, 3] = False
        assert emulated.region_sums(x, t, mask, False, 0)[..., 3].sum() == 1, shape


def test_region_empty(emulated):
    for shape in ((0, 3, 4, 4), (2, 2, 0, 3)):
        for dtype in (torch.float32, torch.float64):
            x, t = torch.rand(shape, dtype=dtype), torch.rand(shape, dtype=dtype)
            sums = emulated.region_sums(x, t, None, True, 0)
            assert sums.dtype == dtype and torch.equal(sums, torch.zeros(shape[0], shape[1], 4, dtype=dtype))
            grad_x, grad_t = emulated.region_sums_backward(sums, x, t, None, True, 0, True, True)
            assert grad_x.shape == grad_t.shape == shape and grad_x.dtype == grad_t.dtype == dtype


def test_region_opcheck(emulated_region, emulated):
    x, t = torch.rand(2, 3, 5, 8, requires_grad=True), torch.rand(2, 3, 5, 8, requires_grad=True)
    mask = torch.rand(2, 1, 5, 8) > 0.5
    torch.library.opcheck(emulated.region_sums, (x, t, mask, True, 1))
    torch.library.opcheck(emulated.region_sums, (x.detach().half(), t.detach() > 0.5, None, False, 2))
    torch.library.opcheck(emulated.region_sums_backward, (torch.randn(2, 3, 4), x.detach(), t.detach(), mask, True, 0,
                                                          True, True))


@pytest.mark.parametrize("case", ["shape", "mask dtype", "mask shape", "mode", "target dtype", "grad_sums shape",
                                  "target gradient"])
def test_region_bad_arguments(emulated, case):
    x, t, mask, mode = torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 5), None, 0
    grad_sums, grad_target = torch.zeros(2, 3, 4), True
    if case == "shape":
        t = torch.rand(2, 3, 4, 6)
    elif case == "mask dtype":
        mask = torch.ones(2, 1, 4, 5)
    elif case == "mask shape":
        mask = torch.ones(2, 2, 4, 5, dtype=torch.bool)
    elif case == "mode":
        mode = 3
    elif case == "target dtype":
        t = t.int()
    elif case == "grad_sums shape":
        grad_sums = torch.zeros(2, 3, 3)
    else:
        t = t > 0.5
    if not case.startswith(("grad", "target gradient")):
        with pytest.raises((ValueError, TypeError, RuntimeError), match="region_sums: "):
            emulated.region_sums(x, t, mask, False, mode)
    with pytest.raises((ValueError, TypeError, RuntimeError), match="region_sums_backward: "):
        emulated.region_sums_backward(grad_sums, x, t, mask, False, mode, True, grad_target)


# The cross-entropy (csrc/cuda/cross_entropy.cu), against pylosses.reference.cross_entropy in
# float64: the loss, and the gradient as autograd would apply it, grad * grad_scale (the kernel
# writes the unnormalised gradient and, for "mean", grad_scale = 1 / D). The emulated device's
# grids have up to 6 blocks of 256 threads; a thread takes packs of 4 pixels (float32 and 16-bit
# inputs, C <= 4), 2 (C <= 8; and the streaming path, C > 8, by chunks of 4 classes) or 1 (P not a
# multiple of the pack, misaligned pointers, float64). CE_SHAPES (B, spatial...) cover each with
# several grid-stride steps where the class count allows it, odd planes, 3-D and (B, C).
CE_REDUCTIONS = {0: "none", 1: "mean", 2: "sum"}
CE_SHAPES = [(2, 40, 80), (3, 7, 9), (2, 3, 5, 8), (7,), (1, 33, 65)]
CE_CLASSES = [2, 3, 4, 7, 14, 40]
# A few roundings of the dtype, relative to the largest value: in float32 also with CUDA's
# MUFU.EX2 and MUFU.LG2 (exp2f within 2 ulp, log2f within 2^-22 in [0.5, 2]), which the emulation
# takes at their worst error (the exponentials' of either sign, class by class)
CE_TOLERANCE = {dtype: 16 * EPS[dtype] for dtype in EPS}


def _ce_inputs(batch_spatial, n_classes, dtype, target_dtype=torch.int64, ignore=None, seed=0):
    """Logits (B, C, spatial...) and labels (B, spatial...), a fifth of them ignore (if given)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch_spatial[0], n_classes) + tuple(batch_spatial[1:])
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    t = torch.randint(0, n_classes, batch_spatial, generator=g)
    if ignore is not None:
        t = torch.where(torch.rand(batch_spatial, generator=g) < 0.2, torch.full_like(t, ignore), t)
    return x, t.to(target_dtype)


def _ce_reference(x, t, weight, ignore, smoothing, reduction):
    """The reference loss in float64 and its gradient for grad_output = 1."""
    xr = x.detach().double().requires_grad_()
    w = None if weight is None else weight.double()
    loss = pylosses.reference.cross_entropy(xr, t, w, ignore, smoothing, CE_REDUCTIONS[reduction])
    loss.backward(torch.ones_like(loss))
    return loss.detach(), xr.grad


def _ce_compare(emulated, x, t, weight=None, ignore=-100, smoothing=0.0, reduction=1, what=""):
    dtype = x.dtype
    loss, grad, scale = emulated.cross_entropy_fwd(x, t, weight, ignore, smoothing, reduction, True)
    want_loss, want_grad = _ce_reference(x, t, weight, ignore, smoothing, reduction)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == dtype and scale.dtype == acc and scale.shape == (), what
    assert grad.dtype == (torch.float32 if dtype == torch.float16 else dtype) and grad.shape == x.shape, what
    tol = CE_TOLERANCE[dtype]
    for name, got, want in (("loss", loss, want_loss), ("grad", grad.double() * scale.double(), want_grad)):
        assert got.shape == want.shape, (what, name, got.shape, want.shape)
        got, want = got.double(), want.double()
        assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what} {name}: NaNs differ"
        finite = ~torch.isnan(want)
        if finite.any():
            scale_of = want[finite].abs().max().clamp_min(1e-30)
            err = float((got - want)[finite].abs().max() / scale_of)
            assert err <= tol, f"{what} {name}: off by {err:.3g} relative (tolerance {tol:.3g})"
    return loss, grad, scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("n_classes", CE_CLASSES)
def test_cross_entropy_against_reference(emulated, junk_memory, dtype, n_classes):
    """Every class count (the register path's bounds 4 and 8, the streaming path) with every
    shape, each reduction, and in turn no ignore_index, an ignored fifth, weights and label
    smoothing (each alone and together), with the partials read from junk-filled memory."""
    g = torch.Generator().manual_seed(n_classes)
    weight = (0.25 + torch.rand(n_classes, generator=g, dtype=torch.float64)).to(dtype)
    options = [dict(), dict(ignore=-100), dict(weight=weight), dict(smoothing=0.1),
               dict(weight=weight, smoothing=0.3, ignore=-100)]
    for i, bs in enumerate(CE_SHAPES):
        for reduction in (0, 1, 2):
            opts = options[(i + reduction) % len(options)]
            x, t = _ce_inputs(bs, n_classes, dtype, ignore=opts.get("ignore"), seed=i)
            _ce_compare(emulated, x, t, opts.get("weight"), -100, opts.get("smoothing", 0.0), reduction,
                        f"C={n_classes} {bs} {dtype} reduction={reduction} {sorted(opts)}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_cross_entropy_dtypes(emulated, dtype, target_dtype):
    """16-bit inputs (arithmetic in float32; the loss and the gradient rounded to the input's
    dtype, float16's gradient kept in float32) and every label dtype, uint8 with ignore_index
    255, on the packed, the scalar and the streaming paths."""
    ignore = 255 if target_dtype == torch.uint8 else -100
    for n_classes, bs in ((4, (2, 40, 80)), (3, (3, 7, 9)), (7, (2, 16, 24)), (14, (2, 6, 10)), (40, (2, 5, 7))):
        for reduction in (0, 1):
            x, t = _ce_inputs(bs, n_classes, dtype, target_dtype, ignore=ignore, seed=n_classes)
            _ce_compare(emulated, x, t, None, ignore, 0.1 * reduction, reduction,
                        f"C={n_classes} {bs} {dtype} {target_dtype} reduction={reduction}")


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_cross_entropy_label_dtypes_float32(emulated, target_dtype):
    """The labels' dtypes on every path in float32, with an ignore_index that a uint8 label can
    and one that it cannot hold (-100: no uint8 label is ignored)."""
    for ignore in (255, -100) if target_dtype == torch.uint8 else (-100, 1):
        for n_classes, bs in ((4, (2, 40, 80)), (7, (3, 5, 9)), (40, (2, 5, 8))):
            x, t = _ce_inputs(bs, n_classes, torch.float32, target_dtype,
                              ignore=ignore if ignore >= 0 else None, seed=1)
            _ce_compare(emulated, x, t, None, ignore, 0.0, 1, f"C={n_classes} {target_dtype} ignore={ignore}")


CONFIDENT_CLASSES = [2, 4, 7, 14, 40]  # the register path's bounds 4 and 8, the streaming path


@pytest.mark.parametrize("n_classes", CONFIDENT_CLASSES)
def test_cross_entropy_keeps_small_losses_accurate(emulated, n_classes):
    """A confident pixel's loss, log(1 + sum of the others' exp(x_c - x_t)), down to 1e-7, and
    its label's gradient, p_t - 1, are each within a few float32 roundings of their own size
    (torch's float32 is within about 1e-7 absolute; the approximate exp2 and log2 the kernel takes
    on a GPU, at their worst errors in the emulation, were 2e-4 relative at a loss of 0.002),
    with and without class weights, on every path."""
    x, t = confident_logits((2, 12, 16), n_classes, seed=n_classes)
    weight = torch.linspace(0.5, 2.0, n_classes)
    for w in (None, weight):
        loss, grad, _ = emulated.cross_entropy_fwd(x, t, w, -100, 0.0, 0, True)
        want_loss, want_grad = _ce_reference(x, t, w, -100, 0.0, 0)
        what = f"C={n_classes} weights={w is not None}"
        counted = t != -100
        assert float(want_loss[counted].min()) < 1e-6 and float(want_loss[counted].max()) > 1e-2, what
        assert_relative_to_each(loss[counted], want_loss[counted], what + " loss", 4e-6)
        # every class's gradient of the counted pixels, each to its own size (below 2^-100,
        # flushed, to that)
        keep = counted.unsqueeze(1).expand_as(grad)
        assert_relative_to_each(grad[keep], want_grad[keep], what + " grad", 4e-6, floor=2**-100)


@pytest.mark.parametrize("n_classes", CONFIDENT_CLASSES)
def test_softmax_region_cross_entropy_keeps_small_losses_accurate(emulated, n_classes):
    """DiceCE's cross-entropy term (softmax_region_sums with_ce) of confident pixels: the sum of
    their losses, and its gradient element by element, within a few float32 roundings of the
    float64 reference."""
    x, t = confident_logits((2, 12, 16), n_classes, seed=n_classes)
    labels = torch.where(t == -100, torch.full_like(t, 255), t)
    args = (x, labels, None, 0, None, 255, 0.0, True)
    sums, ce = emulated.softmax_region_sums(*args)
    want_loss, want_grad = _ce_reference(x, t, None, -100, 0.0, 2)
    assert_relative_to_each(ce[0], want_loss, f"C={n_classes} loss sum", 4e-6)
    grad = emulated.softmax_region_sums_backward(torch.zeros_like(sums), torch.tensor([1.0, 0.0, 0.0]), *args[:-1])
    keep = (t != -100).unsqueeze(1).expand_as(grad)
    assert_relative_to_each(grad[keep], want_grad[keep], f"C={n_classes} grad", 4e-6, floor=2**-100)


def test_cross_entropy_misaligned_takes_the_scalar_path(emulated):
    for n_classes in (4, 7, 14):
        x, t = _ce_inputs((2, 16, 24), n_classes, torch.float32, ignore=-100)
        for args in ((_misaligned(x), t), (x, _misaligned(t))):
            for reduction in (0, 1):
                _ce_compare(emulated, *args, None, -100, 0.2, reduction, f"misaligned C={n_classes}")


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_cross_entropy_every_pixel_ignored(emulated, reduction):
    """No pixel counts: "mean" is NaN (torch's 0 / 0) and its grad_scale 0, so that the gradient
    is 0 as torch's; "sum" is 0; "none" 0 a pixel; with smoothing too."""
    for n_classes, bs in ((4, (2, 8, 12)), (40, (2, 3, 5))):
        x, t = _ce_inputs(bs, n_classes, torch.float32)
        t = torch.full_like(t, 7)
        for smoothing in (0.0, 0.2):
            loss, grad, scale = emulated.cross_entropy_fwd(x, t, None, 7, smoothing, reduction, True)
            if reduction == 1:
                assert torch.isnan(loss) and scale == 0
            else:
                assert torch.equal(loss, torch.zeros_like(loss)) and scale == 1
            assert torch.equal(grad * scale, torch.zeros_like(grad))


def test_cross_entropy_a_class_masked_out_with_minus_inf(emulated):
    """A class whose logits are -inf (masked out) that no pixel has for its label: torch's
    finite loss, on the register and the streaming paths (never 0 x -inf in the smoothing's term)."""
    for n_classes, bs in ((4, (2, 40, 80)), (7, (3, 5, 9)), (40, (2, 5, 8))):
        x, t = _ce_inputs(bs, n_classes, torch.float32, seed=2)
        t = t.clamp(max=n_classes - 2)
        x[:, n_classes - 1] = float("-inf")
        for reduction in (0, 1):
            loss, _, _ = _ce_compare(emulated, x, t, None, -100, 0.0, reduction, f"-inf C={n_classes}")
            assert loss.isfinite().all()


def test_cross_entropy_zero_weights_give_nan(emulated):
    """Pixels that count but weigh 0 (D = 0): "mean" is NaN, as torch's; with every class's weight
    0 and label smoothing, its gradient is NaN everywhere, as torch's (0 / 0; it was +-inf)."""
    x, t = _ce_inputs((2, 8, 12), 3, torch.float32)
    weight = torch.tensor([1.0, 1.0, 1.0])
    weight[t.unique()] = 0
    loss, _, scale = emulated.cross_entropy_fwd(x, t, weight, -100, 0.0, 1, True)
    assert torch.isnan(loss) and not torch.isfinite(scale)
    for n_classes in (4, 40):
        x, t = _ce_inputs((2, 4, 6), n_classes, torch.float32)
        _ce_compare(emulated, x, t, torch.zeros(n_classes), -100, 0.1, 1, f"C={n_classes} zero weights")


@pytest.mark.parametrize("n_classes", [4, 7, 40])
def test_cross_entropy_out_of_range_label_is_nan(emulated, n_classes):
    """A label outside [0, C) that is not ignore_index: no device assert, no host sync; the
    pixel's loss and gradient are NaN, which makes "mean" and "sum" NaN; the other pixels'
    losses and gradients (with "mean"'s grad_scale) stay finite."""
    for bad in (n_classes, -3):
        x, t = _ce_inputs((2, 8, 12), n_classes, torch.float32, ignore=-100)
        t[1, 2, 3] = bad
        loss, grad, scale = emulated.cross_entropy_fwd(x, t, None, -100, 0.1, 0, True)
        assert torch.isnan(loss).nonzero().tolist() == [[1, 2, 3]], bad
        assert torch.isnan(grad[1, :, 2, 3]).all() and torch.isnan(grad).sum() == n_classes
        for reduction in (1, 2):
            loss, grad, scale = emulated.cross_entropy_fwd(x, t, None, -100, 0.1, reduction, True)
            assert torch.isnan(loss) and torch.isfinite(scale) and torch.isnan(grad).sum() == n_classes
    t = torch.full((2, 8, 12), 200, dtype=torch.uint8)  # uint8 labels above C
    loss, _, _ = emulated.cross_entropy_fwd(x, t, None, 255, 0.0, 2, False)
    assert torch.isnan(loss)


def test_cross_entropy_empty(emulated):
    for bs in ((0, 4, 4), (2, 0, 5), (0,)):
        for n_classes in (3, 40):
            x, t = _ce_inputs(bs, n_classes, torch.float32)
            for reduction in (0, 1, 2):
                loss, grad, scale = emulated.cross_entropy_fwd(x, t, None, -100, 0.0, reduction, True)
                want = F.cross_entropy(x, t, reduction=CE_REDUCTIONS[reduction])  # NaN, 0, empty
                assert grad.shape == x.shape and scale.shape == (), (bs, reduction)
                torch.testing.assert_close(loss, want, equal_nan=True)


def test_cross_entropy_without_gradient(emulated):
    x, t = _ce_inputs((2, 40, 80), 4, torch.float32, ignore=-100)
    loss, grad, scale = emulated.cross_entropy_fwd(x, t, None, -100, 0.0, 1, False)
    want, _, _ = emulated.cross_entropy_fwd(x, t, None, -100, 0.0, 1, True)
    assert grad.shape == (0,) and torch.equal(loss, want)


def test_cross_entropy_bitwise_deterministic(emulated, junk_memory):
    g = torch.Generator().manual_seed(5)
    for n_classes, bs in ((4, (2, 40, 80)), (7, (3, 33, 65)), (40, (2, 9, 11))):
        x, t = _ce_inputs(bs, n_classes, torch.float32, ignore=-100)
        weight = torch.rand(n_classes, generator=g)
        for reduction in (0, 1):
            first = emulated.cross_entropy_fwd(x, t, weight, -100, 0.1, reduction, True)
            again = emulated.cross_entropy_fwd(x, t, weight, -100, 0.1, reduction, True)
            for a, b in zip(first, again):
                assert torch.equal(a, b), (n_classes, bs, reduction)


@pytest.mark.parametrize("case", ["dim", "dtype", "target shape", "target dtype", "weight shape", "weight dtype",
                                  "reduction", "label_smoothing"])
def test_cross_entropy_bad_arguments(emulated, case):
    x, t, w, reduction, s = torch.rand(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), None, 1, 0.0
    if case == "dim":
        x, t = torch.rand(3), torch.zeros(3, dtype=torch.long)
    elif case == "dtype":
        x = x.int()
    elif case == "target shape":
        t = torch.zeros(2, 3, dtype=torch.long)
    elif case == "target dtype":
        t = t.float()
    elif case == "weight shape":
        w = torch.ones(4)
    elif case == "weight dtype":
        w = torch.ones(3, dtype=torch.long)
    elif case == "reduction":
        reduction = 3
    else:
        s = 1.5
    with pytest.raises((ValueError, TypeError), match="cross_entropy_fwd: "):
        emulated.cross_entropy_fwd(x, t, w, -100, s, reduction, True)


# The fused softmax region sums (csrc/cuda/softmax_region.cu): the Dice's sums of softmax(input)
# over a label map, and the cross-entropy's. The emulated device's grids have up to 6 blocks of 8
# warps; the forward gives each warp a run of tiles of 32 pixels of a sample (SOFTMAX_SPLIT,
# 2 x 42 tiles over up to 48 warps: runs that cross the samples' boundary, several warps a
# sample), the backward a pixel a thread. OP_SHAPES' largest is left to the CPU's tests: the
# emulated warp shuffles make it slow here.
# C = 2, 3 take the register path of 8 classes, 14 that of 32, 40 the chunked path (OP_SHAPES
# has each). Against the reference (test_multiclass_region's check_op_sums) without the
# cross-entropy; with it, against the CPU kernel, which test_multiclass_region holds to the
# reference.
from test_multiclass_region import OP_SHAPES, _op_inputs, check_op_sums  # noqa: E402

SOFTMAX_LABELS = [torch.int64, torch.int32, torch.uint8]
SOFTMAX_SPLIT = (2, 4, 33, 40)


@pytest.fixture(scope="module")
def emulated_softmax(emulated):
    """The emulated softmax_region_sums with the native op's fake kernel and autograd, whose
    backward is the emulated softmax_region_sums_backward."""
    torch.library.register_fake("pylosses_cuda_emulated::softmax_region_sums", _ops._softmax_region_sums_fake)
    torch.library.register_fake("pylosses_cuda_emulated::softmax_region_sums_backward",
                                _ops._softmax_region_sums_backward_fake)
    torch.library.register_autograd("pylosses_cuda_emulated::softmax_region_sums",
                                    _ops._make_softmax_region_backward(emulated.softmax_region_sums_backward),
                                    setup_context=_ops._softmax_region_setup_context)
    return lambda x, labels, mask, mode: emulated.softmax_region_sums(x, labels, mask, mode, None, _ops.NO_IGNORE,
                                                                      0.0, False)[0]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_softmax_region_sums_against_reference(emulated_softmax, junk_memory, mode, masked):
    """Sums and input gradients of OP_SHAPES' shapes (2 to 40 classes, 1-D to 3-D, empty batch
    and plane) and SOFTMAX_SPLIT in float32, and but for the latter in float64, with the rows of
    partials read from junk-filled memory."""
    for i, shape in enumerate(OP_SHAPES[:-1] + [SOFTMAX_SPLIT]):
        label_dtype = SOFTMAX_LABELS[(i + mode) % 3]
        check_op_sums(emulated_softmax, shape, torch.float32, label_dtype, mode, masked, tol=4e-6)
        if shape != SOFTMAX_SPLIT:
            check_op_sums(emulated_softmax, shape, torch.float64, label_dtype, mode, masked)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_softmax_region_16_bit(emulated_softmax, dtype):
    """16-bit logits (float32 arithmetic, the gradient rounded to the input's dtype) over the
    register and the chunked paths, each mode."""
    for mode, shape in enumerate([(2, 3, 5, 7), (1, 14, 3, 4, 5), (2, 40, 6)]):
        check_op_sums(emulated_softmax, shape, dtype, SOFTMAX_LABELS[mode], mode, masked=mode != 1, tol=4e-6)


def _close_to(got, want, tol, what):
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    got, want = got.double(), want.double()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaNs differ"
    finite = ~torch.isnan(want)
    if finite.any():
        err = float((got - want)[finite].abs().max() / want[finite].abs().max().clamp_min(1e-30))
        assert err <= tol, f"{what}: off by {err:.3g} relative (tolerance {tol:.3g})"


SOFTMAX_CE_OPTIONS = [  # (weight, ignore_index, label_smoothing)
    (None, None, 0.0),
    ("weight", 1, 0.0),
    (None, 255, 0.2),
    ("weight", 0, 0.1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("options", range(len(SOFTMAX_CE_OPTIONS)))
def test_softmax_region_with_ce_matches_the_cpu(emulated, dtype, options):
    """with_ce (the cross-entropy's sum, D and count beside the Dice's sums), weights,
    ignore_index (a class, or 255 for a fifth of the pixels) and smoothing, a mask, every label
    dtype: sums, ce and the backward from random grad_sums and grad_ce (and grad_ce = 0) against
    the CPU kernel's."""
    weight, ignore, smoothing = SOFTMAX_CE_OPTIONS[options]
    tol = {torch.float32: 2e-5, torch.float64: 1e-12, torch.bfloat16: 2e-5}[dtype]
    grad_tol = 2 * EPS[torch.bfloat16] if dtype == torch.bfloat16 else tol
    for i, shape in enumerate([(2, 3, 5, 7), (3, 2, 11), (1, 14, 3, 4, 5), (2, 40, 6), (2, 4, 9, 7)]):
        x, labels, mask = _op_inputs(shape, dtype, SOFTMAX_LABELS[i % 3], masked=i % 2 == 0, seed=options)
        if ignore == 255:
            g = torch.Generator().manual_seed(i)
            labels = torch.where(torch.rand(labels.shape, generator=g) < 0.2, torch.full_like(labels, 255), labels)
        w = None if weight is None else torch.linspace(0.5, 2.0, shape[1], dtype=torch.float64).to(
            torch.float64 if dtype == torch.float64 else torch.float32)
        args = (x, labels, mask, i % 3, w, _ops.NO_IGNORE if ignore is None else ignore, smoothing, True)
        what = f"{shape} {dtype} {labels.dtype} options {SOFTMAX_CE_OPTIONS[options]}"
        got, want = emulated.softmax_region_sums(*args), torch.ops.pylosses.softmax_region_sums(*args)
        _close_to(got[0], want[0], tol, what + " sums")
        _close_to(got[1], want[1], tol, what + " ce")
        assert got[1][2] > 0 and got[1][0] > 0, what  # the cross-entropy was computed
        g = torch.Generator().manual_seed(7)
        grad_sums = torch.randn(want[0].shape, generator=g, dtype=want[0].dtype)
        for grad_ce in (torch.randn(3, generator=g, dtype=want[1].dtype), torch.zeros(3, dtype=want[1].dtype)):
            back = (grad_sums, grad_ce) + args[:-1]
            _close_to(emulated.softmax_region_sums_backward(*back), torch.ops.pylosses.softmax_region_sums_backward(*back),
                      grad_tol, what + f" grad (grad_ce {grad_ce.tolist()})")


def test_softmax_region_ce_with_a_class_masked_out_with_minus_inf(emulated):
    """Logits of -inf in a class no pixel has for its label (masked out): the cross-entropy is
    finite, as torch's and the CPU kernel's (0 x -inf in the smoothing's term made it NaN)."""
    for shape in [(2, 3, 5, 7), (2, 40, 6)]:
        x, labels, mask = _op_inputs(shape, torch.float32, torch.int64, masked=False, seed=3)
        labels = labels.clamp(max=shape[1] - 2)
        x[:, shape[1] - 1] = float("-inf")
        args = (x, labels, mask, 0, None, _ops.NO_IGNORE, 0.0, True)
        got, want = emulated.softmax_region_sums(*args), torch.ops.pylosses.softmax_region_sums(*args)
        assert got[1].isfinite().all() and want[1].isfinite().all(), shape
        _close_to(got[1], want[1], 2e-5, f"{shape} ce")


def test_softmax_region_out_of_range_labels_and_determinism(emulated, junk_memory):
    """A label outside [0, C) that the mask keeps counts in sums[b, 0, 3] (one under the mask
    does not), and its pixel's p stays in the other sums (the reference's, with a one-hot of no
    class there); the cross-entropy leaves it out, as an ignored label (the CPU op, which raises
    on such labels, given them as ignore_index); the same bits run after run."""
    from pylosses import reference
    x, labels, mask = _op_inputs(SOFTMAX_SPLIT, torch.float32, torch.int64, True)
    labels[0, 0, 0], labels[1, 5, 5], labels[1, 6, 6] = 7, -1, 4
    mask[0, 0, 0, 0], mask[1, 0, 5, 5], mask[1, 0, 6, 6] = True, False, True
    args = (x, labels, mask, 0, None, -100, 0.0, True)
    sums, ce = emulated.softmax_region_sums(*args)
    assert sums[0, 0, 3] == 1 and sums[1, 0, 3] == 1 and (sums[:, 1:, 3] == 0).all()
    classes = x.shape[1]
    in_range = (labels >= 0) & (labels < classes)
    one_hot = torch.nn.functional.one_hot(labels.clamp(0, classes - 1), classes).movedim(-1, 1).bool()
    want = reference.region_sums(x.double(), one_hot & in_range.unsqueeze(1), mask, False, 0, True)
    _close_to(sums[..., :3], want[..., :3].float(), 2e-5, "sums")
    as_ignored = torch.where(in_range, labels, torch.full_like(labels, -100))
    _close_to(ce, torch.ops.pylosses.softmax_region_sums(x, as_ignored, mask, 0, None, -100, 0.0, True)[1], 2e-5, "ce")
    again = emulated.softmax_region_sums(*args)
    assert torch.equal(sums, again[0]) and torch.equal(ce, again[1])
    back = (torch.randn(2, 4, 4), torch.tensor([0.5, 0.0, 0.0])) + args[:-1]
    assert torch.equal(emulated.softmax_region_sums_backward(*back), emulated.softmax_region_sums_backward(*back))


def test_softmax_region_empty_and_errors(emulated):
    for shape in ((0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 5)):
        x, labels, _ = _op_inputs(shape, torch.float32, torch.int64, False) if shape[1] else \
            (torch.zeros(shape), torch.zeros((2, 5), dtype=torch.int64), None)
        sums, ce = emulated.softmax_region_sums(x, labels, None, 0, None, -100, 0.0, True)
        assert torch.equal(sums, torch.zeros(shape[0], shape[1], 4)) and torch.equal(ce, torch.zeros(3))
        grad = emulated.softmax_region_sums_backward(torch.ones(shape[0], shape[1], 4), torch.ones(3), x, labels, None,
                                                     0, None, -100, 0.0)
        assert grad.shape == x.shape and grad.dtype == x.dtype
    x, labels, mask = _op_inputs((2, 3, 5, 7), torch.float32, torch.int64, True)
    with pytest.raises(ValueError, match="softmax_region_sums: mode"):
        emulated.softmax_region_sums(x, labels, mask, 3, None, -100, 0.0, False)
    with pytest.raises(TypeError, match="labels"):
        emulated.softmax_region_sums(x, labels.float(), mask, 0, None, -100, 0.0, False)
    with pytest.raises(ValueError, match="softmax_region_sums_backward: grad_sums"):
        emulated.softmax_region_sums_backward(torch.zeros(2, 3, 3), torch.zeros(3), x, labels, mask, 0, None, -100, 0.0)


# The softmax's total variation (csrc/cuda/softmax_tv.cu): items of 8 positions along the walked
# axis by 30 columns (a warp's in 2-D; in 3-D a block's, by 6 rows of H), grid-stride, a row of
# partials a block. 2-D and 3-D, C = 1 (p = 1: loss and gradient 0), a size-1 axis (it adds
# nothing), C up to 40, an empty batch, and on the emulated device's 6 blocks: (4, 2, 70, 65),
# 108 warp items for 48 warps, and (1, 2, 10, 14, 33), 12 block items (2 along D, 3 along H, 2
# along W) for 6 blocks, so that items meet at every edge and threads take several.
SOFTMAX_TV_SHAPES = [(2, 3, 5, 7), (1, 1, 4, 6), (2, 14, 1, 9), (1, 40, 3, 4), (2, 3, 30, 40), (4, 2, 70, 65),
                     (1, 3, 2, 3, 4), (2, 14, 1, 4, 5), (1, 1, 3, 2, 2), (1, 2, 10, 14, 33), (0, 3, 4, 5)]


@pytest.mark.parametrize("reduction", [1, 2], ids=["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_softmax_tv_emulated(emulated, junk_memory, dtype, reduction):
    """softmax_tv_fwd's loss and input gradient against reference.softmax_total_variation and its
    autograd gradient, with the partials read from junk-filled memory; without compute_grad the
    same loss and an empty (0,) gradient; reduction "none" refused, naming it."""
    from pylosses import reference
    g = torch.Generator().manual_seed(11)
    for shape in SOFTMAX_TV_SHAPES:
        spatial = len(shape) - 2
        x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
        want = reference.softmax_total_variation(x, 0.3, spatial, {1: "mean", 2: "sum"}[reduction])
        (want_grad,) = torch.autograd.grad(want, x)
        loss, grad = emulated.softmax_tv_fwd(x.detach(), 0.3, spatial, reduction, True)
        what = f"softmax_tv {shape} {dtype} reduction={reduction}"
        _close(loss, want.detach(), dtype, what + " loss")
        _close(grad, want_grad, dtype, what + " grad")
        if shape[1] == 1:
            assert loss == 0 and torch.equal(grad, torch.zeros_like(grad)), what
        alone, no_grad = emulated.softmax_tv_fwd(x.detach(), 0.3, spatial, reduction, False)
        assert torch.equal(alone, loss) or (torch.isnan(alone) and torch.isnan(loss)), what
        assert no_grad.shape == (0,), what
    with pytest.raises(ValueError, match="reduction"):
        emulated.softmax_tv_fwd(torch.zeros(1, 2, 3, 3, dtype=dtype), 0.3, 2, 0, True)
