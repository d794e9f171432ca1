"""The CUDA kernels' code, run on the CPU: csrc/cuda/*.cu built as C++ with a small emulation of
CUDA (csrc/cuda/emulation.h: each block's threads on OS threads, barriers, warp shuffles, shared
memory) and registered as pylosses_cuda_emulated::*. Each op is compared with the CPU kernel's
op, which the parity tables hold to the float64 reference, over shapes that take the vector
and the scalar paths, several blocks, every reduction, both forms, the dtypes and the target
dtypes. It checks the kernels' logic (tiling, halos, shared memory, reductions, the final
sums) on a machine without a GPU; it says nothing about their speed, and a real GPU can still
differ (memory model, compiler): the tests marked gpu run there."""

import os
import sys

import pytest
import torch

from cases import MSE_SHAPES, SEG2D_SHAPES, SEG3D_SHAPES

import pylosses  # noqa: F401  (the native ops)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, "tests", "cuda_emulation", f"{name}.cpp")
           for name in ("schemas", "mse_loss", "seg_loss", "loss_backward")]
EPS = {torch.float32: 2**-23, torch.float64: 2**-52, torch.float16: 2**-10, torch.bfloat16: 2**-7}

# shapes that also take the vector path (W a multiple of 8) and spread over several blocks
SEG2D = SEG2D_SHAPES + [(2, 2, 16, 64), (3, 1, 40, 48)]
SEG3D = SEG3D_SHAPES + [(1, 1, 4, 8, 16), (2, 1, 3, 16, 32)]
MSE = MSE_SHAPES + [(4096,), (3, 1000)]


@pytest.fixture(scope="module")
def emulated():
    from torch.utils.cpp_extension import load

    # one build folder per Python and torch: load() would reuse a build made against other headers
    build = os.path.join(ROOT, "build", f"cuda_emulation-py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")
    os.makedirs(build, exist_ok=True)
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
        _close(a, b, dtype if name == "loss" else torch.float32 if a.dtype != torch.float64 else torch.float64,
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


def test_segmentation_out_of_range_is_nan_per_sample(emulated):
    x, t = _inputs((3, 1, 16, 64), torch.float32, torch.float32, False)
    x[1, 0, 3, 5] = 1.5
    loss, _, _ = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, 0, False, False)
    assert torch.isnan(loss).tolist() == [False, True, False]
    mean, _, _ = emulated.seg_loss_fwd(x, t, 0.7, 0.3, 2, False, 1, False, False)
    assert torch.isnan(mean)


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
