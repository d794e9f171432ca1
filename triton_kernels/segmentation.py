"""Segmentation loss alpha * BCE + beta * TV in Triton, in one pass over memory.

The contiguous input is a sequence of volumes of D x H x W (D = 1 in 2-D), one for each sample
and channel. A program owns a BLOCK_H x BLOCK_W tile of a volume and walks it through the depth
d, keeping the tiles at d - 1, d and d + 1 in registers: each element is read from memory once,
its D neighbours come from registers and its H and W neighbours from loads of the same tile
shifted by one, which hit the cache. Each program writes its own partial sums (BCE, TV along W,
H, D, and a count of probabilities outside [0, 1]); sum_groups adds them in a fixed order.
The per-element math is that of csrc/seg_loss_math.h, in Triton.
"""

import torch
import triton
import triton.language as tl

from pylosses._dtypes import saved_grad_dtype

from .common import acc_dtype, acc_torch_dtype, sum_groups

N_PARTIALS = 5  # bce, tv_w, tv_h, tv_d, out-of-range count


@triton.jit
def _log1p(x):
    # log(1 + x) as log(u) * x / (u - 1), u = 1 + x (Goldberg): accurate for small x
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _prob(x, LOGITS: tl.constexpr):
    if LOGITS:
        e = tl.exp(-tl.abs(x))
        return tl.where(x >= 0, 1.0, e) / (1.0 + e)
    else:
        return x


@triton.jit
def _sign(v):
    return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)


@triton.jit
def _bce_loss(x, p, t, LOGITS: tl.constexpr):
    if LOGITS:
        return tl.maximum(x, 0.0) - x * t + _log1p(tl.exp(-tl.abs(x)))
    else:
        log_p = tl.maximum(tl.log(p), -100.0)
        log_q = tl.maximum(_log1p(-p), -100.0)
        return (t - 1.0) * log_q - t * log_p


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
    x = tl.load(ptr, mask=mask, other=0.5).to(ACC)
    return tl.where(mask, _prob(x, LOGITS), fallback)


@triton.jit(do_not_specialize=["D", "tiles_w", "tiles"])  # (H and W stay: they shape the masks; common.py)
def seg_fwd_kernel(x_ptr, t_ptr, grad_ptr, grad_t_ptr, partial_ptr, D, H, W, tiles_w, tiles,
                   alpha_grad, w_w, w_h, w_d,
                   LOGITS: tl.constexpr, GRAD: tl.constexpr, GRAD_T: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    volume = (pid // tiles).to(tl.int64)
    tile = pid % tiles
    h = (tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    w = (tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (h < H) & (w < W)
    plane = H.to(tl.int64) * W
    offs = volume * D * plane + h.to(tl.int64) * W + w  # of this tile in slice d = 0
    has_left = inside & (w > 0)
    has_right = inside & (w < W - 1)
    has_up = inside & (h > 0)
    has_down = inside & (h < H - 1)

    zero = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    acc_bce, acc_w, acc_h, acc_d, acc_bad = zero, zero, zero, zero, zero
    x_cur = tl.load(x_ptr + offs, mask=inside, other=0.5).to(ACC)
    p_cur = _prob(x_cur, LOGITS)
    p_prev = p_cur  # d = 0 has no front neighbour
    for d in range(0, D):
        here = offs + d * plane
        has_back = inside & (d + 1 < D)
        x_next = tl.load(x_ptr + here + plane, mask=has_back, other=0.5).to(ACC)
        p_next = tl.where(has_back, _prob(x_next, LOGITS), p_cur)
        left = _load_prob(x_ptr + here - 1, has_left, p_cur, LOGITS, ACC)
        right = _load_prob(x_ptr + here + 1, has_right, p_cur, LOGITS, ACC)
        up = _load_prob(x_ptr + here - W, has_up, p_cur, LOGITS, ACC)
        down = _load_prob(x_ptr + here + W, has_down, p_cur, LOGITS, ACC)
        t = tl.load(t_ptr + here, mask=inside, other=0).to(ACC)

        acc_bce += tl.where(inside, _bce_loss(x_cur, p_cur, t, LOGITS), 0.0)
        acc_w += tl.abs(p_cur - left)  # 0 where the neighbour is missing or outside
        acc_h += tl.abs(p_cur - up)
        acc_d += tl.abs(p_cur - p_prev)
        if not LOGITS:  # NaN fails both comparisons
            acc_bad += tl.where(inside & ~((p_cur >= 0.0) & (p_cur <= 1.0)), 1.0, 0.0)
        if GRAD:
            tv = (w_w * (_sign(p_cur - left) - _sign(right - p_cur))
                  + w_h * (_sign(p_cur - up) - _sign(down - p_cur))
                  + w_d * (_sign(p_cur - p_prev) - _sign(p_next - p_cur)))
            chain = p_cur * (1.0 - p_cur) if LOGITS else 1.0
            g = alpha_grad * _bce_grad_input(p_cur, t, LOGITS) + chain * tv
            tl.store(grad_ptr + here, g.to(grad_ptr.dtype.element_ty), mask=inside)
        if GRAD_T:
            gt = alpha_grad * _bce_grad_target(x_cur, p_cur, LOGITS)
            tl.store(grad_t_ptr + here, gt.to(grad_t_ptr.dtype.element_ty), mask=inside)
        p_prev = p_cur
        x_cur = x_next
        p_cur = p_next

    row = partial_ptr + pid.to(tl.int64) * 5
    tl.store(row + 0, tl.sum(tl.sum(acc_bce, axis=1), axis=0))
    tl.store(row + 1, tl.sum(tl.sum(acc_w, axis=1), axis=0))
    tl.store(row + 2, tl.sum(tl.sum(acc_h, axis=1), axis=0))
    tl.store(row + 3, tl.sum(tl.sum(acc_d, axis=1), axis=0))
    tl.store(row + 4, tl.sum(tl.sum(acc_bad, axis=1), axis=0))


def tile_shape(H: int, W: int):
    """BLOCK_H x BLOCK_W: a row of up to 128 columns, about 2048 elements a tile."""
    block_w = min(max(triton.next_power_of_2(W), 16), 128)
    block_h = min(triton.next_power_of_2(H), max(2048 // block_w, 1))
    return block_h, block_w


def seg_loss_fwd(input, target, alpha, beta, spatial_dims, from_logits, reduction, grad_input, grad_target,
                 check_range):
    """(loss, grad_input, grad_target) as the op pylosses::seg_loss_fwd; check_range: raise on
    probabilities outside [0, 1] (a host sync on a GPU), else the loss is NaN."""
    x, t = input.contiguous(), target.contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)  # same bytes
    batch = x.shape[0]
    W, H = x.shape[-1], x.shape[-2]
    D = x.shape[-3] if spatial_dims == 3 else 1
    n = x.numel()
    per_sample = n // batch if batch else 0
    volumes = n // (D * H * W) if n else 0  # (sample, channel) volumes
    mean_like = reduction != 2
    n_mean = n if reduction == 1 else per_sample
    inv_n = 1.0 / max(n_mean, 1) if mean_like else 1.0
    extents = (W, H, D)

    def axis_weight(length):
        return beta * inv_n * (length / (length - 1) if mean_like else 1.0) if length > 1 else 0.0

    gi = torch.empty(x.shape if grad_input else (0,), dtype=saved_grad_dtype(input.dtype), device=x.device)
    gt = torch.empty(x.shape if grad_target else (0,), dtype=saved_grad_dtype(target.dtype), device=x.device)
    acc = acc_torch_dtype(input.dtype, target.dtype)
    groups = batch if reduction == 0 else 1
    if n:
        block_h, block_w = tile_shape(H, W)
        tiles_w = triton.cdiv(W, block_w)
        tiles = triton.cdiv(H, block_h) * tiles_w
        partials = torch.empty((volumes * tiles, N_PARTIALS), dtype=acc, device=x.device)
        seg_fwd_kernel[(volumes * tiles,)](
            x, t, gi if grad_input else partials, gt if grad_target else partials, partials, D, H, W, tiles_w, tiles,
            alpha * inv_n, axis_weight(W), axis_weight(H), axis_weight(D),
            LOGITS=from_logits, GRAD=grad_input, GRAD_T=grad_target, ACC=acc_dtype(input.dtype, target.dtype),
            BLOCK_H=block_h, BLOCK_W=block_w)
        sums = sum_groups(partials, groups)
    else:
        sums = torch.zeros((groups, N_PARTIALS), dtype=acc, device=x.device)
    bce, tv, bad = sums[:, 0], sums[:, 1:4], sums[:, 4]
    if check_range and not from_logits and bool((bad > 0).any()):
        raise RuntimeError("all elements of input should be between 0 and 1")
    if mean_like:
        count = float(n_mean) if n_mean else float("nan")
        loss = alpha * bce / count
        for a, length in enumerate(extents):
            if length > 1:
                loss = loss + beta * tv[:, a] / (count * (length - 1) / length)
    else:
        loss = alpha * bce + beta * tv.sum(dim=1)
    loss = torch.where(bad > 0, torch.full_like(loss, float("nan")), loss)  # out of range: NaN, no sync
    result = torch.promote_types(input.dtype, target.dtype)
    loss = loss.to(result)
    return (loss if reduction == 0 else loss[0]), gi, gt
