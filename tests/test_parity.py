"""Every backend against the float64 reference: values and both gradients, over the case tables."""

import itertools

import pytest
import torch

import pylosses
from cases import (CHANNELS_LAST, FLOAT_DTYPES, MISALIGNED, MSE, NON_CONTIGUOUS, REDUCTIONS, SEG, SEG3D, SEG3D_LOGITS,
                   SEG3D_TV_ONLY, SEG_BCE_ONLY, SEG_LOGITS, SEG_TV_ONLY, check_against_reference, make_pair,
                   shapes_for, target_dtype_for)

LOSSES = [MSE, SEG, SEG_LOGITS, SEG3D, SEG3D_LOGITS, SEG_TV_ONLY, SEG_BCE_ONLY, SEG3D_TV_ONLY]
# triton runs here under TRITON_INTERPRET=1 (tests/conftest.py)
CPU_BACKENDS = [b for b in ("native", "triton", "jit") if b in pylosses.available_backends("cpu")]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_shapes(loss, dtype, reduction, backend):
    for shape in shapes_for(loss, large=backend != "triton"):
        check_against_reference(loss, backend, shape, dtype, dtype, reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("target_kind", ["float32", "label"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS, SEG3D], ids=lambda c: c.name)
def test_target_dtypes(loss, dtype, target_kind, backend):
    target_dtype = target_dtype_for(loss, dtype, target_kind)
    for reduction in REDUCTIONS:
        check_against_reference(loss, backend, shapes_for(loss)[1], dtype, target_dtype, reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", [NON_CONTIGUOUS, CHANNELS_LAST, MISALIGNED], ids=lambda l: l.name)
@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
def test_layouts(loss, layout, backend):
    shape = (2, 3, 6, 5) if loss.is_seg and loss.spatial_dims == 2 else shapes_for(loss)[2]
    for reduction in REDUCTIONS:
        check_against_reference(loss, backend, shape, torch.float32, torch.float32, reduction, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("loss", [SEG, SEG_TV_ONLY, SEG3D], ids=lambda c: c.name)
def test_rows_of_whole_vectors(loss, dtype):
    """Rows whose length is a multiple of the CPU's vector width (4 to 16 lanes): the native
    kernel reads float32 and float64 probabilities in place, with no padded copy of each row, so
    a row's last full vector must not take the next row's first element as its right neighbour
    (nor its first vector the previous row's last)."""
    shapes = [(2, 1, 5, 32), (1, 2, 3, 64), (3, 1, 2, 16)] if loss.spatial_dims == 2 else [(1, 2, 3, 4, 16),
                                                                                            (2, 1, 2, 3, 32)]
    for shape in shapes:
        for reduction in REDUCTIONS:
            check_against_reference(loss, "native", shape, dtype, dtype, reduction)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(2, 1, 1100, 61), (1, 1, 5, 32), (1, 2, 3, 4, 16)], ids=str)
def test_every_probability_is_checked(shape, dtype):
    """A probability outside [0, 1] raises torch's error wherever it sits: the first and last
    element of the tensor, of a row, and of the bands of rows the CPU kernel splits a sample into
    (each band checks the rows it owns)."""
    x = torch.full(shape, 0.5, dtype=dtype)
    t = torch.zeros(shape)
    spatial_dims = len(shape) - 2
    H, W = shape[-2:]
    rows = sorted({0, 1, H // 2, H - 2, H - 1, 1074, 1075} & set(range(H)))  # 1075 rows a band at W = 61
    for lead, h, w, bad in itertools.product((0, -1), rows, (0, W - 1), (1.5, float("nan"))):
        y = x.clone()
        y[(lead,) * (len(shape) - 2) + (h, w)] = bad
        with pytest.raises(RuntimeError, match="all elements of input should be between 0 and 1"):
            pylosses.segmentation_loss(y, t, spatial_dims=spatial_dims, backend="native")
    assert torch.isfinite(pylosses.segmentation_loss(x, t, spatial_dims=spatial_dims, backend="native"))


def test_uint8_targets_match_bool():
    x, t = make_pair(SEG, (2, 1, 9, 10), torch.float32, torch.bool)
    a = pylosses.segmentation_loss(x, t, backend="native")
    b = pylosses.segmentation_loss(x, t.to(torch.uint8), backend="native")
    c = pylosses.segmentation_loss(x, t.float(), backend="native")
    assert torch.equal(a, b) and torch.equal(a, c)


# torch.compile recompiles for every new configuration, so it gets a smaller table
@pytest.mark.parametrize("loss", [MSE, SEG, SEG_LOGITS, SEG3D], ids=lambda c: c.name)
def test_compile_backend(loss):
    for reduction in REDUCTIONS:
        check_against_reference(loss, "compile", shapes_for(loss)[1], torch.float32, torch.float32, reduction)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool, torch.uint8], ids=str)
def test_confident_probabilities_keep_their_small_loss(backend, target_dtype):
    """Hard labels take BCE's one-log form (log(1 - p) from a rounded 1 - p plus its residue; on
    the CPU for float targets where a whole vector is hard): a confident probability (1e-9 for
    label 0, 1 - 2**-24 for label 1) keeps the tiny loss that log1p gives it, and a float target
    that mixes hard and soft labels within a vector takes each form where it applies."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 1, 4, 40)
    t = torch.rand(shape, generator=g) > 0.5
    confident = torch.tensor([1e-9, 1e-7, 2**-24, 3e-6]).repeat(40)  # how far p is from its label
    x = torch.empty(shape)
    x[0] = torch.where(t[0], 1 - confident.view(1, 4, 40).clamp(min=2**-24), confident.view(1, 4, 40))
    x[1:] = torch.rand((2, 1, 4, 40), generator=g).clamp(1e-4, 1 - 1e-4)
    target = t.to(target_dtype)
    if target_dtype == torch.float32:
        target[2, 0, :, ::7] = 0.3  # soft labels here and there in the last sample
    got = pylosses.segmentation_loss(x, target, alpha=1.0, beta=0.0, reduction="none", backend=backend)
    want = torch.nn.functional.binary_cross_entropy(x.double(), target.double(), reduction="none").mean((1, 2, 3))
    assert want[0] < 1e-5  # the confident sample's loss is tiny: an absolute error of 6e-8 would show
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)
