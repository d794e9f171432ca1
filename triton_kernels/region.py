"""The region losses' sums (Dice, Tversky, generalised Dice) in Triton: the ops region_sums and
region_sums_backward, with the per-element math of csrc/region_loss_math.h.

The contiguous input is a sequence of planes, one a (sample, channel), of S elements each.
Planes of more than ROW_PLANES elements are cut into chunks, one a program: pass 1 writes a
chunk's four sums as a partial, and sum_groups adds a plane's partials in a fixed order (where a
plane is one chunk, the partials are the sums); pass 2 writes the chunk's gradients with its
plane's g0, g1, g2, read once. A chunk is whole blocks, which load and store without masks, then
one partial block. Where S is not a multiple of ALIGN, a plane's blocks start at its first
multiple of ALIGN, and its first chunk also takes the head before that (fewer than ALIGN
elements): every block starts 16-byte aligned whatever S is, and its accesses are vectors. Smaller
planes are the rows of tiles of BLOCK_R planes, a few tiles a program, each row's sums added
across it: no partials. How many chunks and tiles depends on the shape only, so the sums have
the same bits run after run.

A block's lanes outside the chunk load x = -inf (with a sigmoid, else 0) and t = 0, so that
p = 0 and t = 0, whose terms are all 0 in every mode: a partial block needs no selects. A masked
pixel gets p = t = 0 in pass 1 (its terms 0 whatever the mode) and a zero gradient in pass 2.
uint8 targets above 1 (a 0/255 mask) are counted in the fourth sum, never raised: on a GPU that
would take a host sync, and the loss made from the sums is NaN (pylosses/reference.py).

With the mode's bit WITH_BCE (logits only) pass 1 also gives DiceBCE's two BCE sums a plane,
after the four (csrc/region_loss_math.h says what they are), and pass 2 adds their gradient.
"""

import torch
import triton
import triton.language as tl

from .common import acc_dtype, acc_torch_dtype, launch_device, sigmoid_exp, sigmoid_fast, sign, sum_groups, to_element
from .segmentation import _log_plain

# math::RegionMode
LINEAR, SQUARED, L1 = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# the pixel mask: none; (B, 1, spatial...), one for every channel of a sample; the input's shape
NO_MASK, SAMPLE_MASK, CHANNEL_MASK = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# the target's dtype class: floating point; bool (as uint8: the same bytes); uint8, whose values
# above 1 are counted
FLOAT_TARGET, BOOL_TARGET, BYTE_TARGET = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
SUMS = tl.constexpr(4)  # reference.REGION_SUMS: the mode's three sums and the count
WITH_BCE = 4  # reference.REGION_WITH_BCE: the mode's bit for DiceBCE's BCE sums
BCE_SUMS = tl.constexpr(2)  # reference.BCE_SUMS: how many, after the four

NUM_WARPS = 8
# A thread's elements of a block are 16 bytes of the widest stream (input, float target and their
# gradients): one 128-bit access of it. More would give the byte streams (bool and uint8 targets,
# the mask) wider accesses than the float ones, and a trip through shared memory between them.
VECTOR_BYTES = 16
ALIGN = tl.constexpr(16)  # elements: 16 bytes of the narrowest stream (uint8 targets and masks)
ROW_PLANES = 256  # planes of at most this many elements are rows of a tile (at least 2 a tile)
# The programs a launch aims at: a few waves of an H200's 132 multiprocessors (4 to 8 of these
# programs resident on each), so that a few planes of 10**6 elements, cut into chunks, fill the
# machine, and 10**6 planes of a few elements take a few tiles a program. A constant, not the
# device's count: the chunks, and so the sums' bits, depend on the shape only.
PROGRAMS = 2048


def check_region_args(op: str, input: torch.Tensor, target: torch.Tensor, mask, mode: int, sigmoid: bool) -> None:
    """csrc/op_checks.h's check_region_args (with_bce), with its messages and error types
    (TORCH_CHECK_VALUE: ValueError, TORCH_CHECK_TYPE: TypeError), for the launchers that the C++
    checks do not guard."""
    if input.dim() < 2:
        raise ValueError(f"{op}: input must have a batch and a channel axis, (B, C, spatial...), got shape "
                         f"{list(input.shape)}")
    if input.shape != target.shape:
        raise ValueError(f"{op}: input and target must have the same shape, got {list(input.shape)} and "
                         f"{list(target.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be floating point, got {input.dtype}")
    if not (target.is_floating_point() or target.dtype in (torch.bool, torch.uint8)):
        raise TypeError(f"{op}: target must be floating point, bool or uint8, got {target.dtype}")
    if mode not in (0, 1, 2, WITH_BCE, WITH_BCE + 1, WITH_BCE + 2):
        raise ValueError(f"{op}: mode must be 0 (linear), 1 (squared) or 2 (l1), plus 4 for the BCE sums, got {mode}")
    if mode & WITH_BCE and not sigmoid:
        raise ValueError(f"{op}: the BCE sums (mode {mode}) are of logits: they need sigmoid=True")
    _check_same_device(op, input, "input", target, "target")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: mask must be bool, got {mask.dtype}")
        shape_ok = (mask.dim() == input.dim() and mask.shape[0] == input.shape[0]
                    and mask.shape[1] in (1, input.shape[1]) and mask.shape[2:] == input.shape[2:])
        if not shape_ok:
            raise ValueError(f"{op}: mask must have the shape (B, 1, spatial...) or the input's, {list(input.shape)}, "
                             f"got {list(mask.shape)}")
        _check_same_device(op, input, "input", mask, "mask")


def _check_same_device(op, a, a_name, b, b_name):
    if a.device != b.device:
        raise ValueError(f"{op}: {a_name} and {b_name} must be on the same device, got {a.device} and {b.device}")


@triton.jit
def _load_values(x_ptr, t_ptr, offs, in_range, SIGMOID: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr):
    """(p, t, x) of the elements at offs; MASKED: only those in_range, the others p = 0 and t = 0
    (and x = -inf with the sigmoid)."""
    if MASKED:
        x = tl.load(x_ptr + offs, mask=in_range, other=float("-inf") if SIGMOID else 0.0)
        t = tl.load(t_ptr + offs, mask=in_range, other=0)
    else:
        x = tl.load(x_ptr + offs)
        t = tl.load(t_ptr + offs)
    x = x.to(ACC)
    if SIGMOID:
        p = sigmoid_fast(x)  # (it enters sums only)
    else:
        p = x
    return p, t.to(ACC), x


@triton.jit
def _load_keep(m_ptr, m_offs, in_range, MASKED: tl.constexpr):
    """Whether the pixel mask keeps the elements (False outside in_range)."""
    if MASKED:
        keep = tl.load(m_ptr + m_offs, mask=in_range, other=0)
    else:
        keep = tl.load(m_ptr + m_offs)
    return keep != 0


@triton.jit
def _softplus(x):
    """log(1 + exp(-|x|)): log u plus the rounding residue of u = 1 + e, e = exp(-|x|) (as
    segmentation.py's BCE of a logit)"""
    _, e = sigmoid_exp(x)
    u = 1.0 + e
    return _log_plain(u) + (e - (u - 1.0))


@triton.jit
def _bce_terms(x, t, keep, KEEP: tl.constexpr):
    """DiceBCE's two BCE terms of a logit (math::bce_logits_loss, bce_sums_term_b):
    BCEWithLogits(x, t) and t softplus(-x); 0 where keep fails (KEEP: keep is given; a lane
    outside the chunk holds x = -inf, taken as 0 so that no NaN is made)."""
    if KEEP:
        x = tl.where(keep, x, 0.0)
    softplus = _softplus(x)
    a = tl.maximum(x, 0.0) - x * t + softplus
    b = t * (tl.maximum(-x, 0.0) + softplus)
    if KEEP:
        a = tl.where(keep, a, 0.0)
        b = tl.where(keep, b, 0.0)
    return a, b


@triton.jit
def _sum_terms(x_ptr, t_ptr, m_ptr, offs, m_offs, in_range, SIGMOID: tl.constexpr, MODE: tl.constexpr,
               MASK: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr, BCE: tl.constexpr):
    """math::region_terms of each element, whether its target is above 1 (a uint8 one that is
    not a 0/1 mask), and with BCE its two BCE terms (else 0), 0 for the elements that are masked
    out or outside in_range."""
    p, t, x = _load_values(x_ptr, t_ptr, offs, in_range, SIGMOID, MASKED, ACC)
    keep = in_range
    if MASK != NO_MASK:
        keep = _load_keep(m_ptr, m_offs, in_range, MASKED)
        p = tl.where(keep, p, 0.0)
        t = tl.where(keep, t, 0.0)
    if BCE:
        a, b = _bce_terms(x, t, keep, MASK != NO_MASK or MASKED)
    else:
        a, b = 0.0, 0.0
    if MODE == L1:
        s0, s1, s2 = tl.abs(p - t), tl.abs(p), tl.abs(t)
    elif MODE == SQUARED:
        s0, s1, s2 = p * t, p * p, t * t
    else:
        s0, s1, s2 = p * t, p, t
    return s0, s1, s2, t > 1.0, a, b


@triton.jit
def _store(ptr, offs, value, in_range, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, to_element(value, ptr), mask=in_range)
    else:
        tl.store(ptr + offs, to_element(value, ptr))


@triton.jit
def region_grad_p(p, t, g0, g1, MODE: tl.constexpr):
    """math::region_grad_p: d (g0 s0 + g1 s1 + g2 s2) / dp of an element"""
    if MODE == L1:
        dp = g0 * sign(p - t) + g1 * sign(p)
    elif MODE == SQUARED:
        dp = g0 * t + 2.0 * g1 * p
    else:
        dp = g0 * t + g1
    return dp


@triton.jit
def _write_grads(x_ptr, t_ptr, m_ptr, grad_input_ptr, grad_target_ptr, offs, m_offs, in_range, g0, g1, g2, ga, gb,
                 SIGMOID: tl.constexpr, MODE: tl.constexpr, MASK: tl.constexpr, GRAD_INPUT: tl.constexpr,
                 GRAD_TARGET: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr, BCE: tl.constexpr):
    """The elements' gradients from their plane's g = d loss / d sums (math::region_grad_p and
    region_grad_t, then through the sigmoid; with BCE also ga, gb of the BCE sums:
    math::bce_sums_grad_x and bce_sums_grad_t); 0 where the mask drops the pixel."""
    p, t, x = _load_values(x_ptr, t_ptr, offs, in_range, SIGMOID, MASKED, ACC)
    if BCE and MASKED:
        x = tl.where(in_range, x, 0.0)  # (-inf outside: no NaN in the lanes not stored)
    if MASK != NO_MASK:
        keep = _load_keep(m_ptr, m_offs, in_range, MASKED)
    if GRAD_INPUT:
        dp = region_grad_p(p, t, g0, g1, MODE)
        if SIGMOID:
            dp = dp * (p * (1.0 - p))
        if BCE:
            dp += ga * (p - t) - gb * t * (1.0 - p)
        if MASK != NO_MASK:
            dp = tl.where(keep, dp, 0.0)
        _store(grad_input_ptr, offs, dp, in_range, MASKED)
    if GRAD_TARGET:
        if MODE == L1:
            dt = g2 * sign(t) - g0 * sign(p - t)
        elif MODE == SQUARED:
            dt = g0 * p + 2.0 * g2 * t
        else:
            dt = g0 * p + g2
        if BCE:
            dt += gb * (tl.maximum(-x, 0.0) + _softplus(x)) - ga * x
        if MASK != NO_MASK:
            dt = tl.where(keep, dt, 0.0)
        _store(grad_target_ptr, offs, dt, in_range, MASKED)


@triton.jit
def _plane_rows(first, planes, channels, S, MASK: tl.constexpr, FULL_ROWS: tl.constexpr, PARTIAL: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(planes, offs, mask offs, in_range) of the tile of BLOCK_R whole planes from plane first,
    one a row. FULL_ROWS: S = BLOCK_C, and the tile is consecutive elements (vectors, S = 1 too):
    every lane of a tile that does not pass the last plane (PARTIAL) is an element, and in_range
    is for the partial tile only."""
    plane = first + tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_C)[None, :]
    if FULL_ROWS:
        offs = plane.to(tl.int64)[:, None] * BLOCK_C + col
        in_range = (plane < planes)[:, None]
    else:
        offs = plane.to(tl.int64)[:, None] * S + col
        in_range = ((plane < planes)[:, None] & (col < S)) if PARTIAL else (col < S)
    if MASK == SAMPLE_MASK:
        m_offs = offs + ((plane // channels) - plane).to(tl.int64)[:, None] * (BLOCK_C if FULL_ROWS else S)
    else:
        m_offs = offs
    return plane, offs, m_offs, in_range


@triton.jit
def _sums_tile(x_ptr, t_ptr, m_ptr, out_ptr, first, planes, channels, S, SIGMOID: tl.constexpr, MODE: tl.constexpr,
               MASK: tl.constexpr, COUNT: tl.constexpr, ACC: tl.constexpr, FULL_ROWS: tl.constexpr,
               PARTIAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BCE: tl.constexpr,
               N_SUMS: tl.constexpr):
    """out[plane] = the sums of each plane of the tile from plane first (N_SUMS a plane)"""
    plane, offs, m_offs, in_range = _plane_rows(first, planes, channels, S, MASK, FULL_ROWS, PARTIAL, BLOCK_R,
                                                BLOCK_C)
    s0, s1, s2, bad, a, b = _sum_terms(x_ptr, t_ptr, m_ptr, offs, m_offs, in_range, SIGMOID, MODE, MASK,
                                       PARTIAL or not FULL_ROWS, ACC, BCE)
    if COUNT:
        s3 = tl.sum(bad.to(tl.int32), axis=1).to(ACC)
    else:
        s3 = tl.zeros([BLOCK_R], ACC)
    # a row's four sums side by side, one store: [r, i, j] = (s0, s1, s2, s3)[2 i + j]
    sums = tl.reshape(tl.join(tl.join(tl.sum(s0, axis=1), tl.sum(s2, axis=1)), tl.join(tl.sum(s1, axis=1), s3)),
                      [BLOCK_R, SUMS])
    row = out_ptr + plane.to(tl.int64) * N_SUMS
    out = row[:, None] + tl.arange(0, SUMS)[None, :]
    if PARTIAL:
        tl.store(out, sums, mask=(plane < planes)[:, None])
    else:
        tl.store(out, sums)
    if BCE:
        in_plane = plane < planes
        tl.store(row + SUMS, tl.sum(a, axis=1), mask=in_plane)
        tl.store(row + SUMS + 1, tl.sum(b, axis=1), mask=in_plane)


@triton.jit
def _grads_tile(x_ptr, t_ptr, m_ptr, grad_sums_ptr, grad_input_ptr, grad_target_ptr, first, planes, channels, S,
                SIGMOID: tl.constexpr, MODE: tl.constexpr, MASK: tl.constexpr, GRAD_INPUT: tl.constexpr,
                GRAD_TARGET: tl.constexpr, ACC: tl.constexpr, FULL_ROWS: tl.constexpr, PARTIAL: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BCE: tl.constexpr, N_SUMS: tl.constexpr):
    """The gradients of the tile of planes from plane first."""
    plane, offs, m_offs, in_range = _plane_rows(first, planes, channels, S, MASK, FULL_ROWS, PARTIAL, BLOCK_R,
                                                BLOCK_C)
    g = grad_sums_ptr + plane.to(tl.int64)[:, None] * N_SUMS
    g0, g1, g2, ga, gb = _load_sum_grads(g, plane < planes, PARTIAL, BCE)
    _write_grads(x_ptr, t_ptr, m_ptr, grad_input_ptr, grad_target_ptr, offs, m_offs, in_range, g0, g1, g2, ga, gb,
                 SIGMOID, MODE, MASK, GRAD_INPUT, GRAD_TARGET, PARTIAL or not FULL_ROWS, ACC, BCE)


@triton.jit
def _load_sum_grads(g, in_plane, PARTIAL: tl.constexpr, BCE: tl.constexpr):
    """(g0, g1, g2, ga, gb) of a plane's row of grad_sums at g (with PARTIAL, rows of the tile's
    planes, those not in_plane read as 0); ga, gb (its BCE sums') 0 without BCE."""
    if PARTIAL:
        in_plane = in_plane[:, None]
        g0 = tl.load(g, mask=in_plane, other=0.0)
        g1 = tl.load(g + 1, mask=in_plane, other=0.0)
        g2 = tl.load(g + 2, mask=in_plane, other=0.0)
        if BCE:
            ga = tl.load(g + SUMS, mask=in_plane, other=0.0)
            gb = tl.load(g + SUMS + 1, mask=in_plane, other=0.0)
        else:
            ga, gb = 0.0, 0.0
    else:
        g0 = tl.load(g)
        g1 = tl.load(g + 1)
        g2 = tl.load(g + 2)
        if BCE:
            ga = tl.load(g + SUMS)
            gb = tl.load(g + SUMS + 1)
        else:
            ga, gb = 0.0, 0.0
    return g0, g1, g2, ga, gb


@triton.jit
def _whole_tiles(planes, tiles, BLOCK_R: tl.constexpr):
    """(the program's first tile, how many of its tiles hold planes only): the tiles of the program
    that passes the last plane end with a partial one, or fewer."""
    first_tile = tl.program_id(0) * tiles
    return first_tile, tl.minimum(tl.maximum(planes // BLOCK_R - first_tile, 0), tiles)


@triton.jit
def _chunk(chunks, channels, S, chunk_len, MASK: tl.constexpr, HEAD: tl.constexpr, BLOCK_C: tl.constexpr):
    """The program's chunk: (its plane, where its blocks start, where it ends, its whole blocks,
    where the plane's head starts, which of its ALIGN lanes the chunk has, what to subtract from
    an offset for the mask's). HEAD: S is not a multiple of ALIGN, and the blocks start at the
    plane's first multiple of it; the elements before are the head, the first chunk's."""
    pid = tl.program_id(0)
    plane = pid // chunks
    chunk = pid % chunks
    head = plane.to(tl.int64) * S
    if HEAD:
        body = tl.multiple_of((head + (ALIGN - 1)) // ALIGN * ALIGN, ALIGN)
    else:
        body = head
    start = body + chunk * chunk_len
    end = tl.minimum(start + chunk_len, head + S)
    full = tl.maximum(end - start, 0) // BLOCK_C
    in_head = (tl.arange(0, ALIGN) < (body - head).to(tl.int32)) & (chunk == 0)
    if MASK == SAMPLE_MASK:  # the mask's plane is the sample's: (b, c) -> b
        m_shift = (plane - plane // channels).to(tl.int64) * S
    else:
        m_shift = tl.zeros([], tl.int64)
    return plane, start, end, full, head, in_head, m_shift


@triton.jit
def _vector_sums(v, VEC: tl.constexpr):
    """The sums of v's vectors of VEC elements, each of which a thread holds (its 16 bytes of the
    widest stream): additions in registers."""
    return tl.sum(tl.reshape(v, [v.shape[0] // VEC, VEC]), axis=1)


@triton.jit
def _store_sums(ptr, s0, s1, s2, count, a, b, COUNT: tl.constexpr, ACC: tl.constexpr, BCE: tl.constexpr):
    tl.store(ptr, s0)
    tl.store(ptr + 1, s1)
    tl.store(ptr + 2, s2)
    if COUNT:
        tl.store(ptr + 3, count.to(ACC))
    else:
        tl.store(ptr + 3, tl.zeros_like(s0))
    if BCE:
        tl.store(ptr + SUMS, a)
        tl.store(ptr + SUMS + 1, b)


# Triton compiles a kernel again for each pattern of its integer arguments; the counts are kept
# out of that (common.py), S and chunk_len, which decide alignment, are not.
@triton.jit(do_not_specialize=["planes", "channels", "chunks", "tiles"])
def region_sums_kernel(x_ptr, t_ptr, m_ptr, out_ptr, planes: tl.int32, channels: tl.int32, S: tl.int64,
                       chunks: tl.int32, chunk_len: tl.int64, tiles: tl.int32, SIGMOID: tl.constexpr,
                       MODE: tl.constexpr, MASK: tl.constexpr, TARGET: tl.constexpr, ACC: tl.constexpr,
                       HEAD: tl.constexpr, FULL_ROWS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                       VEC: tl.constexpr, BCE: tl.constexpr):
    """The four sums (six with BCE) of the program's elements: of its chunk (BLOCK_R = 1),
    out[program] (out is the partials, a plane's chunks in order); or of each of the planes of
    its `tiles` tiles of BLOCK_R planes, out[plane] (out is the sums)."""
    COUNT: tl.constexpr = TARGET == BYTE_TARGET
    N_SUMS: tl.constexpr = SUMS + BCE_SUMS if BCE else SUMS
    if BLOCK_R > 1:
        first_tile, whole = _whole_tiles(planes, tiles, BLOCK_R)
        for tile in range(0, whole):
            _sums_tile(x_ptr, t_ptr, m_ptr, out_ptr, (first_tile + tile) * BLOCK_R, planes, channels, S, SIGMOID, MODE,
                       MASK, COUNT, ACC, FULL_ROWS, False, BLOCK_R, BLOCK_C, BCE, N_SUMS)
        if whole < tiles:
            _sums_tile(x_ptr, t_ptr, m_ptr, out_ptr, (first_tile + whole) * BLOCK_R, planes, channels, S, SIGMOID, MODE,
                       MASK, COUNT, ACC, FULL_ROWS, True, BLOCK_R, BLOCK_C, BCE, N_SUMS)
    else:
        _, start, end, full, head, in_head, m_shift = _chunk(chunks, channels, S, chunk_len, MASK, HEAD, BLOCK_C)
        lanes = tl.arange(0, BLOCK_C)
        # a thread's sums: its VEC elements of a block added in registers, then to these
        acc0 = tl.zeros([BLOCK_C // VEC], ACC)
        acc1 = tl.zeros([BLOCK_C // VEC], ACC)
        acc2 = tl.zeros([BLOCK_C // VEC], ACC)
        count = tl.zeros([BLOCK_C // VEC], tl.int32)
        acc_a = tl.zeros([BLOCK_C // VEC], ACC)  # (BCE)
        acc_b = tl.zeros([BLOCK_C // VEC], ACC)
        for block in range(0, full):
            base = start + block * BLOCK_C
            s0, s1, s2, bad, a, b = _sum_terms(x_ptr + base, t_ptr + base, m_ptr + (base - m_shift), lanes, lanes,
                                               None, SIGMOID, MODE, MASK, False, ACC, BCE)
            acc0 += _vector_sums(s0, VEC)
            acc1 += _vector_sums(s1, VEC)
            acc2 += _vector_sums(s2, VEC)
            if COUNT:
                count += _vector_sums(bad.to(tl.int32), VEC)
            if BCE:
                acc_a += _vector_sums(a, VEC)
                acc_b += _vector_sums(b, VEC)
        base = start + full * BLOCK_C
        s0, s1, s2, bad, a, b = _sum_terms(x_ptr + base, t_ptr + base, m_ptr + (base - m_shift), lanes, lanes,
                                           lanes < tl.maximum(end - base, 0).to(tl.int32), SIGMOID, MODE, MASK, True,
                                           ACC, BCE)
        total0 = tl.sum(acc0 + _vector_sums(s0, VEC))
        total1 = tl.sum(acc1 + _vector_sums(s1, VEC))
        total2 = tl.sum(acc2 + _vector_sums(s2, VEC))
        total_count = tl.sum(count + _vector_sums(bad.to(tl.int32), VEC))
        if BCE:
            total_a = tl.sum(acc_a + _vector_sums(a, VEC))
            total_b = tl.sum(acc_b + _vector_sums(b, VEC))
        else:
            total_a, total_b = 0.0, 0.0
        if HEAD:
            s0, s1, s2, bad, a, b = _sum_terms(x_ptr + head, t_ptr + head, m_ptr + (head - m_shift),
                                               tl.arange(0, ALIGN), tl.arange(0, ALIGN), in_head, SIGMOID, MODE, MASK,
                                               True, ACC, BCE)
            total0 += tl.sum(s0)
            total1 += tl.sum(s1)
            total2 += tl.sum(s2)
            total_count += tl.sum(bad.to(tl.int32))
            if BCE:
                total_a += tl.sum(a)
                total_b += tl.sum(b)
        _store_sums(out_ptr + tl.program_id(0).to(tl.int64) * N_SUMS, total0, total1, total2, total_count, total_a,
                    total_b, COUNT, ACC, BCE)


@triton.jit(do_not_specialize=["planes", "channels", "chunks", "tiles"])
def region_grad_kernel(x_ptr, t_ptr, m_ptr, grad_sums_ptr, grad_input_ptr, grad_target_ptr, planes: tl.int32,
                       channels: tl.int32, S: tl.int64, chunks: tl.int32, chunk_len: tl.int64, tiles: tl.int32,
                       SIGMOID: tl.constexpr, MODE: tl.constexpr, MASK: tl.constexpr, GRAD_INPUT: tl.constexpr,
                       GRAD_TARGET: tl.constexpr, ACC: tl.constexpr, HEAD: tl.constexpr, FULL_ROWS: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BCE: tl.constexpr):
    """The gradients of the program's elements (its chunk, or its tiles of planes), from their
    planes' rows of grad_sums (four sums a row, six with BCE)."""
    N_SUMS: tl.constexpr = SUMS + BCE_SUMS if BCE else SUMS
    if BLOCK_R > 1:
        first_tile, whole = _whole_tiles(planes, tiles, BLOCK_R)
        for tile in range(0, whole):
            _grads_tile(x_ptr, t_ptr, m_ptr, grad_sums_ptr, grad_input_ptr, grad_target_ptr,
                        (first_tile + tile) * BLOCK_R, planes, channels, S, SIGMOID, MODE, MASK, GRAD_INPUT,
                        GRAD_TARGET, ACC, FULL_ROWS, False, BLOCK_R, BLOCK_C, BCE, N_SUMS)
        if whole < tiles:
            _grads_tile(x_ptr, t_ptr, m_ptr, grad_sums_ptr, grad_input_ptr, grad_target_ptr,
                        (first_tile + whole) * BLOCK_R, planes, channels, S, SIGMOID, MODE, MASK, GRAD_INPUT,
                        GRAD_TARGET, ACC, FULL_ROWS, True, BLOCK_R, BLOCK_C, BCE, N_SUMS)
    else:
        plane, start, end, full, head, in_head, m_shift = _chunk(chunks, channels, S, chunk_len, MASK, HEAD,
                                                                  BLOCK_C)
        g0, g1, g2, ga, gb = _load_sum_grads(grad_sums_ptr + plane.to(tl.int64) * N_SUMS, None, False, BCE)
        lanes = tl.arange(0, BLOCK_C)
        for block in range(0, full):
            base = start + block * BLOCK_C
            _write_grads(x_ptr + base, t_ptr + base, m_ptr + (base - m_shift), grad_input_ptr + base,
                         grad_target_ptr + base, lanes, lanes, None, g0, g1, g2, ga, gb, SIGMOID, MODE, MASK,
                         GRAD_INPUT, GRAD_TARGET, False, ACC, BCE)
        base = start + full * BLOCK_C
        _write_grads(x_ptr + base, t_ptr + base, m_ptr + (base - m_shift), grad_input_ptr + base,
                     grad_target_ptr + base, lanes, lanes, lanes < tl.maximum(end - base, 0).to(tl.int32), g0, g1, g2,
                     ga, gb, SIGMOID, MODE, MASK, GRAD_INPUT, GRAD_TARGET, True, ACC, BCE)
        if HEAD:
            _write_grads(x_ptr + head, t_ptr + head, m_ptr + (head - m_shift), grad_input_ptr + head,
                         grad_target_ptr + head, tl.arange(0, ALIGN), tl.arange(0, ALIGN), in_head, g0, g1, g2, ga,
                         gb, SIGMOID, MODE, MASK, GRAD_INPUT, GRAD_TARGET, True, ACC, BCE)


class _Layout:
    """How the programs of both passes cover the planes (the same for both)."""

    def __init__(self, planes: int, S: int, widest: int):
        self.vec = VECTOR_BYTES // widest  # (widest: the widest stream's element bytes)
        block = self.vec * 32 * NUM_WARPS
        self.head = self.full_rows = False
        self.chunks, self.chunk_len, self.tiles = 1, S, 1
        if S <= ROW_PLANES:
            self.block_c = triton.next_power_of_2(S)
            self.block_r = block // self.block_c
            self.full_rows = S == self.block_c
            row_tiles = triton.cdiv(planes, self.block_r)
            self.tiles = triton.cdiv(row_tiles, PROGRAMS)  # (the sums of a plane do not depend on it)
            self.programs = triton.cdiv(row_tiles, self.tiles)
        else:
            self.block_r, self.block_c = 1, block
            self.head = S % ALIGN.value != 0
            blocks = triton.cdiv(S, block)
            chunks = min(blocks, triton.cdiv(PROGRAMS, planes))
            self.chunk_len = triton.cdiv(blocks, chunks) * block
            self.chunks = triton.cdiv(S, self.chunk_len)
            self.programs = planes * self.chunks
        if self.programs * self.tiles * self.block_r >= 2**31:  # (program and plane ids are int32)
            raise ValueError(f"region_sums (triton): {planes} planes of {S} elements need more programs than a "
                             "launch holds")

    def arguments(self):
        """The kernels' layout arguments, after S."""
        return self.chunks, self.chunk_len, self.tiles

    def constexprs(self):
        return dict(HEAD=self.head, FULL_ROWS=self.full_rows, BLOCK_R=self.block_r, BLOCK_C=self.block_c,
                    num_warps=NUM_WARPS)


def _operands(input, target, mask):
    """(input, target, mask, MASK, TARGET) as the kernels read them: contiguous, bool as uint8."""
    x, t = input.contiguous(), target.contiguous()
    kind = FLOAT_TARGET if t.is_floating_point() else BOOL_TARGET if t.dtype == torch.bool else BYTE_TARGET
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)  # the same bytes
    mask_kind = NO_MASK
    if mask is not None:
        mask_kind = SAMPLE_MASK if mask.shape[1] == 1 and x.shape[1] != 1 else CHANNEL_MASK
        mask = mask.contiguous().view(torch.uint8)
    return x, t, mask, mask_kind.value, kind.value


def region_sums(input: torch.Tensor, target: torch.Tensor, mask, sigmoid: bool, mode: int) -> torch.Tensor:
    """The (B, C, 4) sums as the op pylosses::region_sums, uint8 targets above 1 counted; (B, C,
    6) with the mode's bit WITH_BCE."""
    check_region_args("region_sums", input, target, mask, mode, sigmoid)
    n_sums = SUMS.value + (BCE_SUMS.value if mode & WITH_BCE else 0)
    x, t, m, mask_kind, target_kind = _operands(input, target, mask)
    batch, channels = x.shape[:2]
    acc = acc_torch_dtype(input.dtype, target.dtype)
    planes = batch * channels
    if x.numel() == 0:
        return torch.zeros((batch, channels, n_sums), dtype=acc, device=x.device)
    S = x.numel() // planes
    layout = _Layout(planes, S, max(x.element_size(), t.element_size()))
    partials = torch.empty((planes * layout.chunks, n_sums), dtype=acc, device=x.device)
    with launch_device(x):
        region_sums_kernel[(layout.programs,)](x, t, partials if m is None else m, partials, planes, channels, S,
                                              *layout.arguments(), SIGMOID=sigmoid, MODE=mode & ~WITH_BCE,
                                              MASK=mask_kind, TARGET=target_kind,
                                              ACC=acc_dtype(input.dtype, target.dtype), VEC=layout.vec,
                                              BCE=bool(mode & WITH_BCE), **layout.constexprs())
    sums = partials if layout.chunks == 1 else sum_groups(partials, planes)
    return sums.view(batch, channels, n_sums)


def region_sums_backward(grad_sums: torch.Tensor, input: torch.Tensor, target: torch.Tensor, mask, sigmoid: bool,
                         mode: int, grad_input: bool, grad_target: bool):
    """(grad_input, grad_target) as the op pylosses::region_sums_backward: each (0,) where not asked for."""
    op = "region_sums_backward"
    check_region_args(op, input, target, mask, mode, sigmoid)
    batch, channels = input.shape[:2]
    n_sums = SUMS.value + (BCE_SUMS.value if mode & WITH_BCE else 0)
    if grad_sums.shape != (batch, channels, n_sums):
        raise ValueError(f"{op}: grad_sums must have the shape (B, C, {n_sums}) = ({batch}, {channels}, "
                         f"{n_sums}), got {list(grad_sums.shape)}")
    if not grad_sums.is_floating_point():
        raise TypeError(f"{op}: grad_sums must be floating point, got {grad_sums.dtype}")
    if grad_target and not target.is_floating_point():
        raise TypeError(f"{op}: a gradient for a {target.dtype} target was asked for")
    _check_same_device(op, input, "input", grad_sums, "grad_sums")
    x, t, m, mask_kind, _ = _operands(input, target, mask)
    gi = torch.empty(x.shape if grad_input else (0,), dtype=input.dtype, device=x.device)
    gt = torch.empty(x.shape if grad_target else (0,), dtype=target.dtype, device=x.device)
    if x.numel() == 0 or not (grad_input or grad_target):
        return gi, gt
    acc = acc_torch_dtype(input.dtype, target.dtype)
    g = grad_sums.to(acc).contiguous()
    planes = batch * channels
    S = x.numel() // planes
    layout = _Layout(planes, S, max(x.element_size(), t.element_size()))
    with launch_device(x):
        region_grad_kernel[(layout.programs,)](x, t, g if m is None else m, g, gi, gt, planes, channels, S,
                                               *layout.arguments(), SIGMOID=sigmoid, MODE=mode & ~WITH_BCE,
                                               MASK=mask_kind, GRAD_INPUT=grad_input, GRAD_TARGET=grad_target,
                                               ACC=acc_dtype(input.dtype, target.dtype), BCE=bool(mode & WITH_BCE),
                                               **layout.constexprs())
    return gi, gt
