"""The region losses with softmax over a label map, and with them the cross-entropy of DiceCELoss,
in Triton: the ops softmax_region_sums and softmax_region_sums_backward, with the semantics of
csrc/cpu/softmax_region.cpp (the specification: see there and the schema's comment in
pylosses/_ops.py) and the tiles of cross_entropy.py.

p_c is the softmax over the classes of a pixel's logits, t_c = [label == c]. The forward gives
each (sample, class)'s region sums of (p, t) over the pixels the mask keeps whose label is not
ignore_index (math::region_terms), the count of those whose label lies outside [0, C) in
sums[b, 0, 3], and with_ce the cross-entropy's sum of losses, D and count over the pixels whose
label lies in [0, C) and is not ignore_index (the mask does not apply to it). The backward gives
d/dx_c = p_c (G_c - sum_k p_k G_k) where the Dice takes the pixel, G_c = region_grad_p(p_c, t_c,
g), plus grad_ce[0] times the cross-entropy's A p_c - B_c where it counts; grad_ce[0] is read on
the device (no host sync), and a zero one adds nothing, whatever the logits.

The tiles are cross_entropy.py's (one warp a program, a pixel tile [LANES, THREADS, VEC], the
class axis one class tile in registers up to 32 classes, above that chunks walked twice, or three
times in the backward): no one-hot and no softmax tensor in memory. A program takes consecutive
tiles of one sample. Up to 32 classes each thread adds its pixels' terms of the three sums into
registers, a class tile's worth ([LANES, THREADS, CI] a sum), across the program's tiles, and
the program writes one partial row of (C, 4) sums at its end; above 32 classes a chunk's sums are
added across the warp and written for each tile (a row a tile: C sums a class do not fit in
registers; the partial rows then add about 4 / (pixels in a tile) of the input's bytes). The
cross-entropy's three sums are a program's, from registers. sum_groups adds a sample's rows, and
all programs' cross-entropy sums, in a fixed order: which tiles a program takes depends on the
shape only, so the sums have the same bits run after run. An input (B, C) (no spatial axis) takes
a tile a sample, one pixel of it used: correct, not fast.
"""

import torch
import triton
import triton.language as tl

from .common import acc_dtype, acc_torch_dtype, launch_device, reciprocal, sum_groups
from .cross_entropy import (PROGRAMS, _can_hold, _check_same_device, _class_max, _class_sum, _class_weights, _classes,
                            _exp, _labels, _load_logits, _load_piece, _log_sum, _span, _store_logits, _tile_threads,
                            check_label_map, check_weight, class_tiles, online_softmax, weight_rows)
from .region import L1, SQUARED, region_grad_p

SUMS = tl.constexpr(4)  # reference.REGION_SUMS: the mode's three sums and the count
CE_SUMS = tl.constexpr(3)  # the cross-entropy's: the sum of losses, D, the pixels that count


def check_args(op: str, input: torch.Tensor, labels: torch.Tensor, mask, mode: int, weight,
               label_smoothing: float) -> None:
    """csrc/op_checks.h's check_softmax_region_args and check_ce_options, with their messages and
    error types (TORCH_CHECK_VALUE: ValueError, TORCH_CHECK_TYPE: TypeError)."""
    if input.dim() < 2:
        raise ValueError(f"{op}: input must have a batch and a class axis, (B, C, spatial...), got shape "
                         f"{list(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be floating point, got {input.dtype}")
    check_label_map(op, input, labels, "labels")
    if mode not in (0, 1, 2):
        raise ValueError(f"{op}: mode must be 0 (linear), 1 (squared) or 2 (l1), got {mode}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be bool, got {mask.dtype}")
        if mask.shape != input.shape[:1] + (1,) + input.shape[2:]:
            raise ValueError(f"{op}: mask must have the shape (B, 1, spatial...) for input {list(input.shape)}, got "
                             f"{list(mask.shape)}")
        _check_same_device(op, input, "input", mask, "mask")
    if weight is not None:
        check_weight(op, input, weight)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must lie in [0, 1], got {label_smoothing}")


@triton.jit
def _pixels(t_ptr, m_ptr, t_base, p_base, limit, C, ignore_index, IGNORE: tl.constexpr, MASKED: tl.constexpr,
            EVEN_P: tl.constexpr, VEC: tl.constexpr):
    """(the label, -1 where the pixel does not count; whether it counts: its label lies in [0, C)
    and is not ignore_index (the cross-entropy's pixels); whether the Dice takes it: its label is
    not ignore_index and the mask keeps it; whether the Dice takes it with a label out of range)
    of each pixel of a tile, and whether it is one (within the sample)."""
    pixel_ok = _span(p_base, 0, VEC) < limit
    label, counts, bad = _labels(t_ptr, t_base, p_base, limit, pixel_ok, C, ignore_index, IGNORE, EVEN_P, VEC)
    dice = counts | bad
    if MASKED:  # (B, 1, spatial...): laid out as the labels
        keep = _load_piece(m_ptr, t_base, p_base, limit, 0, VEC, EVEN_P) != 0
        dice = dice & keep
        bad = bad & keep
    return label, counts, dice, bad, pixel_ok


@triton.jit
def _terms(p, t, MODE: tl.constexpr):
    """math::region_terms' first two sums of p (0 where the Dice does not take the pixel) and t
    (0 or 1; its own third term, t = t^2 = |t|)"""
    if MODE == L1:
        s0, s1 = tl.abs(p - t), p  # (p >= 0)
    elif MODE == SQUARED:
        s0, s1 = p * t, p * p
    else:
        s0, s1 = p * t, p
    return s0, s1


@triton.jit
def _ce_terms(log_sum, y_t, wy, w_t, counts, keep, smooth, weight_sum, first_lane, SMOOTH: tl.constexpr):
    """A pixel's cross-entropy (math::ce_loss: A L - kw y_t - s / C v wy, its A L in the first of
    the pixel's lanes, the rest each lane's for its classes: y_t and wy are the lane's), 0 where it
    does not count (also where its logits are not finite)."""
    kw = keep * w_t
    a = kw
    part = kw * y_t
    if SMOOTH:
        sv = smooth * counts.to(w_t.dtype)
        a += sv * weight_sum
        part += sv * wy
    return tl.where(counts, tl.where(first_lane, a * log_sum, 0.0) - part, 0.0)


@triton.jit
def _register_sums(x_ptr, t_ptr, m_ptr, w_ptr, x_base, t_base, p_base, limit, C, P, ignore_index, keep, smooth,
                   weight_sum, MODE: tl.constexpr, MASKED: tl.constexpr, CE: tl.constexpr, WEIGHT: tl.constexpr,
                   SMOOTH: tl.constexpr, IGNORE: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr,
                   ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, CI: tl.constexpr):
    """A tile whose class axis is one class tile: each thread's terms of the three sums of its
    classes ([LANES, THREADS, CI], its VEC pixels added), of the count of labels out of range and
    of the cross-entropy's three sums ([LANES, THREADS]; a pixel's in its first lane)."""
    label, counts, dice, bad, pixel_ok = _pixels(t_ptr, m_ptr, t_base, p_base, limit, C, ignore_index, IGNORE,
                                                 MASKED, EVEN_P, VEC)
    x = _load_logits(x_ptr, x_base, t_base, pixel_ok, 0, C, P, False, EVEN_P, EVEN_C, ACC, LANES, VEC, CI)
    cls, cls_ok = _classes(0, C, LANES, CI)
    y = x - _class_max(x)[:, :, :, None]  # <= 0; -inf past C (and in lanes past the last pixel: NaN)
    e = _exp(y)
    s = _class_sum(e)  # in [1, C]
    is_t = cls == label[:, :, :, None]
    taken = dice[:, :, :, None]
    # a select, so that a pixel left out (padding: NaN or inf logits, lanes past the last pixel) adds 0
    p = tl.where(taken, e * reciprocal(s)[:, :, :, None], 0.0)
    t = (is_t & taken).to(ACC)
    s0, s1 = _terms(p, t, MODE)
    first_lane = tl.arange(0, LANES)[:, None, None] == 0
    n_bad = tl.sum(tl.where(first_lane & bad, 1.0, 0.0), axis=2).to(ACC)
    if CE:
        if WEIGHT or SMOOTH:
            w_cls = _class_weights(w_ptr, x_base, 0, C, WEIGHT, ACC, LANES, VEC, CI)[0]
        else:
            w_cls = cls_ok.to(ACC)  # (unused)
        w_t = _class_sum(tl.where(is_t, w_cls, 0.0)) if WEIGHT else counts.to(ACC)
        y_t = tl.sum(tl.where(is_t, y, 0.0), axis=3)  # the lane's
        if SMOOTH:  # (0 past C, where w y = 0 * -inf)
            wy = w_cls * y
            wy = tl.sum(wy if EVEN_C else tl.where(cls_ok, wy, 0.0), axis=3)
        else:
            wy = y_t  # (unused)
        loss = _ce_terms(_log_sum(s), y_t, wy, w_t, counts, keep, smooth, weight_sum, first_lane, SMOOTH)
        ce0 = tl.sum(loss, axis=2)
        ce1 = tl.sum(tl.where(first_lane, w_t, 0.0), axis=2)
        ce2 = tl.sum(tl.where(first_lane & counts, 1.0, 0.0), axis=2).to(ACC)
    else:
        ce0, ce1, ce2 = n_bad, n_bad, n_bad  # (unused)
    return tl.sum(s0, axis=2), tl.sum(s1, axis=2), tl.sum(t, axis=2), n_bad, ce0, ce1, ce2


@triton.jit
def _store_class_sums(out_ptr, c0, C, s0, s1, s2, n_bad, BLOCK_C: tl.constexpr):
    """out[c, 0:4] for the classes c0 + [0, BLOCK_C) below C: (s0, s1, s2) and in column 3 the
    count of labels out of range at class 0, else 0."""
    cls = c0 + tl.arange(0, BLOCK_C)
    out = out_ptr + cls.to(tl.int64) * SUMS
    ok = cls < C
    tl.store(out, s0, mask=ok)
    tl.store(out + 1, s1, mask=ok)
    tl.store(out + 2, s2, mask=ok)
    tl.store(out + 3, tl.where(cls == 0, n_bad, 0.0).to(s0.dtype), mask=ok)


@triton.jit
def _chunked_sums(x_ptr, t_ptr, m_ptr, w_ptr, out_ptr, x_base, t_base, p_base, limit, C, P, ignore_index, keep,
                  smooth, MODE: tl.constexpr, MASKED: tl.constexpr, CE: tl.constexpr, WEIGHT: tl.constexpr,
                  SMOOTH: tl.constexpr, IGNORE: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr,
                  ACC: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """A tile of C > REGISTER_CLASSES classes, one lane a pixel: the first walk over the chunks
    gives the maximum and the sum of exponentials (and the cross-entropy's terms), the second the
    chunks' probabilities, whose sums over the tile's pixels are stored in the tile's row out (C,
    4). Returns the thread's terms of the cross-entropy's three sums ([1, THREADS])."""
    label, counts, dice, bad, pixel_ok = _pixels(t_ptr, m_ptr, t_base, p_base, limit, C, ignore_index, IGNORE,
                                                 MASKED, EVEN_P, VEC)
    m, s, x_t, w_t, wy, weight_sum = online_softmax(x_ptr, w_ptr, x_base, t_base, pixel_ok, label, C, P, False,
                                                    EVEN_C, EVEN_P, CE, CE and WEIGHT, CE and SMOOTH, ACC, VEC,
                                                    BLOCK_C)
    if CE:
        if not WEIGHT:
            w_t = counts.to(ACC)
        first_lane = tl.arange(0, 1)[:, None, None] == 0
        loss = _ce_terms(_log_sum(s), x_t - m, wy, w_t, counts, keep, smooth, weight_sum[:, :, None], first_lane,
                         SMOOTH)
        ce0 = tl.sum(loss, axis=2)
        ce1 = tl.sum(w_t, axis=2)
        ce2 = tl.sum(counts.to(ACC), axis=2)
    else:
        ce0 = tl.sum(s, axis=2)  # (unused)
        ce1, ce2 = ce0, ce0
    n_bad = tl.sum(bad.to(ACC))
    row, _ = _classes(0, BLOCK_C, 1, BLOCK_C)
    taken = dice[:, :, :, None]
    inv = reciprocal(s)[:, :, :, None]
    m = m[:, :, :, None]
    rel = label  # the label relative to the chunk's first class (see online_softmax)
    for c0 in range(0, C, BLOCK_C):
        x = _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, False, EVEN_P, EVEN_C, ACC, 1, VEC, BLOCK_C)
        p = tl.where(taken, _exp(x - m) * inv, 0.0)
        t = ((row == rel[:, :, :, None]) & taken).to(ACC)
        s0, s1 = _terms(p, t, MODE)
        _store_class_sums(out_ptr, c0, C, tl.sum(tl.sum(tl.sum(s0, axis=2), axis=1), axis=0),
                          tl.sum(tl.sum(tl.sum(s1, axis=2), axis=1), axis=0),
                          tl.sum(tl.sum(tl.sum(t, axis=2), axis=1), axis=0), n_bad, BLOCK_C)
        rel = tl.where(rel >= BLOCK_C, rel - BLOCK_C, -1)
    return ce0, ce1, ce2


# Triton compiles a kernel again for each pattern of its integer arguments (common.py): the counts
# and ignore_index are kept out of that; C and P, which decide the alignment of the logits' rows, are not.
@triton.jit(do_not_specialize=["tiles_per_sample", "programs_per_sample", "tiles", "ignore_index"])
def softmax_region_sums_kernel(x_ptr, t_ptr, m_ptr, w_ptr, partial_ptr, ce_partial_ptr, C: tl.int32, P: tl.int64,
                               tiles_per_sample: tl.int32, programs_per_sample: tl.int32, tiles: tl.int32,
                               ignore_index: tl.int64, label_smoothing: tl.float64, MODE: tl.constexpr,
                               MASKED: tl.constexpr, CE: tl.constexpr, WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                               IGNORE: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr,
                               CHUNKED: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                               BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The sums of the program's `tiles` tiles of BLOCK_P pixels of one sample: partial[program]
    (C, 4), or above 32 classes partial[tile] for each tile; with CE, ce_partial[program] (3)."""
    CI: tl.constexpr = BLOCK_C // LANES  # a thread's classes of a tile
    keep = tl.full([], 1.0 - label_smoothing, ACC)  # (float64 in, rounded once)
    smooth = tl.full([], label_smoothing / C.to(tl.float64), ACC)
    if WEIGHT:  # W, the sum of the weights, after them (cross_entropy.weight_rows)
        weight_sum = tl.load(w_ptr + C * VEC).to(ACC)
    else:
        weight_sum = C.to(ACC)
    pid = tl.program_id(0)
    sample = pid // programs_per_sample
    first = (pid - sample * programs_per_sample) * tiles
    last = tl.minimum(first + tiles, tiles_per_sample)
    row_size = C.to(tl.int64) * SUMS
    # The first tile gives the thread's sums their first values (and their layout: Triton keeps a
    # value a loop carries in the layout of its first value), the others are added in order
    x_base, t_base, p_base, limit = _tile_threads(0, sample, first, 0, C, P, False, LANES, VEC, BLOCK_P)
    if CHUNKED:
        tile_row = partial_ptr + (sample.to(tl.int64) * tiles_per_sample + first) * row_size
        ce0, ce1, ce2 = _chunked_sums(x_ptr, t_ptr, m_ptr, w_ptr, tile_row, x_base, t_base, p_base, limit, C, P,
                                      ignore_index, keep, smooth, MODE, MASKED, CE, WEIGHT, SMOOTH, IGNORE, EVEN_C,
                                      EVEN_P, ACC, VEC, BLOCK_C)
        for j in range(first + 1, last):
            x_base, t_base, p_base, limit = _tile_threads(0, sample, j, 0, C, P, False, LANES, VEC, BLOCK_P)
            tile_row = partial_ptr + (sample.to(tl.int64) * tiles_per_sample + j) * row_size
            c0, c1, c2 = _chunked_sums(x_ptr, t_ptr, m_ptr, w_ptr, tile_row, x_base, t_base, p_base, limit, C, P,
                                       ignore_index, keep, smooth, MODE, MASKED, CE, WEIGHT, SMOOTH, IGNORE, EVEN_C,
                                       EVEN_P, ACC, VEC, BLOCK_C)
            ce0 += c0
            ce1 += c1
            ce2 += c2
    else:
        s0, s1, s2, n_bad, ce0, ce1, ce2 = _register_sums(x_ptr, t_ptr, m_ptr, w_ptr, x_base, t_base, p_base, limit,
                                                          C, P, ignore_index, keep, smooth, weight_sum, MODE, MASKED,
                                                          CE, WEIGHT, SMOOTH, IGNORE, EVEN_C, EVEN_P, ACC, LANES, VEC,
                                                          CI)
        for j in range(first + 1, last):
            x_base, t_base, p_base, limit = _tile_threads(0, sample, j, 0, C, P, False, LANES, VEC, BLOCK_P)
            a0, a1, a2, a3, c0, c1, c2 = _register_sums(x_ptr, t_ptr, m_ptr, w_ptr, x_base, t_base, p_base, limit, C,
                                                        P, ignore_index, keep, smooth, weight_sum, MODE, MASKED, CE,
                                                        WEIGHT, SMOOTH, IGNORE, EVEN_C, EVEN_P, ACC, LANES, VEC, CI)
            s0 += a0
            s1 += a1
            s2 += a2
            n_bad += a3
            ce0 += c0
            ce1 += c1
            ce2 += c2
        # the fixed-order sums over the threads, a class at [lane, row] = lane CI + row
        _store_class_sums(partial_ptr + pid.to(tl.int64) * row_size, 0, C,
                          tl.reshape(tl.sum(s0, axis=1), [BLOCK_C]), tl.reshape(tl.sum(s1, axis=1), [BLOCK_C]),
                          tl.reshape(tl.sum(s2, axis=1), [BLOCK_C]), tl.sum(n_bad), BLOCK_C)
    if CE:
        out = ce_partial_ptr + pid.to(tl.int64) * CE_SUMS
        tl.store(out, tl.sum(ce0))
        tl.store(out + 1, tl.sum(ce1))
        tl.store(out + 2, tl.sum(ce2))


@triton.jit
def _grad_rows(g_ptr, x_base, c0, C, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, CI: tl.constexpr):
    """A class tile's gradients g0 and g1 of the sums from class c0 (0 past C): g_ptr is the
    sample's (2, C) of them, each repeated VEC times, read as _class_weights reads weights."""
    g0 = _class_weights(g_ptr, x_base, c0, C, True, ACC, LANES, VEC, CI)[0]
    g1 = _class_weights(g_ptr + C * VEC, x_base, c0, C, True, ACC, LANES, VEC, CI)[0]
    return g0, g1


@triton.jit
def _ce_counts(counts, ce_scale):
    """Where the cross-entropy's gradient is added: the pixel counts and ce_scale is not 0 (a select:
    Triton's interpreter has no & of a tensor and a scalar bool)."""
    return tl.where(ce_scale != 0.0, counts, False)


@triton.jit
def _ce_factors(w_t, counts, ce_scale, keep, smooth, weight_sum):
    """The cross-entropy's gradient dx_c = a p_c - (kw [c is the label] + sv w_c), scaled by
    ce_scale: (a, kw, sv) of each pixel, 0 where it does not count or ce_scale is 0."""
    on = _ce_counts(counts, ce_scale)
    kw = tl.where(on, ce_scale * keep * w_t, 0.0)
    sv = tl.where(on, ce_scale * smooth, 0.0)
    return kw + sv * weight_sum, kw, sv


@triton.jit
def _register_grad(x_ptr, t_ptr, m_ptr, w_ptr, g_ptr, grad_ptr, x_base, t_base, p_base, limit, C, P, ignore_index,
                   keep, smooth, weight_sum, ce_scale, MODE: tl.constexpr, MASKED: tl.constexpr,
                   WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, IGNORE: tl.constexpr, EVEN_C: tl.constexpr,
                   EVEN_P: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                   CI: tl.constexpr):
    """The gradient of a tile whose class axis is one class tile, stored."""
    label, counts, dice, bad, pixel_ok = _pixels(t_ptr, m_ptr, t_base, p_base, limit, C, ignore_index, IGNORE,
                                                 MASKED, EVEN_P, VEC)
    x = _load_logits(x_ptr, x_base, t_base, pixel_ok, 0, C, P, False, EVEN_P, EVEN_C, ACC, LANES, VEC, CI)
    cls, cls_ok = _classes(0, C, LANES, CI)
    e = _exp(x - _class_max(x)[:, :, :, None])
    p = e * reciprocal(_class_sum(e))[:, :, :, None]  # (0 past C)
    is_t = cls == label[:, :, :, None]
    g0, g1 = _grad_rows(g_ptr, x_base, 0, C, ACC, LANES, VEC, CI)
    g = region_grad_p(p, is_t.to(ACC), g0, g1, MODE)  # (0 past C, where g0 = g1 = p = 0)
    g -= _class_sum(p * g)[:, :, :, None]
    dx = tl.where(dice[:, :, :, None], p * g, 0.0)
    if WEIGHT or SMOOTH:
        w_cls = _class_weights(w_ptr, x_base, 0, C, WEIGHT, ACC, LANES, VEC, CI)[0]
    else:
        w_cls = cls_ok.to(ACC)  # (unused)
    w_t = _class_sum(tl.where(is_t, w_cls, 0.0)) if WEIGHT else counts.to(ACC)
    a, kw, sv = _ce_factors(w_t, counts, ce_scale, keep, smooth, weight_sum)
    ce = a[:, :, :, None] * p - tl.where(is_t, kw[:, :, :, None], 0.0)
    if SMOOTH:
        ce -= sv[:, :, :, None] * w_cls
    # 0 where the pixel does not count, whatever its logits (padding)
    dx += tl.where(_ce_counts(counts, ce_scale)[:, :, :, None], ce, 0.0)
    _store_logits(grad_ptr, dx, x_base, t_base, pixel_ok, 0, C, P, False, EVEN_P, EVEN_C, LANES, VEC, CI)


@triton.jit
def _chunked_grad(x_ptr, t_ptr, m_ptr, w_ptr, g_ptr, grad_ptr, x_base, t_base, p_base, limit, C, P, ignore_index,
                  keep, smooth, weight_sum, ce_scale, MODE: tl.constexpr, MASKED: tl.constexpr,
                  WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, IGNORE: tl.constexpr, EVEN_C: tl.constexpr,
                  EVEN_P: tl.constexpr, ACC: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """The gradient of a tile of C > REGISTER_CLASSES classes, one lane a pixel: three walks over
    the chunks, for the maximum and the sum of exponentials (and the label's weight), for sum_k
    p_k G_k, and for the gradient, stored (the second and third read the tile again from L1/L2)."""
    label, counts, dice, bad, pixel_ok = _pixels(t_ptr, m_ptr, t_base, p_base, limit, C, ignore_index, IGNORE,
                                                 MASKED, EVEN_P, VEC)
    m, s, _, w_t, _, _ = online_softmax(x_ptr, w_ptr, x_base, t_base, pixel_ok, label, C, P, False, EVEN_C, EVEN_P,
                                        False, WEIGHT, False, ACC, VEC, BLOCK_C)
    if not WEIGHT:
        w_t = counts.to(ACC)
    a, kw, sv = _ce_factors(w_t, counts, ce_scale, keep, smooth, weight_sum)
    row, _ = _classes(0, BLOCK_C, 1, BLOCK_C)
    inv = reciprocal(s)[:, :, :, None]
    m = m[:, :, :, None]
    dot = s * 0.0
    rel = label
    for c0 in range(0, C, BLOCK_C):
        x = _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, False, EVEN_P, EVEN_C, ACC, 1, VEC, BLOCK_C)
        p = _exp(x - m) * inv
        g0, g1 = _grad_rows(g_ptr, x_base, c0, C, ACC, 1, VEC, BLOCK_C)
        dot += _class_sum(p * region_grad_p(p, (row == rel[:, :, :, None]).to(ACC), g0, g1, MODE))
        rel = tl.where(rel >= BLOCK_C, rel - BLOCK_C, -1)
    dot = dot[:, :, :, None]
    taken = dice[:, :, :, None]
    ce_on = _ce_counts(counts, ce_scale)[:, :, :, None]
    rel = label
    for c0 in range(0, C, BLOCK_C):
        x = _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, False, EVEN_P, EVEN_C, ACC, 1, VEC, BLOCK_C)
        p = _exp(x - m) * inv
        is_t = row == rel[:, :, :, None]
        g0, g1 = _grad_rows(g_ptr, x_base, c0, C, ACC, 1, VEC, BLOCK_C)
        dx = tl.where(taken, p * (region_grad_p(p, is_t.to(ACC), g0, g1, MODE) - dot), 0.0)
        ce = a[:, :, :, None] * p - tl.where(is_t, kw[:, :, :, None], 0.0)
        if SMOOTH:
            ce -= sv[:, :, :, None] * _class_weights(w_ptr, x_base, c0, C, WEIGHT, ACC, 1, VEC, BLOCK_C)[0]
        dx += tl.where(ce_on, ce, 0.0)
        _store_logits(grad_ptr, dx, x_base, t_base, pixel_ok, c0, C, P, False, EVEN_P, EVEN_C, 1, VEC, BLOCK_C)
        rel = tl.where(rel >= BLOCK_C, rel - BLOCK_C, -1)


@triton.jit(do_not_specialize=["tiles_per_sample", "programs_per_sample", "tiles", "ignore_index"])
def softmax_region_grad_kernel(x_ptr, t_ptr, m_ptr, w_ptr, g_ptr, grad_ce_ptr, grad_ptr, C: tl.int32, P: tl.int64,
                               tiles_per_sample: tl.int32, programs_per_sample: tl.int32, tiles: tl.int32,
                               ignore_index: tl.int64, label_smoothing: tl.float64, MODE: tl.constexpr,
                               MASKED: tl.constexpr, WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                               IGNORE: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr,
                               CHUNKED: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                               BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The input's gradient of the program's `tiles` tiles of one sample, from its rows of the
    sums' gradients (g_ptr: (B, 2, C), each repeated VEC times) and grad_ce[0]."""
    CI: tl.constexpr = BLOCK_C // LANES
    keep = tl.full([], 1.0 - label_smoothing, ACC)
    smooth = tl.full([], label_smoothing / C.to(tl.float64), ACC)
    if WEIGHT:
        weight_sum = tl.load(w_ptr + C * VEC).to(ACC)
    else:
        weight_sum = C.to(ACC)
    ce_scale = tl.load(grad_ce_ptr).to(ACC)
    pid = tl.program_id(0)
    sample = pid // programs_per_sample
    first = (pid - sample * programs_per_sample) * tiles
    g_sample = g_ptr + sample.to(tl.int64) * 2 * C * VEC
    for j in range(first, tl.minimum(first + tiles, tiles_per_sample)):
        x_base, t_base, p_base, limit = _tile_threads(0, sample, j, 0, C, P, False, LANES, VEC, BLOCK_P)
        if CHUNKED:
            _chunked_grad(x_ptr, t_ptr, m_ptr, w_ptr, g_sample, grad_ptr, x_base, t_base, p_base, limit, C, P,
                          ignore_index, keep, smooth, weight_sum, ce_scale, MODE, MASKED, WEIGHT, SMOOTH, IGNORE,
                          EVEN_C, EVEN_P, ACC, VEC, BLOCK_C)
        else:
            _register_grad(x_ptr, t_ptr, m_ptr, w_ptr, g_sample, grad_ptr, x_base, t_base, p_base, limit, C, P,
                           ignore_index, keep, smooth, weight_sum, ce_scale, MODE, MASKED, WEIGHT, SMOOTH, IGNORE,
                           EVEN_C, EVEN_P, ACC, LANES, VEC, CI)


class _Layout:
    """How the tiles cover a sample's classes and pixels (cross_entropy.class_tiles), how many a
    program takes, and the partial rows a sample gets."""

    def __init__(self, n_samples: int, C: int, P: int, element_size: int):
        class_tiles(self, "softmax_region_sums", C, element_size)
        self.tiles_per_sample = triton.cdiv(P, self.block_p)
        self.even_p = P % self.block_p == 0
        self.tiles = max(1, triton.cdiv(n_samples * self.tiles_per_sample, PROGRAMS))
        self.programs_per_sample = triton.cdiv(self.tiles_per_sample, self.tiles)
        self.programs = n_samples * self.programs_per_sample
        self.rows_per_sample = self.tiles_per_sample if self.chunked else self.programs_per_sample
        # (tile and program ids are int32: a sample's last program's first tile + tiles too)
        if n_samples * self.tiles_per_sample >= 2**31 or self.programs_per_sample * self.tiles >= 2**31:
            raise ValueError(f"softmax_region_sums (triton): {n_samples} samples of {P} pixels need more tiles than a "
                             "launch holds")

    def arguments(self):
        return self.tiles_per_sample, self.programs_per_sample, self.tiles

    def constexprs(self):
        return dict(EVEN_C=self.even_c, EVEN_P=self.even_p, CHUNKED=self.chunked, LANES=self.lanes, VEC=self.vec,
                    BLOCK_C=self.block_c, BLOCK_P=self.block_p, num_warps=1, num_stages=1)


def _operands(input, labels, mask, weight):
    """(input, labels, mask as uint8 or None, weight rows or None, layout) as the kernels read them."""
    x, t = input.contiguous(), labels.contiguous()
    m = mask.contiguous().view(torch.uint8) if mask is not None else None
    B, C = x.shape[:2]
    layout = _Layout(B, C, x.numel() // (B * C), x.element_size())
    w = weight_rows(weight.to(device=x.device, dtype=acc_torch_dtype(x.dtype)).contiguous(), layout.vec) \
        if weight is not None else None
    return x, t, m, w, layout


def softmax_region_sums(input: torch.Tensor, labels: torch.Tensor, mask, mode: int, weight, ignore_index: int,
                        label_smoothing: float, with_ce: bool):
    """(sums (B, C, 4), ce (3)) as the op pylosses::softmax_region_sums."""
    check_args("softmax_region_sums", input, labels, mask, mode, weight, label_smoothing)
    B, C = input.shape[:2]
    acc = acc_torch_dtype(input.dtype)
    if input.numel() == 0:
        return (torch.zeros((B, C, SUMS.value), dtype=acc, device=input.device),
                torch.zeros((CE_SUMS.value,), dtype=acc, device=input.device))
    x, t, m, w, layout = _operands(input, labels, mask, weight)
    partials = torch.empty((B * layout.rows_per_sample, C * SUMS.value), dtype=acc, device=x.device)
    ce_partials = torch.empty((layout.programs if with_ce else 0, CE_SUMS.value), dtype=acc, device=x.device)
    P = x.numel() // (B * C)
    with launch_device(x):
        softmax_region_sums_kernel[(layout.programs,)](
            x, t, m if m is not None else partials, w if w is not None else partials, partials,
            ce_partials if with_ce else partials, C, P, *layout.arguments(), ignore_index, label_smoothing,
            MODE=mode, MASKED=m is not None, CE=with_ce, WEIGHT=w is not None, SMOOTH=label_smoothing != 0.0,
            IGNORE=_can_hold(t.dtype, ignore_index), ACC=acc_dtype(x.dtype), **layout.constexprs())
    sums = sum_groups(partials, B).view(B, C, SUMS.value)
    ce = sum_groups(ce_partials, 1).view(CE_SUMS.value) if with_ce else \
        torch.zeros((CE_SUMS.value,), dtype=acc, device=x.device)
    return sums, ce


def softmax_region_sums_backward(grad_sums: torch.Tensor, grad_ce: torch.Tensor, input: torch.Tensor,
                                 labels: torch.Tensor, mask, mode: int, weight, ignore_index: int,
                                 label_smoothing: float) -> torch.Tensor:
    """The input's gradient as the op pylosses::softmax_region_sums_backward."""
    op = "softmax_region_sums_backward"
    check_args(op, input, labels, mask, mode, weight, label_smoothing)
    B, C = input.shape[:2]
    if grad_sums.shape != (B, C, SUMS.value):
        raise ValueError(f"{op}: grad_sums must have the shape (B, C, 4), got {list(grad_sums.shape)}")
    if grad_ce.shape != (CE_SUMS.value,):
        raise ValueError(f"{op}: grad_ce must have the shape (3), got {list(grad_ce.shape)}")
    _check_same_device(op, input, "input", grad_sums, "grad_sums")
    _check_same_device(op, input, "input", grad_ce, "grad_ce")
    grad = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if input.numel() == 0:
        return grad
    x, t, m, w, layout = _operands(input, labels, mask, weight)
    acc = acc_torch_dtype(x.dtype)
    # the sample's g0 and g1 rows, each class's repeated VEC times (see _grad_rows): (B, 2, C VEC)
    g = grad_sums[..., :2].to(acc).transpose(1, 2).repeat_interleave(layout.vec, dim=2).contiguous()
    grad_ce = grad_ce.to(acc).contiguous()
    with launch_device(x):
        softmax_region_grad_kernel[(layout.programs,)](
            x, t, m if m is not None else g, w if w is not None else g, g, grad_ce, grad, C, x.numel() // (B * C),
            *layout.arguments(), ignore_index, label_smoothing, MODE=mode, MASKED=m is not None,
            WEIGHT=w is not None, SMOOTH=label_smoothing != 0.0, IGNORE=_can_hold(t.dtype, ignore_index),
            ACC=acc_dtype(x.dtype), **layout.constexprs())
    return grad
