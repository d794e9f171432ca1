"""How the Triton launchers launch, as far as a machine without a GPU shows it: on the tensors'
device, the loss NaN for probabilities outside [0, 1] when nothing checks them (as on a GPU),
loss_backward's ways of finding an element's grad_output, and the segmentation kernel's walks
against the reference on shapes that take them in full."""

import contextlib

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import pylosses

pytestmark = pytest.mark.skipif(pylosses._ops.TRITON_ERROR is not None, reason="no Triton kernels")


class _Recorder:
    """Stands in for torch.cuda.device (no CUDA here) and for the kernels: a launch records
    the device that was current when it was made."""

    def __init__(self):
        self.current = 0  # what torch.cuda.current_device() would say
        self.launches = []

    def device(self, device):
        @contextlib.contextmanager
        def entered():
            before, self.current = self.current, torch.device(device).index
            try:
                yield
            finally:
                self.current = before

        return entered()

    def kernel(self, name):
        recorder = self

        class Kernel:
            def __getitem__(self, grid):
                return lambda *args, **kwargs: recorder.launches.append((name, recorder.current))

        return Kernel()


def test_launches_run_under_the_tensors_device(monkeypatch):
    """Triton launches on the current device: every launch of every launcher must happen
    inside torch.cuda.device(<the tensors' device>), here cuda:1 while cuda:0 is current."""
    from pylosses.triton_kernels import common, mse, region, segmentation, softmax_region

    recorder = _Recorder()
    monkeypatch.setattr(torch.cuda, "device", recorder.device)
    for module, name in ((common, "sum_groups_kernel"), (common, "loss_backward_kernel"), (mse, "mse_fwd_kernel"),
                         (segmentation, "seg_fwd_kernel"), (region, "region_sums_kernel"),
                         (region, "region_grad_kernel"), (softmax_region, "softmax_region_sums_kernel"),
                         (softmax_region, "softmax_region_grad_kernel")):
        monkeypatch.setattr(module, name, recorder.kernel(name))
    with FakeTensorMode():  # tensors that say cuda:1, on a machine without one
        x = torch.empty(2, 3, 5, 40, device="cuda:1")
        t = torch.empty(2, 3, 5, 40, device="cuda:1")
        mse.mse_loss_fwd(x, t, 1, True)
        segmentation.seg_loss_fwd(x, t, 0.7, 0.3, 2, True, 0, True, False, False)
        common.loss_backward(torch.empty(2, device="cuda:1"), x, 1.0, torch.float32)
        for shape in ((2, 3, 5, 40), (1, 2, 3000)):  # planes as rows of a tile; planes of chunks (and their sum)
            x, t = torch.empty(shape, device="cuda:1"), torch.empty(shape, device="cuda:1")
            region.region_sums(x, t, None, True, 0)
            region.region_sums_backward(torch.empty(*shape[:2], 4, device="cuda:1"), x, t, None, True, 0, True, True)
        x, labels = torch.empty(2, 3, 5, 40, device="cuda:1"), torch.empty(2, 5, 40, device="cuda:1", dtype=torch.int64)
        w, mask = torch.empty(3, device="cuda:1"), torch.empty(2, 1, 5, 40, device="cuda:1", dtype=torch.bool)
        softmax_region.softmax_region_sums(x, labels, mask, 0, w, -100, 0.1, True)
        grad_sums, grad_ce = torch.empty(2, 3, 4, device="cuda:1"), torch.empty(3, device="cuda:1")
        softmax_region.softmax_region_sums_backward(grad_sums, grad_ce, x, labels, mask, 0, w, -100, 0.1)
    names = [name for name, _ in recorder.launches]
    assert set(names) == {"sum_groups_kernel", "loss_backward_kernel", "mse_fwd_kernel", "seg_fwd_kernel",
                          "region_sums_kernel", "region_grad_kernel", "softmax_region_sums_kernel",
                          "softmax_region_grad_kernel"}, names
    assert all(device == 1 for _, device in recorder.launches), recorder.launches
    assert recorder.current == 0  # and the current device is as it was


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # (numpy, in the interpreter's log)
@pytest.mark.parametrize("from_logits", [False, True])
def test_out_of_range_probabilities_give_nan_unchecked(from_logits):
    """As on a GPU, where nothing checks them (no host sync): a probability outside [0, 1] makes
    its sample's loss NaN, in every reduction and whatever alpha; the others stay finite."""
    from pylosses.triton_kernels.segmentation import seg_loss_fwd

    g = torch.Generator().manual_seed(0)
    x = 0.05 + 0.9 * torch.rand(3, 2, 5, 19, generator=g)
    t = torch.rand(3, 2, 5, 19, generator=g)
    for bad in (1.5, -0.25, float("nan")):
        y = x.clone()
        y[1, 1, 4, 18] = bad  # the last element of a plane: the last lanes of its tile
        for alpha in (0.7, 0.0):
            per_sample, _, _ = seg_loss_fwd(y, t, alpha, 0.3, 2, from_logits, 0, True, False, False)
            if from_logits and bad == bad:  # logits may be anything
                assert torch.isfinite(per_sample).all()
                continue
            assert torch.isnan(per_sample).tolist() == [False, True, False], (bad, alpha, per_sample)
            for reduction in (1, 2):
                assert torch.isnan(seg_loss_fwd(y, t, alpha, 0.3, 2, from_logits, reduction, False, False, False)[0])


@pytest.mark.parametrize("backend", [b for b in ("native", "triton") if b in pylosses.available_backends("cpu")])
@pytest.mark.parametrize("n,k", [(3 * 5000, 1), (3 * 5000, 3), (7 * 1001, 7), (4096 * 2 + 5, 4096 * 2 + 5),
                                 (9 * 4097, 9)])
def test_loss_backward_broadcasts_grad_output(backend, n, k):
    """Groups longer and shorter than a block, blocks that straddle groups, one element each."""
    g = torch.Generator().manual_seed(1)
    saved, grad_output = torch.randn(n, generator=g), torch.randn(k, generator=g)
    op = getattr(torch.ops.pylosses, {"native": "", "triton": "triton_"}[backend] + "loss_backward")
    got = op(grad_output, saved, -0.5, torch.float32)
    want = saved * grad_output.repeat_interleave(n // k) * -0.5
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 16), (2, 1, 3, 5, 17), (2, 1, 6, 19), (2, 1, 9, 16)],
                         ids=["walk", "planes", "2d", "rows"])
def test_the_loss_does_not_depend_on_the_gradients_asked_for(shape, from_logits):
    """The kernel's variants without gradients (a forward pass under no_grad) compute the loss
    along another path (the depth walk keeps exp(-|x|) a step there; a float target's logs
    are clamped in another place): the same bits."""
    from pylosses.triton_kernels.segmentation import seg_loss_fwd

    g = torch.Generator().manual_seed(2)
    x = 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=torch.float64)
    x = 4 * x - 2 if from_logits else x
    t = torch.rand(shape, generator=g, dtype=torch.float64)
    dims = len(shape) - 2 if len(shape) == 5 else 2
    for reduction in (0, 1, 2):
        plain = seg_loss_fwd(x, t, 0.7, 0.3, dims, from_logits, reduction, False, False, False)[0]
        for grads in ((True, False), (True, True), (False, True)):
            with_grads = seg_loss_fwd(x, t, 0.7, 0.3, dims, from_logits, reduction, *grads, False)[0]
            assert torch.equal(plain, with_grads), (reduction, grads)


# Shapes that take the walks with several bands, steps, tiles and vector widths (the parity
# tables' small shapes take them with a step or two): 2-D rows of 48 (vectors of 4 in float32,
# 8 in bfloat16) over 70 rows (two tiles of 8 bands), rows of 160 (two tiles a row), rows of
# 24 (vectors of 8 in bfloat16) and of 6 (vectors of 2: a vector never straddles a row's end),
# and 3-D tiles walked through 5 planes (rows of 32, and of 6).
WALK_SHAPES = [(2, 1, 70, 48), (1, 2, 19, 160), (1, 1, 37, 24), (2, 1, 19, 6), (1, 2, 5, 9, 32), (1, 1, 5, 3, 6)]


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype,target_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bool),
                                                (torch.bfloat16, torch.bool)], ids=str)
@pytest.mark.parametrize("shape", WALK_SHAPES, ids=str)
def test_the_walks_match_the_reference(shape, dtype, target_dtype, from_logits):
    from cases import SEG, SEG3D, SEG3D_LOGITS, SEG_LOGITS, check_against_reference

    loss = {(4, False): SEG, (4, True): SEG_LOGITS, (5, False): SEG3D, (5, True): SEG3D_LOGITS}[
        (len(shape), from_logits)]
    for reduction in ("none", "mean"):
        check_against_reference(loss, "triton", shape, dtype, target_dtype, reduction)


@pytest.mark.skipif("triton" not in pylosses.available_backends("cpu"), reason="Triton on CPU tensors: its interpreter")
@pytest.mark.parametrize("from_logits", [False, True], ids=["probabilities", "logits"])
def test_bce_element_by_element(from_logits):
    """The float32 BCE of hard labels within check_bce_element_by_element's bounds, in Triton's
    interpreter, which does the kernel's own float32 arithmetic in numpy, roundings included.
    Logits on their label's side (a loss of about exp(-|x|)) failed here and on an H200 by 8 to 60
    ulp while exp(-|x|) was 2**(-|x| log2 e) alone: the product's rounding."""
    from cases import check_bce_element_by_element

    def loss(x, t):
        return pylosses.segmentation_loss(x, t, alpha=1.0, beta=0.0, from_logits=from_logits, reduction="none",
                                          backend="triton")

    check_bce_element_by_element(loss, torch.bool, from_logits, points=40)


def test_grids_stay_within_cuda_limits(monkeypatch):
    """Triton launches a grid without checking it against CUDA's limits (at most 65535 programs
    on a second axis), and a launch past them fails on a GPU with an error that names no size:
    softmax_region_sums with 16384 classes adds 4 x 16384 columns of partial sums a sample."""
    from pylosses.triton_kernels import common, softmax_region

    grids = []

    class Kernel:
        def __getitem__(self, grid):
            grids.append(tuple(grid))
            return lambda *args, **kwargs: None

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(common, "sum_groups_kernel", Kernel())
    monkeypatch.setattr(softmax_region, "softmax_region_sums_kernel", Kernel())
    with FakeTensorMode():
        x = torch.empty(2, 16384, 2, 2, device="cuda:0")
        labels = torch.empty(2, 2, 2, dtype=torch.int64, device="cuda:0")
        softmax_region.softmax_region_sums(x, labels, None, 0, None, -100, 0.0, True)
    assert len(grids) == 3, grids  # the sums, their rows added, the cross-entropy's
    for grid in grids:
        assert 0 < grid[0] < 2**31 and all(0 < n <= 65535 for n in grid[1:]), grids


def test_sum_groups_adds_each_group_and_column():
    """sum_groups on its one-axis grid (a program a (group, column)) against torch's sum."""
    from pylosses.triton_kernels import common

    partials = torch.randn(3 * 70, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(common.sum_groups(partials, 3), partials.view(3, 70, 5).sum(1), rtol=1e-12, atol=0)


def test_sizes_past_the_kernels_32_bit_indices_are_refused():
    """What the Triton kernels would index in 32 bits and wrap without a word is refused, naming
    the size: more classes than MAX_CLASSES (Triton truncates an int32 argument silently), a tile
    count whose last program's end passes 2**31 (the cross-entropy skipped those tiles), and an H
    whose row walk reaches row 2**31 (its next row's test wrapped)."""
    from pylosses.triton_kernels import common, cross_entropy, segmentation, softmax_region, softmax_tv

    C = common.MAX_CLASSES + 1
    with FakeTensorMode():
        x = torch.empty(1, C, 1, 2, device="cuda:0")
        labels = torch.empty(1, 1, 2, dtype=torch.int64, device="cuda:0")
        with pytest.raises(ValueError, match=f"too many classes, {C}"):
            cross_entropy.cross_entropy_fwd(x, labels, None, -100, 0.0, 1, True)
        with pytest.raises(ValueError, match=f"too many classes, {C}"):
            softmax_region.softmax_region_sums(x, labels, None, 0, None, -100, 0.0, True)
        with pytest.raises(ValueError, match=f"too many classes, {C}"):
            softmax_tv.softmax_tv_fwd(torch.empty(1, C, 2, 2, device="cuda:0"), 1.0, 2, 1, True)
        tall = torch.empty(1, 1, 2**31 - 64, 2, device="cuda:0", dtype=torch.float16)
        with pytest.raises(ValueError, match="below 2\\*\\*31 - 1024"):
            segmentation.seg_loss_fwd(tall, tall, 0.7, 0.3, 2, True, 0, True, False, False)
    # (2**31 - 1) samples of 2 pixels in float16: 262144 tiles a program, 8192 programs
    with pytest.raises(ValueError, match="more tiles than a launch holds"):
        cross_entropy._Layout(2**31 - 1, 1, 2, 2, False)
