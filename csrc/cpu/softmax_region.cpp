// The region losses with softmax=True over a label map (ops softmax_region_sums and
// softmax_region_sums_backward) on the CPU: MONAI's DiceLoss(softmax=True, to_onehot_y=True) and
// its kin with no one-hot target and no softmax tensor in memory.
//
// p_c is the softmax over the classes of a pixel's logits, t_c = [label == c]. The forward gives
// each (sample, class)'s region sums of (p, t) over the pixels the mask keeps (the terms of
// csrc/region_loss_math.h); the backward, from the gradient g of the loss with respect to those
// sums, d/dx_c = p_c (G_c - sum_k p_k G_k), G_c = region_grad_p(p_c, t_c, g) the gradient with
// respect to p_c (0 where the mask is False).
//
// The contiguous input is B samples of C planes of S pixels. Both ops take blocks of consecutive
// pixels of one sample: the block's C logit rows are gathered into a scratch first (rows S apart
// can share one cache set: see cross_entropy.cpp), then one sweep across the classes a pixel
// vector at a time gives the maximum, the exponentials (kept in the scratch) and 1 / their sum
// (and in the backward sum_k p_k G_k), and one sweep along each class's row the sums, or the
// gradient, written with streaming stores. A label outside [0, C) where the mask keeps the pixel
// (the Python API raises on it first on the CPU) counts in the fourth sum of (sample, class 0),
// which makes the loss NaN, as a uint8 target above 1 does for region_sums.
//
// Work items are runs of pixels of one sample, fixed by the shape; each writes its own partial
// sums, added in order: the same bits for any thread count (cpu_common.h).
#include <torch/library.h>

#include <limits>
#include <optional>

#include "cpu_common.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../region_loss_math.h"

namespace pylosses::cpu {
namespace {

using math::kRegionSums;
using math::RegionMode;

constexpr int64_t kItemElements = 1 << 13;  // logits in one work item, as cross_entropy.cpp's
constexpr int64_t kBlock = 256;             // pixels a block: its C rows stay in L1 or L2

struct Geometry {
  int64_t B = 0, C = 0, S = 0;
  int64_t pixels_per_item = 0, items_per_sample = 0, n_items = 0;

  explicit Geometry(const at::Tensor& input) : B(input.size(0)), C(input.size(1)) {
    S = B * C == 0 ? 0 : input.numel() / (B * C);
    // a multiple of 16 pixels: an item's rows start on a 64-byte boundary where its sample's do
    pixels_per_item = std::max<int64_t>(16, kItemElements / std::max<int64_t>(C, 1) / 16 * 16);
    items_per_sample = S == 0 ? 0 : at::divup(S, pixels_per_item);
    n_items = B * items_per_sample;
  }
};

template <typename acc_t>
struct Scratch {
  std::vector<acc_t> x, exps;  // a block's logits and exponentials, a row a class
  std::vector<acc_t> labels = std::vector<acc_t>(kBlock), mask = labels, inv_sum = labels, dot = labels,
                     grad = labels;
  std::vector<Vec<acc_t>> sums;  // the forward's accumulators: three a class, then the bad labels

  void resize(int64_t C) {
    if (int64_t(x.size()) != C * kBlock) {
      x.resize(C * kBlock);
      exps.resize(C * kBlock);
    }
  }
};

template <typename acc_t>
struct Sources {
  RowSource<acc_t> input;
  LabelRows<acc_t> labels;
  std::optional<RowSource<acc_t>> mask;
};

// v where the mask (0 or 1) keeps the pixel, else 0: a select, so that NaN or inf under the mask
// (padding) stays out.
template <typename V>
C10_ALWAYS_INLINE V kept(const V& v, const V& m) {
  return V::blendv(V(0), v, m != V(0));
}

// The block of n pixels from s0 of sample b: its logits and labels (and mask) in the scratch, the
// exponentials of the shifted logits a row a class, and each pixel's 1 / sum. With kDot, also
// dot = sum_k p_k G_k over the classes, g the (C, 4) gradients of the sample's sums; and the
// count of labels out of range (kept by the mask) added to `bad`. Returns the labels' and mask's rows.
template <RegionMode kMode, bool kMasked, bool kDot, typename acc_t>
std::pair<const acc_t*, const acc_t*> softmax_block(const Geometry& geo, const Sources<acc_t>& src, int64_t b,
                                                    int64_t s0, int64_t n, const acc_t* g, Scratch<acc_t>& sc,
                                                    Vec<acc_t>& bad) {
  using V = Vec<acc_t>;
  const int64_t C = geo.C, S = geo.S, base = b * C * S + s0;
  for (int64_t c = 0; c < C; ++c) {
    acc_t* row = sc.x.data() + c * kBlock;
    const acc_t* from = src.input(base + c * S, row, n);
    if (from != row) {
      std::copy_n(from, n, row);
    }
  }
  const acc_t* t = src.labels(b * S + s0, sc.labels.data(), n);
  const acc_t* m = kMasked ? (*src.mask)(b * S + s0, sc.mask.data(), n) : nullptr;
  const V zero(acc_t(0)), one(acc_t(1)), classes = V(acc_t(C));
  for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    V mx = load<kTail>(sc.x.data() + i, lanes);
    for (int64_t c = 1; c < C; ++c) {
      mx = math::pmax(load<kTail>(sc.x.data() + c * kBlock + i, lanes), mx);
    }
    V sum(acc_t(0));
    for (int64_t c = 0; c < C; ++c) {
      const V e = math::pexp(load<kTail>(sc.x.data() + c * kBlock + i, lanes) - mx);
      e.store(sc.exps.data() + c * kBlock + i);
      sum = sum + e;
    }
    const V inv = math::preciprocal(sum);
    inv.store(sc.inv_sum.data() + i);
    const V label = load<kTail>(t + i, lanes);
    V out_of_range = V::blendv(zero, one, (label < zero) | (label >= classes));
    if constexpr (kMasked) {
      out_of_range = kept(out_of_range, load<kTail>(m + i, lanes));
    }
    accumulate<kTail>(bad, out_of_range, lanes);
    if constexpr (kDot) {
      V dot(acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const V p = load<kTail>(sc.exps.data() + c * kBlock + i, lanes) * inv;
        const V t_c = V::blendv(zero, one, label == V(acc_t(c)));
        dot = dot + p * math::region_grad_p<kMode>(p, t_c, V(g[c * kRegionSums]), V(g[c * kRegionSums + 1]));
      }
      if constexpr (kMasked) {
        dot = kept(dot, load<kTail>(m + i, lanes));
      }
      dot.store(sc.dot.data() + i);
    }
  });
  return {t, m};
}

// The sums of the pixels [s0, s0 + n) of sample b, added to the scratch's accumulators.
template <RegionMode kMode, bool kMasked, typename acc_t>
void sums_run(const Geometry& geo, const Sources<acc_t>& src, int64_t b, int64_t s0, int64_t n, Scratch<acc_t>& sc) {
  using V = Vec<acc_t>;
  const V zero(acc_t(0)), one(acc_t(1));
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t len = std::min(kBlock, n - begin);
    const auto [t, m] = softmax_block<kMode, kMasked, false>(geo, src, b, s0 + begin, len, static_cast<const acc_t*>(nullptr), sc,
                                                              sc.sums[3 * geo.C]);
    for (int64_t c = 0; c < geo.C; ++c) {
      const acc_t* e = sc.exps.data() + c * kBlock;
      V* acc = sc.sums.data() + 3 * c;
      for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        V p = load<kTail>(e + i, lanes) * load<kTail>(sc.inv_sum.data() + i, lanes);
        V t_c = V::blendv(zero, one, load<kTail>(t + i, lanes) == V(acc_t(c)));
        if constexpr (kMasked) {
          const V keep = load<kTail>(m + i, lanes);
          p = kept(p, keep);
          t_c = kept(t_c, keep);
        }
        V s0v, s1v, s2v;
        math::region_terms<kMode>(p, t_c, s0v, s1v, s2v);
        accumulate<kTail>(acc[0], s0v, lanes);
        accumulate<kTail>(acc[1], s1v, lanes);
        accumulate<kTail>(acc[2], s2v, lanes);
      });
    }
  }
}

// The gradient of the pixels [s0, s0 + n) of sample b, g the (C, 4) gradients of its sums.
template <RegionMode kMode, bool kMasked, bool kStream, typename acc_t>
void grad_run(const Geometry& geo, const Sources<acc_t>& src, const RowSink<acc_t>& grad, int64_t b, int64_t s0,
              int64_t n, const acc_t* g, Scratch<acc_t>& sc) {
  using V = Vec<acc_t>;
  const V zero(acc_t(0)), one(acc_t(1));
  V unused(acc_t(0));
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t len = std::min(kBlock, n - begin);
    const auto [t, m] = softmax_block<kMode, kMasked, true>(geo, src, b, s0 + begin, len, g, sc, unused);
    for (int64_t c = 0; c < geo.C; ++c) {
      const int64_t offset = (b * geo.C + c) * geo.S + s0 + begin;
      acc_t* row = grad.row(offset, sc.grad.data());
      const acc_t* e = sc.exps.data() + c * kBlock;
      const V g0(g[c * kRegionSums]), g1(g[c * kRegionSums + 1]);
      for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        const V p = load<kTail>(e + i, lanes) * load<kTail>(sc.inv_sum.data() + i, lanes);
        const V t_c = V::blendv(zero, one, load<kTail>(t + i, lanes) == V(acc_t(c)));
        V dx = p * (math::region_grad_p<kMode>(p, t_c, g0, g1) - load<kTail>(sc.dot.data() + i, lanes));
        if constexpr (kMasked) {
          dx = kept(dx, load<kTail>(m + i, lanes));
        }
        if constexpr (!kTail && kStream) {
          store_stream(dx, row + i);
        } else {
          store<kTail>(dx, row + i, lanes);
        }
      });
      grad.finish(row, offset, len);
    }
  }
}

// f(acc_tag, mode_tag, masked_tag) for the input's accumulation dtype, the mode and whether a mask is given.
template <typename F>
void dispatch_softmax_region(const at::Tensor& input, int64_t mode, bool masked, const F& f) {
  const auto with_acc = [&](auto acc_tag) {
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_bool(masked, [&](auto masked_tag) { f(acc_tag, mode_tag, masked_tag); });
    });
  };
  if (input.scalar_type() == at::kDouble) {
    with_acc(double{});
  } else {
    with_acc(float{});
  }
}

at::Tensor mask_of(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
}

template <typename acc_t>
Sources<acc_t> sources(const at::Tensor& input, const at::Tensor& labels, const at::Tensor& mask) {
  // a label never equal to this (int64's lowest, out of range itself) is no ignore_index
  Sources<acc_t> src{RowSource<acc_t>(input), LabelRows<acc_t>(labels, std::numeric_limits<int64_t>::min()), {}};
  if (mask.defined()) {
    src.mask.emplace(mask);
  }
  return src;
}

// (B, C, 4): each (sample, class)'s three region sums of (softmax(input), one-hot(labels)) over
// the pixels the mask keeps, then (at class 0) the count of labels out of range.
at::Tensor softmax_region_sums_cpu(const at::Tensor& input_, const at::Tensor& labels_,
                                   const c10::optional<at::Tensor>& mask_, int64_t mode) {
  check_softmax_region_args("softmax_region_sums", input_, labels_, mask_, mode);
  const at::Tensor input = input_.contiguous(), labels = labels_.contiguous(), mask = mask_of(mask_);
  const Geometry geo(input);
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sums = at::zeros({geo.B, geo.C, kRegionSums}, input.options().dtype(acc_dtype));
  if (geo.n_items == 0) {
    return sums;
  }
  dispatch_softmax_region(input, mode, mask.defined(), [&](auto acc_tag, auto mode_tag, auto masked_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kMasked = decltype(masked_tag)::value;
    const Sources<acc_t> src = sources<acc_t>(input, labels, mask);
    const int64_t per_item = 3 * geo.C + 1;
    std::vector<acc_t> partials(geo.n_items * per_item);
    for_each_chunk<Scratch<acc_t>>(geo.n_items, [&](int64_t item, Scratch<acc_t>& sc) {
      sc.resize(geo.C);
      sc.sums.assign(per_item, Vec<acc_t>(acc_t(0)));
      const int64_t b = item / geo.items_per_sample, s0 = (item % geo.items_per_sample) * geo.pixels_per_item;
      sums_run<kMode, kMasked>(geo, src, b, s0, std::min(geo.pixels_per_item, geo.S - s0), sc);
      for (int64_t k = 0; k < per_item; ++k) {
        partials[item * per_item + k] = lane_sum(sc.sums[k]);
      }
    });
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    for (int64_t item = 0; item < geo.n_items; ++item) {  // each sample's items in order
      const int64_t b = item / geo.items_per_sample;
      const acc_t* part = partials.data() + item * per_item;
      for (int64_t c = 0; c < geo.C; ++c) {
        for (int64_t k = 0; k < 3; ++k) {
          out[(b * geo.C + c) * kRegionSums + k] += part[3 * c + k];
        }
      }
      out[b * geo.C * kRegionSums + 3] += part[3 * geo.C];
    }
  });
  return sums;
}

// d (sum over (b, c, k) of grad_sums[b, c, k] sums[b, c, k]) / d input, in the input's dtype.
at::Tensor softmax_region_sums_backward_cpu(const at::Tensor& grad_sums_, const at::Tensor& input_,
                                            const at::Tensor& labels_, const c10::optional<at::Tensor>& mask_,
                                            int64_t mode) {
  constexpr const char* op = "softmax_region_sums_backward";
  check_softmax_region_args(op, input_, labels_, mask_, mode);
  TORCH_CHECK_VALUE(grad_sums_.dim() == 3 && grad_sums_.size(0) == input_.size(0) &&
                        grad_sums_.size(1) == input_.size(1) && grad_sums_.size(2) == kRegionSums,
                    op, ": grad_sums must have the shape (B, C, 4), got ", grad_sums_.sizes());
  const at::Tensor input = input_.contiguous(), labels = labels_.contiguous(), mask = mask_of(mask_);
  const Geometry geo(input);
  at::Tensor grad = at::empty(input.sizes(), input.options());
  if (geo.n_items == 0) {
    return grad.zero_();
  }
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = grad_sums_.to(at::kCPU, acc_dtype).contiguous();
  dispatch_softmax_region(input, mode, mask.defined(), [&](auto acc_tag, auto mode_tag, auto masked_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kMasked = decltype(masked_tag)::value;
    const Sources<acc_t> src = sources<acc_t>(input, labels, mask);
    const RowSink<acc_t> rows(grad);
    const acc_t* gs = g.const_data_ptr<acc_t>();
    dispatch_bool(rows.direct(), [&](auto stream_tag) {
      constexpr bool kStream = decltype(stream_tag)::value;
      for_each_chunk<Scratch<acc_t>>(geo.n_items, [&](int64_t item, Scratch<acc_t>& sc) {
        sc.resize(geo.C);
        const int64_t b = item / geo.items_per_sample, s0 = (item % geo.items_per_sample) * geo.pixels_per_item;
        grad_run<kMode, kMasked, kStream>(geo, src, rows, b, s0, std::min(geo.pixels_per_item, geo.S - s0),
                                          gs + b * geo.C * kRegionSums, sc);
        stream_fence();
      });
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) {
  m.impl("softmax_region_sums", &softmax_region_sums_cpu);
  m.impl("softmax_region_sums_backward", &softmax_region_sums_backward_cpu);
}

}  // namespace pylosses::cpu
