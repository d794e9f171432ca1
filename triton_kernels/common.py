"""What the Triton kernels of both losses share: the fixed-order sum of per-program partials,
the backward (applying grad_output), and the dtype and launch helpers.

Every kernel here computes in float32 (float64 when the data is float64) and indexes with
int64, so tensors of more than 2**31 elements work.
"""

import torch
import triton
import triton.language as tl

REDUCE_BLOCK = 1024


def acc_torch_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The accumulation dtype for these operand dtypes: float64 if one is, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def acc_dtype(*dtypes: torch.dtype):
    """The same as Triton's type."""
    return tl.float64 if acc_torch_dtype(*dtypes) == torch.float64 else tl.float32


# Triton compiles a kernel again for each pattern of its integer arguments (1, a multiple of
# 16, other); arguments that only count, and never decide how memory is accessed, are kept out
# of that, which spares compilations (the tests' many shapes) and costs nothing at run time.
@triton.jit(do_not_specialize=["group_len", "n_cols"])
def sum_groups_kernel(partial_ptr, out_ptr, group_len, n_cols, BLOCK: tl.constexpr):
    """out[g, c] = the sum of partial[g, 0:group_len, c], in a fixed order: one program a
    (group, column), so the result has the same bits run after run."""
    g = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
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
    sum_groups_kernel[(groups, n_cols)](partials, out, partials.shape[0] // groups, n_cols, BLOCK=REDUCE_BLOCK)
    return out


@triton.jit(do_not_specialize=["group"])  # (n stays: its multiples of 16 let masked loads vectorise)
def loss_backward_kernel(saved_ptr, go_ptr, out_ptr, n, group, scale, BLOCK: tl.constexpr):
    """out[i] = saved[i] * grad_output[i // group] * scale, grad_output read on the device."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    saved = tl.load(saved_ptr + offs, mask=mask, other=0.0)
    acc = tl.float64 if saved.dtype == tl.float64 else tl.float32
    go = tl.load(go_ptr + offs // group, mask=mask, other=0.0).to(acc)
    out = saved.to(acc) * go * scale
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def loss_backward(grad_output: torch.Tensor, saved: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    n, k = saved.numel(), grad_output.numel()
    if not ((k == 0 and n == 0) or (k > 0 and n % k == 0)):
        raise ValueError(f"loss_backward: saved_grad has {n} elements, not a multiple of grad_output's {k}")
    out = torch.empty(saved.shape, dtype=dtype, device=saved.device)
    if n == 0:
        return out
    block = 4096
    loss_backward_kernel[(triton.cdiv(n, block),)](saved.contiguous(), grad_output.contiguous(), out, n, n // k,
                                                  scale, BLOCK=block)
    return out
