#pragma once
// Per-element math of the region losses (Dice, Tversky, generalised Dice), shared by the CPU and
// CUDA kernels. T is float or double (CUDA) or an at::vec::Vectorized of them (CPU).
//
// A region loss is a function of a few sums over each (sample, channel)'s pixels, so its
// kernels compute only those sums (op region_sums) and, given the gradient of the loss with
// respect to them, the gradient of every element (op region_sums_backward); the loss itself,
// from the sums, is a few operations on (B, C) tensors in pylosses/reference.py, shared by every
// backend. p is the prediction (the input, or its sigmoid), t the target; a masked-out pixel
// adds nothing to any sum and gets a zero gradient.
#include <cstdint>
#include <type_traits>

#include "math_common.h"
#include "sigmoid_math.h"

namespace pylosses::math {

// Which sums, as MONAI's compute_tp_fp_fn needs them (pylosses/reference.py, REGION_MODES):
// kLinear: sum p t, sum p, sum t (the plain form); kSquared: sum p t, sum p^2, sum t^2
// (squared_pred); kL1: sum |p - t|, sum |p|, sum |t| (soft_label, whose true positives are
// (sum |p| + sum |t| - sum |p - t|) / 2).
enum class RegionMode : int { kLinear = 0, kSquared = 1, kL1 = 2 };
// The sums of each (sample, channel): the three of the mode, then the count of targets that are
// not a 0/1 mask (uint8 targets above 1; 0 for other dtypes), which makes the loss NaN.
constexpr int kRegionSums = 4;

// DiceBCE's BCE in the same pass (the CPU): the mode argument's bit kWithBce asks for two more
// sums a (sample, channel), after the four, over the elements the mask keeps:
//   a = max(x, 0) - x t + log(1 + exp(-|x|))   (BCEWithLogits, bce_logits_loss)
//   b = t (max(-x, 0) + log(1 + exp(-|x|)))     (t softplus(-x))
// BCEWithLogits with pos_weight w is (1 - t) x + (1 + (w - 1) t) softplus(-x) = a + (w - 1) b,
// so a per-channel w needs no kernel argument: pylosses/functional.py adds sum a + (w - 1) sum b.
constexpr int64_t kWithBce = 4;
constexpr int kBceSums = 2;

template <typename T>
C10_HOST_DEVICE inline T bce_sums_term_b(T x, T t, T softplus) {
  return t * (pmax(T(0) - x, T(0)) + softplus);
}

// d (ga a + gb b) / dx from p = sigmoid(x): ga (p - t) - gb t (1 - p).
template <typename T>
C10_HOST_DEVICE inline T bce_sums_grad_x(T p, T t, T ga, T gb) {
  return ga * (p - t) - gb * t * (T(1) - p);
}

// d (ga a + gb b) / dt: gb softplus(-x) - ga x.
template <typename T>
C10_HOST_DEVICE inline T bce_sums_grad_t(T x, T softplus, T ga, T gb) {
  return gb * (pmax(T(0) - x, T(0)) + softplus) - ga * x;
}

// Calls f(std::integral_constant<RegionMode, mode>{}) for the runtime mode (checked already by
// check_region_args): the kernels take the mode as a template argument. Host code.
template <typename F>
void dispatch_region_mode(int64_t mode, const F& f) {
  switch (static_cast<RegionMode>(mode & ~kWithBce)) {
    case RegionMode::kSquared:
      return f(std::integral_constant<RegionMode, RegionMode::kSquared>{});
    case RegionMode::kL1:
      return f(std::integral_constant<RegionMode, RegionMode::kL1>{});
    default:
      return f(std::integral_constant<RegionMode, RegionMode::kLinear>{});
  }
}

// One element's terms of the three sums.
template <RegionMode kMode, typename T>
C10_HOST_DEVICE inline void region_terms(T p, T t, T& s0, T& s1, T& s2) {
  if constexpr (kMode == RegionMode::kL1) {
    s0 = pabs(p - t);
    s1 = pabs(p);
    s2 = pabs(t);
  } else if constexpr (kMode == RegionMode::kSquared) {
    s0 = p * t;
    s1 = p * p;
    s2 = t * t;
  } else {
    s0 = p * t;
    s1 = p;
    s2 = t;
  }
}

// The three sums of a one-hot target (t in {0, 1}, one class a pixel) and p in [0, 1] (a softmax)
// from what a kernel can add a pixel at a time: s1, the sum of the mode's term of p over every
// pixel (region_terms with t = 0), and over the pixels labelled with the class, `hit_p`, the sum
// of p, and `hits`, their count. kL1's sum |p - t| is sum_{t=0} p + sum_{t=1} (1 - p).
template <RegionMode kMode, typename T>
C10_HOST_DEVICE inline void one_hot_region_sums(T hit_p, T s1, T hits, T& s0, T& s2) {
  if constexpr (kMode == RegionMode::kL1) {
    s0 = (s1 - hit_p) + (hits - hit_p);
  } else {
    s0 = hit_p;
  }
  s2 = hits;
}

// The gradient of g0 s0 + g1 s1 + g2 s2 with respect to an element's p (dp) and t (dt), g the
// loss's gradient with respect to its (sample, channel)'s sums. |.|'s derivative at 0 is 0, as
// torch's abs gives it.
template <RegionMode kMode, typename T>
C10_HOST_DEVICE inline T region_grad_p(T p, T t, T g0, T g1) {
  if constexpr (kMode == RegionMode::kL1) {
    return g0 * psign(p - t) + g1 * psign(p);
  } else if constexpr (kMode == RegionMode::kSquared) {
    return g0 * t + T(2) * g1 * p;
  } else {
    return g0 * t + g1;
  }
}

template <RegionMode kMode, typename T>
C10_HOST_DEVICE inline T region_grad_t(T p, T t, T g0, T g2) {
  if constexpr (kMode == RegionMode::kL1) {
    return g2 * psign(t) - g0 * psign(p - t);
  } else if constexpr (kMode == RegionMode::kSquared) {
    return g0 * p + T(2) * g2 * t;
  } else {
    return g0 * p + g2;
  }
}

}  // namespace pylosses::math
