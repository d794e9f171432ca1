"""The multi-class cross-entropy (torch.nn.functional.cross_entropy over logits (B, C, spatial...)
and class-index maps) in Triton: the op cross_entropy_fwd, with the per-pixel math of
csrc/cross_entropy_math.h, the loss and the gradient in one pass over the logits.

The contiguous input is B samples of C planes of P = prod(spatial) pixels: a pixel's C logits
lie P apart, and a class's logits of consecutive pixels are consecutive. A program (one warp)
walks tiles of BLOCK_P consecutive pixels of one sample, so that a tile's loads along the pixels
are contiguous: 128-bit where P is a multiple of 16 (EVEN_P: no masks where P is a multiple of
BLOCK_P). A thread holds VEC consecutive pixels (16 bytes of the input) of CI classes, and LANES
lanes share those pixels, each with CI of their classes: a pixel tile is [LANES, THREADS, VEC],
every per-pixel value (label, maximum, sums, loss) a copy in each lane of the pixel, and a class
tile [LANES, THREADS, VEC, CI]. A class sum is additions in registers and log2(LANES) rounds of
butterfly shuffles; no value changes layout, so nothing needs shared memory (the 16-bit variants
above 32 classes still get 1 KiB of it from Triton on sm_90; the gate's table). Triton
picks layouts itself, so the kernel is written for it: the rows of a class tile are loaded and
stored one at a time and joined in registers (an axis a join makes is the thread's, where Triton
3.6 and 3.8 would give a fourth loaded axis lanes in opposite orders); one warp a program, for
the same reason; the label's logit and weight are selects, not gathers; int64 labels are loaded
16 bytes at a time and joined; the weights are read as rows, each repeated VEC times (W, their
sum, follows them); what a loop
carries starts as zeros made from the labels (see there).

For C up to 32 the class axis is one class tile (BLOCK_C, the power of 2 at or above C): the
logits are read once, and the maximum, the exponentials, their sum, the label's logit (a compare
and a select a class: no one-hot), the loss and the gradient come from registers. Above 32 a lane
takes all of a pixel's classes, in chunks of BLOCK_C walked twice: for the running maximum and
the sum of exponentials rescaled whenever the maximum grows (an online softmax; every term of the
sums has one sign), then, reading the chunks again from L1/L2, for the gradient. No one-hot,
softmax or log-softmax tensor is ever in memory. A (B, C) input (P = 1) is ROWS: a tile's pixels
are samples, whose classes are consecutive.

What a thread holds is sized for 64 registers (32 resident warps an SM, what a memory-bound
kernel needs): 8 logits of a 4- or 8-byte input, 16 of a 16-bit one (THREAD_VALUES), whose thread
also carries 8 pixels' state; MAX_REGISTERS holds ptxas to 64 where that does not spill: without
class weights and label smoothing, and for 16-bit inputs only up to 32 classes. The others take
more, unlimited rather than spilling (sm_90: 71 to 80 registers, 25 to 28 resident warps, for
float32 with weights and smoothing; 79 to 146, 13 to 25 warps, for 16-bit inputs; the sm_90
gate's table has them).

For "mean" and "sum" each thread adds its pixels' losses (without weights, one log of the product
of its pixels' sums of exponentials, where a log a pixel is 19 instructions; the terms of the
label's logit each lane for its own classes, with no shuffles), the weights of their labels (D,
the mean's denominator) and how many count; each program writes their fixed-order sum as a
partial, and sum_groups adds the partials in a fixed order. How many programs and which tiles
each takes depends on the shape only (PROGRAMS is a constant, not the device's size), so the loss
has the same bits run after run. "mean" returns the unnormalised gradient and grad_scale = 1 / D
computed on the device from the sums (0 when no pixel counts: torch's gradient is 0 there; a
pixel that does not count has a zero gradient anyway): no host sync, no second pass over the
gradient.

A label outside [0, C) that is not ignore_index is never raised on (that would be a device
assert, which ends the CUDA context, or a host sync): the pixel's loss and its gradient become
NaN, and so the "mean" or "sum" loss; the other pixels' gradients are kept (the pixel adds 0 to
D). The Python wrapper checks CPU tensors first, and so raises torch's IndexError there.
"""

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype

from .common import acc_dtype, acc_torch_dtype, check_classes, launch_device, reciprocal, sum_groups, to_element
from .segmentation import _log_plain as _log_sum  # (S in [1, C]; NaN only where the loss is)

# at::Reduction
NONE, MEAN, SUM = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
PARTIALS = tl.constexpr(3)  # a program's sums: the losses, D (the weights of the labels that count), the count

REGISTER_CLASSES = 32  # C up to this: the whole class axis is one tile in registers
VECTOR_BYTES = 16  # a thread's consecutive pixels of a class: one 128-bit access of the input
# Logits a thread holds of a class tile, by the input's element size: with their exponentials and
# its VEC pixels' state (what costs the registers: 8 pixels of a 16-bit input), within 64
# registers; more classes spread over more lanes (LANES), each with a copy of the per-pixel work.
# 16-bit inputs hold more, for fewer copies: their budget of instructions an element is half
# float32's.
THREAD_VALUES = {8: 8, 4: 8, 2: 16}
CHUNK_VALUES = {8: 8, 4: 8, 2: 8}  # (above 32 classes, a lane's chunk: 4, 2 and 1 classes)
# ptxas's register limit (.maxnreg): 64 keeps 32 warps resident. Variants without weights and
# smoothing fit it without spilling (16-bit inputs, 8 pixels a thread, up to 32 classes); the
# others spill at 64 and run without it, with fewer warps (see the module's docstring).
MAX_REGISTERS = 64

# The programs a launch aims at: two waves of an H200's 132 multiprocessors (32 of these one-warp
# programs resident on each), each walking its tiles. A constant, not the device's count: which
# tiles a program adds, and so the loss's bits, depend on the shape only.
PROGRAMS = 8192

_LOG2E = tl.constexpr(1.4426950408889634)


def check_ce_args(input: torch.Tensor, target: torch.Tensor, weight, label_smoothing: float, reduction: int) -> None:
    """csrc/op_checks.h's check_ce_args, with its messages and error types (TORCH_CHECK_VALUE:
    ValueError, TORCH_CHECK_TYPE: TypeError), for the launcher that the C++ checks do not guard."""
    op = "cross_entropy_fwd"
    if input.dim() < 2:
        raise ValueError(f"{op}: input must have a batch and a class axis, (B, C, spatial...), got shape "
                         f"{list(input.shape)}")
    if input.shape[1] == 0 and target.numel() != 0:
        raise ValueError(f"{op}: input must have at least one class, got shape {list(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be floating point, got {input.dtype}")
    check_label_map(op, input, target, "target")
    if weight is not None:
        check_weight(op, input, weight)
    if reduction not in (0, 1, 2):
        raise ValueError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must lie in [0, 1], got {label_smoothing}")


def check_label_map(op: str, input: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    """csrc/op_checks.h's check_label_map: class indices (B, spatial...) of int64, int32 or uint8."""
    if labels.shape != input.shape[:1] + input.shape[2:]:
        raise ValueError(f"{op}: {name} must have the input's shape without the class axis (axis 1), input "
                         f"{list(input.shape)}, got {name} {list(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise TypeError(f"{op}: {name} must hold class indices as int64, int32 or uint8, got {labels.dtype}")
    _check_same_device(op, input, "input", labels, name)


def check_weight(op: str, input: torch.Tensor, weight: torch.Tensor) -> None:
    """csrc/op_checks.h's check_ce_options, of a weight given: (C,), floating point, on the input's device."""
    if weight.dim() != 1 or weight.shape[0] != input.shape[1]:
        raise ValueError(f"{op}: weight must be 1-D with one value a class, ({input.shape[1]}), got shape "
                         f"{list(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be floating point, got {weight.dtype}")
    _check_same_device(op, input, "input", weight, "weight")


def _check_same_device(op, a, a_name, b, b_name):
    if a.device != b.device:
        raise ValueError(f"{op}: {a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


@triton.jit
def _exp(y):
    """exp(y) for y <= 0 (or -inf): float32's as 2**(y log2 e), one MUFU.EX2 and a multiply"""
    if y.dtype == tl.float64:
        e = tl.exp(y)
    else:
        e = tl.exp2(y * _LOG2E)
    return e


@triton.jit
def _exp_arg(d):
    """d as _exp_minus takes it: float32's in units of log 2"""
    if d.dtype == tl.float64:
        v = d
    else:
        v = d * _LOG2E
    return v


@triton.jit
def _exp_minus(y, d):
    """exp(y - d) for d from _exp_arg: float32's as 2**(y log2 e - d log2 e), an FFMA and a MUFU.EX2"""
    if y.dtype == tl.float64:
        e = tl.exp(y - d)
    else:
        e = tl.exp2(y * _LOG2E - d)
    return e


@triton.jit
def _multiply(a, b):
    return a * b


# Tiles. A pixel tile is [LANES, THREADS, VEC]: the lanes that share pixels, the threads, a thread's
# VEC consecutive pixels; every lane of a pixel holds its own copy of the pixel's values. A class
# tile adds a last axis, [LANES, THREADS, VEC, CI]: the thread's CI classes (the lane kk has classes
# kk CI + row). Its rows are loaded and stored one at a time ([LANES, THREADS, VEC], 16 bytes a
# thread) and joined in registers: Triton lays out an axis that a join makes in the thread, where
# a fourth axis of the loads would get lanes in one Triton version and not in another (3.6 and 3.8
# break the tie between axes of equal contiguity in opposite orders). One warp a program, for the
# same reason: the pixel axes then take the 32 lanes whatever that order.


@triton.jit
def _join_rows(r0, r1, r2, r3, CI: tl.constexpr):
    """Rows [...] (the first CI of them) as a tile [..., CI]: row r at [..., r]."""
    if CI == 1:
        t = tl.expand_dims(r0, 3)
    elif CI == 2:
        t = tl.join(r0, r1)
    else:
        tl.static_assert(CI == 4)
        t = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # row 2 i + j at [..., i, j], flat 2 i + j
        t = tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], 4])
    return t


@triton.jit
def _split_rows(t, CI: tl.constexpr):
    """_join_rows undone: the rows of a tile [..., CI] (the first CI; the others are row 0)."""
    if CI == 1:
        r0 = tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2]])
        r1, r2, r3 = r0, r0, r0
    elif CI == 2:
        r0, r1 = tl.split(t)
        r2, r3 = r0, r0
    else:
        h0, h1 = tl.split(tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], 2, 2]))
        r0, r2 = tl.split(h0)
        r1, r3 = tl.split(h1)
    return r0, r1, r2, r3


@triton.jit
def _row_classes(c0, LANES: tl.constexpr, CI: tl.constexpr):
    """The classes of a class tile's rows from class c0, [LANES, 1, 1] each (rows past CI: row 0's)."""
    first = c0 + tl.arange(0, LANES)[:, None, None] * CI
    return first, first + (1 % CI), first + (2 % CI), first + (3 % CI)


@triton.jit
def _classes(c0, C, LANES: tl.constexpr, CI: tl.constexpr):
    """The class of each element of a [LANES, 1, 1, CI] tile from class c0, and whether it is one (< C)."""
    k0, k1, k2, k3 = _row_classes(c0, LANES, CI)
    cls = _join_rows(k0, k1, k2, k3, CI)
    return cls, cls < C


@triton.jit
def _class_sum(v):
    """The sum over a class tile's classes, as a [1, THREADS, VEC] pixel tile: the thread's classes
    first (registers), then its lanes' (butterfly shuffles): one value a pixel shuffled."""
    return tl.sum(tl.sum(v, axis=3), axis=0, keep_dims=True)


@triton.jit
def _class_max(v):
    return tl.max(tl.max(v, axis=3), axis=0, keep_dims=True)


@triton.jit
def _tile_threads(tile, sample, j, n_samples, C, P, ROWS: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr,
                  BLOCK_P: tl.constexpr):
    """(the offset in the input of its class 0, in the target, its index, how many pixels there are)
    of each thread's first pixel of the tile (ROWS: the tile-th; else the j-th of the sample), as
    [LANES, THREADS, 1] tiles; a thread's VEC consecutive pixels are the last axis (_span)."""
    THREADS: tl.constexpr = BLOCK_P // VEC
    first = tl.arange(0, THREADS)[None, :, None] * VEC + tl.zeros([LANES, 1, 1], tl.int32)
    if ROWS:  # P = 1: the pixels are the samples, C apart
        pixel = tl.cast(tile, tl.int64) * BLOCK_P + first
        return pixel * C, pixel, pixel, n_samples
    else:
        p = tl.cast(j, tl.int64) * BLOCK_P + first
        b = tl.cast(sample, tl.int64)
        return b * C * P + p, b * P + p, p, P


@triton.jit
def _span(base, FIRST: tl.constexpr, WIDTH: tl.constexpr):
    """base + FIRST, ..., base + FIRST + WIDTH - 1 along the last axis: a thread's pixels."""
    return base + (FIRST + tl.arange(0, WIDTH))[None, None, :]


@triton.jit
def _row_offsets(x_base, t_base, cls_row, C, P, ROWS: tl.constexpr, VEC: tl.constexpr):
    """The offsets of a row of logits: a pixel's classes are P apart (ROWS: consecutive, the
    pixels C apart)."""
    if ROWS:
        offs = _span(t_base, 0, VEC) * C + cls_row
    else:
        offs = x_base + _span(cls_row.to(tl.int64) * P, 0, VEC)
    return offs


@triton.jit
def _load_row(ptr, pixel_ok, cls_row, C, EVEN_P: tl.constexpr, EVEN_C: tl.constexpr):
    """A row of logits, -inf past C and past the last pixel: masks only where the tile has such
    lanes (EVEN_P: P, or B in ROWS, a multiple of BLOCK_P; EVEN_C: C a multiple of the classes a
    tile or chunk takes)."""
    if EVEN_P and EVEN_C:
        x = tl.load(ptr)
    elif EVEN_P:
        x = tl.load(ptr, mask=cls_row < C, other=float("-inf"))
    elif EVEN_C:
        x = tl.load(ptr, mask=pixel_ok, other=float("-inf"))
    else:
        x = tl.load(ptr, mask=pixel_ok & (cls_row < C), other=float("-inf"))
    return x


@triton.jit
def _store_row(ptr, value, pixel_ok, cls_row, C, EVEN_P: tl.constexpr, EVEN_C: tl.constexpr):
    value = to_element(value, ptr)
    if EVEN_P and EVEN_C:
        tl.store(ptr, value)
    elif EVEN_P:
        tl.store(ptr, value, mask=cls_row < C)
    elif EVEN_C:
        tl.store(ptr, value, mask=pixel_ok)
    else:
        tl.store(ptr, value, mask=pixel_ok & (cls_row < C))


@triton.jit
def _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, ROWS: tl.constexpr, EVEN_P: tl.constexpr,
                 EVEN_C: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, CI: tl.constexpr):
    """The class tile of logits from class c0, in ACC."""
    k0, k1, k2, k3 = _row_classes(c0, LANES, CI)
    r0 = _load_row(x_ptr + _row_offsets(x_base, t_base, k0, C, P, ROWS, VEC), pixel_ok, k0, C, EVEN_P, EVEN_C)
    r1 = r0
    r2 = r0
    r3 = r0
    if CI >= 2:
        r1 = _load_row(x_ptr + _row_offsets(x_base, t_base, k1, C, P, ROWS, VEC), pixel_ok, k1, C, EVEN_P, EVEN_C)
    if CI == 4:
        r2 = _load_row(x_ptr + _row_offsets(x_base, t_base, k2, C, P, ROWS, VEC), pixel_ok, k2, C, EVEN_P, EVEN_C)
        r3 = _load_row(x_ptr + _row_offsets(x_base, t_base, k3, C, P, ROWS, VEC), pixel_ok, k3, C, EVEN_P, EVEN_C)
    return _join_rows(r0, r1, r2, r3, CI).to(ACC)


@triton.jit
def _store_logits(ptr, value, x_base, t_base, pixel_ok, c0, C, P, ROWS: tl.constexpr, EVEN_P: tl.constexpr,
                  EVEN_C: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, CI: tl.constexpr):
    """A class tile from class c0 stored, a row at a time."""
    k0, k1, k2, k3 = _row_classes(c0, LANES, CI)
    v0, v1, v2, v3 = _split_rows(value, CI)
    _store_row(ptr + _row_offsets(x_base, t_base, k0, C, P, ROWS, VEC), v0, pixel_ok, k0, C, EVEN_P, EVEN_C)
    if CI >= 2:
        _store_row(ptr + _row_offsets(x_base, t_base, k1, C, P, ROWS, VEC), v1, pixel_ok, k1, C, EVEN_P, EVEN_C)
    if CI == 4:
        _store_row(ptr + _row_offsets(x_base, t_base, k2, C, P, ROWS, VEC), v2, pixel_ok, k2, C, EVEN_P, EVEN_C)
        _store_row(ptr + _row_offsets(x_base, t_base, k3, C, P, ROWS, VEC), v3, pixel_ok, k3, C, EVEN_P, EVEN_C)


@triton.jit
def _store_pixels(ptr, value, pixel_ok, EVEN_P: tl.constexpr, LANES: tl.constexpr):
    """A value a pixel, stored by the first of its lanes."""
    first = tl.arange(0, LANES)[:, None, None] == 0
    tl.store(ptr, to_element(value, ptr), mask=first if EVEN_P else first & pixel_ok)


@triton.jit
def _load_piece(ptr, t_base, p_base, limit, FIRST: tl.constexpr, WIDTH: tl.constexpr, EVEN_P: tl.constexpr):
    if EVEN_P:
        t = tl.load(ptr + _span(t_base, FIRST, WIDTH))
    else:
        t = tl.load(ptr + _span(t_base, FIRST, WIDTH), mask=_span(p_base, FIRST, WIDTH) < limit, other=0)
    return t


@triton.jit
def _load_labels(t_ptr, t_base, p_base, limit, EVEN_P: tl.constexpr, VEC: tl.constexpr):
    """The labels of a thread's VEC pixels. Where they take more than 16 bytes (int64 labels of
    four or eight pixels, int32 of eight), in loads of 16 bytes joined in registers: Triton lays
    out a wider load with fewer pixels a thread than the logits', and the tile would go through
    shared memory."""
    PIECES: tl.constexpr = VEC * t_ptr.dtype.element_ty.primitive_bitwidth // 128
    if PIECES <= 1:
        t = _load_piece(t_ptr, t_base, p_base, limit, 0, VEC, EVEN_P)
    elif PIECES == 2:
        H: tl.constexpr = VEC // 2
        t = tl.join(_load_piece(t_ptr, t_base, p_base, limit, 0, H, EVEN_P),
                    _load_piece(t_ptr, t_base, p_base, limit, H, H, EVEN_P))  # [..., pixel in piece, piece]
        t = tl.reshape(tl.permute(t, (0, 1, 3, 2)), [t.shape[0], t.shape[1], VEC])
    else:
        tl.static_assert(PIECES == 4)
        Q: tl.constexpr = VEC // 4
        # piece 2 k + j at [..., j, k]
        t = tl.join(tl.join(_load_piece(t_ptr, t_base, p_base, limit, 0, Q, EVEN_P),
                            _load_piece(t_ptr, t_base, p_base, limit, Q, Q, EVEN_P)),
                    tl.join(_load_piece(t_ptr, t_base, p_base, limit, 2 * Q, Q, EVEN_P),
                            _load_piece(t_ptr, t_base, p_base, limit, 3 * Q, Q, EVEN_P)))
        t = tl.reshape(tl.permute(t, (0, 1, 4, 3, 2)), [t.shape[0], t.shape[1], VEC])
    return t


@triton.jit
def _labels(t_ptr, t_base, p_base, limit, pixel_ok, C, ignore_index, IGNORE: tl.constexpr, EVEN_P: tl.constexpr,
            VEC: tl.constexpr):
    """(the label, -1 where none counts; whether the pixel counts; whether its label is out of
    range) of each pixel of a tile. int64 labels are compared as int64 (never wrapped into
    range), narrower ones as int32, with ignore_index where a label of their dtype can equal it
    (IGNORE), else with nothing."""
    t = _load_labels(t_ptr, t_base, p_base, limit, EVEN_P, VEC)
    if t_ptr.dtype.element_ty == tl.int64:
        in_range = t.to(tl.uint64, bitcast=True) < C.to(tl.uint64)
        ignored = t == ignore_index
    else:
        t = t.to(tl.int32)
        in_range = t.to(tl.uint32, bitcast=True) < C.to(tl.uint32, bitcast=True)
        ignored = t == ignore_index.to(tl.int32)  # (IGNORE: it fits)
    if IGNORE:
        labelled = (ignored == 0) if EVEN_P else pixel_ok & (ignored == 0)
    else:
        labelled = (t == t) if EVEN_P else pixel_ok  # (all true)
    counts = labelled & in_range
    bad = labelled & (in_range == 0)
    return tl.where(counts, t, -1).to(tl.int32), counts, bad


@triton.jit
def _pixel_loss(log_sum, y_t, wy, w_t, counts, bad, keep, smooth, weight_sum, SMOOTH: tl.constexpr):
    """math::ce_loss of each pixel: 0 where it does not count (also for the lanes past the tile's
    last pixel, whose logits are -inf), NaN where its label is out of range."""
    loss = keep * w_t * (log_sum - y_t)
    if SMOOTH:
        loss += smooth * counts.to(loss.dtype) * (weight_sum * log_sum - wy)
    return tl.where(bad, float("nan"), tl.where(counts, loss, 0.0))


@triton.jit
def _grad_factors(s, w_t, counts, bad, keep, smooth, weight_sum, SMOOTH: tl.constexpr):
    """(A / S, the label's (1 - s) w_t, s / C v) of each pixel: dx_c = (A / S) e_c - B_c (math::ce_grad
    with p_c = e_c / S); A / S is 0 where the pixel does not count (whatever S) and NaN where its
    label is out of range, and so the whole gradient."""
    kw = keep * w_t
    if SMOOTH:
        sv = smooth * counts.to(w_t.dtype)
        a = kw + sv * weight_sum
    else:
        sv = w_t  # (unused)
        a = kw
    a = tl.where(bad, float("nan"), a)
    return tl.where(counts, a * reciprocal(s), a), kw, sv


@triton.jit
def _class_weights(w_ptr, x_base, c0, C, WEIGHT: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr,
                   VEC: tl.constexpr, CI: tl.constexpr):
    """The weights of the class tile's classes from c0 (0 past C; ones without weights), as the
    tile's [..., CI] (each repeated over the pixels), and their sum (weighted, each thread's: with
    LANES 1, no shuffles). Weighted, w_ptr is the weights each repeated VEC times: a row of them is
    then loaded as a row of logits is, 16 bytes a thread, and Triton lays it out as the tile (a load
    of the weights themselves, a gather or a broadcast, it lays out apart, and every use would go
    through shared memory)."""
    if WEIGHT:
        k0, k1, k2, k3 = _row_classes(c0, LANES, CI)
        zero = tl.zeros_like(x_base).to(tl.int32)  # (the pixel tile's threads: the rows' layout)
        r0 = tl.load(w_ptr + _span(zero + k0 * VEC, 0, VEC), mask=_span(zero + k0, 0, VEC) * 0 + k0 < C, other=0.0)
        r1 = r0
        r2 = r0
        r3 = r0
        if CI >= 2:
            r1 = tl.load(w_ptr + _span(zero + k1 * VEC, 0, VEC), mask=_span(zero + k1, 0, VEC) * 0 + k1 < C, other=0.0)
        if CI == 4:
            r2 = tl.load(w_ptr + _span(zero + k2 * VEC, 0, VEC), mask=_span(zero + k2, 0, VEC) * 0 + k2 < C, other=0.0)
            r3 = tl.load(w_ptr + _span(zero + k3 * VEC, 0, VEC), mask=_span(zero + k3, 0, VEC) * 0 + k3 < C, other=0.0)
        w = _join_rows(r0, r1, r2, r3, CI)
        weight_sum = tl.max(tl.sum(w, axis=3), axis=2)  # (a copy a pixel)
    else:
        w = _classes(c0, C, LANES, CI)[1].to(ACC)
        weight_sum = tl.sum(w)
    return w, weight_sum


@triton.jit
def _register_tile(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, x_base, t_base, p_base, limit, C, P, ignore_index,
                   keep, smooth, weight_sum, REDUCTION: tl.constexpr, GRAD: tl.constexpr, WEIGHT: tl.constexpr,
                   SMOOTH: tl.constexpr, IGNORE: tl.constexpr, ROWS: tl.constexpr, EVEN_C: tl.constexpr,
                   EVEN_P: tl.constexpr, ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, CI: tl.constexpr):
    """The losses of a tile whose class axis is one class tile (C <= REGISTER_CLASSES), and its
    gradients (GRAD): for "none" the losses are stored; returned, each thread's part of the sum of
    the losses, and the pixels' w_t and whether they count."""
    pixel_ok = _span(p_base, 0, VEC) < limit
    x = _load_logits(x_ptr, x_base, t_base, pixel_ok, 0, C, P, ROWS, EVEN_P, EVEN_C, ACC, LANES, VEC, CI)
    cls, cls_ok = _classes(0, C, LANES, CI)
    if WEIGHT or SMOOTH:  # (the weights' loads are L1 hits: a few rows of 16 bytes)
        w_cls = _class_weights(w_ptr, x_base, 0, C, WEIGHT, ACC, LANES, VEC, CI)[0]
    else:
        w_cls = cls_ok.to(ACC)  # (unused)
    label, counts, bad = _labels(t_ptr, t_base, p_base, limit, pixel_ok, C, ignore_index, IGNORE, EVEN_P, VEC)
    y = x - _class_max(x)[:, :, :, None]  # <= 0; -inf past C (and in lanes past the last pixel: NaN)
    e = _exp(y)
    s = _class_sum(e)  # in [1, C]
    is_t = cls == label[:, :, :, None]
    # the label's weight by a select a class, as its logit: a load of weight[label] would be a
    # gather, which Triton lays out apart from the tile (a trip through shared memory)
    w_t = _class_sum(tl.where(is_t, w_cls, 0.0)) if WEIGHT else counts.to(ACC)
    # The label's shifted logit and the smoothing's sum: for "none" summed over the classes; for
    # "mean" and "sum" only over the lane's (registers), since each lane then adds its own part of
    # the loss, kw y_t + s / C v wy, and the first lane the rest (A L): no shuffles for them
    y_t = tl.sum(tl.where(is_t, y, 0.0), axis=3)
    if SMOOTH:
        # terms of one sign (weights >= 0, y <= 0): no cancellation; 0 past C, where w y = 0 * -inf
        wy = w_cls * y
        wy = tl.sum(wy if EVEN_C else tl.where(cls_ok, wy, 0.0), axis=3)
    else:
        wy = y_t  # (unused)
    if REDUCTION == NONE:
        y_t = tl.sum(y_t, axis=0, keep_dims=True)
        wy = tl.sum(wy, axis=0, keep_dims=True)
    if GRAD:
        a_over_s, kw, sv = _grad_factors(s, w_t, counts, bad, keep, smooth, weight_sum, SMOOTH)
        # e <= 1; a pixel that does not count, whose A / S is 0, gets 0 also where its logits are not
        # finite (padding), as torch's: min(NaN, 1) is 1 (a constant operand, where a select of the
        # pixel's would hold a predicate a pixel)
        g = tl.minimum(e, 1.0) * a_over_s[:, :, :, None] - tl.where(is_t, kw[:, :, :, None], 0.0)
        if SMOOTH:
            g -= sv[:, :, :, None] * w_cls
        _store_logits(grad_ptr, g, x_base, t_base, pixel_ok, 0, C, P, ROWS, EVEN_P, EVEN_C, LANES, VEC, CI)
    if REDUCTION == NONE:
        loss = _pixel_loss(_log_sum(s), y_t, wy, w_t, counts, bad, keep, smooth, weight_sum, SMOOTH)
        _store_pixels(loss_ptr + _span(t_base, 0, VEC), loss, pixel_ok, EVEN_P, LANES)
        loss_sum = tl.sum(loss, axis=2)  # (unused)
    else:
        first_lane = tl.arange(0, LANES)[:, None, None] == 0
        if WEIGHT:
            # A L - kw y_t - s / C v wy, A L the first lane's; NaN where the label is out of range
            kw = keep * w_t
            a = kw
            part = kw * y_t
            if SMOOTH:
                sv = smooth * counts.to(ACC)
                a += sv * weight_sum
                part += sv * wy
            loss = tl.where(first_lane, a * _log_sum(s), 0.0) - part
            loss_sum = tl.sum(tl.where(bad & first_lane, float("nan"), tl.where(counts, loss, 0.0)), axis=2)
        else:
            # Without weights A = v (1 - s + s / C * C), and a pixel's loss is v L - v ((1 - s) y_t + s / C wy):
            # the sum of a thread's VEC pixels takes one log, of the product of their sums of
            # exponentials (each in [1, C <= 32]: at most 2**40 for 8 pixels), where a log a pixel is
            # 19 instructions
            lin = keep * y_t + smooth * wy if SMOOTH else keep * y_t
            lin = tl.where(bad & first_lane, float("nan"), tl.where(counts, lin, 0.0))
            log_prod = _log_sum(tl.reduce(tl.where(counts, s, 1.0), 2, _multiply))
            loss_sum = tl.where(tl.arange(0, LANES)[:, None] == 0, log_prod, 0.0) - tl.sum(lin, axis=2)
    return loss_sum, w_t, counts


@triton.jit
def online_softmax(x_ptr, w_ptr, x_base, t_base, pixel_ok, label, C, P, ROWS: tl.constexpr, EVEN_C: tl.constexpr,
                   EVEN_P: tl.constexpr, X_T: tl.constexpr, WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                   ACC: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """The first walk of a tile's classes in chunks of BLOCK_C, one lane a pixel (C > REGISTER_CLASSES):
    (the maximum m, the sum of exponentials s = sum_c exp(x_c - m), the label's logit (X_T, else 0),
    its weight (WEIGHT, else 0), the smoothing's sum of w_c (x_c - m) (SMOOTH) and the weights' sum
    W of each thread), per pixel of the tile ([1, THREADS, VEC]; W [1, THREADS]); label: -1 where
    none counts."""
    row, _ = _classes(0, BLOCK_C, 1, BLOCK_C)  # 0, ..., BLOCK_C - 1 as a [1, 1, 1, BLOCK_C] tile
    # The running maximum starts at the lowest finite value, not -inf: the first chunk's rescaling
    # factors are then exp(-huge) = 0 and 0 * (-huge) = 0, where -inf would give NaN; a pixel whose
    # logits are all -inf keeps it, and its loss is NaN as torch's.
    # (zeros made from the labels, not tl.zeros: the loop carries these, and Triton keeps a carried
    # value in the layout of its first value: a constant's default layout is not the tile's)
    zero = label.to(ACC) * 0.0
    if ACC == tl.float64:
        m = zero - 1.7976931348623157e308
    else:
        m = zero - 3.4028234663852886e38
    s = zero
    wy = zero  # sum of w_c (x_c - m) over the classes seen
    weight_sum = tl.sum(zero, axis=2)  # of the classes seen ([1, THREADS]: each thread's)
    x_t = zero
    w_t = zero
    # The label relative to the chunk's first class (-1 once past it), carried through a walk and
    # compared with the row's constant: a compare with the class c0 + row, or a carried label - c0,
    # the compiler turns into label - row hoisted out of the loop, a register a class and pixel; the
    # select keeps it one a pixel. (A load of the label's logit and weight would be a gather, which
    # Triton lays out apart from the tile: shared memory.)
    rel = label
    for c0 in range(0, C, BLOCK_C):
        x = _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, ROWS, EVEN_P, EVEN_C, ACC, 1, VEC, BLOCK_C)
        m_new = tl.maximum(m, _class_max(x))
        y = x - m_new[:, :, :, None]
        s = s * _exp(m - m_new) + _class_sum(_exp(y))
        if X_T:
            x_t += _class_sum(tl.where(row == rel[:, :, :, None], x, 0.0))
        if WEIGHT or SMOOTH:
            w_cls, w_chunk = _class_weights(w_ptr, x_base, c0, C, WEIGHT, ACC, 1, VEC, BLOCK_C)
            if WEIGHT:
                w_t += _class_sum(tl.where(row == rel[:, :, :, None], w_cls, 0.0))
            if SMOOTH:
                wy_chunk = w_cls * y
                wy_chunk = wy_chunk if EVEN_C else tl.where(c0 + row < C, wy_chunk, 0.0)
                wy += weight_sum[:, :, None] * (m - m_new) + _class_sum(wy_chunk)
                weight_sum += w_chunk
        m = m_new
        if WEIGHT or X_T:
            rel = tl.where(rel >= BLOCK_C, rel - BLOCK_C, -1)
    return m, s, x_t, w_t, wy, weight_sum


@triton.jit
def _chunked_tile(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, x_base, t_base, p_base, limit, C, P, ignore_index, keep,
                  smooth, REDUCTION: tl.constexpr, GRAD: tl.constexpr, WEIGHT: tl.constexpr, SMOOTH: tl.constexpr,
                  IGNORE: tl.constexpr, ROWS: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr,
                  ACC: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr):
    """_register_tile for C > REGISTER_CLASSES: the classes in chunks of BLOCK_C, each a thread's
    (one lane a pixel: the class sums are additions in registers), walked twice: for the
    maximum, the sum of exponentials (and w_t, and the smoothing's sum), then for the gradients
    and the label's logit. What a pixel carries through a walk is what costs registers (a
    thread has VEC pixels, 8 of a 16-bit input): the loss is A L - kw y_t - s / C v wy, its
    first and last terms taken before the second walk."""
    pixel_ok = _span(p_base, 0, VEC) < limit
    label, counts, bad = _labels(t_ptr, t_base, p_base, limit, pixel_ok, C, ignore_index, IGNORE, EVEN_P, VEC)
    row, _ = _classes(0, BLOCK_C, 1, BLOCK_C)  # 0, ..., BLOCK_C - 1 as a [1, 1, 1, BLOCK_C] tile
    X_T: tl.constexpr = not GRAD  # (with GRAD the second walk takes the label's logit)
    m, s, x_t, w_t, wy, weight_sum = online_softmax(x_ptr, w_ptr, x_base, t_base, pixel_ok, label, C, P, ROWS, EVEN_C,
                                                    EVEN_P, X_T, WEIGHT, SMOOTH, ACC, VEC, BLOCK_C)
    if not WEIGHT:
        w_t = counts.to(ACC)
    log_sum = _log_sum(s)
    kw = keep * w_t
    if SMOOTH:
        sv = smooth * counts.to(ACC)
        a = kw + sv * weight_sum[:, :, None]
    else:
        sv = kw  # (unused)
        a = kw
    a = tl.where(bad, float("nan"), a)
    # A L - s / C v wy: for "mean" and "sum" the thread's sum of them (NaN where a label is out of range)
    first_terms = a * log_sum
    if SMOOTH:
        first_terms -= sv * wy
    first_terms = tl.where(counts | bad, first_terms, 0.0)
    if REDUCTION != NONE:
        first_terms = tl.sum(first_terms, axis=2)
    if GRAD:
        # A p_c = exp((x_c - m) - d), d = log S - log A (+inf where A = 0, a pixel that does not
        # count): x_c - m is exact near the maximum, and d small, so that p_c has float32's accuracy
        # whatever the logits' magnitude (exp(x_c - logsumexp) would lose it above a few hundred)
        if WEIGHT:
            d = log_sum - tl.log(a)
        else:  # (A = v, or NaN)
            d = tl.where(bad, float("nan"), tl.where(counts, log_sum, float("inf")))
        d = _exp_arg(d)[:, :, :, None]
        rel = label
        for c0 in range(0, C, BLOCK_C):
            x = _load_logits(x_ptr, x_base, t_base, pixel_ok, c0, C, P, ROWS, EVEN_P, EVEN_C, ACC, 1, VEC, BLOCK_C)
            is_t = row == rel[:, :, :, None]
            x_t += _class_sum(tl.where(is_t, x, 0.0))
            # (without weights the label's (1 - s) w_t is 1 - s: is_t holds only where the pixel counts)
            g = _exp_minus(x - m[:, :, :, None], d) - tl.where(is_t, kw[:, :, :, None] if WEIGHT else keep, 0.0)
            if SMOOTH:
                g -= sv[:, :, :, None] * _class_weights(w_ptr, x_base, c0, C, WEIGHT, ACC, 1, VEC, BLOCK_C)[0]
            g = tl.where((counts | bad)[:, :, :, None], g, 0.0)  # (as _register_tile's)
            _store_logits(grad_ptr, g, x_base, t_base, pixel_ok, c0, C, P, ROWS, EVEN_P, EVEN_C, 1, VEC, BLOCK_C)
            rel = tl.where(rel >= BLOCK_C, rel - BLOCK_C, -1)
    last_term = tl.where(counts, kw * (x_t - m), 0.0)
    if REDUCTION == NONE:
        _store_pixels(loss_ptr + _span(t_base, 0, VEC), first_terms - last_term, pixel_ok, EVEN_P, 1)
        thread_loss = tl.sum(last_term, axis=2)  # (unused)
    else:
        thread_loss = first_terms - tl.sum(last_term, axis=2)
    return thread_loss, w_t, counts


# Triton compiles a kernel again for each pattern of its integer arguments (common.py): the counts
# and ignore_index are kept out of that; C and P, which decide the alignment of the logits' rows, are not.
@triton.jit(do_not_specialize=["n_samples", "tiles_per_sample", "total_tiles", "tiles", "ignore_index"])
def cross_entropy_fwd_kernel(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, partial_ptr, n_samples: tl.int64, C: tl.int32,
                             P: tl.int64, tiles_per_sample: tl.int32, total_tiles: tl.int32, tiles: tl.int32,
                             ignore_index: tl.int64, label_smoothing: tl.float64, REDUCTION: tl.constexpr,
                             GRAD: tl.constexpr, WEIGHT: tl.constexpr, SMOOTH: tl.constexpr, IGNORE: tl.constexpr,
                             ROWS: tl.constexpr, EVEN_C: tl.constexpr, EVEN_P: tl.constexpr, CHUNKED: tl.constexpr,
                             ACC: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_P: tl.constexpr):
    """The losses of the program's `tiles` tiles of BLOCK_P pixels (stored for "none", else their
    partial sums, partial[program] = (losses, D, count)) and, with GRAD, the gradients of their logits."""
    CI: tl.constexpr = BLOCK_C // LANES  # a thread's classes of a tile
    keep = tl.full([], 1.0 - label_smoothing, ACC)  # (float64 in, rounded once)
    if WEIGHT:  # W, the sum of the weights, after them (see cross_entropy_fwd)
        weight_sum = tl.load(w_ptr + C * VEC).to(ACC)
    else:
        weight_sum = C.to(ACC)
    smooth = tl.full([], label_smoothing / C.to(tl.float64), ACC)  # (float64 / int32 is float32 in the interpreter)
    first = tl.program_id(0) * tiles
    # the tiles of a sample in turn: (sample, j), the j-th tile of the sample, with no division a tile
    sample = first // tiles_per_sample
    j = first - sample * tiles_per_sample
    # A thread's sums: its VEC pixels' added in registers each tile. They start as zeros made from
    # the first tile's labels (Triton keeps a value the loop carries in the layout of its first
    # value; a constant's default layout is not the tile's, and each tile would convert to it)
    _, t_base, p_base, limit = _tile_threads(first, sample, j, n_samples, C, P, ROWS, LANES, VEC, BLOCK_P)
    loss_sum = tl.sum(_load_labels(t_ptr, t_base, p_base, limit, EVEN_P, VEC).to(ACC) * 0.0, axis=2)
    weight_total = loss_sum
    count = loss_sum
    first_lane = tl.arange(0, LANES)[:, None] == 0
    for tile in range(first, tl.minimum(first + tiles, total_tiles)):
        x_base, t_base, p_base, limit = _tile_threads(tile, sample, j, n_samples, C, P, ROWS, LANES, VEC, BLOCK_P)
        if CHUNKED:
            thread_loss, w_t, counts = _chunked_tile(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, x_base, t_base, p_base,
                                                     limit, C, P, ignore_index, keep, smooth, REDUCTION, GRAD, WEIGHT,
                                                     SMOOTH, IGNORE, ROWS, EVEN_C, EVEN_P, ACC, VEC, BLOCK_C)
        else:
            thread_loss, w_t, counts = _register_tile(x_ptr, t_ptr, w_ptr, loss_ptr, grad_ptr, x_base, t_base, p_base,
                                                      limit, C, P, ignore_index, keep, smooth, weight_sum, REDUCTION,
                                                      GRAD, WEIGHT, SMOOTH, IGNORE, ROWS, EVEN_C, EVEN_P, ACC, LANES,
                                                      VEC, CI)
        if REDUCTION != NONE:
            loss_sum += thread_loss
            if REDUCTION == MEAN:  # (each lane of a pixel holds its w_t: the first lane's)
                weight_total += tl.where(first_lane, tl.sum(w_t, axis=2), 0.0)
                if WEIGHT:  # (else D is the count)
                    count += tl.where(first_lane, tl.sum(counts.to(ACC), axis=2), 0.0)
        j += 1
        sample = tl.where(j == tiles_per_sample, sample + 1, sample)
        j = tl.where(j == tiles_per_sample, 0, j)
    if REDUCTION != NONE:  # the fixed-order sum over the threads
        out = partial_ptr + tl.program_id(0).to(tl.int64) * PARTIALS
        tl.store(out, tl.sum(loss_sum))
        tl.store(out + 1, tl.sum(weight_total))
        tl.store(out + 2, tl.sum(count if WEIGHT else weight_total))


def class_tiles(layout, op: str, C: int, element_size: int) -> None:
    """Sets layout.vec, chunked, block_c, lanes, even_c and block_p: how a tile of one warp covers
    the classes and pixels (the module's docstring); op's error for too many classes."""
    check_classes(op, C)
    layout.vec = vec = VECTOR_BYTES // element_size
    values = THREAD_VALUES[element_size]
    layout.chunked = C > REGISTER_CLASSES
    if layout.chunked:  # chunks of a thread's classes, one lane a pixel
        layout.block_c, layout.lanes = max(1, CHUNK_VALUES[element_size] // vec), 1
    else:
        # lanes sharing a pixel's classes: a thread holds vec pixels of block_c / lanes classes
        layout.block_c = triton.next_power_of_2(max(C, 1))
        layout.lanes = min(layout.block_c, max(1, layout.block_c * vec // values), 32)
    layout.even_c = C % layout.block_c == 0
    layout.block_p = (32 // layout.lanes) * vec  # (one warp a program)


def weight_rows(weight, vec: int):
    """The class weights as _class_weights reads them: each repeated vec times, then W, their sum."""
    return torch.cat([weight.repeat_interleave(vec), weight.sum(0, keepdim=True)])


class _Layout:
    """How the tiles cover the classes and pixels, and how many a program takes."""

    def __init__(self, n_samples: int, C: int, P: int, element_size: int, options: bool):
        class_tiles(self, "cross_entropy_fwd", C, element_size)
        self.max_registers = None if options or (element_size < 4 and self.chunked) else MAX_REGISTERS
        self.rows = P == 1
        if self.rows:
            self.tiles_per_sample = 1
            total = triton.cdiv(n_samples, self.block_p)
        else:
            self.tiles_per_sample = triton.cdiv(P, self.block_p)
            total = n_samples * self.tiles_per_sample
        self.total_tiles = total
        self.even_p = (n_samples if self.rows else P) % self.block_p == 0
        self.tiles = max(1, triton.cdiv(total, PROGRAMS))
        self.programs = triton.cdiv(total, self.tiles)
        # (tile and program ids are int32: the last program's first tile + tiles too)
        if self.programs * self.tiles >= 2**31:
            raise ValueError(f"cross_entropy_fwd (triton): {n_samples} samples of {P} pixels need more tiles than a "
                             "launch holds")


def _can_hold(dtype: torch.dtype, value: int) -> bool:
    """Whether a label of this dtype can equal value (uint8 cannot be torch's default ignore_index, -100)."""
    info = torch.iinfo(dtype)
    return info.min <= value <= info.max


def cross_entropy_fwd(input: torch.Tensor, target: torch.Tensor, weight, ignore_index: int, label_smoothing: float,
                      reduction: int, compute_grad: bool):
    """(loss, grad, grad_scale) as the op pylosses::cross_entropy_fwd: the input's gradient for
    grad_output g is grad * (g * grad_scale), g broadcast over the class axis for "none"."""
    check_ce_args(input, target, weight, label_smoothing, reduction)
    x, t = input.contiguous(), target.contiguous()
    n_samples, C = x.shape[:2]
    P = t.numel() // n_samples if n_samples else 0
    acc = acc_torch_dtype(x.dtype)
    w = weight.to(device=x.device, dtype=acc).contiguous() if weight is not None else None
    layout = _Layout(n_samples, C, P, x.element_size(), weight is not None or label_smoothing != 0.0)
    if w is not None:
        w = weight_rows(w, layout.vec)
    grad = torch.empty(x.shape if compute_grad else (0,), dtype=saved_grad_dtype(x.dtype), device=x.device)
    loss = torch.empty(t.shape, dtype=x.dtype, device=x.device) if reduction == NONE.value else None
    partials = torch.empty((layout.programs if reduction != NONE.value else 0, PARTIALS.value), dtype=acc,
                           device=x.device)
    if t.numel():
        with launch_device(x):
            cross_entropy_fwd_kernel[(layout.programs,)](
                x, t, w if w is not None else partials, loss if loss is not None else partials,
                grad if compute_grad else partials, partials, n_samples, C, P, layout.tiles_per_sample,
                layout.total_tiles, layout.tiles, ignore_index, label_smoothing, REDUCTION=reduction,
                GRAD=compute_grad, WEIGHT=w is not None, SMOOTH=label_smoothing != 0.0,
                IGNORE=_can_hold(t.dtype, ignore_index), ROWS=layout.rows, EVEN_P=layout.even_p,
                EVEN_C=layout.even_c, CHUNKED=layout.chunked, ACC=acc_dtype(x.dtype), LANES=layout.lanes,
                VEC=layout.vec, BLOCK_C=layout.block_c, BLOCK_P=layout.block_p, num_warps=1, num_stages=1,
                maxnreg=layout.max_registers)
    if loss is not None:
        return loss, grad, torch.ones((), dtype=acc, device=x.device)
    total, weight_total, count = sum_groups(partials, 1)[0].unbind()
    if reduction == SUM.value:
        return total.to(x.dtype), grad, torch.ones((), dtype=acc, device=x.device)
    # torch's 0 / 0 = NaN when nothing counts; the gradient is 0 then
    return (total / weight_total).to(x.dtype), grad, torch.where(count > 0, weight_total.reciprocal(),
                                                                 torch.zeros((), dtype=acc, device=x.device))
