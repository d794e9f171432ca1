#pragma once
// The schema of every op, once: PYLOSSES_SCHEMAS(X) calls X(name, signature) for each.
// csrc/pylosses.cpp defines them in the library pylosses (each twice, for the native and the
// Triton implementation); the CUDA-emulation build of the tests defines them again under its
// own name (tests/cuda_emulation/).
//
// Every loss has a forward op that returns the loss and, when asked, its gradients for
// grad_output = 1; the backward of every loss is loss_backward, which applies grad_output.
// reduction follows at::Reduction: 0 none, 1 mean, 2 sum.
#define PYLOSSES_SCHEMAS(X)                                                                                    \
  X("mse_loss_fwd", "(Tensor input, Tensor target, int reduction, bool compute_grad) -> (Tensor, Tensor)")     \
  X("seg_loss_fwd",                                                                                            \
    "(Tensor input, Tensor target, float alpha, float beta, int spatial_dims, bool from_logits, "              \
    "int reduction, bool compute_grad_input, bool compute_grad_target) -> (Tensor, Tensor, Tensor)")          \
  X("loss_backward", "(Tensor grad_output, Tensor saved_grad, float scale, ScalarType dtype) -> Tensor")
