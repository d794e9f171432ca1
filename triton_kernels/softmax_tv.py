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
inside them).

The walk (issue 15). The outermost kept axis is walked (H in 2-D, D in 3-D; none for W alone): a
slice is the SO = S / LW pixels of one of its LW positions, a slab BLOCK_WALK consecutive slices.
A program owns BLOCK lanes of a sample, lane u being pixel u mod SO of each slice of slab u div SO
(so small slices pack several slabs into a program), and a thread G consecutive lanes: a vector
of 16 bytes (8 for 16-bit inputs) where SO is a multiple of it, else one pixel. Each lane tracks
its BLOCK_WALK output pixels, the slice before and after them (a halo), the outer W neighbours of
its thread's vector (loaded), and in 3-D each output pixel's H neighbours (loaded). It walks the
classes three times: sweep 1 gives each tracked pixel's maximum and sum of exponentials (an online
softmax, one exponential a class); sweep 2 each tracked probability once, the walked axis's
differences and their signs once for both pixels of a pair, W's inside a vector by split/join
shifts (register renames) and its right sign as the next lane's left one, then G_c, the loss
terms (a pair counted once: W's at its later pixel, the others' at the earlier) and sum_k G_k p_k
of each output pixel; sweep 3 (with the gradient) the same probabilities and G_c again, and stores
dx_c. Every probability comes from the same code (_prob after _online over the classes in the same
order), so a pixel's p has the same bits in every lane and program that computes it and the sign
of a zero difference is 0 on both sides of the pair.

What it costs (the sm_90 gate, Triton 3.8, instructions an element over the three sweeps, with
the gradient): exponentials an output pixel a sweep are (BLOCK_WALK + 2) G + 2 BLOCK_WALK (+ 2
BLOCK_WALK G in 3-D) over BLOCK_WALK G, where the first version took 2 AXES + 1 (5 and 7). The
registers decide BLOCK_WALK (WALK_POSITIONS, 16 resident warps: at most 128 a thread): 2 in 2-D
(2.5 exponentials an element: float32 102.2 instructions against a budget of 62.3, the first
version 168; 16-bit 108 to 111 against 31.2 and 46.7, 182 to 185 before), 1 in 3-D and in float64
(3-D: 5.5 exponentials, float64 2-D 4; float32 197.8, 234.5 before; 16-bit 208 to 213, 250 to 263 before; float64
2-D 680, 803 before, 3-D 1010, 1120 before, still 12 warps an SM). Two positions in 3-D (4.5
exponentials, float32 180) take 168 registers, 12 warps; in float64 2-D 516 at 163. Slices of
single pixels (SO not a multiple of G: scalar accesses) walk 4 positions (2 in float64 3-D): 3.5
exponentials an element in 2-D (odd W, float32: 155, 203 before). What remains is mostly the exponentials and
the online softmax of the halo and of the loaded neighbours, and the three sweeps. Triton 3.6
(the GPU machine's) gives the same code 2 to 8% more (float32 110 and 204), within 128 registers
only when held to them (MAX_REGISTERS).

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
from . import segmentation as seg
from .cross_entropy import _exp

NUM_WARPS = 4
# a thread's pixels of a slice: 16 bytes of a float32 or float64 input (a 128-bit access), 4 of a
# 16-bit one (8 bytes: 8 would double the state a thread carries)
THREAD_BYTES = 16
THREAD_PIXELS = 4
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# ptxas's register limit (.maxnreg): 128 keeps 16 warps resident. Triton 3.6 gives the 2-D float32
# and float16 walks 134 to 136 registers without it (12 warps; 3.8 gives 114 to 117), and fits
# them in 128 with no spill; float64 runs without it (in 3-D, held to 128, it spilled 88 bytes).
MAX_REGISTERS = 128
# positions a thread takes along the walked axis (BLOCK_WALK), by (accumulation dtype, kept axes)
WALK_POSITIONS = {(torch.float32, 2, True): 2, (torch.float32, 3, True): 1, (torch.float64, 2, True): 1,
                  (torch.float64, 3, True): 1, (torch.float32, 2, False): 4, (torch.float32, 3, False): 4,
                  (torch.float64, 2, False): 4, (torch.float64, 3, False): 2}


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
def _prob(ptr, mask, m, inv, ACC: tl.constexpr):
    """p of a class at ptr from its pixel's maximum m and 1 / sum of exponentials. exp(x - m),
    not cross_entropy's _exp_minus (2**(x log2 e - m log2 e), an instruction less): x - m is
    rounded once, so logits shifted by a constant (exactly) give probabilities of the same bits,
    as torch's softmax does, and the sign of their difference is 0 as the reference's."""
    return _exp(_load(ptr, mask, ACC) - m) * inv


# A thread's G pixels of a slice are the last axis of an [NV, G] tile: its own W neighbours, moved
# along it by split and join (register renames), with segmentation.py's shifts of a [K, N, G]
# tile (K = 1 here); only the two outer neighbours of each vector are loaded.
@triton.jit
def _first(v):
    """v[:, 0] of an [NV, G] v"""
    return tl.reshape(seg._first(v[None, :, :]), [v.shape[0]])


@triton.jit
def _last(v):
    """v[:, G - 1]"""
    return tl.reshape(seg._last(v[None, :, :]), [v.shape[0]])


@triton.jit
def _shift_in(v, first):
    """[first, v0, ..., v(G-2)]: each pixel's left neighbour, first that of v0"""
    return tl.reshape(seg._shift_in(v[None, :, :], first[None, :]), [v.shape[0], v.shape[1]])


@triton.jit
def _shift_out(v, last):
    """[v1, ..., v(G-1), last]: each pixel's right neighbour, last that of v(G-1)"""
    return tl.reshape(seg._shift_out(v[None, :, :], last[None, :]), [v.shape[0], v.shape[1]])


@triton.jit
def _class_terms(row, offs, masks, ms, invs, lane_left, lane_right, edge_right, lane_up, lane_down, w0, w1, w2,
                 R: tl.constexpr, AXES: tl.constexpr, ACC: tl.constexpr):
    """(p, G) of each output position of a class (row: its plane) and the loss terms of each axis
    (summed over the positions). offs and masks: the tracked pixels, their statistics ms and invs
    (see the kernel); lane_*: each lane's neighbour exists (edge_right: that of the vector's last
    lane)."""
    WALK: tl.constexpr = AXES >= 2
    H0: tl.constexpr = 1 if WALK else 0  # the halo positions before (and after) the R outputs
    NP: tl.constexpr = R + 2 * H0
    NT: tl.constexpr = NP + 2 * R + (2 * R if AXES == 3 else 0)
    ps = ()
    for t in tl.static_range(NT):
        ps = ps + (_prob(row + offs[t], masks[t], ms[t], invs[t], ACC),)
    # along the walk: each pair's difference and sign once, for both its pixels (0 where one is missing)
    ds = (ps[0] * 0.0,)
    for t in tl.static_range(1, NP):
        ds = ds + (tl.where(masks[t - 1] & masks[t], ps[t] - ps[t - 1], 0.0),)
    l0 = ps[0] * 0.0
    l1 = l0
    l2 = l0
    out_p = ()
    out_g = ()
    for r in tl.static_range(R):
        p = ps[H0 + r]
        # W: the left pair's difference here (its loss counted at its later pixel), the right
        # pair's sign the next lane's left one
        d_left = tl.where(lane_left[r], p - _shift_in(p, ps[NP + r]), 0.0)
        s_left = sign(d_left)
        s_edge = sign(tl.where(edge_right[r], ps[NP + R + r] - _last(p), 0.0))
        g = w0 * (s_left - tl.where(lane_right[r], _shift_out(s_left, s_edge), 0.0))
        l0 += tl.abs(d_left)
        if AXES == 3:
            d_up = tl.where(lane_up[r], p - ps[NP + 2 * R + r], 0.0)
            d_down = tl.where(lane_down[r], ps[NP + 3 * R + r] - p, 0.0)
            g += w1 * (sign(d_up) - sign(d_down))
            l1 += tl.abs(d_down)
        if WALK:
            w_walk = w2 if AXES == 3 else w1
            g += w_walk * (sign(ds[H0 + r]) - sign(ds[H0 + r + 1]))
            if AXES == 3:
                l2 += tl.abs(ds[H0 + r + 1])
            else:
                l1 += tl.abs(ds[H0 + r + 1])
        out_p = out_p + (p,)
        out_g = out_g + (g,)
    return out_p, out_g, l0, l1, l2


# Triton compiles a kernel again for each pattern of its integer arguments (common.py): C, the
# extents and the counts only count; alignment comes from VEC (S_V and SO_V are S and SO over it),
# and L0 (a row's length, the 3-D H neighbours' distance) stays.
@triton.jit(do_not_specialize=["C", "S_V", "SO_V", "L1", "LW", "slabs", "tiles"])
def softmax_tv_fwd_kernel(x_ptr, grad_ptr, partial_ptr, C: tl.int32, S_V: tl.int32, SO_V: tl.int32, L0: tl.int32,
                          L1: tl.int32, LW: tl.int32, slabs: tl.int32, tiles: tl.int32, w0: tl.float64,
                          w1: tl.float64, w2: tl.float64, AXES: tl.constexpr, GRAD: tl.constexpr, ACC: tl.constexpr,
                          G: tl.constexpr, VEC: tl.constexpr, ROW_VEC: tl.constexpr, BLOCK: tl.constexpr,
                          BLOCK_WALK: tl.constexpr):
    """partial[pid, a] = w_a times the sum of |p(i + e_a) - p(i)| over this program's pixels (of
    sample pid // tiles) and every class; with GRAD, their gradients stored. L0, L1: the extents
    of the kept axes W and (3-D) H; LW the walked axis's, SO = S / LW its stride. A program owns
    BLOCK lanes of the sample's slabs (BLOCK_WALK consecutive slices of the walked axis: lane u is
    pixel o = u mod SO of the slices of slab u div SO), G consecutive lanes a thread. VEC = G where
    SO is a multiple of G (a thread's lanes then lie in one slice: vector accesses), else 1;
    ROW_VEC: VEC and L0 a multiple of G (in one row: the 3-D H neighbours' loads are vectors)."""
    R: tl.constexpr = BLOCK_WALK
    WALK: tl.constexpr = AXES >= 2
    H0: tl.constexpr = 1 if WALK else 0
    NP: tl.constexpr = R + 2 * H0
    NV: tl.constexpr = BLOCK // G
    pid = tl.program_id(0)
    b = pid // tiles
    S = S_V * VEC  # (a multiple of VEC, which Triton now knows)
    SO = SO_V * VEC
    vstart = (pid - b * tiles) * BLOCK + tl.arange(0, NV)[:, None] * G  # [NV, 1]
    lane = tl.arange(0, G)[None, :]
    # coordinates that a vector shares (VEC) or each lane's
    if VEC > 1:
        q = vstart
        lanes = lane
    else:
        q = vstart + lane
        lanes = 0
    slab = q // SO
    ov = q - slab * SO
    base = slab * (R * SO) + ov  # the pixel of the first output slice
    o = ov + lanes  # [NV, G]: each lane's pixel within its slice
    k0 = o % L0
    if ROW_VEC:
        k1 = ov // L0
    else:
        k1 = o // L0
    # the weights arrive as float64; a float32 launch rounds them here, once
    w0 = tl.full([], w0, ACC)
    w1 = tl.full([], w1, ACC)
    w2 = tl.full([], w2, ACC)
    # the tracked pixels: the NP slices (halo, outputs, halo), then each output slice's left and
    # right vector edges, then (3-D) its H neighbours; offsets from a missing slice's are 0
    offs = ()
    masks = ()
    for k in tl.static_range(NP):
        j = slab * R + (k - H0)
        ok = (j >= 0) & (j < LW)
        # (0 where the slice is missing: a product, not a select, which would hide from Triton
        # that an offset is a multiple of VEC and make every access scalar)
        offs = offs + ((base + (k - H0) * SO) * ok.to(tl.int32) + lanes,)
        masks = masks + (ok,)
    lane_left = ()
    lane_right = ()
    edge_right = ()
    for r in tl.static_range(R):
        lane_left = lane_left + (masks[H0 + r] & (k0 > 0),)
        lane_right = lane_right + (masks[H0 + r] & (k0 < L0 - 1),)
        offs = offs + (_first(offs[H0 + r]) - 1,)
        masks = masks + (_first(lane_left[r]),)
    for r in tl.static_range(R):
        offs = offs + (_last(offs[H0 + r]) + 1,)
        edge_right = edge_right + (_last(lane_right[r]),)
        masks = masks + (edge_right[r],)
    lane_up = lane_left  # (past AXES: unused)
    lane_down = lane_left
    if AXES == 3:
        lane_up = ()
        lane_down = ()
        for r in tl.static_range(R):
            ok = masks[H0 + r]
            lane_up = lane_up + (ok & (k1 > 0),)
            lane_down = lane_down + (ok & (k1 < L1 - 1),)
        for r in tl.static_range(R):
            offs = offs + (offs[H0 + r] - L0,)
            masks = masks + (lane_up[r],)
        for r in tl.static_range(R):
            offs = offs + (offs[H0 + r] + L0,)
            masks = masks + (lane_down[r],)
    NT: tl.constexpr = NP + 2 * R + (2 * R if AXES == 3 else 0)
    sample = x_ptr + b.to(tl.int64) * C * S
    S64 = tl.full([], S, tl.int64)

    # sweep 1: each tracked pixel's maximum and sum of exponentials
    ms = ()
    ss = ()
    for t in tl.static_range(NT):
        m = _lowest(offs[t].to(ACC))
        ms = ms + (m,)
        ss = ss + (m * 0.0,)
    for c in range(0, C):
        row = sample + c * S64
        new_m = ()
        new_s = ()
        for t in tl.static_range(NT):
            m, s = _online(ms[t], ss[t], _load(row + offs[t], masks[t], ACC))
            new_m = new_m + (m,)
            new_s = new_s + (s,)
        ms = new_m
        ss = new_s
    invs = ()
    for t in tl.static_range(NT):
        invs = invs + (reciprocal(ss[t]),)

    # sweep 2: the loss terms of each axis and sum_k G_k p_k of each output pixel
    zero = tl.zeros([NV, G], ACC)
    loss0 = zero
    loss1 = zero
    loss2 = zero
    dots = ()
    for r in tl.static_range(R):
        dots = dots + (zero,)
    for c in range(0, C):
        ps, gs, l0, l1, l2 = _class_terms(sample + c * S64, offs, masks, ms, invs, lane_left, lane_right,
                                          edge_right, lane_up, lane_down, w0, w1, w2, R, AXES, ACC)
        loss0 += l0
        loss1 += l1
        loss2 += l2
        new_dots = ()
        for r in tl.static_range(R):
            new_dots = new_dots + (dots[r] + gs[r] * ps[r],)
        dots = new_dots
    out = partial_ptr + pid.to(tl.int64) * AXES
    tl.store(out, w0 * tl.sum(tl.sum(loss0, axis=1), axis=0))
    if AXES == 2:
        tl.store(out + 1, w1 * tl.sum(tl.sum(loss1, axis=1), axis=0))
    if AXES == 3:
        tl.store(out + 1, w1 * tl.sum(tl.sum(loss1, axis=1), axis=0))
        tl.store(out + 2, w2 * tl.sum(tl.sum(loss2, axis=1), axis=0))

    # sweep 3: the gradient, p_c (G_c - sum_k G_k p_k), from p_c and G_c taken again
    if GRAD:
        grad_sample = grad_ptr + b.to(tl.int64) * C * S
        for c in range(0, C):
            ps, gs, _0, _1, _2 = _class_terms(sample + c * S64, offs, masks, ms, invs, lane_left, lane_right,
                                              edge_right, lane_up, lane_down, w0, w1, w2, R, AXES, ACC)
            grad_row = grad_sample + c * S64
            for r in tl.static_range(R):
                tl.store(grad_row + offs[H0 + r], to_element(ps[r] * (gs[r] - dots[r]), grad_ptr),
                         mask=masks[H0 + r])


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
    axes = len(kept)
    lengths = [length for length, _ in kept] + [1] * (3 - axes)
    weights = [weight for _, weight in kept] + [0.0] * (3 - axes)
    # the walked axis: the outermost kept one (none for W alone: a slab is then the plane)
    walk_len = lengths[axes - 1] if axes > 1 else 1
    SO = S // walk_len
    # a thread's pixels of a slice: a vector where SO is a multiple of it (else a pixel)
    G = min(THREAD_PIXELS, THREAD_BYTES // x.element_size())
    G = G if SO % G == 0 else 1
    walk = WALK_POSITIONS[(acc_torch_dtype(x.dtype), axes, G > 1)] if axes > 1 else 1
    block = NUM_WARPS * 32 * G
    slabs = triton.cdiv(walk_len, walk)
    if slabs * SO + block >= 2**31:
        raise ValueError(f"{op} (triton): a plane must have fewer than 2**31 pixels, got {S} ({spatial}): its "
                         f"{slabs * SO} lanes and a program's {block} reach 2**31")
    tiles = triton.cdiv(slabs * SO, block)
    programs = B * tiles
    if programs >= 2**31:
        raise ValueError(f"{op} (triton): {tuple(x.shape)} needs {programs} programs, more than a launch holds")
    partials = torch.empty((programs, axes), dtype=acc_torch_dtype(x.dtype), device=x.device)
    with launch_device(x):
        softmax_tv_fwd_kernel[(programs,)](x, grad if compute_grad else partials, partials, C, S // G, SO // G,
                                           lengths[0], lengths[1], walk_len, slabs, tiles, *weights, AXES=axes,
                                           GRAD=compute_grad, ACC=acc_dtype(x.dtype), G=G, VEC=G,
                                           ROW_VEC=G > 1 and lengths[0] % G == 0, BLOCK=block, BLOCK_WALK=walk,
                                           num_warps=NUM_WARPS,
                                           maxnreg=None if x.dtype == torch.float64 else MAX_REGISTERS)
    loss = sum_groups(partials, 1).sum()
    return loss.to(input.dtype), grad
