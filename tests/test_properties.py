"""Property-based tests (hypothesis, derandomised: the same examples every run): random shapes
(0-size and size-1 axes, 2-D and 3-D), dtypes, target dtypes, memory layouts (strided,
transposed, expanded with stride 0, channels_last, storage offsets that break 16-byte
alignment; torch has no negative strides, so no flipped views), reductions, forms and weights,
on every backend available here, against the float64 reference, with the inputs left as they
were; and random bad arguments, which must raise the documented error naming the argument and
leave the inputs as they were."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pylosses
from pylosses import functional
from cases import (CHANNELS_LAST, CONTIGUOUS, FLOAT_DTYPES, MISALIGNED, MSE, NON_CONTIGUOUS, REDUCTIONS, SEG, SEG3D,
                   Layout, check_tensors_against_reference)


def _transposed(t):
    # the same values, stored with the last two axes swapped
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() >= 2 else t


TRANSPOSED = Layout("transposed", _transposed)
EXPANDED = Layout("expanded", None)  # stride 0 along the batch axis: made from one sample (_make)
LAYOUTS = [CONTIGUOUS, NON_CONTIGUOUS, TRANSPOSED, EXPANDED, CHANNELS_LAST, MISALIGNED]

# (backend, examples): the compiled and interpreted backends are slower an example
BACKENDS = [(b, {"native": 60, "reference": 15, "jit": 20, "triton": 25, "compile": 6}[b])
            for b in pylosses.available_backends("cpu")]


def _settings(examples):
    return settings(derandomize=True, max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


SIZES = st.integers(1, 9) | st.just(0)  # mostly non-empty axes, some of length 1, some empty


@st.composite
def cases(draw):
    """(loss, x, t, reduction, seed): x and t as the layout lays them out, x requiring grad (and
    t when it is floating point)."""
    loss = draw(st.sampled_from([MSE, SEG, SEG3D]))
    if loss.is_seg:
        loss = dataclasses.replace(loss, from_logits=draw(st.booleans()),
                                   alpha=draw(st.floats(-2, 2, allow_nan=False)),
                                   beta=draw(st.floats(-2, 2, allow_nan=False)))
        lead = [draw(st.integers(0, 3))] + draw(st.lists(st.integers(1, 3), max_size=1))  # batch, channels
        shape = tuple(lead + draw(st.lists(SIZES, min_size=loss.spatial_dims, max_size=loss.spatial_dims)))
    else:
        shape = tuple(draw(st.lists(SIZES, max_size=4)))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    target_kinds = [dtype, *FLOAT_DTYPES] + ([torch.bool, torch.uint8] if loss.is_seg else [])
    target_dtype = draw(st.sampled_from(target_kinds))
    layout = draw(st.sampled_from(LAYOUTS))
    reduction = draw(st.sampled_from(REDUCTIONS))
    seed = draw(st.integers(0, 2**16))
    x, t = _make(loss, shape, dtype, target_dtype, layout, seed)
    return loss, x, t, reduction, seed, layout.name


def _make(loss, shape, dtype, target_dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout is EXPANDED and len(shape) >= 1:
        one = (1,) + shape[1:]
        x = loss.make_input(one, dtype, g).requires_grad_().expand(shape)
        t = loss.make_target(one, target_dtype, g)
        t = (t.requires_grad_() if t.is_floating_point() else t).expand(shape)
        return x, t
    apply = layout.apply if layout.apply else (lambda a: a)
    x = apply(loss.make_input(shape, dtype, g).requires_grad_())
    t = loss.make_target(shape, target_dtype, g)
    t = apply(t.requires_grad_() if t.is_floating_point() else t)
    return x, t


def _snapshot(*tensors):
    return [(t.detach().clone(), t.stride(), t.storage_offset(), t._version) for t in tensors]


def _assert_unchanged(tensors, before):
    for t, (values, stride, offset, version) in zip(tensors, before):
        assert (t.stride(), t.storage_offset(), t._version) == (stride, offset, version)
        assert torch.equal(t.detach(), values) or (t.is_floating_point() and torch.equal(t.detach().isnan(),
                                                                                          values.isnan()))


def _property_test(backend, examples):
    @_settings(examples)
    @given(case=cases())
    def run(case):
        loss, x, t, reduction, seed, _ = case
        before = _snapshot(x, t)
        check_tensors_against_reference(loss, backend, x, t, reduction, seed)
        _assert_unchanged((x, t), before)

    return run


@pytest.mark.parametrize("backend,examples", BACKENDS, ids=[b for b, _ in BACKENDS])
def test_every_backend_matches_the_reference(backend, examples):
    _property_test(backend, examples)()


# --- bad arguments --------------------------------------------------------------------------

X = torch.rand(2, 1, 5, 6)
T = torch.rand(2, 1, 5, 6)

# argument -> values that must be refused, and the error type
BAD_VALUES = {
    "reduction": (st.one_of(st.text(max_size=8).filter(lambda s: s not in REDUCTIONS), st.none(), st.integers()),
                  ValueError),
    "backend": (st.one_of(st.text(max_size=8).filter(lambda s: s not in functional.BACKENDS), st.none()), ValueError),
    "alpha": (st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf")])), ValueError),
    "beta": (st.one_of(st.text(max_size=3), st.none(), st.booleans(), st.just(1j)), TypeError),
    "from_logits": (st.one_of(st.integers(), st.none(), st.text(max_size=3)), TypeError),
    "spatial_dims": (st.integers().filter(lambda v: v not in (2, 3)), ValueError),
}


@_settings(120)
@given(data=st.data(), arg=st.sampled_from(sorted(BAD_VALUES)), backend=st.sampled_from(
    pylosses.available_backends("cpu")), requires_grad=st.booleans())
def test_bad_arguments_raise_and_touch_nothing(data, arg, backend, requires_grad):
    values, error = BAD_VALUES[arg]
    value = data.draw(values)
    x, t = X.clone().requires_grad_(requires_grad), T.clone()
    before = _snapshot(x, t)
    kwargs = {"backend": backend, arg: value}
    with pytest.raises(error) as info:
        pylosses.segmentation_loss(x, t, **kwargs)
    assert arg in str(info.value)
    _assert_unchanged((x, t), before)


# a bad tensor argument: (the argument the error names, how it is made bad, the error, whether
# only the segmentation loss refuses it: a 2-D MSE is fine)
BAD_TENSORS = [
    ("input", lambda x, t: (x.to(torch.int32), t), TypeError, False),
    ("input", lambda x, t: (x.to(torch.complex64), t), TypeError, False),
    ("target", lambda x, t: (x, t.to(torch.int64)), TypeError, False),
    ("target", lambda x, t: (x, t[:1]), ValueError, False),
    ("target", lambda x, t: (x, t.transpose(-1, -2)), ValueError, False),
    ("input", lambda x, t: (x[0, 0], t[0, 0]), ValueError, True),
    ("input", lambda x, t: ([1.0], t), TypeError, False),
    ("target", lambda x, t: (x, t.to("meta")), ValueError, False),
]


@_settings(60)
@given(case=st.sampled_from(BAD_TENSORS), backend=st.sampled_from(pylosses.available_backends("cpu")),
       loss=st.sampled_from(["mse_loss", "segmentation_loss"]))
def test_bad_tensors_raise_and_touch_nothing(case, backend, loss):
    name, spoil, error, seg_only = case
    if seg_only and loss == "mse_loss":
        return
    x, t = X.clone(), T.clone()
    before = _snapshot(x, t)
    with pytest.raises(error) as info:
        getattr(pylosses, loss)(*spoil(x, t), backend=backend)
    assert name in str(info.value)
    _assert_unchanged((x, t), before)
