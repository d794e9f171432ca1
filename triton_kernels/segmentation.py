"""Segmentation loss alpha * BCE + beta * TV in Triton, in one pass over memory.

The contiguous input is a sequence of planes of H x W, one for each (sample, channel, depth).
A program owns a tile of BLOCK_H rows x BLOCK_W columns of a plane. Where W is not a multiple
of ALIGN (16 elements), a tile row starts not at its row's first element but at the multiple
of ALIGN at or before it, and ends where the next row's tile rows start: the tiles still
partition the tensor, each element owned once (the lanes before a row's start are the end of
the row before, or of the plane before, and are computed with their own coordinates), and
every load and store of the input, the target and the gradients starts 16-byte aligned, so it
is a vector whatever W is. In 3-D, where every plane's rows start alike (H * W a multiple of
ALIGN), a program walks its tile through the depth and keeps the slices in front and behind in
registers; else it loads them. The neighbours in a plane are loads shifted by 1 and W, which
hit the cache. The logits form takes the sigmoid of each element once and of the neighbours
whose differences the loss needs (left, above, in front); the gradient needs the other side's
neighbours only through the sign of a difference of probabilities, which the logits give
exactly (the sigmoid is strictly increasing).

Each program writes partial sums of the loss of its elements, with the weights of the
reduction applied; sum_groups adds them in a fixed order. A probability outside [0, 1] (or
NaN) makes its log NaN, and the clamps keep NaN, so such a loss is NaN without a count.
The per-element math is that of csrc/seg_loss_math.h, in Triton.
"""

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype
from pylosses.reference import check_values

from .common import acc_dtype, acc_torch_dtype, launch_device, sum_groups, to_element

ALIGN = 16  # elements: 16 bytes of the narrowest stream (uint8 targets), and a vector of each
NUM_WARPS = 4
TILE = 1024  # elements a program: 8 a thread (see tile_shape), within 128 registers


@triton.jit
def _log1p(x):
    # log(1 + x) as log(u) + r, u = 1 + x rounded and r = x - (u - 1) its exact residue for
    # |x| <= 1, with no division (csrc/cpu/cpu_common.h's plog1p says why it is accurate)
    u = 1.0 + x
    return tl.log(u) + tl.where(x <= 1.0, x - (u - 1.0), 0.0)


@triton.jit
def _prob_exp(x, LOGITS: tl.constexpr):
    """(the probability, exp(-|x|)): BCE of the logits form needs the exponential too"""
    if LOGITS:
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0, e) / (1.0 + e), e
    else:
        return x, x


@triton.jit
def _sign(v):
    return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)


@triton.jit
def _clamped_log(v):
    # max(v, -100) as nn.BCELoss, NaN kept: a probability outside [0, 1] makes the loss NaN
    return tl.maximum(v, -100.0, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _bce_loss(x, p, e, t, LOGITS: tl.constexpr, HARD: tl.constexpr):
    if LOGITS:
        return tl.maximum(x, 0.0) - x * t + _log1p(e)
    elif HARD:
        # a mask's label is 0 or 1: one log, of the probability given to the label, with the
        # rounding residue of 1 - p added back (exact), as csrc/seg_loss_math.h's bce_loss_hard
        one_minus_p = 1.0 - p
        residue = (1.0 - one_minus_p) - p
        label = t >= 0.5
        return -_clamped_log(tl.log(tl.where(label, p, one_minus_p)) + tl.where(label, 0.0, residue))
    else:
        return (t - 1.0) * _clamped_log(_log1p(-p)) - t * _clamped_log(tl.log(p))


@triton.jit
def _bce_grad_input(p, t, LOGITS: tl.constexpr):
    if LOGITS:
        return p - t
    else:
        return (p - t) / tl.maximum((1.0 - p) * p, 1e-12)


@triton.jit
def _bce_grad_target(x, p, LOGITS: tl.constexpr):
    if LOGITS:
        return -x
    else:
        return _log1p(-p) - tl.log(p)


@triton.jit
def _load_prob(ptr, mask, fallback, LOGITS: tl.constexpr, ACC: tl.constexpr):
    # the probability at ptr where mask holds, else fallback (a missing neighbour is the element)
    p, _ = _prob_exp(tl.load(ptr, mask=mask, other=0.5).to(ACC), LOGITS)
    return tl.where(mask, p, fallback)


@triton.jit
def _load_value(ptr, mask, fallback, ACC: tl.constexpr):
    return tl.where(mask, tl.load(ptr, mask=mask, other=0.5).to(ACC), fallback)


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


@triton.jit
def _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, offs, mine, w, h, x, p, e, p_front, x_back, H, W,
               alpha_w, w_w, w_h, w_d, LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr,
               ACC: tl.constexpr):
    """Writes the gradients of the owned lanes and returns their weighted loss (0 elsewhere),
    given the input (and its probability) and the depth neighbours the caller has."""
    W64 = tl.full([], W, tl.int64)
    t = tl.load(t_ptr + offs, mask=mine, other=0).to(ACC)
    # the neighbours the loss needs as probabilities, the others (for the sign) as they are
    p_left = _load_prob(x_ptr + offs - 1, mine & (w > 0), p, LOGITS, ACC)
    p_up = _load_prob(x_ptr + offs - W64, mine & (h > 0), p, LOGITS, ACC)
    x_right = _load_value(x_ptr + offs + 1, mine & (w < W - 1), x, ACC)
    x_down = _load_value(x_ptr + offs + W64, mine & (h < H - 1), x, ACC)
    if GRAD:
        tv = (w_w * (_sign(p - p_left) - _sign(x_right - x))
              + w_h * (_sign(p - p_up) - _sign(x_down - x))
              + w_d * (_sign(p - p_front) - _sign(x_back - x)))
        chain = p * (1.0 - p) if LOGITS else 1.0
        g = alpha_w * _bce_grad_input(p, t, LOGITS) + chain * tv
        tl.store(grad_ptr + offs, to_element(g, grad_ptr), mask=mine)
    if GRAD_T:
        gt = alpha_w * _bce_grad_target(x, p, LOGITS)
        tl.store(grad_t_ptr + offs, to_element(gt, grad_t_ptr), mask=mine)
    bce = _bce_loss(x, p, e, t, LOGITS, t_ptr.dtype.element_ty == tl.uint8)  # (bool targets arrive as uint8)
    if not LOGITS or t_ptr.dtype.element_ty == tl.uint8:
        # a target outside [0, 1] (a 0/255 mask; with probabilities, any float): NaN, where the
        # CPU kernel raises (README); bool targets arrive as uint8 and always pass
        bce = tl.where((t >= 0.0) & (t <= 1.0), bce, float("nan"))
    return tl.where(mine, alpha_w * bce + w_w * tl.abs(p - p_left)
                    + w_h * tl.abs(p - p_up) + w_d * tl.abs(p - p_front), 0.0)


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
            p_front = _load_prob(x_ptr + offs - plane, mine & (d > 0), p, LOGITS, ACC)
            x_back = _load_value(x_ptr + offs + plane, mine & (d < D - 1), x, ACC)
        else:
            p_front = p
            x_back = x
        loss = _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, offs, mine, w, h, x, p, e, p_front, x_back, H, W,
                          alpha_w, w_w, w_h, w_d, LOGITS, GRAD, GRAD_T, ACC)
        total += tl.sum(tl.where(before, 0.0, loss))
        before_total += tl.sum(tl.where(before, loss, 0.0))
    return total, before_total


@triton.jit(do_not_specialize=["planes", "D", "tiles_w", "tiles"])  # (H and W stay: common.py)
def seg_fwd_kernel(x_ptr, t_ptr, grad_ptr, grad_t_ptr, partial_ptr, planes: tl.int32, D: tl.int32, H: tl.int32,
                   W: tl.int32, tiles_w: tl.int32, tiles: tl.int32,
                   alpha_w: tl.float64, w_w: tl.float64, w_h: tl.float64, w_d: tl.float64,
                   LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr,
                   DEPTH: tl.constexpr, ALIGN: tl.constexpr, WALK: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_W: tl.constexpr):
    """partial[pid, 0] = the weighted loss of this program's lanes of its plane; those of its
    lanes that hold the plane before's last row go to partial[q, 1] of the same tile q of that
    plane; so that a fixed-order sum of the rows of a group's programs is the group's loss.

    WALK (3-D, every plane's rows start alike: H * W a multiple of ALIGN): a program owns a tile of a
    (sample, channel) volume and walks it through the depth, keeping the tiles at d - 1, d and
    d + 1 in registers, so that each element is read from memory and turned into a probability
    once. Else a program owns a tile of one plane and loads its depth neighbours."""
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
    if WALK:
        volume = pid // tiles
        offs, mine, w, h, _ = _tile_layout(volume * D, tile_h * BLOCK_H, tile_w, planes - 1, H, W, ALIGN, BLOCK_H,
                                           BLOCK_W, EXACT=False)
        plane = tl.full([], H, tl.int64) * W
        if ALIGN > 1:
            plane = tl.multiple_of(plane, ALIGN)  # (what WALK means)
        x = tl.load(x_ptr + offs, mask=mine, other=0.5).to(ACC)
        p, e = _prob_exp(x, LOGITS)
        p_front = p  # d = 0 has no front neighbour
        acc = tl.zeros([BLOCK_H, BLOCK_W], ACC)
        for d in range(0, D):
            here = offs + d * plane
            has_back = mine & (d + 1 < D)
            x_next = tl.load(x_ptr + here + plane, mask=has_back, other=0.5).to(ACC)
            p_next, e_next = _prob_exp(x_next, LOGITS)  # (used by the next step, which exists where has_back)
            # BCE's exp(-|x|) comes with the sigmoid; with gradients to write, keeping it a step
            # would take the walk past 128 registers, so it is taken again
            e_here = tl.exp(-tl.abs(x)) if GRAD or GRAD_T else e
            acc += _tile_loss(x_ptr, t_ptr, grad_ptr, grad_t_ptr, here, mine, w, h, x, p, e_here, p_front,
                              tl.where(has_back, x_next, x), H, W, alpha_w, w_w, w_h, w_d, LOGITS, GRAD, GRAD_T, ACC)
            p_front = p
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


def tile_shape(H: int, W: int, walk: bool, itemsize: int, grad_itemsize: int, acc: torch.dtype):
    """(BLOCK_H, BLOCK_W, num_warps): rows of up to 128 columns (one more tile a row where W is
    not a multiple of ALIGN), TILE elements in all (a quarter for float64; for the depth walk,
    which keeps three tiles, 16 bytes a thread of the wider of input and gradient: float16's
    gradient, kept in float32, takes 8 elements a thread past 128 registers), at least 2 rows
    (Triton's alignment analysis fails on a one-row tile with hints) and at least a warp of
    16-byte vectors: a small plane gets fewer warps rather than narrower vectors."""
    unit = max(itemsize, grad_itemsize) if walk else itemsize  # the bytes that fill 16 a thread
    block_w = min(max(triton.next_power_of_2(row_span(W)), 16), 128)
    tile = 128 * 16 // unit if walk else TILE // (4 if acc == torch.float64 else 1)
    block_h = max(min(tile // block_w, triton.next_power_of_2(H)), 2)
    block_w = max(block_w, 32 * 16 // unit // block_h)
    return block_h, block_w, max(1, min(NUM_WARPS, block_h * block_w * unit // (32 * 16)))


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
        if max(D, H, W) >= 2**31 - 2 * ALIGN:
            raise ValueError(f"segmentation_loss (triton): spatial sizes must stay below 2**31 - {2 * ALIGN}, "
                             f"got {tuple(spatial)}")
        walk = D > 1 and (H * W) % row_alignment(W) == 0
        block_h, block_w, num_warps = tile_shape(H, W, walk, x.element_size(), gi.element_size(), acc)
        tiles_w = triton.cdiv(row_span(W), block_w)
        tiles = triton.cdiv(H, block_h) * tiles_w
        programs = (planes // D if walk else planes) * tiles
        if programs >= 2**31:
            raise ValueError(f"segmentation_loss (triton): {tuple(x.shape)} needs {programs} programs, "
                             "more than a launch holds")
        partials = torch.empty((programs, 2), dtype=acc, device=x.device)
        with launch_device(x):
            seg_fwd_kernel[(programs,)](
                x, t, gi if grad_input else partials, gt if grad_target else partials, partials, planes, D, H, W,
                tiles_w, tiles, alpha * inv_n, *weights[::-1],
                LOGITS=from_logits, GRAD=grad_input, GRAD_T=grad_target, ACC=acc_dtype(input.dtype, target.dtype),
                DEPTH=D > 1, ALIGN=row_alignment(W), WALK=walk, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps)
        loss = sum_groups(partials, groups).sum(dim=1)
    else:
        loss = torch.full((groups,), float("nan") if mean_like else 0.0, dtype=acc, device=x.device)
    if check_range and bool(torch.isnan(loss).any()):  # NaN: say why, as the CPU kernel does
        check_values(x, t, from_logits)
    result = torch.promote_types(input.dtype, target.dtype)
    loss = loss.to(result)
    return (loss if reduction == 0 else loss[0]), gi, gt
