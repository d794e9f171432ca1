"""The reference must be right before anything is compared with it."""

import pytest
import torch
import torch.nn as nn

from pylosses import reference
from cases import REDUCTIONS

torch.manual_seed(0)


def by_hand_tv(p: torch.Tensor, spatial_dims: int) -> list:
    """mean |p[k+1] - p[k]| along each spatial axis, with explicit loops (0 for length 1)."""
    out = []
    for axis in range(p.dim() - spatial_dims, p.dim()):
        n = p.shape[axis]
        diffs = [(p.select(axis, k + 1) - p.select(axis, k)).abs() for k in range(n - 1)]
        out.append(torch.stack(diffs).mean() if diffs else torch.zeros((), dtype=p.dtype))
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_matches_nn(reduction):
    x, t = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(reference.mse_loss(x, t, reduction), nn.MSELoss(reduction=reduction)(x, t))


@pytest.mark.parametrize("shape,spatial_dims", [((2, 3, 7, 9), 2), ((2, 1, 4, 5, 6), 3), ((3, 1, 1, 8), 2)])
@pytest.mark.parametrize("from_logits", [False, True])
def test_segmentation_loss_is_bce_plus_tv(shape, spatial_dims, from_logits):
    x = torch.randn(shape, dtype=torch.float64) if from_logits else torch.rand(shape, dtype=torch.float64)
    t = torch.rand(shape, dtype=torch.float64)
    p = torch.sigmoid(x) if from_logits else x
    bce = nn.BCEWithLogitsLoss()(x, t) if from_logits else nn.BCELoss()(x, t)
    tv = sum(by_hand_tv(p, spatial_dims))
    got = reference.segmentation_loss(x, t, 0.6, 0.4, from_logits, spatial_dims, "mean")
    torch.testing.assert_close(got, 0.6 * bce + 0.4 * tv)
    # "none": the same formula for each sample
    per_sample = reference.segmentation_loss(x, t, 0.6, 0.4, from_logits, spatial_dims, "none")
    for b in range(shape[0]):
        one = reference.segmentation_loss(x[b:b + 1], t[b:b + 1], 0.6, 0.4, from_logits, spatial_dims, "mean")
        torch.testing.assert_close(per_sample[b], one)


def test_sum_reduction_is_sums():
    x, t = torch.rand(2, 1, 5, 6, dtype=torch.float64), torch.rand(2, 1, 5, 6, dtype=torch.float64)
    bce = nn.BCELoss(reduction="sum")(x, t)
    tv = (x[..., 1:] - x[..., :-1]).abs().sum() + (x[..., 1:, :] - x[..., :-1, :]).abs().sum()
    torch.testing.assert_close(reference.segmentation_loss(x, t, 0.7, 0.3, False, 2, "sum"), 0.7 * bce + 0.3 * tv)


def test_gradients_are_nn_bces():
    # BCELoss's backward divides by max(p (1 - p), 1e-12): at p = 0 and 1 too
    x = torch.tensor([[[[0.0, 1.0, 0.5, 1e-30]]]], dtype=torch.float32, requires_grad=True)
    t = torch.tensor([[[[1.0, 0.0, 0.25, 1.0]]]])
    ours = torch.autograd.grad(reference.segmentation_loss(x, t, 1.0, 0.0, False, 2, "sum"), x)[0]
    theirs = torch.autograd.grad(nn.BCELoss(reduction="sum")(x, t), x)[0]
    torch.testing.assert_close(ours, theirs)


def test_seed_example_is_finite_and_differences_space_not_channels():
    # the tutorial's example shape; its own loss differenced the channel axis (NaN for C = 1)
    pred, target = torch.rand(1, 1, 28, 28), torch.randint(0, 2, (1, 1, 28, 28)).float()
    loss = reference.segmentation_loss(pred, target, 0.7, 0.3, False, 2, "mean")
    assert torch.isfinite(loss)
    channels = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    shuffled = channels[:, [2, 0, 1]]  # reordering channels changes no spatial difference
    t = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    a = reference.segmentation_loss(channels, t, 0.0, 1.0, False, 2, "mean")
    b = reference.segmentation_loss(shuffled, t[:, [2, 0, 1]], 0.0, 1.0, False, 2, "mean")
    torch.testing.assert_close(a, b)


def test_axis_of_length_one_contributes_zero():
    x, t = torch.rand(2, 1, 1, 9), torch.rand(2, 1, 1, 9)
    only_w = reference.segmentation_loss(x, t, 0.0, 1.0, False, 2, "mean")
    torch.testing.assert_close(only_w, (x[..., 1:] - x[..., :-1]).abs().mean())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "segmentation_loss"])
@pytest.mark.parametrize("variant", [reference.scripted, reference.compiled], ids=["jit", "compile"])
def test_variants_match_reference(variant, name, reduction):
    x = torch.rand(2, 3, 6, 7, requires_grad=True)
    t = torch.rand(2, 3, 6, 7)
    args = (x, t, reduction) if name == "mse_loss" else (x, t, 0.7, 0.3, False, 2, reduction)
    want = getattr(reference, name)(*args)
    got = variant(name)(*args)
    torch.testing.assert_close(got, want)
    g = torch.rand_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])


def test_empty_inputs_follow_torch():
    x = torch.rand(0, 1, 4, 4)
    assert torch.isnan(reference.segmentation_loss(x, x, 0.7, 0.3, False, 2, "mean"))
    assert reference.segmentation_loss(x, x, 0.7, 0.3, False, 2, "sum") == 0
    assert reference.segmentation_loss(x, x, 0.7, 0.3, False, 2, "none").shape == (0,)
    assert torch.isnan(reference.mse_loss(x, x, "mean"))


def test_chunked_reference_of_the_gpu_tests():
    # tests/test_gpu.py checks inputs of more than 2**31 elements against this band-by-band sum
    from cases import chunked_seg_reference

    x, t = torch.rand(1, 1, 37, 23, dtype=torch.float64), torch.rand(1, 1, 37, 23) > 0.5
    want = reference.segmentation_loss(x, t, 0.7, 0.3, False, 2, "mean")
    torch.testing.assert_close(chunked_seg_reference(x, t, 0.7, 0.3, rows=5), want)
