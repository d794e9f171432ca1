#pragma once
// The logistic sigmoid, for every loss that takes logits (csrc/<loss>_math.h), on the CPU's
// vectors and on the device. Like the loss headers, include it after csrc/cpu/cpu_common.h.
#include "math_common.h"

namespace pylosses::math {

template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  const T e = pexp(pneg(pabs(x)));  // never overflows
  return pselect_ge0(x, T(1), e) * preciprocal(T(1) + e);
}

// d sigmoid / dx, from the sigmoid p
template <typename T>
C10_HOST_DEVICE inline T sigmoid_grad(T p) { return p * (T(1) - p); }

}  // namespace pylosses::math
