"""Segmentation loss alpha * BCE + beta * TV in Triton, in one pass over memory.

The contiguous input is a sequence of planes of H x W, one for each (sample, channel, depth).
Where rows start at a multiple of ALIGN (16 elements; W a multiple of it, or shorter), a
program walks: in 2-D, BLOCK_H bands of rows of a plane, a row of each band a step; in 3-D, a
tile of rows through the depth, a plane a step. The walked axis's neighbour comes from the step
before or is the step after's element (loaded once, its probability taken once), and each
difference along it and its sign are taken once for both its elements. A thread holds a row's
elements in vectors of 16 bytes, which hold their own row neighbours: shifts along a vector are
register renames (split/join), and only a vector's outer neighbours are loaded, each difference
and its sign again taken once. Elsewhere (PLANES) a program owns a tile of BLOCK_H rows x
BLOCK_W columns of a plane and loads its neighbours (shifted by 1, W and H * W: cache hits);
where W is not a multiple of ALIGN, a tile row starts not at its row's first element but at the
multiple of ALIGN at or before it, and ends where the next row's tile rows start: the tiles
still partition the tensor, each element owned once (the lanes before a row's start are the end
of the row before, or of the plane before, and are computed with their own coordinates), and
every load and store of the input, the target and the gradients starts 16-byte aligned, so it
is a vector whatever W is. The logits form takes the sigmoid of each element once and of the
neighbours whose differences the loss needs; the gradient needs the other side's neighbours
only through the sign of a difference of probabilities, which the logits give exactly (the
sigmoid is strictly increasing).

The float32 math is built for the instructions it compiles to (issue 13): logs in plain
arithmetic (libdevice's logf polynomial without the guards the callers do not need), exp(-|x|)
as one MUFU.EX2, reciprocals as rsqrt squared; float64 takes tl.log, tl.exp and division.

Each program writes partial sums of the loss of its elements, with the weights of the
reduction applied; sum_groups adds them in a fixed order. A probability outside [0, 1] (or
NaN), and a target outside [0, 1] where torch checks it, make the loss NaN without a count.
The per-element math is that of csrc/seg_loss_math.h, in Triton.
"""

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype
from pylosses.reference import check_values

from .common import (acc_dtype, acc_torch_dtype, exp_neg_abs, launch_device, reciprocal, sigmoid_exp, sigmoid_fast,
                     sign, sum_groups, to_element)

# how a program covers its elements (seg_fwd_kernel's WALK)
PLANES, DEPTH_WALK, ROW_WALK = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
ROW_STEPS = 8  # rows a band of the row walk (at most): the per-program work is then spread over 8
ALIGN = 16  # elements: 16 bytes of the narrowest stream (uint8 targets), and a vector of each
NUM_WARPS = 4
TILE = 1024  # elements a program: 8 a thread (see tile_shape), within 128 registers


@triton.jit
def _log_f32(x):
    """log x of a positive normal float32, in plain arithmetic: x = 2**k m with m in [2/3, 4/3),
    f = m - 1 exact, log x = k ln 2 + f + f**2 P(f) with libdevice's logf polynomial (1 ulp). It
    is what tl.log runs less its guards for denormals, 0, inf and NaN (9 instructions of 26),
    which the callers below need only in part."""
    i = x.to(tl.int32, bitcast=True)
    k = (i - 0x3F2AAAAB) >> 23
    f = (i - (k << 23)).to(tl.float32, bitcast=True) - 1.0
    q = -0.130187988 * f + 0.140846103
    q = q * f - 0.121486276
    q = q * f + 0.139806107
    q = q * f - 0.166842356
    q = q * f + 0.200122997
    q = q * f - 0.249996692
    q = q * f + 0.333331823
    q = q * f - 0.5
    return k.to(tl.float32) * 0.6931471805599453 + (f + f * (f * q))


@triton.jit
def _log_prob(x, floor):
    """log x for x in [0, 1] (a probability, or 1 - p), at least floor (-100: nn.BCELoss's clamp;
    -inf: none). In float32 the clamp acts only below 2**-126 (log x >= -87.4 above), where a
    guard sets floor (also for a denormal x, which tl.log flushes to 0 on the GPU). An x outside
    [0, 1] gives a number: the callers make such a loss NaN."""
    if x.dtype == tl.float64:  # (if/else: Triton compiles what follows a return too)
        v = tl.maximum(tl.log(x), floor, propagate_nan=tl.PropagateNan.ALL)
    else:
        v = tl.where(x.to(tl.int32, bitcast=True) < 0x00800000, floor, _log_f32(x))
    return v


@triton.jit
def _soft_logs(p, floor):
    """(log p, log(1 - p)) for p in [0, 1], at least floor. log(1 - p) is log u + r, u = 1 - p
    rounded and r = (1 - u) - p its exact rounding residue (Fast2Sum: |p| <= 1), as log1p(-p)
    with no division (csrc/cpu/cpu_common.h's plog1p says why it is accurate)."""
    u = 1.0 - p
    return _log_prob(p, floor), _log_prob(u, floor) + ((1.0 - u) - p)


@triton.jit
def _log_plain(u):
    """log u for a normal positive u (or NaN), as u in [1, 2] here and a sum of exponentials in
    cross_entropy.py: float32's in plain arithmetic (_log_f32), without the guards for
    denormals, 0 and inf that tl.log adds"""
    if u.dtype == tl.float64:
        v = tl.log(u)
    else:
        v = _log_f32(u)
    return v


@triton.jit
def _prob_exp(x, LOGITS: tl.constexpr):
    """(the probability, exp(-|x|)): BCE of the logits form needs the exponential too"""
    if LOGITS:
        return sigmoid_exp(x)
    else:
        return x, x


@triton.jit
def _clamped_log(v):
    # max(v, -100) as nn.BCELoss, NaN kept
    return tl.maximum(v, -100.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _bce_loss(x, p, e, t, label, bad, LOGITS: tl.constexpr, HARD: tl.constexpr, GRAD_T: tl.constexpr):
    """BCE of an element; HARD (uint8 and bool targets): label = t != 0, and bad = t > 1 makes
    it NaN (where the CPU kernel raises, README)."""
    if LOGITS:
        # log1p(e) = log(u) + (e - (u - 1)), e in [0, 1]: u in [1, 2] needs no guards
        u = 1.0 + e
        bce = tl.maximum(x, 0.0) - x * t + (_log_plain(u) + (e - (u - 1.0)))
        if HARD:
            bce = tl.where(bad, float("nan"), bce)
        return bce
    elif HARD:
        # a mask's label is 0 or 1: one log, of the probability given to the label, with the
        # rounding residue of 1 - p added back (exact), as csrc/seg_loss_math.h's bce_loss_hard
        one_minus_p = 1.0 - p
        residue = (1.0 - one_minus_p) - p
        q = tl.where(label, p, one_minus_p)
        r = tl.where(label, 0.0, residue)
        if q.dtype == tl.float64:
            log_q = _clamped_log(tl.log(q) + r)
            bad = bad | (q < 0.0) | (q > 1.0) | (q != q)
        else:
            # nn.BCELoss's clamp at -100 acts only below 2**-126 (log q >= -87.4 above): there,
            # and at 0, a guard sets -100; a q outside [0, 1] (or NaN) makes it NaN
            q = q + 0.0  # (-0.0, a probability 0, to +0.0 for the test of its bits)
            i = q.to(tl.int32, bitcast=True)
            log_q = tl.where(i < 0x00800000, -100.0, _log_f32(q) + r)
            bad = bad | (i.to(tl.uint32, bitcast=True) > 0x3F800000)
        return tl.where(bad, float("nan"), -log_q)
    else:
        # both logs: with the target's gradient, unclamped for it (-inf at p = 0 and 1, as
        # nn.BCELoss's) and clamped here; without, clamped by their guards
        if GRAD_T:
            log_p, log_q = _soft_logs(p, float("-inf"))
            log_p, log_q = tl.maximum(log_p, -100.0), tl.maximum(log_q, -100.0)
        else:
            log_p, log_q = _soft_logs(p, -100.0)
        # a probability or target outside [0, 1] (or NaN): NaN, where the CPU kernel raises (README)
        ok = (p >= 0.0) & (p <= 1.0) & (t >= 0.0) & (t <= 1.0)
        return tl.where(ok, (t - 1.0) * log_q - t * log_p, float("nan"))


@triton.jit
def _bce_grad_input(p, t, label, LOGITS: tl.constexpr, HARD: tl.constexpr):
    if LOGITS:
        return p - t
    else:
        one_minus_p = 1.0 - p
        p_minus_t = tl.where(label, -one_minus_p, p) if HARD else p - t
        return p_minus_t * reciprocal(tl.maximum(one_minus_p * p, 1e-12))


@triton.jit
def _bce_grad_target(x, p, LOGITS: tl.constexpr):
    if LOGITS:
        return -x
    else:
        log_p, log_q = _soft_logs(p, float("-inf"))
        return tl.where((p >= 0.0) & (p <= 1.0), log_q - log_p, float("nan"))


@triton.jit
def _load_neighbour(ptr, mask, x, p, LOGITS: tl.constexpr, ACC: tl.constexpr):
    """(the input at ptr, its probability) where mask holds, else (x, p): a missing neighbour is
    the element. The TV's signs are taken from the inputs, the loss from the probabilities."""
    x_n = _load_value(ptr, mask, x, ACC)
    if LOGITS:  # (its TV difference needs absolute accuracy only)
        p_n = tl.where(mask, sigmoid_fast(x_n), p)
    else:
        p_n = x_n
    return x_n, p_n


@triton.jit
def _load_value(ptr, mask, fallback, ACC: tl.constexpr):
    return tl.where(mask, tl.load(ptr, mask=mask).to(ACC), fallback)


@triton.jit
def _tile_layout(plane_id, row0, tile_w, last_plane, H, W, ALIGN: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr, EXACT: tl.constexpr):
    """(offs, mine, w, h, before) of the tile of plane plane_id from row row0: its flat offsets, the lanes it
    owns, their column and row, and the lanes that hold the plane before's last row. EXACT:
    the tile holds the tensor's last row, whose end need not be a multiple of ALIGN."""
    W64 = tl.full([], W, tl.int64)
    h = row0 + tl.arange(0, BLOCK_H)[:, None]
    row = plane_id.to(tl.int64) * H * W64 + h.to(tl.int64) * W64  # flat index of (h, 0)
    lead = (row % ALIGN).to(tl.int32)  # how far the row starts past a multiple of ALIGN
    next_row = row + W64
    end = next_row - next_row % ALIGN  # where the next row's tiles start
    start = row - lead
    if EXACT:
        end = tl.where((plane_id == last_plane) & (h == H - 1), next_row, end)
    elif ALIGN > 1:  # (ALIGN = 1: W's own specialisation says what there is to say)
        end = tl.multiple_of(end, [1, ALIGN])
        start = tl.multiple_of(start, [1, ALIGN])
    offs = start + tile_w * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    mine = (offs < end) & (h < H)
    w = tile_w * BLOCK_W - lead + tl.arange(0, BLOCK_W)[None, :]
    if ALIGN > 1:  # a lane left of the row's start holds the end of the row before (plane before for h = 0)
        wrapped = w < 0
        before = wrapped & (h == 0)
        w = tl.where(wrapped, w + W, w)
        h = tl.where(wrapped, tl.where(h == 0, H - 1, h - 1), h)
    else:
        before = tl.zeros([BLOCK_H, BLOCK_W], tl.int1)
    return offs, mine, w, h, before


# A thread's vector of a row (G elements, the last axis of a [K, N, G] tile) holds its own
# neighbours: the shifts below move values along it in registers (split and join in halves,
# which compile to nothing), so that only each vector's outer neighbours are loaded.
@triton.jit
def _halves(v):
    """(v[..., 0::2], v[..., 1::2])"""
    return tl.split(tl.reshape(v, [v.shape[0], v.shape[1], v.shape[2] // 2, 2]))


@triton.jit
def _interleave(a, b):
    """r[..., 0::2] = a, r[..., 1::2] = b"""
    return tl.reshape(tl.join(a, b), [a.shape[0], a.shape[1], a.shape[2] * 2])


@triton.jit
def _first(v):
    """v[..., 0] of a [K, N, G] v"""
    if v.shape[2] >= 2:
        v, _odd = _halves(v)
    if v.shape[2] >= 2:
        v, _odd = _halves(v)
    if v.shape[2] >= 2:
        v, _odd = _halves(v)
    return tl.reshape(v, [v.shape[0], v.shape[1]])


@triton.jit
def _last(v):
    """v[..., G - 1] (G <= 8)"""
    if v.shape[2] >= 2:
        _even, v = _halves(v)
    if v.shape[2] >= 2:
        _even, v = _halves(v)
    if v.shape[2] >= 2:
        _even, v = _halves(v)
    return tl.reshape(v, [v.shape[0], v.shape[1]])


@triton.jit
def _shift_in_2(v, first):
    a, b = _halves(v)
    return _interleave(first[:, :, None], a)


@triton.jit
def _shift_in_4(v, first):
    a, b = _halves(v)
    return _interleave(_shift_in_2(b, first), a)


@triton.jit
def _shift_in_8(v, first):
    a, b = _halves(v)
    return _interleave(_shift_in_4(b, first), a)


@triton.jit
def _shift_in(v, first):
    """[first, v0, ..., v(G-2)]: each element's left neighbour, first that of v0"""
    if v.shape[2] == 8:
        return _shift_in_8(v, first)
    elif v.shape[2] == 4:
        return _shift_in_4(v, first)
    elif v.shape[2] == 2:
        return _shift_in_2(v, first)
    else:
        return first[:, :, None]


@triton.jit
def _shift_out_2(v, last):
    a, b = _halves(v)
    return _interleave(b, last[:, :, None])


@triton.jit
def _shift_out_4(v, last):
    a, b = _halves(v)
    return _interleave(b, _shift_out_2(a, last))


@triton.jit
def _shift_out_8(v, last):
    a, b = _halves(v)
    return _interleave(b, _shift_out_4(a, last))


@triton.jit
def _shift_out(v, last):
    """[v1, ..., v(G-1), last]: each element's right neighbour, last that of v(G-1)"""
    if v.shape[2] == 8:
        return _shift_out_8(v, last)
    elif v.shape[2] == 4:
        return _shift_out_4(v, last)
    elif v.shape[2] == 2:
        return _shift_out_2(v, last)
    else:
        return last[:, :, None]


@triton.jit
def _axis(p, x_before, p_before, has_before, x, x_after, weight):
    """An axis's share of the TV: (its gradient on p, its loss) of an element, from the element
    before it (has_before: there is one) and the one after it. Every sign is a difference of the
    inputs (of logits, the sigmoid being increasing), never of probabilities: on a GPU the
    compiler may compute a logit's sigmoid twice, once for the element and once for its neighbour,
    with roundings that differ, and the sign of the difference of two equal logits' sigmoids came
    out +-1, not 0 (an H200 run: at every edge, and between equal float16 neighbours). A missing
    neighbour's difference is 0."""
    d = tl.where(has_before, p - p_before, 0.0)
    s = sign(tl.where(has_before, x - x_before, 0.0))
    return weight * (s - sign(x_after - x)), weight * tl.abs(d)


@triton.jit
def _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, offs, mine, w, x, p, e, tv, tv_loss, W,
               alpha_w, w_w, LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr):
    """Writes the gradients of the owned lanes and returns their weighted loss (0 elsewhere),
    given the input (and its probability) and the TV terms of the other axes (tv: their gradient
    on p, tv_loss: their loss), which the caller has: the row's neighbours are loaded here."""
    HARD: tl.constexpr = t_ptr.dtype.element_ty == tl.uint8  # (bool targets arrive as uint8)
    t_raw = tl.load(t_ptr + offs, mask=mine)
    t = t_raw.to(ACC)
    label = t_raw != 0
    bad = t_raw > 1  # (HARD: a 0/255 mask, say)
    if len(offs.shape) == 3:
        # rows in vectors of G (the last axis): each difference and its sign taken once, for
        # both its elements; the vector's outer neighbours loaded (left as a probability)
        x_left, p_left = _load_neighbour(x_ptr + _first(offs) - 1, _first(mine) & (_first(w) > 0), _first(x),
                                         _first(p), LOGITS, ACC)
        x_last = _last(x)
        x_right = _load_value(x_ptr + _last(offs) + 1, _last(mine) & (_last(w) < W - 1), x_last, ACC)
        d_left = tl.where(w > 0, p - _shift_in(p, p_left), 0.0)  # (see _axis)
        s_left = sign(tl.where(w > 0, x - _shift_in(x, x_left), 0.0))
        tv_w = w_w * (s_left - _shift_out(s_left, sign(x_right - x_last)))
        loss_w = w_w * tl.abs(d_left)
    else:
        # the left neighbour as a probability, the right one (for the sign) as it is
        x_left, p_left = _load_neighbour(x_ptr + offs - 1, mine & (w > 0), x, p, LOGITS, ACC)
        x_right = _load_value(x_ptr + offs + 1, mine & (w < W - 1), x, ACC)
        tv_w, loss_w = _axis(p, x_left, p_left, w > 0, x, x_right, w_w)
    if GRAD:
        chain = p * (1.0 - p) if LOGITS else 1.0
        g = alpha_w * _bce_grad_input(p, t, label, LOGITS, HARD) + chain * (tv_w + tv)
        tl.store(grad_ptr + offs, to_element(g, grad_ptr), mask=mine)
    if GRAD_T:
        gt = alpha_w * _bce_grad_target(x, p, LOGITS)
        tl.store(grad_t_ptr + offs, to_element(gt, grad_t_ptr), mask=mine)
    bce = _bce_loss(x, p, e, t, label, bad, LOGITS, HARD, GRAD_T)
    return tl.where(mine, alpha_w * bce + loss_w + tv_loss, 0.0)


@triton.jit
def _column_terms(x_ptr, offs, mine, h, x, p, x_front, p_front, has_front, x_back, H, W, w_h, w_d,
                  LOGITS: tl.constexpr, ACC: tl.constexpr, DEPTH: tl.constexpr):
    """_axis of the column (neighbours loaded) and, in 3-D, of the depth (neighbours given)."""
    W64 = tl.full([], W, tl.int64)
    x_up, p_up = _load_neighbour(x_ptr + offs - W64, mine & (h > 0), x, p, LOGITS, ACC)
    x_down = _load_value(x_ptr + offs + W64, mine & (h < H - 1), x, ACC)
    tv, tv_loss = _axis(p, x_up, p_up, h > 0, x, x_down, w_h)
    if DEPTH:  # (in 2-D, nothing: not even w_d * 0)
        tv_d, loss_d = _axis(p, x_front, p_front, has_front, x, x_back, w_d)
        tv += tv_d
        tv_loss += loss_d
    return tv, tv_loss


@triton.jit
def _row_step(x_ptr, t_ptr, grad_ptr, grad_t_ptr, here, in_row, w, h, x, p, e, s_up, H, W, alpha_w, w_w, w_h,
              LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr):
    """One step of the row walk at row h (offsets here): (its loss, the next row's x, p, e, and
    the sign of the difference to it, which is that row's s_up)."""
    mine = in_row & (h < H)
    has_down = in_row & (h + 1 < H)
    # (where has_down fails, the next step has nothing of its own: what comes is unused)
    x_next = tl.load(x_ptr + here + W, mask=has_down).to(ACC)
    p_next, e_next = _prob_exp(x_next, LOGITS)
    # the pair (this row, the one below): its loss here, its sign for both rows
    d = tl.where(has_down, p_next - p, 0.0)  # (see _axis)
    s_down = sign(tl.where(has_down, x_next - x, 0.0))
    loss = _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, here, mine, w, x, p, e, w_h * (s_up - s_down),
                      w_h * tl.abs(d), W, alpha_w, w_w, LOGITS, GRAD, GRAD_T, ACC)
    return loss, x_next, p_next, e_next, s_down


@triton.jit
def _plane_tile(x_ptr, t_ptr, grad_ptr, grad_t_ptr, plane_id, tile_h, tile_w, last_plane, D, H, W,
                alpha_w, w_w, w_h, w_d, LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr,
                ACC: tl.constexpr, DEPTH: tl.constexpr, ALIGN: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_W: tl.constexpr, ROWS: tl.constexpr, EXACT: tl.constexpr):
    """(the loss of the tile's lanes of this plane, of those that hold the plane before's) of one
    tile of one plane, ROWS rows at a time, its depth neighbours (DEPTH: D > 1) loaded."""
    total = tl.zeros([], ACC)
    before_total = tl.zeros([], ACC)
    for first in tl.static_range(0, BLOCK_H, ROWS):
        offs, mine, w, h, before = _tile_layout(plane_id, tile_h * BLOCK_H + first, tile_w, last_plane, H, W, ALIGN,
                                                ROWS, BLOCK_W, EXACT)
        x = tl.load(x_ptr + offs, mask=mine, other=0.5).to(ACC)
        p, e = _prob_exp(x, LOGITS)
        if DEPTH:
            d = plane_id % D
            d = tl.where(before, tl.where(d == 0, D - 1, d - 1), d)
            plane = tl.full([], H, tl.int64) * W
            has_front = d > 0
            x_front, p_front = _load_neighbour(x_ptr + offs - plane, mine & has_front, x, p, LOGITS, ACC)
            x_back = _load_value(x_ptr + offs + plane, mine & (d < D - 1), x, ACC)
        else:
            x_front, p_front = x, p
            has_front = mine
            x_back = x
        tv, tv_loss = _column_terms(x_ptr, offs, mine, h, x, p, x_front, p_front, has_front, x_back, H, W, w_h, w_d,
                                    LOGITS, ACC, DEPTH)
        loss = _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, offs, mine, w, x, p, e, tv, tv_loss, W, alpha_w, w_w,
                          LOGITS, GRAD, GRAD_T, ACC)
        total += tl.sum(tl.where(before, 0.0, loss))
        before_total += tl.sum(tl.where(before, loss, 0.0))
    return total, before_total


@triton.jit(do_not_specialize=["planes", "D", "tiles_w", "tiles", "steps"])  # (H and W stay: common.py)
def seg_fwd_kernel(x_ptr, t_ptr, grad_ptr, grad_t_ptr, partial_ptr, planes: tl.int32, D: tl.int32, H: tl.int32,
                   W: tl.int32, tiles_w: tl.int32, tiles: tl.int32, steps: tl.int32,
                   alpha_w: tl.float64, w_w: tl.float64, w_h: tl.float64, w_d: tl.float64,
                   LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr,
                   DEPTH: tl.constexpr, ALIGN: tl.constexpr, WALK: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_W: tl.constexpr, VEC: tl.constexpr, BLOCK_STEPS: tl.constexpr):
    """partial[pid, 0] = the weighted loss of this program's lanes of its plane; those of its
    lanes that hold the plane before's last row go to partial[q, 1] of the same tile q of that
    plane; so that a fixed-order sum of the rows of a group's programs is the group's loss.

    WALK = DEPTH_WALK (3-D, every plane's rows start alike: H * W a multiple of ALIGN): a program
    owns a tile of a (sample, channel) volume and walks it through the depth, keeping the tiles
    at d - 1, d and d + 1 in registers, so that each element is read from memory and turned into
    a probability once. WALK = ROW_WALK (2-D, rows that start at a multiple of ALIGN, ALIGN = 1):
    a program owns BLOCK_H bands of `steps` rows of a plane and walks them down a row at a time,
    the same way (the column's neighbours in registers, its differences and their signs taken
    once). Else (PLANES) a program owns a tile of one plane and loads its neighbours."""
    pid = tl.program_id(0)
    tile = pid % tiles
    tile_h = tile // tiles_w
    tile_w = tile % tiles_w
    # the weights arrive as float64; a float32 launch rounds them here, once
    alpha_w = tl.full([], alpha_w, ACC)
    w_w = tl.full([], w_w, ACC)
    w_h = tl.full([], w_h, ACC)
    w_d = tl.full([], w_d, ACC)
    mine_out = partial_ptr + pid.to(tl.int64) * 2
    if WALK == ROW_WALK:
        plane_id = pid // tiles
        W64 = tl.full([], W, tl.int64)
        # [bands, vectors, VEC]: a thread's vector of VEC elements is the last axis
        w = (tile_w * BLOCK_W + tl.arange(0, BLOCK_W // VEC)[None, :, None] * VEC
             + tl.arange(0, VEC)[None, None, :])
        h = tile_h * (BLOCK_H * steps) + tl.arange(0, BLOCK_H)[:, None, None] * steps  # each band's first row
        offs = (plane_id.to(tl.int64) * H + h) * W64 + w
        in_row = w < W
        mine = in_row & (h < H)
        x = tl.load(x_ptr + offs, mask=mine, other=0.5).to(ACC)
        p, e = _prob_exp(x, LOGITS)
        # the sign of the pair (row above, band's first row) (its loss is the band above's)
        s_up = sign(x - _load_value(x_ptr + offs - W64, mine & (h > 0), x, ACC))
        acc = tl.zeros([BLOCK_H, BLOCK_W // VEC, VEC], ACC)
        # BLOCK_STEPS rows a pass (steps is a multiple of it): the next row's values take the
        # place of the row's without register copies
        for step in range(0, steps, BLOCK_STEPS):
            for sub in tl.static_range(BLOCK_STEPS):
                loss, x, p, e, s_up = _row_step(x_ptr, t_ptr, grad_ptr, grad_t_ptr, offs + (step + sub) * W64,
                                                in_row, w, h + (step + sub), x, p, e, s_up, H, W, alpha_w, w_w, w_h,
                                                LOGITS, GRAD, GRAD_T, ACC)
                acc += loss
        tl.store(mine_out, tl.sum(acc))
        tl.store(mine_out + 1, tl.zeros([], ACC))
    elif WALK == DEPTH_WALK:
        volume = pid // tiles
        plane = tl.full([], H, tl.int64) * W
        if ALIGN > 1:
            offs, mine, w, h, _ = _tile_layout(volume.to(tl.int64) * D, tile_h * BLOCK_H, tile_w, planes - 1, H, W, ALIGN,
                                               BLOCK_H, BLOCK_W, EXACT=False)
            plane = tl.multiple_of(plane, ALIGN)  # (what WALK means)
            acc = tl.zeros([BLOCK_H, BLOCK_W], ACC)
        else:  # rows in vectors of VEC, as the row walk's
            w = (tile_w * BLOCK_W + tl.arange(0, BLOCK_W // VEC)[None, :, None] * VEC
                 + tl.arange(0, VEC)[None, None, :])
            h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)[:, None, None]
            offs = (volume.to(tl.int64) * D * H + h) * W + w
            mine = (w < W) & (h < H)
            acc = tl.zeros([BLOCK_H, BLOCK_W // VEC, VEC], ACC)
        x = tl.load(x_ptr + offs, mask=mine).to(ACC)
        p, e = _prob_exp(x, LOGITS)
        s_front = tl.zeros_like(p)  # d = 0 has no front neighbour
        for d in range(0, D):
            here = offs + d * plane
            has_back = mine & (d + 1 < D)
            # (where has_back fails, the next step has nothing of its own: what comes is unused)
            x_next = tl.load(x_ptr + here + plane, mask=has_back).to(ACC)
            p_next, e_next = _prob_exp(x_next, LOGITS)
            # BCE's exp(-|x|) comes with the sigmoid; with gradients to write, keeping it a step
            # would take the walk past 128 registers, so it is taken again
            e_here = exp_neg_abs(x) if GRAD or GRAD_T else e
            # the pair (this plane, the one behind): its loss here, its sign for both planes
            d_back = tl.where(has_back, p_next - p, 0.0)  # (see _axis)
            s_back = sign(tl.where(has_back, x_next - x, 0.0))
            tv, tv_loss = _column_terms(x_ptr, here, mine, h, x, p, x, p, mine, x, H, W, w_h, w_d, LOGITS, ACC, False)
            acc += _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, here, mine, w, x, p, e_here,
                              tv + w_d * (s_front - s_back), tv_loss + w_d * tl.abs(d_back), W, alpha_w, w_w,
                              LOGITS, GRAD, GRAD_T, ACC)
            s_front = s_back
            x = x_next
            p = p_next
            e = e_next
        tl.store(mine_out, tl.sum(acc))
        tl.store(mine_out + 1, tl.zeros([], ACC))
    else:
        plane_id = pid // tiles  # (sample, channel, depth)
        exact = False  # (ALIGN = 1: every row ends where it should already)
        if ALIGN > 1:
            exact = (plane_id == planes - 1) & ((tile_h + 1) * BLOCK_H >= H)
        if exact:
            # the tile with the tensor's last row, in halves: it is one of few, and whole it
            # would set the registers of every program
            total, before = _plane_tile(x_ptr, t_ptr, grad_ptr, grad_t_ptr, plane_id, tile_h, tile_w, planes - 1, D,
                                        H, W, alpha_w, w_w, w_h, w_d, LOGITS, GRAD, GRAD_T, ACC, DEPTH, ALIGN,
                                        BLOCK_H, BLOCK_W, ROWS=BLOCK_H // 2 if BLOCK_H >= 4 else BLOCK_H, EXACT=True)
        else:
            total, before = _plane_tile(x_ptr, t_ptr, grad_ptr, grad_t_ptr, plane_id, tile_h, tile_w, planes - 1, D,
                                        H, W, alpha_w, w_w, w_h, w_d, LOGITS, GRAD, GRAD_T, ACC, DEPTH, ALIGN,
                                        BLOCK_H, BLOCK_W, ROWS=BLOCK_H, EXACT=False)
        tl.store(mine_out, total)
        # to the same tile of the plane before; plane 0 (whose before is 0) to that of the last
        # plane, which no other program writes to
        slot = tl.where(plane_id > 0, pid - tiles, pid - tiles + planes * tiles)
        tl.store(partial_ptr + slot.to(tl.int64) * 2 + 1, before)


def kernel_shape(spatial, weights, group_elems):
    """(D, H, W) and their TV weights as the kernel sees a group (a sample for reduction="none",
    else the tensor): spatial axes of length 1 (which have no differences) are dropped, and where
    fewer than two remain, the group's other elements (channels, samples) become rows of
    weight 0, so that no plane is a single row or column and rows stay long enough to vectorise.
    spatial, weights: the spatial extents and their weights, outermost first."""
    kept = [(length, weight) for length, weight in zip(spatial, weights) if length > 1]
    if len(kept) < 2:
        width, weight = kept[0] if kept else (group_elems, 0.0)
        kept = [(group_elems // width, 0.0), (width, weight)]
    (D, w_d), (H, w_h), (W, w_w) = [(1, 0.0)] * (3 - len(kept)) + kept
    return (D, H, W), (w_d, w_h, w_w)


def tile_shape(H: int, W: int, walk: int, itemsize: int, grad_itemsize: int, acc: torch.dtype):
    """(BLOCK_H, BLOCK_W, num_warps): rows of up to 128 columns (one more tile a row where W is
    not a multiple of ALIGN), TILE elements in all (a quarter for float64), at least 2 rows
    (Triton's alignment analysis fails on a one-row tile with hints) and at least a warp of
    16-byte vectors: a small plane gets fewer warps rather than narrower vectors. The walks
    take 16 bytes a thread of the input: a wider tile would give the target's loads (bytes)
    more elements a thread than the gradient's stores can take, and a trip through shared
    memory between them in every step; the depth walk, which keeps three tiles, of the wider of
    input and gradient (float16's gradient, kept in float32, takes 8 elements a thread past 128
    registers)."""
    unit = max(itemsize, grad_itemsize) if walk == DEPTH_WALK else itemsize  # the bytes that fill 16 a thread
    block_w = min(max(triton.next_power_of_2(row_span(W)), 16), 128)
    tile = 128 * 16 // unit if walk != PLANES else TILE // (4 if acc == torch.float64 else 1)
    block_h = max(min(tile // block_w, triton.next_power_of_2(H)), 2)
    block_w = max(block_w, 32 * 16 // unit // block_h)
    return block_h, block_w, max(1, min(NUM_WARPS, block_h * block_w * unit // (32 * 16)))


def row_vector(W: int, unit: int) -> int:
    """The walks' vector along a row: 16 bytes of unit-byte elements, or the largest power of 2
    that divides W where that is less (a vector never straddles the end of a row)."""
    return min(16 // unit, W & -W)


def row_alignment(W: int) -> int:
    """Where tile rows start: at a multiple of ALIGN where rows do not start there already,
    else (and where a row is shorter, as the lanes before a row's start must lie in the one row
    before it) at the row's start."""
    return ALIGN if W >= ALIGN and W % ALIGN else 1


def row_span(W: int) -> int:
    """The columns that the tiles of a row cover, from the aligned start before its first element."""
    return W + (row_alignment(W) - 1 if W % row_alignment(W) else 0)


def seg_loss_fwd(input, target, alpha, beta, spatial_dims, from_logits, reduction, grad_input, grad_target,
                 check_range):
    """(loss, grad_input, grad_target) as the op pylosses::seg_loss_fwd; check_range: raise on
    probabilities outside [0, 1] (a host sync on a GPU), else the loss is NaN."""
    x, t = input.contiguous(), target.contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)  # same bytes
    batch = x.shape[0]
    n = x.numel()
    per_sample = n // batch if batch else 0
    mean_like = reduction != 2
    n_mean = n if reduction == 1 else per_sample
    inv_n = 1.0 / max(n_mean, 1) if mean_like else 1.0

    def axis_weight(length):
        return beta * inv_n * (length / (length - 1) if mean_like else 1.0) if length > 1 else 0.0

    gi = torch.empty(x.shape if grad_input else (0,), dtype=saved_grad_dtype(input.dtype), device=x.device)
    gt = torch.empty(x.shape if grad_target else (0,), dtype=saved_grad_dtype(target.dtype), device=x.device)
    acc = acc_torch_dtype(input.dtype, target.dtype)
    groups = batch if reduction == 0 else 1
    if n:
        spatial = x.shape[-spatial_dims:]
        (D, H, W), weights = kernel_shape(spatial, [axis_weight(length) for length in spatial], n // groups)
        planes = n // (H * W)  # (sample, channel, depth) planes, or what kernel_shape made them
        # (rows, columns and depths are int32, and the row walk's bands round H up by up to
        # ROW_STEPS tiles of rows: the row after the last must stay a 32-bit number)
        if max(D, H, W) >= 2**31 - 1024:
            raise ValueError(f"segmentation_loss (triton): spatial sizes must stay below 2**31 - 1024, "
                             f"got {tuple(spatial)}")
        walk = ((DEPTH_WALK if (H * W) % row_alignment(W) == 0 else PLANES) if D > 1 else
                (ROW_WALK if row_alignment(W) == 1 else PLANES)).value
        block_h, block_w, num_warps = tile_shape(H, W, walk, x.element_size(), gi.element_size(), acc)
        # the bytes of an element that a thread's 16 take (tile_shape)
        unit = max(x.element_size(), gi.element_size()) if walk == DEPTH_WALK else x.element_size()
        # rows a pass of the row walk: two where a thread's vector is 4 elements (float32), so
        # that a pass takes 8 elements a thread as the others do
        row_pass = 2 if walk == ROW_WALK and x.element_size() == 4 else 1
        steps = row_pass * triton.cdiv(min(ROW_STEPS, triton.cdiv(H, block_h)), row_pass) if walk == ROW_WALK else 1
        tiles_w = triton.cdiv(row_span(W), block_w)
        tiles = triton.cdiv(H, block_h * steps) * tiles_w
        programs = (planes // D if walk == DEPTH_WALK else planes) * tiles
        if programs >= 2**31:
            raise ValueError(f"segmentation_loss (triton): {tuple(x.shape)} needs {programs} programs, "
                             "more than a launch holds")
        partials = torch.empty((programs, 2), dtype=acc, device=x.device)
        with launch_device(x):
            seg_fwd_kernel[(programs,)](
                x, t, gi if grad_input else partials, gt if grad_target else partials, partials, planes, D, H, W,
                tiles_w, tiles, steps, alpha * inv_n, *weights[::-1],
                LOGITS=from_logits, GRAD=grad_input, GRAD_T=grad_target, ACC=acc_dtype(input.dtype, target.dtype),
                DEPTH=D > 1, ALIGN=row_alignment(W), WALK=walk, BLOCK_H=block_h, BLOCK_W=block_w,
                VEC=row_vector(W, unit) if walk != PLANES and row_alignment(W) == 1 else 1,
                BLOCK_STEPS=row_pass, num_warps=num_warps)
        loss = sum_groups(partials, groups).sum(dim=1)
    else:
        loss = torch.full((groups,), float("nan") if mean_like else 0.0, dtype=acc, device=x.device)
    if check_range and bool(torch.isnan(loss).any()):  # NaN: say why, as the CPU kernel does
        check_values(x, t, from_logits)
    result = torch.promote_types(input.dtype, target.dtype)
    loss = loss.to(result)
    return (loss if reduction == 0 else loss[0]), gi, gt
