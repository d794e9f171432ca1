// The region losses' sums (op region_sums) and the gradient of the elements from the gradient of
// those sums (op region_sums_backward) on the CPU: one pass over input, target and mask each.
// With the mode's bit math::kWithBce, the same pass also gives DiceBCE's two BCE sums and their
// gradient (region_loss_math.h): Dice + BCE reads the logits twice in all, as Dice alone.
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
#include "../seg_loss_math.h"  // bce_logits_loss, sigmoid_softplus

namespace pylosses::cpu {
namespace {

using math::RegionMode;
using math::kBceSums;
using math::kRegionSums;
constexpr int kMaxSums = kRegionSums + kBceSums;  // a plane's sums with the BCE's

// Elements of a plane in one work item. A chunk's bookkeeping (its partial sums, a call) is lost
// in its work from 2^12 elements on (measured: the same time per element from 2^12 to 2^16);
// short chunks make items enough to share evenly among many threads: (16, 3, 256, 256) makes
// 384 and (2, 4, 96, 96, 96) 864.
constexpr int64_t kChunk = 1 << 13;
constexpr int64_t kBlock = 1 << 11;  // elements converted to acc_t at a time
// Planes shorter than this are taken several at a time, the vectors running across them (see
// region_sums_short_planes): one plane's vector accumulators, partial vector and lane sums would
// cost more than its work.
constexpr int64_t kShortPlane = 16;

struct RegionGeometry {
  int64_t channels = 0, mask_channels = 0;  // mask_channels: 1 (broadcast) or channels
  int64_t planes = 0, plane_size = 0;       // (sample, channel) pairs, and S
  int64_t chunks_per_plane = 1;             // partial sums of a plane
  int64_t planes_per_item = 1;              // more than 1 only with one chunk a plane
  int64_t n_items = 0;
  bool short_planes = false;                // plane_size < kShortPlane

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
    short_planes = plane_size < kShortPlane;
  }

  int64_t mask_plane(int64_t plane) const {
    return mask_channels == 1 ? plane / channels : plane;
  }

  // The planes [first, last) of an item, with one chunk a plane.
  std::pair<int64_t, int64_t> planes_of(int64_t item) const {
    return {item * planes_per_item, std::min(planes, (item + 1) * planes_per_item)};
  }

  // Calls f(plane, begin, end, slot) for each piece [begin, end) of a plane that the item
  // covers; slot = plane * chunks_per_plane + chunk indexes the piece's partial sums.
  template <typename F>
  void for_each_piece(int64_t item, const F& f) const {
    if (chunks_per_plane == 1) {
      const auto [first, last] = planes_of(item);
      for (int64_t plane = first; plane < last; ++plane) {
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
  // short planes: each element's terms (forward), or its plane's gradients of the sums (backward)
  std::vector<acc_t> per_element[kMaxSums];

  acc_t* row(int k) {
    if (per_element[k].empty()) {
      per_element[k].resize(kBlock);
    }
    return per_element[k].data();
  }
};

// v where the mask row's m (0 or 1) keeps the element, else 0: a select, not a product, so
// that a NaN or inf under the mask (padding) stays out of the sums and the gradients.
template <typename V>
C10_ALWAYS_INLINE V kept(const V& v, const V& m) {
  return V::blendv(V(0), v, m != V(0));
}

// p, and t, as the sums see them: the input or its sigmoid, and both 0 where the mask is; with
// kSoftplus also log(1 + exp(-|x|)), from the sigmoid's exponential.
template <bool kSigmoid, bool kMasked, bool kSoftplus = false, typename V>
C10_ALWAYS_INLINE void region_values(const V& x, V& t, const V& m, V& p, V& p_masked, V& softplus) {
  if constexpr (kSoftplus) {
    p = math::sigmoid_softplus(x, softplus);
  } else {
    p = kSigmoid ? math::sigmoid(x) : x;
  }
  p_masked = p;
  if constexpr (kMasked) {
    p_masked = kept(p, m);
    t = kept(t, m);
  }
}

// A row of n elements of the mask, as 0/1 acc_t, for the planes [first, first + planes) of the
// input: one mask plane for each, shared by the channels of a sample where the mask broadcasts.
template <typename acc_t>
const acc_t* mask_row(const RegionGeometry& geo, const bool* mask, int64_t first, int64_t planes, int64_t begin,
                      int64_t n, acc_t* buf) {
  if (planes == 1) {
    return load_row(mask + geo.mask_plane(first) * geo.plane_size + begin, buf, n);
  }
  for (int64_t q = 0; q < planes; ++q) {
    load_row(mask + geo.mask_plane(first + q) * geo.plane_size, buf + q * geo.plane_size, geo.plane_size);
  }
  return buf;
}

// Hands the terms of a row of n elements to sink(tail, i, lanes, s[]) a vector at a time: s[0..2]
// the mode's, s[3] 1 where a target is above 1 (a uint8 mask that holds more than 0 and 1), and
// with kBce s[4], s[5] the BCE sums' (0 where the mask is).
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kCount, bool kBce, typename acc_t, typename Sink>
C10_ALWAYS_INLINE void row_terms(const acc_t* x, const acc_t* t, const acc_t* m, int64_t n, const Sink& sink) {
  using V = Vec<acc_t>;
  for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V xv = load<kTail>(x + i, lanes), mv = kMasked ? load<kTail>(m + i, lanes) : V();
    V tv = load<kTail>(t + i, lanes);
    V p, p_masked, softplus;
    region_values<kSigmoid, kMasked, kBce>(xv, tv, mv, p, p_masked, softplus);
    V terms[kMaxSums];
    math::region_terms<kMode>(p_masked, tv, terms[0], terms[1], terms[2]);
    terms[3] = kCount ? tv.gt(V(acc_t(1))) : V(acc_t(0));  // tail lanes of t hold 0
    if constexpr (kBce) {
      terms[4] = math::bce_logits_loss(xv, tv, softplus);
      terms[5] = math::bce_sums_term_b(xv, tv, softplus);
      if constexpr (kMasked) {
        terms[4] = kept(terms[4], mv);
        terms[5] = kept(terms[5], mv);
      }
    }
    sink(tail, i, lanes, terms);
  });
}

// The sums of a piece [begin, begin + n) of one plane, into out[0..3] (out[0..5] with kBce).
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kCount, bool kBce, typename acc_t>
void region_sums_piece(const RegionGeometry& geo, const RowSource<acc_t>& input, const RowSource<acc_t>& target,
                       const bool* mask, int64_t plane, int64_t begin, int64_t n, RegionScratch<acc_t>& s, acc_t* out) {
  using V = Vec<acc_t>;
  V sum0(acc_t(0)), sum1(acc_t(0)), sum2(acc_t(0)), count(acc_t(0)), bce_a(acc_t(0)), bce_b(acc_t(0));
  const int64_t offset = plane * geo.plane_size + begin;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
    const acc_t* x = input(offset + b, s.x.data(), len);
    const acc_t* t = target(offset + b, s.t.data(), len);
    const acc_t* m = kMasked ? mask_row(geo, mask, plane, 1, begin + b, len, s.mask.data()) : nullptr;
    row_terms<kMode, kSigmoid, kMasked, kCount, kBce>(x, t, m, len, [&](auto tail, int64_t, int64_t lanes,
                                                                         const V* terms) {
      constexpr bool kTail = decltype(tail)::value;
      accumulate<kTail>(sum0, terms[0], lanes);
      accumulate<kTail>(sum1, terms[1], lanes);
      accumulate<kTail>(sum2, terms[2], lanes);
      if constexpr (kCount) {
        count = count + terms[3];
      }
      if constexpr (kBce) {  // a tail lane's terms are not 0 here (log 2): accumulate drops them
        accumulate<kTail>(bce_a, terms[4], lanes);
        accumulate<kTail>(bce_b, terms[5], lanes);
      }
    });
  }
  out[0] = lane_sum(sum0);
  out[1] = lane_sum(sum1);
  out[2] = lane_sum(sum2);
  out[3] = lane_sum(count);
  if constexpr (kBce) {
    out[4] = lane_sum(bce_a);
    out[5] = lane_sum(bce_b);
  }
}

// The sums of the short planes [first, last), each into out[plane * n_sums ..] (n_sums: 4, or 6
// with kBce): a block of whole planes at a time, its terms a vector at a time into rows, then
// each plane's summed in order.
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kCount, bool kBce, typename acc_t>
void region_sums_short_planes(const RegionGeometry& geo, const RowSource<acc_t>& input,
                              const RowSource<acc_t>& target, const bool* mask, int64_t first, int64_t last,
                              RegionScratch<acc_t>& s, acc_t* out) {
  using V = Vec<acc_t>;
  constexpr int n_sums = kBce ? kMaxSums : kRegionSums;
  const auto kept_sum = [](int k) { return k < 3 || (k == 3 && kCount) || k >= kRegionSums; };
  const int64_t S = geo.plane_size, planes_per_block = kBlock / S;
  acc_t* terms[kMaxSums] = {};
  for (int k = 0; k < n_sums; ++k) {
    terms[k] = kept_sum(k) ? s.row(k) : nullptr;
  }
  for (int64_t plane = first; plane < last; plane += planes_per_block) {
    const int64_t planes = std::min(planes_per_block, last - plane), len = planes * S;
    const acc_t* x = input(plane * S, s.x.data(), len);
    const acc_t* t = target(plane * S, s.t.data(), len);
    const acc_t* m = kMasked ? mask_row(geo, mask, plane, planes, 0, len, s.mask.data()) : nullptr;
    row_terms<kMode, kSigmoid, kMasked, kCount, kBce>(x, t, m, len, [&](auto tail, int64_t i, int64_t lanes,
                                                                         const V* vec_terms) {
      constexpr bool kTail = decltype(tail)::value;
      for (int k = 0; k < n_sums; ++k) {
        if (terms[k]) {
          store<kTail>(vec_terms[k], terms[k] + i, lanes);
        }
      }
    });
    for (int64_t q = 0; q < planes; ++q) {
      acc_t sum[kMaxSums] = {};  // the count stays 0 without kCount
      for (int64_t j = q * S; j < (q + 1) * S; ++j) {
        for (int k = 0; k < n_sums; ++k) {
          if (terms[k]) {
            sum[k] += terms[k][j];
          }
        }
      }
      std::copy_n(sum, n_sums, out + (plane + q) * n_sums);
    }
  }
}

// The loss's gradients with respect to an element's sums: the mode's three, and with the BCE
// sums theirs (ga, gb).
template <typename V>
struct SumGrads {
  V g0, g1, g2, ga, gb;
};

// Writes the gradients of a row of n elements into grad_input (a row of acc_t, or null where not
// asked for) and, with kGradTarget, grad_target; g_at(tail, i, lanes, SumGrads&) gives the
// gradients of the sums for the vector at i. kStreamInput: grad_input is the gradient tensor
// itself (streaming stores). Both are compile-time constants: with either a run-time test the
// compiler keeps one loop for every case, which reads x where the input's gradient needs only t
// (linear mode, no sigmoid: about 1.5x the time, measured). A target's gradient, rarely asked for,
// takes plain stores.
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kBce, bool kStreamInput, bool kGradTarget,
          typename acc_t, typename GradSums>
C10_ALWAYS_INLINE void row_grads(const acc_t* x, const acc_t* t, const acc_t* m, int64_t n, const GradSums& g_at,
                                 acc_t* grad_input, acc_t* grad_target) {
  using V = Vec<acc_t>;
  for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V mv = kMasked ? load<kTail>(m + i, lanes) : V();
    const V xv = load<kTail>(x + i, lanes);
    V tv = load<kTail>(t + i, lanes);
    V p, p_masked, softplus;
    SumGrads<V> g;
    // the BCE's target gradient needs softplus(-x), its input gradient only p
    region_values<kSigmoid, kMasked, kBce && kGradTarget>(xv, tv, mv, p, p_masked, softplus);
    g_at(tail, i, lanes, g);
    if (grad_input) {
      V dp = math::region_grad_p<kMode>(p_masked, tv, g.g0, g.g1);
      if constexpr (kSigmoid) {
        dp = dp * math::sigmoid_grad(p);
      }
      if constexpr (kBce) {
        dp = dp + math::bce_sums_grad_x(p, tv, g.ga, g.gb);
      }
      if constexpr (kMasked) {
        dp = kept(dp, mv);
      }
      if constexpr (kStreamInput && !kTail) {
        store_stream(dp, grad_input + i);  // nothing reads the gradient before the optimizer
      } else {
        store<kTail>(dp, grad_input + i, lanes);
      }
    }
    if constexpr (kGradTarget) {
      V dt = math::region_grad_t<kMode>(p_masked, tv, g.g0, g.g2);
      if constexpr (kBce) {
        dt = dt + math::bce_sums_grad_t(xv, softplus, g.ga, g.gb);
      }
      if constexpr (kMasked) {
        dt = kept(dt, mv);
      }
      store<kTail>(dt, grad_target + i, lanes);
    }
  });
}

// The gradients of n elements: with kShortPlanes, of the whole planes [first, first + planes),
// each element's gradients of the sums set out in rows; else of [begin, begin + n) of the one
// plane first, whose gradients of the sums every vector shares. grad_input and grad_target: the
// tensors, or none where not asked for (grad_target always, for a bool or uint8 target).
template <RegionMode kMode, bool kSigmoid, bool kMasked, bool kBce, bool kShortPlanes, bool kStreamInput,
          typename acc_t>
void region_grad_block(const RegionGeometry& geo, const RowSource<acc_t>& input, const RowSource<acc_t>& target,
                       const bool* mask, const acc_t* grad_sums, int64_t first, int64_t planes, int64_t begin,
                       int64_t n, const RowSink<acc_t>& grad_input, const RowSink<acc_t>& grad_target,
                       RegionScratch<acc_t>& s) {
  using V = Vec<acc_t>;
  const int64_t offset = first * geo.plane_size + begin;
  const acc_t* x = input(offset, s.x.data(), n);
  const acc_t* t = target(offset, s.t.data(), n);
  const acc_t* m = kMasked ? mask_row(geo, mask, first, planes, begin, n, s.mask.data()) : nullptr;
  acc_t* gi = grad_input ? grad_input.row(offset, s.grad_input.data()) : nullptr;
  acc_t* gt = grad_target ? grad_target.row(offset, s.grad_target.data()) : nullptr;
  const auto grads = [&](const auto& g_at) {
    dispatch_bool(gt != nullptr, [&](auto with_target) {
      row_grads<kMode, kSigmoid, kMasked, kBce, kStreamInput, decltype(with_target)::value>(x, t, m, n, g_at, gi, gt);
    });
  };
  constexpr int n_sums = kBce ? kMaxSums : kRegionSums;
  // the sums whose gradients the elements take: the mode's three and the BCE's two (not the count)
  constexpr int kUsed[] = {0, 1, 2, 4, 5};
  constexpr int n_used = kBce ? 5 : 3;
  if constexpr (kShortPlanes) {
    acc_t* g[kMaxSums] = {};
    for (int u = 0; u < n_used; ++u) {
      g[kUsed[u]] = s.row(kUsed[u]);
    }
    for (int64_t q = 0; q < planes; ++q) {
      const acc_t* plane_g = grad_sums + (first + q) * n_sums;
      for (int64_t j = q * geo.plane_size; j < (q + 1) * geo.plane_size; ++j) {
        for (int u = 0; u < n_used; ++u) {
          g[kUsed[u]][j] = plane_g[kUsed[u]];
        }
      }
    }
    grads([&](auto tail, int64_t i, int64_t lanes, SumGrads<V>& out) {
      constexpr bool kTail = decltype(tail)::value;
      out.g0 = load<kTail>(g[0] + i, lanes);
      out.g1 = load<kTail>(g[1] + i, lanes);
      out.g2 = load<kTail>(g[2] + i, lanes);
      if constexpr (kBce) {
        out.ga = load<kTail>(g[4] + i, lanes);
        out.gb = load<kTail>(g[5] + i, lanes);
      }
    });
  } else {
    const acc_t* g = grad_sums + first * n_sums;
    const V g0(g[0]), g1(g[1]), g2(g[2]), ga(kBce ? g[4] : acc_t(0)), gb(kBce ? g[5] : acc_t(0));
    grads([&](auto, int64_t, int64_t, SumGrads<V>& out) {
      out.g0 = g0;
      out.g1 = g1;
      out.g2 = g2;
      if constexpr (kBce) {
        out.ga = ga;
        out.gb = gb;
      }
    });
  }
  if (gi) {
    grad_input.finish(gi, offset, n);
  }
  if (gt) {
    grad_target.finish(gt, offset, n);
  }
}

at::ScalarType region_sums_dtype(const at::Tensor& input, const at::Tensor& target) {
  return input.scalar_type() == at::kDouble || target.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Calls f(acc_t{}, mode, sigmoid, masked, bce) with the last four as compile-time constants
// (the BCE sums, mode bit math::kWithBce, only with sigmoid: op_checks.h). The kernels read input
// and target as RowSources: their dtypes are not template arguments.
template <typename F>
void dispatch_region(const at::Tensor& input, const at::Tensor& target, int64_t mode, bool sigmoid, bool masked,
                     const F& f) {
  const auto with_acc = [&](auto acc_tag) {
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_bool(sigmoid, [&](auto sigmoid_tag) {
        dispatch_bool(masked, [&](auto masked_tag) {
          dispatch_bool((mode & math::kWithBce) != 0, [&](auto bce_tag) {
            if constexpr (decltype(bce_tag)::value && !std::remove_reference_t<decltype(sigmoid_tag)>::value) {
              TORCH_INTERNAL_ASSERT(false, "the BCE sums need sigmoid (checked before)");
            } else {
              f(acc_tag, mode_tag, sigmoid_tag, masked_tag, bce_tag);
            }
          });
        });
      });
    });
  };
  region_sums_dtype(input, target) == at::kDouble ? with_acc(double{}) : with_acc(float{});
}

at::Tensor defined_mask(const std::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
}

// (B, C, 4): per (sample, channel) the mode's three sums and the count of uint8 targets above 1,
// which (no host sync to avoid on the CPU) raises the mask error instead; (B, C, 6) with the
// BCE sums.
at::Tensor region_sums_cpu(const at::Tensor& input_, const at::Tensor& target_, const std::optional<at::Tensor>& mask_,
                           bool sigmoid, int64_t mode) {
  check_region_args("region_sums", input_, target_, mask_, mode, sigmoid, /*with_bce=*/true);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = defined_mask(mask_);
  const RegionGeometry geo(input, mask);
  const int n_sums = (mode & math::kWithBce) ? kMaxSums : kRegionSums;
  at::Tensor sums = at::zeros({input.size(0), input.size(1), n_sums},
                              input.options().dtype(region_sums_dtype(input, target)));
  if (input.numel() == 0) {
    return sums;
  }
  const bool count = target.scalar_type() == at::kByte;
  dispatch_region(input, target, mode, sigmoid, mask.defined(), [&](auto acc_tag, auto mode_tag, auto sigmoid_tag,
                                                                    auto masked_tag, auto bce_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kSigmoid = decltype(sigmoid_tag)::value, kMasked = decltype(masked_tag)::value;
    constexpr bool kBce = decltype(bce_tag)::value;
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    // with one chunk a plane, a piece's sums are its plane's
    std::vector<acc_t> partials(geo.chunks_per_plane == 1 ? 0 : geo.planes * geo.chunks_per_plane * n_sums);
    acc_t* piece_sums = partials.empty() ? out : partials.data();
    const RowSource<acc_t> x(input), t(target);
    const bool* m = kMasked ? mask.const_data_ptr<bool>() : nullptr;
    dispatch_bool(count, [&](auto count_tag) {
      constexpr bool kCount = decltype(count_tag)::value;
      for_each_chunk<RegionScratch<acc_t>>(geo.n_items, [&](int64_t item, RegionScratch<acc_t>& s) {
        if (geo.short_planes) {
          const auto [first, last] = geo.planes_of(item);
          region_sums_short_planes<kMode, kSigmoid, kMasked, kCount, kBce>(geo, x, t, m, first, last, s, out);
          return;
        }
        geo.for_each_piece(item, [&](int64_t plane, int64_t begin, int64_t end, int64_t slot) {
          region_sums_piece<kMode, kSigmoid, kMasked, kCount, kBce>(geo, x, t, m, plane, begin, end - begin, s,
                                                                    piece_sums + slot * n_sums);
        });
      });
    });
    if (!partials.empty()) {
      // in double: a 2**25-pixel plane's 4096 pieces added in float32 lost 1e-4 of the Dice
      at::parallel_for(0, geo.planes, 64, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          for (int k = 0; k < n_sums; ++k) {
            double total = 0;
            for (int64_t chunk = 0; chunk < geo.chunks_per_plane; ++chunk) {  // fixed order
              total += static_cast<double>(piece_sums[(plane * geo.chunks_per_plane + chunk) * n_sums + k]);
            }
            out[plane * n_sums + k] = static_cast<acc_t>(total);
          }
        }
      });
    }
    if (count) {
      bool bad = false;
      for (int64_t plane = 0; plane < geo.planes; ++plane) {
        bad |= out[plane * n_sums + 3] != acc_t(0);
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
  check_region_backward_args(grad_sums_, input_, target_, mask_, mode, grad_target, sigmoid, /*with_bce=*/true);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = defined_mask(mask_);
  at::Tensor grad_in = empty_gradient(grad_input ? input.sizes() : at::IntArrayRef{0}, input.options());
  at::Tensor grad_t = empty_gradient(grad_target ? target.sizes() : at::IntArrayRef{0}, target.options());
  if (input.numel() == 0 || (!grad_input && !grad_target)) {
    return {grad_in, grad_t};
  }
  const at::Tensor g = grad_sums_.to(region_sums_dtype(input, target)).contiguous();
  const RegionGeometry geo(input, mask);
  dispatch_region(input, target, mode, sigmoid, mask.defined(), [&](auto acc_tag, auto mode_tag, auto sigmoid_tag,
                                                                    auto masked_tag, auto bce_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kSigmoid = decltype(sigmoid_tag)::value, kMasked = decltype(masked_tag)::value;
    constexpr bool kBce = decltype(bce_tag)::value;
    const RowSource<acc_t> x(input), t(target);
    const bool* m = kMasked ? mask.const_data_ptr<bool>() : nullptr;
    const acc_t* gs = g.const_data_ptr<acc_t>();
    const RowSink<acc_t> gi = grad_input ? RowSink<acc_t>(grad_in) : RowSink<acc_t>();
    const RowSink<acc_t> gt = grad_target ? RowSink<acc_t>(grad_t) : RowSink<acc_t>();
    dispatch_bool(gi && gi.direct(), [&](auto stream_tag) {
      constexpr bool kStream = decltype(stream_tag)::value;
      for_each_chunk<RegionScratch<acc_t>>(geo.n_items, [&](int64_t item, RegionScratch<acc_t>& s) {
        if (geo.short_planes) {
          const auto [first, last] = geo.planes_of(item);
          const int64_t planes_per_block = kBlock / geo.plane_size;
          for (int64_t plane = first; plane < last; plane += planes_per_block) {
            const int64_t planes = std::min(planes_per_block, last - plane);
            region_grad_block<kMode, kSigmoid, kMasked, kBce, true, kStream>(geo, x, t, m, gs, plane, planes, 0,
                                                                       planes * geo.plane_size, gi, gt, s);
          }
        } else {
          geo.for_each_piece(item, [&](int64_t plane, int64_t begin, int64_t end, int64_t) {
            for (int64_t b = begin; b < end; b += kBlock) {
              region_grad_block<kMode, kSigmoid, kMasked, kBce, false, kStream>(geo, x, t, m, gs, plane, 1, b,
                                                                          std::min(kBlock, end - b), gi, gt, s);
            }
          });
        }
        stream_fence();
      });
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
