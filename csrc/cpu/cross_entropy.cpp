// The multi-class cross-entropy (op cross_entropy_fwd) on the CPU: torch's cross_entropy over
// logits (B, C, spatial...) and class-index maps, the loss and its gradient in one pass over the
// logits, with no one-hot, softmax or log-softmax tensor.
//
// The contiguous input is B samples of C planes of S pixels; a pixel's C logits lie S apart. A
// block of consecutive pixels of one sample is the unit of work (ce_block): a vector of its
// pixels' C logit vectors (one a class, each a contiguous load) give the maximum, then the
// exponentials, their sum, the label's logit and weight by a compare and a select a class (no
// gather); then each class's row of gradients, from the exponentials kept in a scratch (L1 or
// L2). So each logit is read from memory once, and the gradient written once, as streaming
// stores.
//
// "mean" divides the gradient by D = sum of the weights of the labels that count, which a
// pre-pass over the targets gives (a histogram of the classes): it also checks them (an index
// outside [0, C) raises torch's IndexError), and it costs a read of the targets, a byte to 8 a
// pixel, where scaling the gradient afterwards would read and write all of it again. So the
// gradient this op returns is the gradient, and grad_scale is 1 (pylosses/_ops.py). The loss
// alone needs no pre-pass: its main pass adds up D and checks the labels as it goes.
//
// Work items are fixed by the shape (runs of pixels of one sample, or several whole samples
// where S is short), each writes its own partial sum, and those are added in order: the same
// bits for any thread count (cpu_common.h).
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu_common.h"
#include "class_sweep.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../cross_entropy_math.h"

namespace pylosses::cpu {
namespace {

// Logits in one work item: (pixels) x C of them. As the region losses' chunks, from 2^13 on the
// bookkeeping is lost in the work.
constexpr int64_t kItemElements = 1 << 13;
// Pixels a block takes: its C rows of exponentials (C KiB) stay in L1 or L2 between its sweeps.
constexpr int64_t kBlock = 256;

template <typename acc_t>
struct CeProblem {
  int64_t B = 0, C = 0, S = 0;
  std::vector<acc_t> weight;  // C of them (ones without weights)
  math::CeOptions<acc_t> loss_options{}, grad_options{};  // the gradient's scaled by 1 / D for "mean"
  bool none = false;
  // work items: pixels [s0, s0 + pixels_per_item) of one sample, or samples_per_item whole samples
  int64_t pixels_per_item = 0, items_per_sample = 1, samples_per_item = 1, n_items = 0;
  // whether a block copies its logits into the scratch before it reads them (gather_class_rows)
  bool gather_rows = true;
};

// A work item's sums: the losses, and without the gradient (no pre-pass) what the pre-pass
// would have found: the sum of the counted pixels' weights (the mean's denominator) and the
// lanes that met a label outside [0, C) that is not ignore_index.
template <typename acc_t>
struct CeSums {
  Vec<acc_t> loss{acc_t(0)}, weight{acc_t(0)};
  Vec<acc_t> bad{acc_t(0)};  // a mask
};

template <typename acc_t>
struct CeScratch {
  // a block's labels, losses, logits (converted), and for the gradient its exponentials (a row
  // a class) and each pixel's 1 / S, A and w_t
  std::vector<acc_t> labels = std::vector<acc_t>(kBlock), loss = labels, inv_sum = labels, prob_factor = labels,
                     label_weight = labels;
  std::vector<acc_t> x, exps, grad;
  std::vector<const acc_t*> x_rows;
};

// The pixels [s0, s0 + n) of sample b, n <= kBlock: their losses (written, for "none", else added
// to sums.loss) and, with kGrad, the gradients of their logits; without, sums.weight and
// sums.bad (CeSums). Two sweeps: the first goes across the classes a pixel vector at a time
// (the maximum, the exponentials, their sum, the label's logit and weight by a compare and a
// select a class: no gather), the second along each class's row, writing its gradient as one
// run of streaming stores. Written a vector of each class at a time instead, C interleaved
// streams of half-lines outrun the write-combining buffers (14 classes ran at a tenth of the
// copy's bandwidth).
template <bool kGrad, typename acc_t>
void ce_block(const CeProblem<acc_t>& pb, const RowSource<acc_t>& input, const LabelRows<acc_t>& labels,
              const RowSink<acc_t>& grad, const RowSink<acc_t>& loss_out, int64_t b, int64_t s0, int64_t n,
              CeScratch<acc_t>& sc, CeSums<acc_t>& sums) {
  using V = Vec<acc_t>;
  const int64_t C = pb.C, S = pb.S;
  const int64_t base = b * C * S + s0;
  // The block's logits, a row a class: converted into the scratch, or read where they are, or
  // where pb.gather_rows says so copied into it (see there).
  class_rows(input, base, C, S, n, pb.gather_rows, sc.x.data(), kBlock, sc.x_rows);
  const acc_t* t = labels(b * S + s0, sc.labels.data(), n);
  acc_t* loss_row = pb.none ? loss_out.row(b * S + s0, sc.loss.data()) : nullptr;
  const V zero(acc_t(0)), one(acc_t(1));

  for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V label = load<kTail>(t + i, lanes);
    const auto [sum, y_t, w_t, wy] =
        class_sweep<true, kGrad, kTail>(sc.x_rows, i, lanes, label, pb.weight.data(), sc.exps.data(), kBlock);
    const V counted = label >= zero;  // a mask: all bits set where the pixel counts
    const V counts = V::blendv(zero, one, counted);
    // an ignored pixel's loss is 0 also where its logits are not finite (padding), as torch's
    const V wy_used = math::ce_smoothing_wy(pb.loss_options, wy);
    const V loss = V::blendv(zero, math::ce_loss(pb.loss_options, math::plog(sum), y_t, w_t, counts, wy_used), counted);
    if (pb.none) {
      store<kTail>(loss, loss_row + i, lanes);
    } else {
      accumulate<kTail>(sums.loss, loss, lanes);
    }
    if constexpr (!kGrad) {  // ignored labels are NaN (ce_forward): in no range, not counted
      accumulate<kTail>(sums.weight, w_t, lanes);
      sums.bad = sums.bad | (label < zero) | (label >= V(acc_t(C)));
    }
    if constexpr (kGrad) {
      math::preciprocal(sum).store(sc.inv_sum.data() + i);
      math::ce_grad_prob_factor(pb.grad_options, w_t, counts).store(sc.prob_factor.data() + i);
      w_t.store(sc.label_weight.data() + i);
    }
  });
  if (pb.none) {
    loss_out.finish(loss_row, b * S + s0, n);
  }
  if constexpr (kGrad) {
    const bool stream = grad.direct();
    for (int64_t c = 0; c < C; ++c) {
      acc_t* row = grad.row(base + c * S, sc.grad.data());
      const acc_t* e = sc.exps.data() + c * kBlock;
      const V w_c(pb.weight[c]), class_c = V(acc_t(c));
      for_each_vector<acc_t>(n, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        const V label = load<kTail>(t + i, lanes);
        const V counted = label >= zero;
        const V counts = V::blendv(zero, one, counted);
        const V p = load<kTail>(e + i, lanes) * load<kTail>(sc.inv_sum.data() + i, lanes);
        V g = math::ce_grad(pb.grad_options, p, load<kTail>(sc.prob_factor.data() + i, lanes),
                            V::blendv(zero, one, label == class_c), load<kTail>(sc.label_weight.data() + i, lanes),
                            counts, w_c);
        // an ignored pixel's gradient is 0 whatever the scale: also where D = 0 makes it inf
        g = V::blendv(zero, g, counted);
        if (!kTail && stream) {
          store_stream(g, row + i);
        } else {
          store<kTail>(g, row + i, lanes);
        }
      });
      grad.finish(row, base + c * S, n);
    }
    if (stream) {
      stream_fence();
    }
  }
}

template <bool kGrad, typename acc_t>
void ce_run(const CeProblem<acc_t>& pb, const RowSource<acc_t>& input, const LabelRows<acc_t>& labels,
            const RowSink<acc_t>& grad, const RowSink<acc_t>& loss_out, int64_t b, int64_t s0, int64_t n,
            CeScratch<acc_t>& sc, CeSums<acc_t>& sums) {
  if (int64_t(sc.x_rows.size()) != pb.C) {
    sc.x_rows.resize(pb.C);
    sc.x.resize(pb.C * kBlock);
    if (kGrad) {
      sc.exps.resize(pb.C * kBlock);
      sc.grad.resize(kBlock);
    }
  }
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    ce_block<kGrad>(pb, input, labels, grad, loss_out, b, s0 + begin, std::min(kBlock, n - begin), sc, sums);
  }
}

// The main pass's totals, added over the work items in their order.
struct CeTotals {
  double loss = 0, weight = 0;  // weight: without the gradient only (CeSums)
  bool bad = false;
};

template <typename acc_t>
CeTotals ce_forward(const CeProblem<acc_t>& pb, const at::Tensor& input, const at::Tensor& target,
                    int64_t ignore_index, at::Tensor& grad, at::Tensor& loss_none, bool compute_grad) {
  const RowSource<acc_t> x(input);
  // ignore_index read as NaN: no class equals it, it is not >= 0 (counted) and it is in no range
  const LabelRows<acc_t> labels(target, ignore_index, std::numeric_limits<acc_t>::quiet_NaN());
  const RowSink<acc_t> grad_rows = compute_grad ? RowSink<acc_t>(grad) : RowSink<acc_t>();
  const RowSink<acc_t> loss_rows = pb.none ? RowSink<acc_t>(loss_none) : RowSink<acc_t>();
  std::vector<acc_t> losses(pb.n_items, acc_t(0)), weights(pb.n_items, acc_t(0));
  std::vector<char> bad(pb.n_items, 0);
  dispatch_bool(compute_grad, [&](auto grad_tag) {
    constexpr bool kGrad = decltype(grad_tag)::value;
    for_each_chunk<CeScratch<acc_t>>(pb.n_items, [&](int64_t item, CeScratch<acc_t>& sc) {
      CeSums<acc_t> sums;
      if (pb.samples_per_item > 1 || pb.items_per_sample == 1) {
        const int64_t first = item * pb.samples_per_item, last = std::min(pb.B, first + pb.samples_per_item);
        for (int64_t b = first; b < last; ++b) {
          ce_run<kGrad>(pb, x, labels, grad_rows, loss_rows, b, 0, pb.S, sc, sums);
        }
      } else {
        const int64_t b = item / pb.items_per_sample, s0 = (item % pb.items_per_sample) * pb.pixels_per_item;
        ce_run<kGrad>(pb, x, labels, grad_rows, loss_rows, b, s0, std::min(pb.pixels_per_item, pb.S - s0), sc,
                      sums);
      }
      losses[item] = lane_sum(sums.loss);
      weights[item] = lane_sum(sums.weight);
      bad[item] = !math::all_lanes(sums.bad == Vec<acc_t>(acc_t(0)));
    });
  });
  CeTotals totals;
  for (int64_t item = 0; item < pb.n_items; ++item) {  // fixed order
    totals.loss += double(losses[item]);
    totals.weight += double(weights[item]);
    totals.bad |= bad[item] != 0;
  }
  return totals;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fwd_cpu(const at::Tensor& input_,
                                                                     const at::Tensor& target_,
                                                                     const c10::optional<at::Tensor>& weight,
                                                                     int64_t ignore_index, double label_smoothing,
                                                                     int64_t reduction, bool compute_grad) {
  check_ce_args(input_, target_, weight, label_smoothing, reduction);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const bool none = reduction == at::Reduction::None, mean = reduction == at::Reduction::Mean;
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t B = input.size(0), C = input.size(1);

  // The pre-pass: the labels checked, and counted for the mean's denominator. The gradient needs
  // it before the main pass (1 / D scales every gradient); the loss alone does not: there the
  // main pass checks and counts (CeSums), and the targets are read once. With no class there is
  // no main pass.
  const bool pre_pass = compute_grad || C == 0;
  LabelCounts counts;
  const auto check_labels = [&] { counts = checked_label_counts(target, C, ignore_index); };
  if (pre_pass) {
    check_labels();
  }

  at::Tensor grad = empty_gradient(compute_grad ? input.sizes() : at::IntArrayRef{0},
                              input.options().dtype(saved_grad_dtype(input.scalar_type())));
  at::Tensor loss = at::empty(none ? target.sizes() : at::IntArrayRef{}, input.options());
  at::Tensor grad_scale = at::ones({}, input.options().dtype(acc_dtype));

  const auto with_acc = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    CeProblem<acc_t> pb;
    pb.B = B;
    pb.C = C;
    pb.S = B * C == 0 ? 0 : input.numel() / (B * C);
    pb.none = none;
    pb.gather_rows = gather_class_rows(C, pb.S * int64_t(sizeof(acc_t)));
    pb.weight.assign(C, acc_t(1));
    if (weight.has_value() && weight->defined()) {
      const at::Tensor w = weight->to(at::kCPU, acc_dtype).contiguous();
      std::copy_n(w.const_data_ptr<acc_t>(), C, pb.weight.begin());
    }
    double weight_sum = 0, denominator = 0;
    int64_t counted = 0;
    for (int64_t c = 0; c < C; ++c) {
      weight_sum += double(pb.weight[c]);
      if (pre_pass) {
        denominator += double(pb.weight[c]) * double(counts.per_class[c]);
        counted += counts.per_class[c];
      }
    }
    const double smooth = C > 0 ? label_smoothing / double(C) : 0.0;
    pb.loss_options = {acc_t(1.0 - label_smoothing), acc_t(smooth), acc_t(weight_sum)};
    // the gradient of the mean: every pixel's over D (0 when no pixel counts: torch's zeros)
    const double scale = !mean ? 1.0 : counted == 0 ? 0.0 : 1.0 / denominator;
    pb.grad_options = {acc_t((1.0 - label_smoothing) * scale), acc_t(smooth * scale), acc_t(weight_sum)};
    if (pb.S > 0 && C > 0) {
      // a multiple of 16 pixels (64 bytes of float32): the items' rows start where their sample's do
      const int64_t per_item = std::max<int64_t>(16, kItemElements / C / 16 * 16);
      if (pb.S >= per_item) {
        pb.pixels_per_item = per_item;
        pb.items_per_sample = at::divup(pb.S, per_item);
        pb.n_items = B * pb.items_per_sample;
      } else {
        pb.samples_per_item = std::max<int64_t>(1, per_item / pb.S);
        pb.n_items = at::divup(B, pb.samples_per_item);
      }
    }
    CeTotals totals;
    if (pb.n_items > 0) {
      totals = ce_forward(pb, input, target, ignore_index, grad, loss, compute_grad);
    } else if (none) {
      loss.zero_();  // no classes: every pixel is ignored (the pre-pass raised for any other)
    }
    if (!pre_pass) {
      if (totals.bad) {
        check_labels();  // raises torch's error for the first label out of range in the map
        TORCH_INTERNAL_ASSERT(false, "pylosses: cross_entropy's main pass found a label out of range, its pre-pass none");
      }
      denominator = totals.weight;
    }
    if (!none) {
      const double value = !mean ? totals.loss : denominator == 0 ? std::numeric_limits<double>::quiet_NaN()
                                                                  : totals.loss / denominator;
      loss.fill_(value);
    }
  };
  if (acc_dtype == at::kDouble) {
    with_acc(double{});
  } else {
    with_acc(float{});
  }
  return {loss, grad, grad_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) { m.impl("cross_entropy_fwd", &cross_entropy_fwd_cpu); }

}  // namespace pylosses::cpu
