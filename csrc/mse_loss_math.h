#pragma once
// Per-element math of the MSE loss, shared by the CPU and CUDA kernels. T is float or double
// (CUDA) or an at::vec::Vectorized of them (CPU).
#include "math_common.h"

namespace pylosses::math {

template <typename T>
C10_HOST_DEVICE inline T mse_loss(T x, T t) {
  const T d = x - t;
  return d * d;
}

// d (x - t)^2 / d x; d / d t is its negation.
template <typename T>
C10_HOST_DEVICE inline T mse_grad(T x, T t) { return T(2) * (x - t); }

}  // namespace pylosses::math
