"""The CPU kernels' own float32 log, exp and reciprocal (csrc/cpu/cpu_common.h), which take the
place of Sleef's and of the division in the segmentation loss, against float64 over every
float32 of their working ranges (a regular sample where that is billions of values), in units
in the last place (ulp) of the float32 result, and at the values outside the fast path's range,
which a slower path inside the same function handles."""

import numpy as np
import pytest

_C = pytest.importorskip("pylosses._C", reason="the compiled extension is not built")


def run(name, x):
    y = np.ascontiguousarray(x, dtype=np.float32).copy()
    _C._vec_math(name, y)
    return y


def floats(lo, hi, step=1):
    """Every `step`-th float32 in [lo, hi), lo and hi of one sign (order of their bits)."""
    a, b = np.float32(lo).view(np.int32), np.float32(hi).view(np.int32)
    a, b = min(a, b), max(a, b)
    return np.arange(a, b, step, dtype=np.int32).view(np.float32)


def max_ulp_error(name, x, exact):
    y = run(name, x).astype(np.float64)
    want = exact(x.astype(np.float64))
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return float(np.max(np.abs(y - want) / ulp))


# (function, inputs, float64 truth, the most ulp it may be off: what it measured, with a margin
# of 0.15 ulp, so that a wrong coefficient or reduction step fails)
CASES = {
    "log of every float32 in [0.5, 2)": ("log", lambda: floats(0.5, 2.0), np.log, 1.35),
    "log of every 127th positive normal": ("log", lambda: floats(np.finfo(np.float32).tiny, np.inf, 127), np.log, 1.25),
    "log of every 7th subnormal": ("log", lambda: floats(1e-45, np.finfo(np.float32).tiny, 7), np.log, 1.35),
    "exp of every float32 in (-1, 1), 97th": ("exp", lambda: np.concatenate([floats(0, 1, 97), -floats(0, 1, 97)]),
                                             np.exp, 1.15),
    "exp of every 63rd float32 in [-86, -1] and [1, 88]": (
        "exp", lambda: np.concatenate([floats(-1, -86, 63), floats(1, 88, 63)]), np.exp, 1.15),
    "reciprocal of every 29th float32 in [1e-30, 1e30]": (
        "reciprocal", lambda: floats(1e-30, 1e30, 29), lambda v: 1 / v, 0.55),
}


@pytest.mark.parametrize("case", list(CASES))
def test_error_in_ulp(case):
    name, inputs, exact, bound = CASES[case]
    assert max_ulp_error(name, inputs(), exact) <= bound


def mean_signed_ulp_error(name, x, exact):
    y = run(name, x).astype(np.float64)
    want = exact(x.astype(np.float64))
    return float(np.mean((y - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)))


@pytest.mark.parametrize("name,lo,hi,exact,bound", [
    ("reciprocal", 1.0, 2.0, lambda v: 1 / v, 0.005),  # the sigmoid's 1 / (1 + e)
    ("log", 0.5, 2.0, np.log, 0.05),
    ("exp", -30.0, -0.001, np.exp, 0.05),
], ids=["reciprocal", "log", "exp"])
def test_errors_are_not_one_sided(name, lo, hi, exact, bound):
    """A bias of a fraction of an ulp in every element adds up in a gradient summed over pixels
    (a conv's weights): one Newton step from the reciprocal's estimate is always below 1 / d, and
    that moved a 48-step training trajectory (tests/test_training.py) 3x further from the one with
    a float64 loss than float32's own rounding does. Two steps round correctly but for ties."""
    assert abs(mean_signed_ulp_error(name, floats(lo, hi, 3), exact)) <= bound


def test_log_outside_the_fast_range():
    x = np.array([0, -0.0, -1, np.nan, np.inf, 1e-45, 1e-40, 1], dtype=np.float32)
    y = run("log", x)
    assert y[0] == -np.inf and y[1] == -np.inf
    assert np.isnan(y[2]) and np.isnan(y[3])
    assert y[4] == np.inf
    assert np.allclose(y[5:], np.log(x[5:].astype(np.float64)), rtol=1e-6, atol=0)
    assert y[7] == 0  # log(1) = 0 exactly: a confident label keeps a zero loss


def test_exp_outside_the_fast_range():
    x = np.array([-np.inf, -200, -100, -87, 89, np.inf, np.nan, 0], dtype=np.float32)
    y = run("exp", x)
    assert y[0] == 0 and y[1] == 0
    assert abs(y[2] - np.exp(-100.0)) <= 1.5e-45 and abs(y[3] - np.exp(-87.0)) <= 1e-6 * np.exp(-87.0)
    assert y[4] == np.inf and y[5] == np.inf and np.isnan(y[6])
    assert y[7] == 1


@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 33])
def test_every_lane_of_a_partial_vector(n):
    """Rows end in a partial vector: each of its lanes gets its own value, and none past n is written."""
    x = np.linspace(0.25, 3.0, n, dtype=np.float32)
    buf = np.concatenate([x, np.full(8, 7.0, dtype=np.float32)])
    _C._vec_math("log", buf[:n])
    assert np.allclose(buf[:n], np.log(x.astype(np.float64)), rtol=2e-7, atol=2e-7)
    assert np.all(buf[n:] == 7.0)


def test_rejects_a_bad_buffer_or_name():
    with pytest.raises(ValueError, match="log, exp or reciprocal"):
        _C._vec_math("sqrt", np.ones(4, dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        _C._vec_math("log", np.ones(4, dtype=np.float64))
