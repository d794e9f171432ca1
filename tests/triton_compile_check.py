"""Compiles every Triton kernel of pylosses for Hopper (sm_90) without a GPU: the compiled path
(types, constexpr branches, lowering, ptxas) is stricter than the interpreter that runs the
kernels in the tests. Run by tests/test_triton_compile.py in a process without TRITON_INTERPRET."""

import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pylosses.triton_kernels.common import loss_backward_kernel, sum_groups_kernel
from pylosses.triton_kernels.mse import mse_fwd_kernel
from pylosses.triton_kernels.segmentation import seg_fwd_kernel

TARGET = GPUTarget("cuda", 90, 32)


def build(fn, signature, constexprs):
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
    assert kernel.asm["ptx"], fn.__name__


def main():
    seg = {"x_ptr": "*fp32", "t_ptr": "*u8", "grad_ptr": "*fp32", "grad_t_ptr": "*fp32", "partial_ptr": "*fp32",
           "D": "i32", "H": "i32", "W": "i32", "tiles_w": "i32", "tiles": "i32", "alpha_grad": "fp32",
           "w_w": "fp32", "w_h": "fp32", "w_d": "fp32", "LOGITS": "constexpr", "GRAD": "constexpr",
           "GRAD_T": "constexpr", "ACC": "constexpr", "BLOCK_H": "constexpr", "BLOCK_W": "constexpr"}
    for logits in (False, True):
        for x_type, acc in (("*fp32", tl.float32), ("*bf16", tl.float32), ("*fp64", tl.float64)):
            build(seg_fwd_kernel, {**seg, "x_ptr": x_type, "t_ptr": x_type},
                  {"LOGITS": logits, "GRAD": True, "GRAD_T": True, "ACC": acc, "BLOCK_H": 16, "BLOCK_W": 128})
    mse = {"x_ptr": "*fp16", "t_ptr": "*fp16", "loss_ptr": "*fp16", "grad_ptr": "*fp32", "partial_ptr": "*fp32",
           "n": "i64", "grad_scale": "fp32", "WRITE_LOSS": "constexpr", "WRITE_GRAD": "constexpr",
           "ACC": "constexpr", "BLOCK": "constexpr"}
    for write_loss in (False, True):
        build(mse_fwd_kernel, mse, {"WRITE_LOSS": write_loss, "WRITE_GRAD": True, "ACC": tl.float32, "BLOCK": 4096})
    build(sum_groups_kernel, {"partial_ptr": "*fp64", "out_ptr": "*fp64", "group_len": "i64", "n_cols": "i32",
                              "BLOCK": "constexpr"}, {"BLOCK": 1024})
    build(loss_backward_kernel, {"saved_ptr": "*fp32", "go_ptr": "*fp32", "out_ptr": "*bf16", "n": "i64",
                                 "group": "i64", "scale": "fp32", "BLOCK": "constexpr"}, {"BLOCK": 4096})
    print("compiled for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
