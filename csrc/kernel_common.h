#pragma once
// What the CPU and CUDA kernels share besides the per-element math: the types that a kernel
// computes and keeps gradients in, and the dtype dispatch. Host code, also compiled by nvcc.
#include <ATen/Dispatch_v2.h>
#include <c10/core/ScalarType.h>

#include <type_traits>

namespace pylosses {

// The error for a uint8 target mask that holds anything but 0 and 1 (the CPU raises it, for the
// segmentation and the region losses; CUDA, in checking mode). pylosses/reference.py has the
// same text.
inline constexpr const char* kMaskMessage =
    "target masks (uint8 or bool) must hold only 0 and 1; for a 0/255 mask, divide it by 255 or compare it with 0";

// Arithmetic and accumulation type: double for double data, float for everything else.
template <typename... Ts>
using acc_type_t = std::conditional_t<(std::is_same_v<Ts, double> || ...), double, float>;

// torch.promote_types of two floating types.
template <typename A, typename B>
using promote_t = std::conditional_t<std::is_same_v<A, B>, A, std::conditional_t<std::is_same_v<A, double> || std::is_same_v<B, double>, double, float>>;

// The type in which a gradient is kept between forward and backward: float16's range cannot
// hold it (the BCE gradient grows as 1 / p, and 1 / N can be below float16's normal numbers),
// so it is kept in float32. pylosses/_dtypes.py states the same rule for the Python side.
template <typename T>
using saved_grad_t = std::conditional_t<std::is_same_v<T, c10::Half>, float, T>;

inline at::ScalarType saved_grad_dtype(at::ScalarType dtype) {
  return dtype == at::kHalf ? at::kFloat : dtype;
}

template <typename T>
inline constexpr bool is_float_v = std::is_floating_point_v<T> || std::is_same_v<T, c10::Half> ||
                                   std::is_same_v<T, c10::BFloat16>;

// Calls f(T{}) for the floating dtype T of `dtype` (float16, bfloat16, float32, float64).
template <typename F>
void dispatch_float(at::ScalarType dtype, const F& f) {
  AT_DISPATCH_V2(dtype, "pylosses", AT_WRAP([&] { f(scalar_t{}); }), AT_EXPAND(AT_FLOATING_TYPES), at::kHalf, at::kBFloat16);
}

// Calls f(input_t{}, target_t{}) for a floating input dtype and a target dtype that is
// floating, or also bool or uint8 when kLabelTargets.
template <bool kLabelTargets, typename F>
void dispatch_input_target(at::ScalarType input, at::ScalarType target, const F& f) {
  dispatch_float(input, [&](auto input_tag) {
    if constexpr (kLabelTargets) {
      AT_DISPATCH_V2(target, "pylosses", AT_WRAP([&] { f(input_tag, scalar_t{}); }), AT_EXPAND(AT_FLOATING_TYPES),
                     at::kHalf, at::kBFloat16, at::kBool, at::kByte);
    } else {
      dispatch_float(target, [&](auto target_tag) { f(input_tag, target_tag); });
    }
  });
}

// Calls f(std::integral_constant<bool, b>{}) for the runtime bool b, so that b can be a
// template argument.
template <typename F>
void dispatch_bool(bool b, const F& f) {
  b ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace pylosses
