"""The total variation of the softmax over the classes (the lambda_tv term of DiceCELoss) in
Triton: the op softmax_tv_fwd, with the semantics of reference.softmax_total_variation and the
schema's comment in pylosses/_ops.py. No softmax tensor is in memory.

p_c is the softmax over the classes (dim 1) of a pixel's logits. The loss is beta times, for each
spatial axis a of length above 1, the mean (or sum) of |p_c(i + e_a) - p_c(i)| over every
(sample, class, pair along a); the gradient, written in the forward for grad_output = 1, is
dx_c(i) = p_c(i) (G_c(i) - sum_k G_k(i) p_k(i)) with G_c(i) = sum_a w_a (sign(p_c(i) -
p_c(i - e_a)) - sign(p_c(i + e_a) - p_c(i))), a missing neighbour's term 0, w_a = beta / (the
pairs along a in the tensor) for the mean, beta for the sum.

The contiguous input is B samples of C planes of S pixels: a pixel's logits lie S apart, and its
neighbour along an axis lies a stride away in the same plane. Axes of length 1 have no pairs and
are dropped (AXES: the others, innermost first; their strides are the products of the extents
inside them). A program takes BLOCK consecutive pixels of one sample, and for each pixel its
neighbours' offsets along each axis (masked where missing), and walks the classes three times:
pass 1 gives the maximum and the sum of exponentials of the pixel and of each of its 2 AXES
neighbours (an online softmax, one exponential a class); pass 2 each class's probabilities of the
pixel and its neighbours, the loss terms (a pair counted at its earlier pixel), G_c and the dot
sum_k G_k p_k; pass 3 (with the gradient) the probabilities and G_c again, and stores dx_c. Every
probability, the pixel's and its neighbours', comes from the same code (_prob after _online), so
that a pixel's p has the same bits in every program that computes it and the sign of a zero
difference is 0 on both sides of the pair.

What it costs, a first version (issue 15): each logit is read from DRAM once, but read 2 AXES + 1
times a pass (its own and as each neighbour's, cache hits: a program's classes and the rows
around them lie in L1/L2), and its exponential is taken 2 AXES + 1 times a pass: 10 exponentials
an element in 2-D and 14 in 3-D without the gradient, 15 and 21 with it (the sm_90 gate: float32
168 and 234 instructions an element with the gradient, against a memory-bound budget of 62). The
next step is to carry rows along an axis (as segmentation.py's walks do): a program walks its tile
along the outermost axis, the rows behind and ahead kept in registers, so that each probability is
taken once a pass.

Each program writes its weighted loss of each axis into a partial row; sum_groups adds the rows in
a fixed order (no atomics, no host sync), so the loss has the same bits run after run.
"""

import math

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype

from .common import (acc_dtype, acc_torch_dtype, check_classes, launch_device, reciprocal, sign, sum_groups,
                     to_element)
from .cross_entropy import _exp

NUM_WARPS = 4
# a thread's pixels: 16 bytes of a float32 or float64 input (a 128-bit access), 4 of a 16-bit one
# (8 bytes: with 8, which 128 bits would take, a thread's state of the pixel and its neighbours
# takes 168 registers in 2-D and 230 in 3-D, 8 to 12 resident warps an SM; with 4, 87 and 128: 20
# and 16)
THREAD_BYTES = 16
THREAD_PIXELS = 4
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@triton.jit
def _lowest(like):
    """The lowest finite value of like's dtype, in like's shape: the running maximum's start (as
    cross_entropy.online_softmax's: -inf would make the first rescaling exp(-inf + inf) = NaN)."""
    if like.dtype == tl.float64:
        v = like * 0.0 - 1.7976931348623157e308
    else:
        v = like * 0.0 - 3.4028234663852886e38
    return v


@triton.jit
def _online(m, s, x):
    """(m, s) with one class more: the running maximum m and sum s = sum_k exp(x_k - m). One
    exponential, exp(-|x - m|), the factor of whichever is the smaller; a NaN logit makes s NaN."""
    d = x - m
    e = _exp(-tl.abs(d))
    up = d > 0
    return tl.where(up, x, m), tl.where(up, s * e + 1.0, s + e)


@triton.jit
def _load(ptr, mask, ACC: tl.constexpr):
    return tl.load(ptr, mask=mask, other=0.0).to(ACC)


@triton.jit
def _axis_stats(row, i, stride, back, fwd, m_b, s_b, m_f, s_f, ACC: tl.constexpr):
    """A class more in the online softmax of the neighbours before and after along an axis."""
    m_b, s_b = _online(m_b, s_b, _load(row + (i - stride), back, ACC))
    m_f, s_f = _online(m_f, s_f, _load(row + (i + stride), fwd, ACC))
    return m_b, s_b, m_f, s_f


@triton.jit
def _prob(ptr, mask, m, inv, ACC: tl.constexpr):
    """p of a class at ptr from its pixel's maximum m and 1 / sum of exponentials. exp(x - m),
    not cross_entropy's _exp_minus (2**(x log2 e - m log2 e), an instruction less): x - m is
    rounded once, so logits shifted by a constant (exactly) give probabilities of the same bits,
    as torch's softmax does, and the sign of their difference is 0 as the reference's."""
    return _exp(_load(ptr, mask, ACC) - m) * inv


@triton.jit
def _axis_terms(row, i, stride, back, fwd, m_b, inv_b, m_f, inv_f, p, weight, ACC: tl.constexpr):
    """An axis's share of a class: (its term of G, |p(i + e) - p(i)|), 0 where a neighbour is missing."""
    d_b = tl.where(back, p - _prob(row + (i - stride), back, m_b, inv_b, ACC), 0.0)
    d_f = tl.where(fwd, _prob(row + (i + stride), fwd, m_f, inv_f, ACC) - p, 0.0)
    return weight * (sign(d_b) - sign(d_f)), tl.abs(d_f)


@triton.jit
def _class_terms(row, i, ok, m, inv, back0, fwd0, mb0, ib0, mf0, if0, w0, back1, fwd1, mb1, ib1, mf1, if1, w1, back2,
                 fwd2, mb2, ib2, mf2, if2, w2, st1, st2, AXES: tl.constexpr, ACC: tl.constexpr):
    """(p, G, the loss terms of each axis) of a class of the pixels, row its plane (the axes past
    AXES: 0)"""
    p = _prob(row + i, ok, m, inv, ACC)
    g, l0 = _axis_terms(row, i, 1, back0, fwd0, mb0, ib0, mf0, if0, p, w0, ACC)
    l1 = l0 * 0.0
    l2 = l1
    if AXES >= 2:
        g1, l1 = _axis_terms(row, i, st1, back1, fwd1, mb1, ib1, mf1, if1, p, w1, ACC)
        g += g1
    if AXES == 3:
        g2, l2 = _axis_terms(row, i, st2, back2, fwd2, mb2, ib2, mf2, if2, p, w2, ACC)
        g += g2
    return p, g, l0, l1, l2


# Triton compiles a kernel again for each pattern of its integer arguments (common.py): C, the
# blocks and the outer extents only count; S and L0 (a plane's and a row's length) decide the
# alignment of a class's plane and of the neighbours along the outer axes (L0 L1 is a multiple of
# what L0 is), and stay.
@triton.jit(do_not_specialize=["C", "L1", "L2", "blocks"])
def softmax_tv_fwd_kernel(x_ptr, grad_ptr, partial_ptr, C: tl.int32, S: tl.int32, L0: tl.int32, L1: tl.int32,
                          L2: tl.int32, blocks: tl.int32, w0: tl.float64, w1: tl.float64, w2: tl.float64,
                          AXES: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """partial[pid, a] = w_a times the sum of |p(i + e_a) - p(i)| over this program's BLOCK pixels
    (of sample pid // blocks) and every class; with GRAD, their gradients stored. L0, L1, L2: the
    kept axes' extents, innermost first (1 past AXES)."""
    pid = tl.program_id(0)
    b = pid // blocks
    i = (pid - b * blocks) * BLOCK + tl.arange(0, BLOCK)
    ok = i < S
    # the weights arrive as float64; a float32 launch rounds them here, once
    w0 = tl.full([], w0, ACC)
    w1 = tl.full([], w1, ACC)
    w2 = tl.full([], w2, ACC)
    # each axis's neighbours: along the innermost at +-1, the second at +-L0, the third at +-L0 L1
    st1 = L0
    st2 = L0 * L1
    k0 = i % L0
    back0 = ok & (k0 > 0)
    fwd0 = ok & (k0 < L0 - 1)
    back1, fwd1, back2, fwd2 = back0, fwd0, back0, fwd0  # (past AXES: unused)
    if AXES >= 2:
        k1 = (i // L0) % L1
        back1 = ok & (k1 > 0)
        fwd1 = ok & (k1 < L1 - 1)
    if AXES == 3:
        k2 = i // st2
        back2 = ok & (k2 > 0)
        fwd2 = ok & (k2 < L2 - 1)
    sample = x_ptr + b.to(tl.int64) * C * S
    S64 = tl.full([], S, tl.int64)

    # pass 1: the maximum and the sum of exponentials of the pixel and of each neighbour
    m = _lowest(i.to(ACC))
    s = m * 0.0
    mb0, sb0, mf0, sf0 = m, s, m, s
    mb1, sb1, mf1, sf1 = m, s, m, s
    mb2, sb2, mf2, sf2 = m, s, m, s
    for c in range(0, C):
        row = sample + c * S64
        m, s = _online(m, s, _load(row + i, ok, ACC))
        mb0, sb0, mf0, sf0 = _axis_stats(row, i, 1, back0, fwd0, mb0, sb0, mf0, sf0, ACC)
        if AXES >= 2:
            mb1, sb1, mf1, sf1 = _axis_stats(row, i, st1, back1, fwd1, mb1, sb1, mf1, sf1, ACC)
        if AXES == 3:
            mb2, sb2, mf2, sf2 = _axis_stats(row, i, st2, back2, fwd2, mb2, sb2, mf2, sf2, ACC)
    inv = reciprocal(s)
    ib0, if0 = reciprocal(sb0), reciprocal(sf0)
    ib1, if1 = reciprocal(sb1), reciprocal(sf1)
    ib2, if2 = reciprocal(sb2), reciprocal(sf2)

    # pass 2: the loss terms of each axis and sum_k G_k p_k
    loss0 = s * 0.0
    loss1, loss2, dot = loss0, loss0, loss0
    for c in range(0, C):
        p, g, l0, l1, l2 = _class_terms(sample + c * S64, i, ok, m, inv, back0, fwd0, mb0, ib0, mf0, if0, w0, back1,
                                        fwd1, mb1, ib1, mf1, if1, w1, back2, fwd2, mb2, ib2, mf2, if2, w2, st1, st2,
                                        AXES, ACC)
        loss0 += l0
        loss1 += l1
        loss2 += l2
        dot += g * p
    out = partial_ptr + pid.to(tl.int64) * AXES
    tl.store(out, w0 * tl.sum(loss0))
    if AXES >= 2:
        tl.store(out + 1, w1 * tl.sum(loss1))
    if AXES == 3:
        tl.store(out + 2, w2 * tl.sum(loss2))

    # pass 3: the gradient, p_c (G_c - sum_k G_k p_k), from p_c and G_c taken again
    if GRAD:
        grad_sample = grad_ptr + b.to(tl.int64) * C * S
        for c in range(0, C):
            p, g, _0, _1, _2 = _class_terms(sample + c * S64, i, ok, m, inv, back0, fwd0, mb0, ib0, mf0, if0, w0,
                                            back1, fwd1, mb1, ib1, mf1, if1, w1, back2, fwd2, mb2, ib2, mf2, if2, w2,
                                            st1, st2, AXES, ACC)
            ptr = grad_sample + c * S64 + i
            tl.store(ptr, to_element(p * (g - dot), grad_ptr), mask=ok)


def check_args(op: str, input: torch.Tensor, spatial_dims: int, reduction: int) -> None:
    """csrc/op_checks.h's check_softmax_tv_args, with its messages and error types (the dtypes:
    the four this kernel reads)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"{op}: spatial_dims must be 2 or 3, got {spatial_dims}")
    if input.dim() != 2 + spatial_dims:
        raise ValueError(f"{op}: input must be (B, C, spatial...) with {spatial_dims} spatial axes, got shape "
                         f"{list(input.shape)}")
    if reduction not in (1, 2):
        raise ValueError(f"{op}: reduction must be 1 (mean) or 2 (sum), got {reduction}")
    if input.dtype not in DTYPES:
        raise TypeError(f"{op}: input must be floating point (float32, float64, float16 or bfloat16), got "
                        f"{input.dtype}")


def softmax_tv_fwd(input: torch.Tensor, beta: float, spatial_dims: int, reduction: int, compute_grad: bool):
    """(loss, grad) as the op pylosses::softmax_tv_fwd: grad is d loss / d input for grad_output = 1
    (saved_grad_dtype), or an empty (0,) tensor without compute_grad."""
    op = "softmax_tv_fwd"
    check_args(op, input, spatial_dims, reduction)
    check_classes(op, input.shape[1])
    x = input.contiguous()
    B, C = x.shape[:2]
    spatial = list(x.shape[2:])
    n = x.numel()
    mean = reduction == 1
    grad = torch.empty(x.shape if compute_grad else (0,), dtype=saved_grad_dtype(input.dtype), device=x.device)
    # the kept axes, innermost first, and their weights
    beta = float(beta)
    kept = [(length, beta / (n // length * (length - 1)) if mean else beta)
            for length in reversed(spatial) if length > 1 and n]
    if not kept:
        # no pairs: 0, but a mean over none (an empty input with an axis longer than 1) is NaN
        nan = mean and n == 0 and any(length > 1 for length in spatial)
        if compute_grad:
            grad.zero_()
        return torch.full((), float("nan") if nan else 0.0, dtype=input.dtype, device=x.device), grad
    S = math.prod(spatial)
    if S >= 2**31:
        raise ValueError(f"{op} (triton): a plane must have fewer than 2**31 pixels, got {S} ({spatial})")
    acc = acc_torch_dtype(x.dtype)
    block = NUM_WARPS * 32 * min(THREAD_PIXELS, THREAD_BYTES // x.element_size())
    blocks = triton.cdiv(S, block)
    programs = B * blocks
    if programs >= 2**31:
        raise ValueError(f"{op} (triton): {tuple(x.shape)} needs {programs} programs, more than a launch holds")
    axes = len(kept)
    lengths = [length for length, _ in kept] + [1] * (3 - axes)
    weights = [weight for _, weight in kept] + [0.0] * (3 - axes)
    partials = torch.empty((programs, axes), dtype=acc, device=x.device)
    with launch_device(x):
        softmax_tv_fwd_kernel[(programs,)](x, grad if compute_grad else partials, partials, C, S, *lengths, blocks,
                                           *weights, AXES=axes, GRAD=compute_grad, ACC=acc_dtype(x.dtype),
                                           BLOCK=block, num_warps=NUM_WARPS)
    loss = sum_groups(partials, 1).sum()
    return loss.to(input.dtype), grad
