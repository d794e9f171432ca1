"""What the Triton kernels of the losses share: the fixed-order sum of per-program partials,
the backward (applying grad_output), the sigmoid and its pieces, and the dtype and launch helpers.

Every kernel here computes in float32 (float64 when the data is float64) and indexes with
int64, so tensors of more than 2**31 elements work. Scalar parameters carry their types
(DESIGN §3): a Python float would reach the kernel as float32, so floats are float64 and
converted once to the accumulation type; an annotated integer also escapes Triton's turning
an argument equal to 1 into a constant (one compilation more, and code that must take a
Python int where it expects a tensor) but keeps its specialisation on multiples of 16.
"""

import contextlib

import torch
import triton
import triton.language as tl

REDUCE_BLOCK = 1024
BACKWARD_BLOCK = 4096  # (half for float64): 16 (8) elements a thread, within 64 registers
BACKWARD_WARPS = 8


def acc_torch_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The accumulation dtype for these operand dtypes: float64 if one is, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def acc_dtype(*dtypes: torch.dtype):
    """The same as Triton's type."""
    return tl.float64 if acc_torch_dtype(*dtypes) == torch.float64 else tl.float32


def launch_device(tensor: torch.Tensor):
    """The context to launch a kernel on `tensor` in: Triton launches on the current CUDA
    device, which need not be the tensor's (cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


# Triton compiles a kernel again for each pattern of its integer arguments (a multiple of 16 or
# not; 1 too, unless typed); arguments that only count, and never decide how memory is accessed,
# are kept out of that, which spares compilations and costs nothing at run time.
@triton.jit(do_not_specialize=["group_len", "n_cols"])
def sum_groups_kernel(partial_ptr, out_ptr, group_len: tl.int32, n_cols: tl.int32, BLOCK: tl.constexpr):
    """out[g, c] = the sum of partial[g, 0:group_len, c], in a fixed order: one program a
    (group, column), so the result has the same bits run after run. A 1-D grid: a second axis
    holds at most 65535 programs, fewer than the columns of 16384 classes' sums."""
    pid = tl.program_id(0).to(tl.int64)
    g = pid // n_cols
    c = pid - g * n_cols
    acc = tl.zeros([BLOCK], dtype=out_ptr.dtype.element_ty)
    base = g * group_len * n_cols + c
    for start in range(0, group_len, BLOCK):
        rows = start + tl.arange(0, BLOCK).to(tl.int64)
        acc += tl.load(partial_ptr + base + rows * n_cols, mask=rows < group_len, other=0.0)
    tl.store(out_ptr + g * n_cols + c, tl.sum(acc, axis=0))


def sum_groups(partials: torch.Tensor, groups: int) -> torch.Tensor:
    """partials (groups * group_len, n_cols) -> (groups, n_cols) sums, deterministic, on the device."""
    n_cols = partials.shape[1]
    out = torch.zeros((groups, n_cols), dtype=partials.dtype, device=partials.device)
    if groups == 0 or partials.shape[0] == 0:
        return out
    if groups * n_cols >= 2**31:
        raise ValueError(f"sum_groups (triton): {groups} x {n_cols} sums need more programs than a launch holds")
    with launch_device(partials):
        sum_groups_kernel[(groups * n_cols,)](partials, out, partials.shape[0] // groups, n_cols, BLOCK=REDUCE_BLOCK)
    return out


# The multi-class kernels take C as a 32-bit integer and offsets of C times a thread's vector (up
# to 16) in 32 bits: C stays below this, or the launch is refused (the CUDA kernels' bound is 2**31).
MAX_CLASSES = 2**27 - 1


def check_classes(op: str, C: int) -> None:
    """A clear error, naming C, for a class count the Triton kernels cannot index (Triton would
    truncate it to 32 bits without a word)."""
    if C > MAX_CLASSES:
        raise ValueError(f"{op} (triton): too many classes, {C} (at most {MAX_CLASSES})")


@triton.jit
def to_element(value, ptr):
    """value in ptr's element type. A 16-bit float goes through float32: Triton's interpreter
    (3.6 to 3.8) turns float64 straight into garbage bfloat16/float16 (on a GPU the two roundings
    differ from one only at ties of the second, within a unit of the 16-bit float)."""
    if ptr.dtype.element_ty == tl.float16 or ptr.dtype.element_ty == tl.bfloat16:
        return value.to(tl.float32).to(ptr.dtype.element_ty)
    return value.to(ptr.dtype.element_ty)


@triton.jit
def reciprocal(v):
    """1 / v for v in [1e-12, 2]: rsqrt squared, two instructions (MUFU.RSQ, a multiply) where
    `/` takes nine (range scaling around MUFU.RCP); within 3 ulp."""
    if v.dtype == tl.float64:
        r2 = 1.0 / v
    else:
        r = tl.math.rsqrt(v)
        r2 = r * r
    return r2


@triton.jit
def exp_neg_abs(x):
    """exp(-|x|), in float32 within about 2 ulp at every |x| (csrc's expf), 0 below about 2**-126.

    Not 2**(-|x| log2 e) alone: rounding the product |x| log2 e to float32 moves the result by up
    to |x| 2**-24 relative, 60 ulp at |x| = 60 (an H200 run: BCE of a logit on its label's side,
    which is about exp(-|x|), off by 8 to 60 ulp). So |x| = k ln 2 + r with k an integer and
    |r| <= ln 2 / 2 (Cody and Waite: ln 2 in two parts, the first 9 bits wide, so that k times it
    is exact), exp(-r) = 2**(-r log2 e) by one MUFU.EX2, and 2**-k made from its bits."""
    if x.dtype == tl.float64:
        e = tl.exp(-tl.abs(x))
    else:
        a = tl.abs(x)
        # k <= 127: past |x| = 88 the scale is 0 (0 bits), and r, however large, only adds to it
        k = tl.minimum(tl.floor(a * 1.4426950408889634 + 0.5), 127.0)
        r = (a - k * 0.693359375) - k * -2.12194440054690583e-4  # ln 2 = 0.693359375 - 2.12e-4
        scale = ((127 - k.to(tl.int32)) << 23).to(tl.float32, bitcast=True)  # 2**-k, 0 for k = 127
        e = tl.exp2(r * -1.4426950408889634) * scale
    return e


@triton.jit
def _sigmoid_from(x, e):
    # sigmoid(x) from e = exp(-|x|), which never overflows; sigmoid(-inf) is exactly 0
    return tl.where(x >= 0, 1.0, e) * reciprocal(1.0 + e)


@triton.jit
def sigmoid_exp(x):
    """(sigmoid(x), exp(-|x|)), as csrc/sigmoid_math.h's sigmoid, both to float32's relative
    accuracy; a loss that needs exp(-|x|) too (BCE of logits) gets it for free."""
    e = exp_neg_abs(x)
    return _sigmoid_from(x, e), e


@triton.jit
def sigmoid_fast(x):
    """sigmoid(x) with exp(-|x|) as 2**(-|x| log2 e) alone (a multiply and one MUFU.EX2): about 8
    instructions fewer than sigmoid_exp (the gate's count), within |x| 2**-24 relative (60 ulp at
    |x| = 60), an error far below float32's absolute accuracy. For probabilities that only enter sums and differences
    (a neighbour's in the TV, a Dice sum's), not an element's own loss or gradient."""
    e = tl.exp(-tl.abs(x)) if x.dtype == tl.float64 else tl.exp2(tl.abs(x) * -1.4426950408889634)
    return _sigmoid_from(x, e)


@triton.jit
def sign(v):
    """-1, 0 or 1 in v's dtype (0 for NaN): math_common.h's psign"""
    return (v > 0).to(v.dtype) - (v < 0).to(v.dtype)


@triton.jit
def _scale_block(saved_ptr, out_ptr, offs, n, go, scale, MASKED: tl.constexpr):
    """out = saved * go * scale over offs; a full block (MASKED false) loads and stores as
    vectors whatever n is."""
    if MASKED:
        saved = tl.load(saved_ptr + offs, mask=offs < n, other=0.0)
    else:
        saved = tl.load(saved_ptr + offs)
    out = to_element(saved.to(scale.dtype) * go * scale, out_ptr)
    if MASKED:
        tl.store(out_ptr + offs, out, mask=offs < n)
    else:
        tl.store(out_ptr + offs, out)


@triton.jit(do_not_specialize=["group"])  # (n stays: a multiple of 16 lets the tail vectorise)
def loss_backward_kernel(saved_ptr, go_ptr, out_ptr, n: tl.int64, group: tl.int64, inv_group: tl.float64,
                         scale: tl.float64, GROUPS: tl.constexpr, BLOCK: tl.constexpr):
    """out[i] = saved[i] * grad_output[i // group] * scale, grad_output read on the device.

    GROUPS says how the elements find their grad_output, with no integer division (a 64-bit
    one is a subroutine call): 0, one element for all (a mean or a sum); 1, groups no shorter
    than a block, which meets at most two, the one it starts in and the next; 2, shorter
    groups: element start + j is in group first + m // group, m = into + j < 2 * BLOCK, and
    m // group = floor((m + 0.5) * (1 / group)) in float32: (m + 0.5) / group lies at least
    0.5 / group from an integer, and the float error, under ((m + 0.5) / group) * 2**-21, is
    smaller while m < 2**20. The block's first group comes from a float64 estimate, off by at
    most one for blocks below 2**50, corrected."""
    acc = tl.float64 if saved_ptr.dtype.element_ty == tl.float64 else tl.float32
    scale = tl.full([], scale, acc)
    start = tl.program_id(0).to(tl.int64) * BLOCK
    i = tl.arange(0, BLOCK)
    offs = start + i
    if GROUPS == 0:
        go = tl.full([BLOCK], tl.load(go_ptr).to(acc), acc)
    else:
        first = (start.to(tl.float64) * inv_group).to(tl.int64)
        first = tl.where(first * group > start, first - 1, first)
        first = tl.where((first + 1) * group <= start, first + 1, first)
        into = start - first * group  # how far the block starts into its group
        if GROUPS == 1:
            go_first = tl.load(go_ptr + first).to(acc)
            go_next = tl.load(go_ptr + first + 1, mask=(first + 1) * group < n, other=0.0).to(acc)  # if any
            go = tl.where(into + i < group, go_first, go_next)
        else:
            m = (into.to(tl.int32) + i).to(tl.float32) + 0.5
            index = first + (m * tl.full([], inv_group, tl.float32)).to(tl.int32)
            go = tl.load(go_ptr + index, mask=offs < n, other=0.0).to(acc)
    if start + BLOCK <= n:
        _scale_block(saved_ptr, out_ptr, offs, n, go, scale, MASKED=False)
    else:
        _scale_block(saved_ptr, out_ptr, offs, n, go, scale, MASKED=True)


def loss_backward(grad_output: torch.Tensor, saved: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    n, k = saved.numel(), grad_output.numel()
    if not ((k == 0 and n == 0) or (k > 0 and n % k == 0)):
        raise ValueError(f"loss_backward: saved_grad has {n} elements, not a multiple of grad_output's {k}")
    out = torch.empty(saved.shape, dtype=dtype, device=saved.device)
    if n == 0:
        return out
    group = n // k
    block = BACKWARD_BLOCK // 2 if torch.float64 in (saved.dtype, dtype) else BACKWARD_BLOCK
    groups = 0 if k == 1 else 1 if group >= block else 2  # (see the kernel)
    with launch_device(saved):
        loss_backward_kernel[(triton.cdiv(n, block),)](saved.contiguous(), grad_output.contiguous(), out, n, group,
                                                       1.0 / group, scale, GROUPS=groups, BLOCK=block,
                                                       num_warps=BACKWARD_WARPS)
    return out
