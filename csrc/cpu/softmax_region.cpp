// The region losses with softmax=True over a label map, and with them the cross-entropy of
// DiceCELoss (ops softmax_region_sums and softmax_region_sums_backward), on the CPU: MONAI's
// DiceLoss(softmax=True, to_onehot_y=True) and DiceCELoss with no one-hot target and no softmax
// tensor in memory, and Dice + cross-entropy in two passes over the logits where they were three
// (and two gradients added).
//
// p_c is the softmax over the classes of a pixel's logits, t_c = [label == c]. The forward gives
// each (sample, class)'s region sums of (p, t) over the pixels the mask keeps whose label is not
// ignore_index (the terms of csrc/region_loss_math.h), and with_ce the cross-entropy's sum of
// losses, D (the sum of the labels' weights) and the count of the pixels that count, torch's
// (csrc/cross_entropy_math.h; the mask does not apply to it). The backward, from the gradient g of
// the loss with respect to the sums and ce_scale, the one with respect to the cross-entropy's sum
// of losses: d/dx_c = p_c (G_c - sum_k p_k G_k) with G_c = region_grad_p(p_c, t_c, g), 0 where
// the pixel is left out, plus ce_scale times the cross-entropy's dx_c = A p_c - B_c.
//
// The contiguous input is B samples of C planes of S pixels. Both ops take blocks of consecutive
// pixels of one sample: the block's C logit rows are read in place, or gathered into a scratch
// first where many of them would share one cache set (gather_class_rows in cpu_common.h); then
// one sweep across the classes a pixel vector at a time gives the maximum, the exponentials
// (kept in the scratch), 1 / their sum, the cross-entropy's terms (the label's logit and weight
// by a select a class, no gather) and in the backward sum_k p_k G_k, and one sweep along each
// class's row the sums, or the gradient, written with streaming stores. A label outside [0, C)
// that is not ignore_index raises torch's IndexError before the pass (checked_label_counts), as
// the Python API would; the pass itself (as the GPU kernels, which cannot raise) would count one
// that the Dice keeps in the fourth sum of (sample, class 0), which makes the loss NaN, as a
// uint8 target above 1 does for region_sums.
//
// Work items are runs of pixels of one sample, fixed by the shape; each writes its own partial
// sums, added in order: the same bits for any thread count (cpu_common.h).
#include <torch/library.h>

#include <limits>
#include <optional>

#include "cpu_common.h"
#include "class_sweep.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../cross_entropy_math.h"
#include "../region_loss_math.h"

namespace pylosses::cpu {
namespace {

using math::kRegionSums;
using math::RegionMode;

constexpr int64_t kItemElements = 1 << 13;  // logits in one work item, as cross_entropy.cpp's
constexpr int64_t kBlock = 256;             // pixels a block: its C rows stay in L1 or L2
constexpr int kCeSums = 3;                  // the cross-entropy's: sum of losses, D, pixels that count

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

// What every pixel shares: the class weights (ones without), the cross-entropy's options (its
// gradient's scaled by ce_scale), and the (C, 4) gradients of the sums in the backward.
template <typename acc_t>
struct Problem {
  std::vector<acc_t> weight;
  math::CeOptions<acc_t> ce{};
  const acc_t* grad_sums = nullptr;  // of the sample in hand: + b * C * 4
};

template <typename acc_t>
struct Scratch {
  std::vector<acc_t> x, exps;  // a block's logits and exponentials, a row a class
  std::vector<const acc_t*> x_rows;  // where its logits are read: x's rows, or the input's
  // a pixel's label (NaN where ignored), mask, 1 / sum, sum_k p_k G_k, the cross-entropy's A and w_t
  std::vector<acc_t> labels = std::vector<acc_t>(kBlock), mask = labels, inv_sum = labels, dot = labels,
                     prob_factor = labels, label_weight = labels, grad = labels;
  // the forward's accumulators: three a class, the bad labels, then the cross-entropy's three
  std::vector<Vec<acc_t>> sums;

  void resize(int64_t C) {
    if (int64_t(x.size()) != C * kBlock) {
      x_rows.resize(C);
      x.resize(C * kBlock);
      exps.resize(C * kBlock);
    }
  }
};

template <typename acc_t>
struct Sources {
  RowSource<acc_t> input;
  LabelRows<acc_t> labels;  // ignore_index read as NaN, which no class equals
  std::optional<RowSource<acc_t>> mask;
};

// v where keep (all bits or none) holds, else 0: a select, so that NaN or inf in a pixel left
// out (padding) stays out.
template <typename V>
C10_ALWAYS_INLINE V kept(const V& v, const V& keep) {
  return V::blendv(V(0), v, keep);
}

// Where the Dice takes the pixel: its label is not ignore_index (not NaN) and the mask keeps it.
template <bool kMasked, bool kTail, typename acc_t>
C10_ALWAYS_INLINE Vec<acc_t> dice_keeps(const Vec<acc_t>& label, const acc_t* m, int64_t i, int64_t lanes) {
  const Vec<acc_t> labelled = label == label;
  if constexpr (kMasked) {
    return labelled & (load<kTail>(m + i, lanes) != Vec<acc_t>(acc_t(0)));
  }
  return labelled;
}

// The block of n pixels from s0 of sample b into the scratch: its logits, labels and mask, the
// exponentials of the shifted logits (a row a class) and each pixel's 1 / sum. With kCe, the
// cross-entropy's loss, D and count added to ce[0..2] (forward), or its A and w_t stored
// (backward); with kDot (backward), sum_k p_k G_k stored. Labels out of range that the Dice keeps
// are added to `bad`. Returns the labels' and the mask's rows.
template <RegionMode kMode, bool kMasked, bool kCe, bool kDot, typename acc_t>
std::pair<const acc_t*, const acc_t*> softmax_block(const Geometry& geo, const Problem<acc_t>& pb,
                                                    const Sources<acc_t>& src, int64_t b, int64_t s0, int64_t n,
                                                    Scratch<acc_t>& sc, Vec<acc_t>* bad, Vec<acc_t>* ce) {
  using V = Vec<acc_t>;
  const int64_t C = geo.C, S = geo.S, base = b * C * S + s0;
  // the logits, a row a class: converted into the scratch, read in place, or copied into the
  // scratch first where many rows would share a cache set (gather_class_rows)
  class_rows(src.input, base, C, S, n, gather_class_rows(C, S * int64_t(sizeof(acc_t))), sc.x.data(), kBlock,
             sc.x_rows);
  const acc_t* t = src.labels(b * S + s0, sc.labels.data(), n);
  const acc_t* m = kMasked ? (*src.mask)(b * S + s0, sc.mask.data(), n) : nullptr;
  const V zero(acc_t(0)), one(acc_t(1)), classes = V(acc_t(C));
  for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V label = load<kTail>(t + i, lanes);
    const auto [sum, y_t, w_t, wy] =
        class_sweep<kCe, true, kTail>(sc.x_rows, i, lanes, label, pb.weight.data(), sc.exps.data(), kBlock);
    const V inv = math::preciprocal(sum);
    inv.store(sc.inv_sum.data() + i);
    const V in_range = (label >= zero) & (label < classes);  // (false for NaN: an ignored pixel)
    const V keep = dice_keeps<kMasked, kTail>(label, m, i, lanes);
    if (bad != nullptr) {
      accumulate<kTail>(*bad, V::blendv(zero, V::blendv(one, zero, in_range), keep), lanes);
    }
    if constexpr (kCe) {
      const V counts = V::blendv(zero, one, in_range);
      if constexpr (kDot) {
        math::ce_grad_prob_factor(pb.ce, w_t, counts).store(sc.prob_factor.data() + i);
        w_t.store(sc.label_weight.data() + i);
      } else {
        // a pixel that does not count adds 0, also where its logits are not finite (padding)
        const V wy_used = math::ce_smoothing_wy(pb.ce, wy);
        accumulate<kTail>(ce[0], kept(math::ce_loss(pb.ce, math::plog(sum), y_t, w_t, counts, wy_used), in_range),
                          lanes);
        accumulate<kTail>(ce[1], w_t, lanes);
        accumulate<kTail>(ce[2], counts, lanes);
      }
    }
    if constexpr (kDot) {
      V dot(acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const V p = load<kTail>(sc.exps.data() + c * kBlock + i, lanes) * inv;
        const V t_c = V::blendv(zero, one, label == V(acc_t(c)));
        dot = at::vec::fmadd(p, math::region_grad_p<kMode>(p, t_c, V(pb.grad_sums[c * kRegionSums]),
                                                             V(pb.grad_sums[c * kRegionSums + 1])), dot);
      }
      kept(dot, keep).store(sc.dot.data() + i);
    }
  });
  return {t, m};
}

// The sums of the pixels [s0, s0 + n) of sample b, added to the scratch's accumulators.
template <RegionMode kMode, bool kMasked, bool kCe, typename acc_t>
void sums_run(const Geometry& geo, const Problem<acc_t>& pb, const Sources<acc_t>& src, int64_t b, int64_t s0,
              int64_t n, Scratch<acc_t>& sc) {
  using V = Vec<acc_t>;
  const V zero(acc_t(0)), one(acc_t(1));
  V* bad = sc.sums.data() + 3 * geo.C;
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t len = std::min(kBlock, n - begin);
    const auto [t, m] = softmax_block<kMode, kMasked, kCe, false>(geo, pb, src, b, s0 + begin, len, sc, bad, bad + 1);
    for (int64_t c = 0; c < geo.C; ++c) {
      const acc_t* e = sc.exps.data() + c * kBlock;
      V* acc = sc.sums.data() + 3 * c;
      for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        const V label = load<kTail>(t + i, lanes);
        const V keep = dice_keeps<kMasked, kTail>(label, m, i, lanes);
        const V p = kept(load<kTail>(e + i, lanes) * load<kTail>(sc.inv_sum.data() + i, lanes), keep);
        const V t_c = kept(V::blendv(zero, one, label == V(acc_t(c))), keep);
        V s0v, s1v, s2v;
        math::region_terms<kMode>(p, t_c, s0v, s1v, s2v);
        accumulate<kTail>(acc[0], s0v, lanes);
        accumulate<kTail>(acc[1], s1v, lanes);
        accumulate<kTail>(acc[2], s2v, lanes);
      });
    }
  }
}

// The gradient of the pixels [s0, s0 + n) of sample b (pb.grad_sums: the sample's).
template <RegionMode kMode, bool kMasked, bool kCe, bool kStream, typename acc_t>
void grad_run(const Geometry& geo, const Problem<acc_t>& pb, const Sources<acc_t>& src, const RowSink<acc_t>& grad,
              int64_t b, int64_t s0, int64_t n, Scratch<acc_t>& sc) {
  using V = Vec<acc_t>;
  const V zero(acc_t(0)), one(acc_t(1)), classes = V(acc_t(geo.C));
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t len = std::min(kBlock, n - begin);
    const auto [t, m] = softmax_block<kMode, kMasked, kCe, true>(geo, pb, src, b, s0 + begin, len, sc,
                                                                  static_cast<V*>(nullptr), static_cast<V*>(nullptr));
    for (int64_t c = 0; c < geo.C; ++c) {
      const int64_t offset = (b * geo.C + c) * geo.S + s0 + begin;
      acc_t* row = grad.row(offset, sc.grad.data());
      const acc_t* e = sc.exps.data() + c * kBlock;
      const V g0(pb.grad_sums[c * kRegionSums]), g1(pb.grad_sums[c * kRegionSums + 1]), w_c(pb.weight[c]);
      for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        const V label = load<kTail>(t + i, lanes);
        const V p = load<kTail>(e + i, lanes) * load<kTail>(sc.inv_sum.data() + i, lanes);
        const V is_c = V::blendv(zero, one, label == V(acc_t(c)));
        V dx = kept(p * (math::region_grad_p<kMode>(p, is_c, g0, g1) - load<kTail>(sc.dot.data() + i, lanes)),
                    dice_keeps<kMasked, kTail>(label, m, i, lanes));
        if constexpr (kCe) {
          const V in_range = (label >= zero) & (label < classes);
          const V ce = math::ce_grad(pb.ce, p, load<kTail>(sc.prob_factor.data() + i, lanes), is_c,
                                     load<kTail>(sc.label_weight.data() + i, lanes), V::blendv(zero, one, in_range),
                                     w_c);
          dx = dx + kept(ce, in_range);  // 0 for a pixel that does not count, whatever its logits
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

// f(acc_tag, mode_tag, masked_tag, ce_tag) for the input's accumulation dtype, the mode, whether a
// mask is given and whether the cross-entropy is asked for.
template <typename F>
void dispatch_softmax_region(const at::Tensor& input, int64_t mode, bool masked, bool ce, const F& f) {
  const auto with_acc = [&](auto acc_tag) {
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_bool(masked, [&](auto masked_tag) {
        dispatch_bool(ce, [&](auto ce_tag) { f(acc_tag, mode_tag, masked_tag, ce_tag); });
      });
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
Sources<acc_t> sources(const at::Tensor& input, const at::Tensor& labels, const at::Tensor& mask,
                       int64_t ignore_index) {
  Sources<acc_t> src{RowSource<acc_t>(input),
                     LabelRows<acc_t>(labels, ignore_index, std::numeric_limits<acc_t>::quiet_NaN()), {}};
  if (mask.defined()) {
    src.mask.emplace(mask);
  }
  return src;
}

// The class weights and the cross-entropy's options, its gradient's scaled by `scale`.
template <typename acc_t>
Problem<acc_t> problem(const Geometry& geo, const c10::optional<at::Tensor>& weight, double label_smoothing,
                       double scale) {
  Problem<acc_t> pb;
  pb.weight.assign(geo.C, acc_t(1));
  if (weight.has_value() && weight->defined()) {
    const at::Tensor w = weight->to(at::kCPU, c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::copy_n(w.const_data_ptr<acc_t>(), geo.C, pb.weight.begin());
  }
  double weight_sum = 0;
  for (const acc_t w : pb.weight) {
    weight_sum += double(w);
  }
  const double smooth = geo.C > 0 ? label_smoothing / double(geo.C) : 0.0;
  pb.ce = {acc_t((1.0 - label_smoothing) * scale), acc_t(smooth * scale), acc_t(weight_sum)};
  return pb;
}

// sums (B, C, 4): each (sample, class)'s three region sums of (softmax(input), one-hot(labels)) over
// the pixels the mask keeps whose label is not ignore_index, then (at class 0) the count of labels
// out of range; ce (3): with_ce, the cross-entropy's sum of losses, D and count (else zeros).
std::tuple<at::Tensor, at::Tensor> softmax_region_sums_cpu(const at::Tensor& input_, const at::Tensor& labels_,
                                                           const c10::optional<at::Tensor>& mask_, int64_t mode,
                                                           const c10::optional<at::Tensor>& weight,
                                                           int64_t ignore_index, double label_smoothing,
                                                           bool with_ce) {
  check_softmax_region_call("softmax_region_sums", input_, labels_, mask_, mode, weight, label_smoothing);
  // On the CPU a label outside [0, C) that is not ignore_index raises torch's IndexError here,
  // wherever it lies (under the mask too), as the Python API's check would: that check is left
  // to this op (pylosses/functional.py), whose pass over the labels costs a fraction of its.
  checked_label_counts(labels_, input_.size(1), ignore_index);
  const at::Tensor input = input_.contiguous(), labels = labels_.contiguous(), mask = mask_of(mask_);
  const Geometry geo(input);
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sums = at::zeros({geo.B, geo.C, kRegionSums}, input.options().dtype(acc_dtype));
  at::Tensor ce = at::zeros({kCeSums}, input.options().dtype(acc_dtype));
  if (geo.n_items == 0) {
    return {sums, ce};
  }
  dispatch_softmax_region(input, mode, mask.defined(), with_ce, [&](auto acc_tag, auto mode_tag, auto masked_tag,
                                                                     auto ce_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kMasked = decltype(masked_tag)::value, kCe = decltype(ce_tag)::value;
    const Sources<acc_t> src = sources<acc_t>(input, labels, mask, ignore_index);
    const Problem<acc_t> pb = problem<acc_t>(geo, weight, label_smoothing, 1.0);
    const int64_t per_item = 3 * geo.C + 1 + kCeSums;
    std::vector<acc_t> partials(geo.n_items * per_item);
    for_each_chunk<Scratch<acc_t>>(geo.n_items, [&](int64_t item, Scratch<acc_t>& sc) {
      sc.resize(geo.C);
      sc.sums.assign(per_item, Vec<acc_t>(acc_t(0)));
      const int64_t b = item / geo.items_per_sample, s0 = (item % geo.items_per_sample) * geo.pixels_per_item;
      sums_run<kMode, kMasked, kCe>(geo, pb, src, b, s0, std::min(geo.pixels_per_item, geo.S - s0), sc);
      for (int64_t k = 0; k < per_item; ++k) {
        partials[item * per_item + k] = lane_sum(sc.sums[k]);
      }
    });
    acc_t* out = sums.mutable_data_ptr<acc_t>();
    acc_t* ce_out = ce.mutable_data_ptr<acc_t>();
    for (int64_t item = 0; item < geo.n_items; ++item) {  // each sample's items, and the samples, in order
      const int64_t b = item / geo.items_per_sample;
      const acc_t* part = partials.data() + item * per_item;
      for (int64_t c = 0; c < geo.C; ++c) {
        for (int64_t k = 0; k < 3; ++k) {
          out[(b * geo.C + c) * kRegionSums + k] += part[3 * c + k];
        }
      }
      out[b * geo.C * kRegionSums + 3] += part[3 * geo.C];
      for (int k = 0; k < kCeSums; ++k) {
        ce_out[k] += part[3 * geo.C + 1 + k];
      }
    }
  });
  return {sums, ce};
}

// d (sum over (b, c, k) of grad_sums[b, c, k] sums[b, c, k] + grad_ce[0] ce[0]) / d input, in the
// input's dtype (grad_ce: the gradient of ce, of which only the sum of losses has one).
at::Tensor softmax_region_sums_backward_cpu(const at::Tensor& grad_sums_, const at::Tensor& grad_ce,
                                            const at::Tensor& input_, const at::Tensor& labels_,
                                            const c10::optional<at::Tensor>& mask_, int64_t mode,
                                            const c10::optional<at::Tensor>& weight, int64_t ignore_index,
                                            double label_smoothing) {
  check_softmax_region_backward_call(grad_sums_, grad_ce, input_, labels_, mask_, mode, weight, label_smoothing);
  const at::Tensor input = input_.contiguous(), labels = labels_.contiguous(), mask = mask_of(mask_);
  const Geometry geo(input);
  at::Tensor grad = empty_gradient(input.sizes(), input.options());
  if (geo.n_items == 0) {
    return grad.zero_();
  }
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor g = grad_sums_.to(at::kCPU, acc_dtype).contiguous();
  const double ce_scale = grad_ce.to(at::kCPU, at::kDouble)[0].item<double>();  // (a CPU tensor: no sync)
  dispatch_softmax_region(input, mode, mask.defined(), ce_scale != 0.0, [&](auto acc_tag, auto mode_tag,
                                                                            auto masked_tag, auto ce_tag) {
    using acc_t = decltype(acc_tag);
    constexpr RegionMode kMode = decltype(mode_tag)::value;
    constexpr bool kMasked = decltype(masked_tag)::value, kCe = decltype(ce_tag)::value;
    const Sources<acc_t> src = sources<acc_t>(input, labels, mask, ignore_index);
    const Problem<acc_t> shared = problem<acc_t>(geo, weight, label_smoothing, ce_scale);
    const RowSink<acc_t> rows(grad);
    dispatch_bool(rows.direct(), [&](auto stream_tag) {
      constexpr bool kStream = decltype(stream_tag)::value;
      for_each_chunk<Scratch<acc_t>>(geo.n_items, [&](int64_t item, Scratch<acc_t>& sc) {
        sc.resize(geo.C);
        const int64_t b = item / geo.items_per_sample, s0 = (item % geo.items_per_sample) * geo.pixels_per_item;
        Problem<acc_t> pb = shared;
        pb.grad_sums = g.const_data_ptr<acc_t>() + b * geo.C * kRegionSums;
        grad_run<kMode, kMasked, kCe, kStream>(geo, pb, src, rows, b, s0, std::min(geo.pixels_per_item, geo.S - s0),
                                               sc);
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
