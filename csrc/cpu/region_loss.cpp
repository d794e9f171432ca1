// The region losses' sums (op region_sums) and the gradient of the elements from the gradient of
// those sums (op region_sums_backward) on the CPU: one pass over input, target and mask each.
//
// The contiguous input is a sequence of planes, one for each (sample, channel), of S elements.
// A work item is a chunk of one plane, or, where planes are shorter than a chunk, several whole
// planes: a few huge planes and many small ones both keep every thread busy. Items are fixed by
// the shape, each writes its own partial sums, and each plane's partials are summed in order,
// so the sums have the same bits for any thread count (cpu_common.h).
#include <torch/library.h>

#include "cpu_common.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../region_loss_math.h"

namespace pylosses::cpu {
namespace {

using math::RegionMode;
using math::kRegionSums;

// Elements of a plane in one work item. Long enough that a chunk's bookkeeping (its partial
// sums, a few rows of scratch) is lost in its work, short enough that (16, 3, 256, 256) makes
// 192 items and (2, 4, 96, 96, 96) 432.
constexpr int64_t kChunk = 1 << 14;
constexpr int64_t kBlock = 1 << 11;  // elements converted to acc_t at a time

// Calls f(std::integral_constant<RegionMode, mode>{}) for the runtime mode (checked already).
template <typename F>
void dispatch_region_mode(int64_t mode, const F& f) {
  switch (static_cast<RegionMode>(mode)) {
    case RegionMode::kSquared:
      return f(std::integral_constant<RegionMode, RegionMode::kSquared>{});
    case RegionMode::kL1:
      return f(std::integral_constant<RegionMode, RegionMode::kL1>{});
    default:
      return f(std::integral_constant<RegionMode, RegionMode::kLinear>{});
  }
}

struct RegionGeometry {
  int64_t channels = 0, mask_channels = 0;  // mask_channels: 1 (broadcast) or channels
  int64_t planes = 0, plane_size = 0;       // (sample, channel) pairs, and S
  int64_t chunks_per_plane = 1;             // partial sums of a plane
  int64_t planes_per_item = 1;              // more than 1 only with one chunk a plane
  int64_t n_items = 0;

  RegionGeometry(const at::Tensor& input, const at::Tensor& mask) {
    channels = input.size(1);
    mask_channels = mask.defined() ? mask.size(1) : 0;
    planes = input.size(0) * channels;
    plane_size = planes == 0 ? 0 : input.numel() / planes;
    if (input.numel() == 0) {
      return;
    }
    chunks_per_plane = at::divup(plane_size, kChunk);
    planes_per_item = chunks_per_plane == 1 ? std::max<int64_t>(1, kChunk / plane_size) : 1;
    n_items = chunks_per_plane == 1 ? at::divup(planes, planes_per_item) : planes * chunks_per_plane;
  }

  int64_t mask_plane(int64_t plane) const {
    return mask_channels == 1 ? plane / channels : plane;
  }

  // Calls f(plane, begin, end, slot) for each piece [begin, end) of a plane that the item
  // covers; slot = plane * chunks_per_plane + chunk indexes the piece's partial sums.
  template <typename F>
  void for_each_piece(int64_t item, const F& f) const {
    if (chunks_per_plane == 1) {
      const int64_t end = std::min(planes, (item + 1) * planes_per_item);
      for (int64_t plane = item * planes_per_item; plane < end; ++plane) {
        f(plane, int64_t(0), plane_size, plane);
      }
    } else {
      const int64_t plane = item / chunks_per_plane, chunk = item % chunks_per_plane;
      f(plane, chunk * kChunk, std::min(plane_size, (chunk + 1) * kChunk), item);
    }
  }
};

template <typename acc_t>
struct RegionScratch {
  std::vector<acc_t> x = std::vector<acc_t>(kBlock), t = x, mask = x, grad_input = x, grad_target = x;
};

// p, and t, as the sums see them: the input or its sigmoid, and both 0 where the mask is.
template <bool kSigmoid, bool kMasked, typename acc_t>
C10_ALWAYS_INLINE void region_values(const Vec<acc_t>& x, Vec<acc_t>& t, const Vec<acc_t>& m, Vec<acc_t>& p,
                                     Vec<acc_t>& p_masked) {
  p = kSigmoid ? math::sigmoid(x) : x;
  p_masked = p;
  if constexpr (kMasked) {
    p_masked = p * m;
    t = t * m;
  }
}

// The sums of one piece of a plane (n elements from x, t, m), into out[0..3]. kCount: count the
// targets above 1 (uint8 masks that hold more than 0 and 1).
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kCount, typename acc_t, typename input_t,
          typename target_t>
void region_sums_piece(const input_t* x_data, const target_t* t_data, const bool* m_data, int64_t n,
                       RegionScratch<acc_t>& s, acc_t* out) {
  using V = Vec<acc_t>;
  V sum0(acc_t(0)), sum1(acc_t(0)), sum2(acc_t(0)), count(acc_t(0));
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const acc_t* x = load_row(x_data + b, s.x.data(), len);
    const acc_t* t = load_row(t_data + b, s.t.data(), len);
    const acc_t* m = kMasked ? load_row(m_data + b, s.mask.data(), len) : nullptr;
    for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
      constexpr bool kTail = decltype(tail)::value;
      V tv = load<kTail>(t + i, lanes);
      V p, p_masked;
      region_values<kSigmoid, kMasked>(load<kTail>(x + i, lanes), tv, kMasked ? load<kTail>(m + i, lanes) : V(),
                                       p, p_masked);
      V s0, s1, s2;
      math::region_terms<kMode>(p_masked, tv, s0, s1, s2);
      accumulate<kTail>(sum0, s0, lanes);
      accumulate<kTail>(sum1, s1, lanes);
      accumulate<kTail>(sum2, s2, lanes);
      if constexpr (kCount) {  // tail lanes hold 0
        count = count + tv.gt(V(acc_t(1)));
      }
    });
  }
  out[0] = lane_sum(sum0);
  out[1] = lane_sum(sum1);
  out[2] = lane_sum(sum2);
  out[3] = lane_sum(count);
}

// The gradients of one piece of a plane, g the gradient of the plane's sums; grad_input or
// grad_target null where not asked for.
template <RegionMode kMode, bool kSigmoid, bool kMasked, typename acc_t, typename input_t, typename target_t>
void region_grad_piece(const input_t* x_data, const target_t* t_data, const bool* m_data, int64_t n,
                       const acc_t* g, input_t* grad_input, target_t* grad_target, RegionScratch<acc_t>& s) {
  using V = Vec<acc_t>;
  const V g0(g[0]), g1(g[1]), g2(g[2]);
  const auto put = [](const V& v, acc_t* row, auto* dst, int64_t i, int64_t lanes, auto tail) {
    constexpr bool kTail = decltype(tail)::value;
    if constexpr (!kTail && std::is_same_v<std::remove_pointer_t<decltype(dst)>, acc_t>) {
      store_stream(v, row + i);  // row is dst: nothing reads the gradient before the optimizer
    } else {
      store<kTail>(v, row + i, lanes);
    }
  };
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const acc_t* x = load_row(x_data + b, s.x.data(), len);
    const acc_t* t = load_row(t_data + b, s.t.data(), len);
    const acc_t* m = kMasked ? load_row(m_data + b, s.mask.data(), len) : nullptr;
    acc_t* gi = grad_input ? out_row(grad_input + b, s.grad_input.data()) : nullptr;
    acc_t* gt = grad_target ? out_row(grad_target + b, s.grad_target.data()) : nullptr;
    for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
      constexpr bool kTail = decltype(tail)::value;
      const V mv = kMasked ? load<kTail>(m + i, lanes) : V();
      V tv = load<kTail>(t + i, lanes);
      V p, p_masked;
      region_values<kSigmoid, kMasked>(load<kTail>(x + i, lanes), tv, mv, p, p_masked);
      if (gi) {
        V dp = math::region_grad_p<kMode>(p_masked, tv, g0, g1);
        if constexpr (kMasked) {
          dp = dp * mv;
        }
        if constexpr (kSigmoid) {
          dp = dp * math::sigmoid_grad(p);
        }
        put(dp, gi, grad_input, i, lanes, tail);
      }
      if constexpr (is_float_v<target_t>) {
        if (gt) {
          V dt = math::region_grad_t<kMode>(p_masked, tv, g0, g2);
          if constexpr (kMasked) {
            dt = dt * mv;
          }
          put(dt, gt, grad_target, i, lanes, tail);
        }
      }
    });
    if (gi) {
      store_row(gi, grad_input + b, len);
    }
    if constexpr (is_float_v<target_t>) {
      if (gt) {
        store_row(gt, grad_target + b, len);
      }
    }
  }
}

// Calls f(input_t{}, target_t{}, mode, sigmoid, masked) with the last three as compile-time
// constants.
template <typename F>
void dispatch_region(const at::Tensor& input, const at::Tensor& target, int64_t mode, bool sigmoid, bool masked,
                     const F& f) {
  dispatch_input_target<true>(input.scalar_type(), target.scalar_type(), [&](auto in_tag, auto t_tag) {
    dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_bool(sigmoid, [&](auto sigmoid_tag) {
        dispatch_bool(masked, [&](auto masked_tag) { f(in_tag, t_tag, mode_tag, sigmoid_tag, masked_tag); });
      });
    });
  });
}

at::ScalarType region_sums_dtype(const at::Tensor& input, const at::Tensor& target) {
  return input.scalar_type() == at::kDouble || target.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor defined_mask(const std::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
}

// (B, C, 4): per (sample, channel) the mode's three sums and the count of uint8 targets above 1,
// which (no host sync to avoid on the CPU) raises the mask error instead.
at::Tensor region_sums_cpu(const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& mask_,
                           bool sigmoid, int64_t mode) {
  check_region_args("region_sums", input_, target_, mask_, mode);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = defined_mask(mask_);
  const RegionGeometry geo(input, mask);
  at::Tensor sums = at::zeros({input.size(0), input.size(1), kRegionSums},
                              input.options().dtype(region_sums_dtype(input, target)));
  if (input.numel() == 0) {
    return sums;
  }
  dispatch_region(input, target, mode, sigmoid, mask.defined(), [&](auto in_tag, auto t_tag, auto mode_tag,
                                                                    auto sigmoid_tag, auto masked_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    constexpr bool kCount = std::is_same_v<target_t, uint8_t>;
    const int64_t S = geo.plane_size, n_pieces = geo.planes * geo.chunks_per_plane;
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    // with one chunk a plane, a piece's sums are its plane's
    std::vector<acc_t> partials(geo.chunks_per_plane == 1 ? 0 : n_pieces * kRegionSums);
    acc_t* piece_sums = partials.empty() ? out : partials.data();
    const input_t* x = input.const_data_ptr<input_t>();
    const target_t* t = target.const_data_ptr<target_t>();
    const bool* m = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    for_each_chunk<RegionScratch<acc_t>>(geo.n_items, [&](int64_t item, RegionScratch<acc_t>& s) {
      geo.for_each_piece(item, [&](int64_t plane, int64_t begin, int64_t end, int64_t slot) {
        const int64_t offset = plane * S + begin;
        region_sums_piece<decltype(mode_tag)::value, decltype(sigmoid_tag)::value, decltype(masked_tag)::value,
                          kCount>(x + offset, t + offset, m ? m + geo.mask_plane(plane) * S + begin : nullptr,
                                  end - begin, s, piece_sums + slot * kRegionSums);
      });
    });
    if (!partials.empty()) {
      at::parallel_for(0, geo.planes, 64, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          for (int64_t chunk = 0; chunk < geo.chunks_per_plane; ++chunk) {  // fixed order
            const acc_t* piece = piece_sums + (plane * geo.chunks_per_plane + chunk) * kRegionSums;
            for (int k = 0; k < kRegionSums; ++k) {
              out[plane * kRegionSums + k] += piece[k];
            }
          }
        }
      });
    }
    if constexpr (kCount) {
      bool bad = false;
      for (int64_t plane = 0; plane < geo.planes; ++plane) {
        bad |= out[plane * kRegionSums + 3] != acc_t(0);
      }
      TORCH_CHECK(!bad, kMaskMessage);
    }
  });
  return sums;
}

// d (sum over (b, c, k) of grad_sums[b, c, k] sums[b, c, k]) / d input and / d target; a tensor
// of shape (0,) for a gradient not asked for.
std::tuple<at::Tensor, at::Tensor> region_sums_backward_cpu(const at::Tensor& grad_sums_, const at::Tensor& input_,
                                                            const at::Tensor& target_,
                                                            const std::optional<at::Tensor>& mask_, bool sigmoid,
                                                            int64_t mode, bool grad_input, bool grad_target) {
  check_region_args("region_sums_backward", input_, target_, mask_, mode);
  TORCH_CHECK_VALUE(grad_sums_.dim() == 3 && grad_sums_.size(0) == input_.size(0) &&
                        grad_sums_.size(1) == input_.size(1) && grad_sums_.size(2) == kRegionSums,
                    "region_sums_backward: grad_sums must have the shape (B, C, ", kRegionSums, ") = (",
                    input_.size(0), ", ", input_.size(1), ", ", kRegionSums, "), got ", grad_sums_.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_sums_.scalar_type()),
                   "region_sums_backward: grad_sums must be floating point, got ", grad_sums_.scalar_type());
  TORCH_CHECK_TYPE(!grad_target || at::isFloatingType(target_.scalar_type()),
                   "region_sums_backward: a gradient for a ", target_.scalar_type(), " target was asked for");
  check_same_device("region_sums_backward", input_, "input", grad_sums_, "grad_sums");
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = defined_mask(mask_);
  at::Tensor grad_in = at::empty(grad_input ? input.sizes() : at::IntArrayRef{0}, input.options());
  at::Tensor grad_t = at::empty(grad_target ? target.sizes() : at::IntArrayRef{0}, target.options());
  if (input.numel() == 0 || (!grad_input && !grad_target)) {
    return {grad_in, grad_t};
  }
  const at::Tensor g = grad_sums_.to(region_sums_dtype(input, target)).contiguous();
  const RegionGeometry geo(input, mask);
  dispatch_region(input, target, mode, sigmoid, mask.defined(), [&](auto in_tag, auto t_tag, auto mode_tag,
                                                                    auto sigmoid_tag, auto masked_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    const int64_t S = geo.plane_size;
    const input_t* x = input.const_data_ptr<input_t>();
    const target_t* t = target.const_data_ptr<target_t>();
    const bool* m = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
    const acc_t* gs = g.const_data_ptr<acc_t>();
    input_t* gi = grad_input ? grad_in.mutable_data_ptr<input_t>() : nullptr;
    target_t* gt = nullptr;
    if constexpr (is_float_v<target_t>) {
      gt = grad_target ? grad_t.mutable_data_ptr<target_t>() : nullptr;
    }
    for_each_chunk<RegionScratch<acc_t>>(geo.n_items, [&](int64_t item, RegionScratch<acc_t>& s) {
      geo.for_each_piece(item, [&](int64_t plane, int64_t begin, int64_t end, int64_t) {
        const int64_t offset = plane * S + begin;
        region_grad_piece<decltype(mode_tag)::value, decltype(sigmoid_tag)::value, decltype(masked_tag)::value>(
            x + offset, t + offset, m ? m + geo.mask_plane(plane) * S + begin : nullptr, end - begin,
            gs + plane * kRegionSums, gi ? gi + offset : nullptr, gt ? gt + offset : nullptr, s);
      });
      stream_fence();
    });
  });
  return {grad_in, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) {
  m.impl("region_sums", &region_sums_cpu);
  m.impl("region_sums_backward", &region_sums_backward_cpu);
}

}  // namespace pylosses::cpu
