// Segmentation loss alpha * BCE + beta * TV on the CPU, in one pass over memory.
//
// The contiguous input is a sequence of volumes of D x H rows of length W (D = 1 in 2-D), one
// for each sample and channel; the TV stencil looks for neighbours inside a volume. A chunk is
// a band of rows [h0, h1) of one volume, through all its depth d; chunks are fixed by the shape,
// and each writes its own partial sums, so the loss has the same bits for any thread count
// (cpu_common.h).
//
// A chunk walks its band depth by depth. The probabilities of the band at d - 1, d and d + 1,
// with one row of halo above and below, are kept in a ring of three slabs of padded rows, so
// every element is read from memory and turned into a probability once (its halo rows twice),
// and its H and D neighbours come from cache. Probabilities that need no conversion (float32 or
// float64 input, not logits) skip the ring: the walk reads the input's rows themselves.
#include <torch/library.h>

#include "cpu_common.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../seg_loss_math.h"

namespace pylosses::cpu {
namespace {

constexpr int64_t kChunkElements = 1 << 16;  // about this many elements a chunk
constexpr int64_t kSlabElements = 1 << 12;   // at least this many contiguous elements a depth step
// elements whose terms the float32 lanes add before their sums go into the chunk's double
// totals: a 3-D chunk holds up to 8 D W elements (a million at D = 256, W = 512), whose float32
// lanes alone lost 1e-4 to 7e-4 of the loss at 2**25 elements (torch: 2e-6)
constexpr int64_t kLaneRunElements = 1 << 12;

struct SegGeometry {
  int64_t batch = 0, per_sample = 0;  // samples and elements in each
  int64_t W = 1, H = 1, D = 1;        // spatial extents, D = 1 in 2-D
  int64_t volumes_per_sample = 0;     // channels
  int64_t rows_per_chunk = 1, chunks_per_volume = 0;

  SegGeometry(const at::Tensor& input, int64_t spatial_dims) {
    const int64_t nd = input.dim();
    batch = input.size(0);
    per_sample = batch == 0 ? 0 : input.numel() / batch;
    W = input.size(nd - 1);
    H = input.size(nd - 2);
    D = spatial_dims == 3 ? input.size(nd - 3) : 1;
    if (input.numel() == 0) {
      return;
    }
    volumes_per_sample = per_sample / (D * H * W);
    // at least 8 rows, so that the two halo rows stay a small part of the work, and enough that
    // each depth step reads a long contiguous run (the prefetcher's and the TLB's sake)
    rows_per_chunk = std::min(H, std::max({int64_t(8), at::divup(kSlabElements, W), at::divup(kChunkElements, D * W)}));
    chunks_per_volume = at::divup(H, rows_per_chunk);
  }
  int64_t n_chunks() const { return batch * volumes_per_sample * chunks_per_volume; }
  int64_t sample_of(int64_t chunk) const { return chunk / chunks_per_volume / volumes_per_sample; }
};

// Sums of one chunk, or of a sample, or of everything.
template <typename T>
struct SegSums {
  T bce = 0, tv_w = 0, tv_h = 0, tv_d = 0;
};

template <typename acc_t>
struct SegScratch {
  std::vector<acc_t> ring, softplus_ring, x, t, grad, grad_t;
};

template <typename acc_t>
struct SegParams {
  acc_t alpha;          // alpha / N: the gradient's factor on d BCE / d x
  acc_t w_w, w_h, w_d;  // the gradient's factor on each axis's TV term (0 for an axis of length 1)
};

// Pointers to the probabilities of a row and of its neighbours on the H and D axes (the row
// itself where a neighbour is missing): ring rows, padded (p[-1] and p[W] repeat the row's
// ends), or the input's own rows (kDirect). softplus: the row's log(1 + exp(-|x|)), which the
// logits form's fill computed with p.
template <typename acc_t>
struct Neighbourhood {
  const acc_t *p, *up, *down, *front, *back, *softplus;
};

template <typename acc_t>
struct SegVecSums {
  Vec<acc_t> bce{acc_t(0)}, tv_w{acc_t(0)}, tv_h{acc_t(0)}, tv_d{acc_t(0)};
  // lanes whose probabilities, and targets where they are checked, were all inside [0, 1]
  Vec<acc_t> p_ok = math::all_set<acc_t>(), t_ok = math::all_set<acc_t>();
};

// Adds the lanes' loss sums into a chunk's double totals and clears them (kLaneRunElements).
template <typename acc_t>
void flush(SegVecSums<acc_t>& sums, SegSums<double>& total) {
  total.bce += lane_sum(sums.bce);
  total.tv_w += lane_sum(sums.tv_w);
  total.tv_h += lane_sum(sums.tv_h);
  total.tv_d += lane_sum(sums.tv_d);
  sums.bce = sums.tv_w = sums.tv_h = sums.tv_d = Vec<acc_t>(acc_t(0));
}

// Loss sums and input gradient of one row: the stencil and the BCE on acc_t rows. kCheckTarget:
// keep the targets' range, which must lie in [0, 1] (math::kTargetChecked says when).
// kHardLabels: the targets are masks (bool, uint8), so BCE takes its one-log form throughout;
// float targets take it a vector at a time, where all its labels are hard.
// kStream: grad is the gradient tensor itself (not a row to convert), whose full vectors go
// past the caches (store_stream): nothing reads them before the backward.
// kDirect: the rows are the input's own (probabilities already acc_t), not padded, and p's
// range is checked here, where the ring's fill checks it otherwise.
template <typename acc_t, bool kLogits, bool k3D, bool kGrad, bool kCheckTarget, bool kHardLabels, bool kStream,
          bool kDirect>
void seg_row(const acc_t* x, const Neighbourhood<acc_t>& nb, const acc_t* t, int64_t W,
             const SegParams<acc_t>& prm, SegVecSums<acc_t>& sums, acc_t* grad) {
  using V = Vec<acc_t>;
  // local accumulators: through the reference they would live in memory, since any float store
  // may alias a vector
  V bce = sums.bce, tv_w = sums.tv_w, tv_h = sums.tv_h, tv_d = sums.tv_d, t_ok = sums.t_ok, p_ok = sums.p_ok;
  for_each_vector<acc_t>(W, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V p = load<kTail>(nb.p + i, lanes);
    if constexpr (kDirect) {  // lanes past the row are 0: inside [0, 1]
      p_ok = p_ok & math::in_unit_interval(p);
    }
    // the row's first element is its own left neighbour (a difference of 0), its last its own
    // right one: the ring's padding holds them, an input row is masked at its ends
    const V left = !kDirect || i > 0 ? load<kTail>(nb.p + i - 1, lanes) : load_lanes_or(nb.p - 1, 1, lanes, p);
    const V up = load<kTail>(nb.up + i, lanes);
    const V tv = load<kTail>(t + i, lanes);
    const V xv = kLogits ? load<kTail>(x + i, lanes) : p;
    if constexpr (kCheckTarget) {  // lanes past the row are 0: inside [0, 1]
      t_ok = t_ok & math::in_unit_interval(tv);
    }
    constexpr auto kLabels = kHardLabels ? math::Labels::kHard : math::Labels::kTested;
    if constexpr (kLogits) {
      accumulate<kTail>(bce, math::bce_logits_loss(xv, tv, load<kTail>(nb.softplus + i, lanes)), lanes);
    } else {
      accumulate<kTail>(bce, math::bce_loss<V, kLabels>(p, tv), lanes);
    }
    accumulate<kTail>(tv_w, math::tv_loss(left, p), lanes);
    accumulate<kTail>(tv_h, math::tv_loss(up, p), lanes);
    V front;
    if constexpr (k3D) {
      front = load<kTail>(nb.front + i, lanes);
      accumulate<kTail>(tv_d, math::tv_loss(front, p), lanes);
    }
    if constexpr (kGrad) {
      const V right = !kDirect || (!kTail && i + lanes < W) ? load<kTail>(nb.p + i + 1, lanes)
                                                            : load_lanes_or(nb.p + i + 1, 0, lanes - 1, p);
      const V down = load<kTail>(nb.down + i, lanes);
      V tv_grad = V(prm.w_w) * math::tv_grad(left, p, right) + V(prm.w_h) * math::tv_grad(up, p, down);
      if constexpr (k3D) {
        tv_grad = tv_grad + V(prm.w_d) * math::tv_grad(front, p, load<kTail>(nb.back + i, lanes));
      }
      const V g = V(prm.alpha) * math::bce_grad_input<V, kLogits>(p, tv) + math::prob_grad<V, kLogits>(p) * tv_grad;
      if constexpr (kStream && !kTail) {
        store_stream(g, grad + i);
      } else {
        store<kTail>(g, grad + i, lanes);
      }
    }
  });
  sums.bce = bce;
  sums.tv_w = tv_w;
  sums.tv_h = tv_h;
  sums.tv_d = tv_d;
  sums.t_ok = t_ok;
  sums.p_ok = p_ok;
}

// alpha * d BCE / d target of one row.
template <typename acc_t, bool kLogits>
void seg_row_grad_target(const acc_t* x, const acc_t* p, int64_t W, acc_t alpha, acc_t* grad_t) {
  using V = Vec<acc_t>;
  for_each_vector<acc_t>(W, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V pv = load<kTail>(p + i, lanes);
    const V xv = kLogits ? load<kTail>(x + i, lanes) : pv;
    store<kTail>(V(alpha) * math::bce_grad_target<V, kLogits>(xv, pv), grad_t + i, lanes);
  });
}

// The probabilities of one input row into a padded ring row, and for logits the softplus
// terms of their BCE, which come with the sigmoid from one exponential.
template <typename acc_t, bool kLogits, typename input_t>
void fill_prob_row(const input_t* src, acc_t* row, acc_t* softplus, int64_t W, SegVecSums<acc_t>& sums) {
  using V = Vec<acc_t>;
  acc_t* p = row + 1;
  const acc_t* x = load_row(src, p, W);  // converted in place, or read straight from the input
  V ok = sums.p_ok;                       // in registers (see seg_row)
  for_each_vector<acc_t>(W, [&](auto tail, int64_t i, int64_t lanes) {
    constexpr bool kTail = decltype(tail)::value;
    const V v = load<kTail>(x + i, lanes);  // lanes past the row are 0: inside [0, 1]
    if constexpr (kLogits) {
      V sp;
      store<kTail>(math::sigmoid_softplus(v, sp), p + i, lanes);
      store<kTail>(sp, softplus + i, lanes);
    } else {
      ok = ok & math::in_unit_interval(v);  // NaN fails the check
      if (x != p) {
        store<kTail>(v, p + i, lanes);
      }
    }
  });
  sums.p_ok = ok;
  row[0] = p[0];
  row[W + 1] = p[W - 1];
}

template <typename input_t, typename target_t, bool kLogits, bool k3D, bool kGrad>
void seg_kernel(const SegGeometry& geo, const input_t* input, const target_t* target,
                const SegParams<acc_type_t<input_t, target_t>>& prm, saved_grad_t<input_t>* grad_in,
                saved_grad_t<target_t>* grad_t, std::vector<SegSums<double>>& partials,
                std::vector<char>& out_of_range, std::vector<char>& target_out_of_range) {
  using acc_t = acc_type_t<input_t, target_t>;
  constexpr bool kCheckTarget = math::kTargetChecked<kLogits, is_float_v<target_t>, std::is_same_v<target_t, bool>>;
  const int64_t W = geo.W, H = geo.H, D = geo.D;
  const int64_t padded = W + 2, slab_rows = geo.rows_per_chunk + 2;
  // probabilities that are acc_t already (float32 or float64) are read where they are, with
  // their range checked in seg_row: a ring of them would be a copy (a store and a load an
  // element, a quarter of the forward's time in float32)
  constexpr bool kDirect = !kLogits && std::is_same_v<input_t, acc_t>;
  for_each_chunk<SegScratch<acc_t>>(geo.n_chunks(), [&](int64_t chunk, SegScratch<acc_t>& s) {
    if (s.x.empty()) {
      s.ring.resize(kDirect ? 0 : 3 * slab_rows * padded);
      s.softplus_ring.resize(kLogits ? s.ring.size() : 0);
      s.x.resize(W);
      s.t.resize(W);
      s.grad.resize(W);
      s.grad_t.resize(grad_t ? W : 0);
    }
    SegVecSums<acc_t> sums;
    SegSums<double> total;
    int64_t run = 0;  // elements in the lanes' sums since the last flush
    const int64_t volume = chunk / geo.chunks_per_volume;
    const int64_t h0 = (chunk % geo.chunks_per_volume) * geo.rows_per_chunk;
    const int64_t h1 = std::min(h0 + geo.rows_per_chunk, H);
    const int64_t lo = std::max<int64_t>(h0 - 1, 0), hi = std::min(h1 + 1, H);  // rows held, with halo
    const auto row_offset = [&](int64_t d, int64_t h) { return ((volume * D + d) * H + h) * W; };
    const auto ring_index = [&](int64_t d, int64_t h) { return ((d % 3) * slab_rows + (h - lo)) * padded; };
    const auto ring_row = [&](int64_t d, int64_t h) { return s.ring.data() + ring_index(d, h); };
    // the probabilities of row h at depth d
    const auto prob_row = [&](int64_t d, int64_t h) -> const acc_t* {
      if constexpr (kDirect) {
        return input + row_offset(d, h);
      } else {
        return ring_row(d, h) + 1;
      }
    };
    const auto softplus_row = [&](int64_t d, int64_t h) {
      return kLogits ? s.softplus_ring.data() + ring_index(d, h) : nullptr;
    };
    const auto fill_slab = [&](int64_t d) {
      for (int64_t h = lo; h < hi && !kDirect; ++h) {
        fill_prob_row<acc_t, kLogits>(input + row_offset(d, h), ring_row(d, h), softplus_row(d, h), W, sums);
      }
    };
    fill_slab(0);
    for (int64_t d = 0; d < D; ++d) {
      if (d + 1 < D) {
        fill_slab(d + 1);
      }
      for (int64_t h = h0; h < h1; ++h) {
        const acc_t* p = prob_row(d, h);
        Neighbourhood<acc_t> nb{p, p, p, p, p, softplus_row(d, h)};
        if (h > 0) nb.up = prob_row(d, h - 1);
        if (h < H - 1) nb.down = prob_row(d, h + 1);
        if (d > 0) nb.front = prob_row(d - 1, h);
        if (d < D - 1) nb.back = prob_row(d + 1, h);

        const int64_t offset = row_offset(d, h);
        const acc_t* x = kLogits ? load_row(input + offset, s.x.data(), W) : p;
        const acc_t* t = load_row(target + offset, s.t.data(), W);
        acc_t* g = kGrad ? out_row(grad_in + offset, s.grad.data()) : nullptr;
        constexpr bool kStream = std::is_same_v<saved_grad_t<input_t>, acc_t>;
        seg_row<acc_t, kLogits, k3D, kGrad, kCheckTarget, !is_float_v<target_t>, kStream, kDirect>(
            x, nb, t, W, prm, sums, g);
        if ((run += W) >= kLaneRunElements) {
          flush(sums, total);
          run = 0;
        }
        if (kGrad) {
          store_row(g, grad_in + offset, W);
        }
        if (grad_t) {
          acc_t* gt = out_row(grad_t + offset, s.grad_t.data());
          seg_row_grad_target<acc_t, kLogits>(x, p, W, prm.alpha, gt);
          store_row(gt, grad_t + offset, W);
        }
      }
    }
    if (kGrad) {
      stream_fence();
    }
    flush(sums, total);
    partials[chunk] = total;
    out_of_range[chunk] = !kLogits && !math::all_lanes(sums.p_ok);
    target_out_of_range[chunk] = kCheckTarget && !math::all_lanes(sums.t_ok);
  });
}

double seg_reduce(const SegSums<double>& s, double n, const double extent[3], double alpha, double beta, bool mean) {
  const double tv[3] = {s.tv_w, s.tv_h, s.tv_d};
  return math::seg_reduce(s.bce, tv, n, extent, alpha, beta, mean);
}

// Returns (loss, grad_input, grad_target). The gradients are d loss / d input and d loss /
// d target for grad_output = 1 (for "none": a 1 for every sample); an empty tensor where not
// asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor> seg_loss_fwd_cpu(const at::Tensor& input_, const at::Tensor& target_,
                                                                double alpha, double beta, int64_t spatial_dims,
                                                                bool from_logits, int64_t reduction,
                                                                bool compute_grad_input, bool compute_grad_target) {
  check_seg_args(input_, target_, spatial_dims, reduction, compute_grad_target);
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const SegGeometry geo(input, spatial_dims);
  const bool mean_like = reduction != at::Reduction::Sum;
  const double extent[3] = {double(geo.W), double(geo.H), double(geo.D)};
  const double n_mean = reduction == at::Reduction::Mean ? double(input.numel()) : double(geo.per_sample);
  const math::SegGradWeights weights(alpha, beta, mean_like, n_mean, extent);

  const auto saved_options = [](const at::Tensor& t) { return t.options().dtype(saved_grad_dtype(t.scalar_type())); };
  at::Tensor grad_in = empty_gradient(compute_grad_input ? input.sizes() : at::IntArrayRef{0}, saved_options(input));
  at::Tensor grad_t = empty_gradient(compute_grad_target ? target.sizes() : at::IntArrayRef{0}, saved_options(target));

  std::vector<SegSums<double>> per_sample(geo.batch);
  bool out_of_range = false, target_out_of_range = false;
  dispatch_input_target<true>(input.scalar_type(), target.scalar_type(), [&](auto in_tag, auto t_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    const SegParams<acc_t> prm{acc_t(weights.bce), acc_t(weights.axis[0]), acc_t(weights.axis[1]),
                               acc_t(weights.axis[2])};
    std::vector<SegSums<double>> partials(geo.n_chunks());
    std::vector<char> bad(geo.n_chunks(), 0), bad_target(geo.n_chunks(), 0);
    auto* gi = compute_grad_input ? grad_in.mutable_data_ptr<saved_grad_t<input_t>>() : nullptr;
    saved_grad_t<target_t>* gt = nullptr;
    if constexpr (is_float_v<target_t>) {
      gt = compute_grad_target ? grad_t.mutable_data_ptr<saved_grad_t<target_t>>() : nullptr;
    }
    const auto run = [&](auto logits, auto three_d, auto with_grad) {
      seg_kernel<input_t, target_t, decltype(logits)::value, decltype(three_d)::value, decltype(with_grad)::value>(
          geo, input.const_data_ptr<input_t>(), target.const_data_ptr<target_t>(), prm, gi, gt, partials, bad,
          bad_target);
    };
    dispatch_bool(from_logits, [&](auto logits) {
      dispatch_bool(spatial_dims == 3, [&](auto three_d) {
        dispatch_bool(compute_grad_input, [&](auto with_grad) { run(logits, three_d, with_grad); });
      });
    });

    for (int64_t c = 0; c < geo.n_chunks(); ++c) {  // fixed order
      SegSums<double>& sum = per_sample[geo.sample_of(c)];
      sum.bce += partials[c].bce;
      sum.tv_w += partials[c].tv_w;
      sum.tv_h += partials[c].tv_h;
      sum.tv_d += partials[c].tv_d;
      out_of_range |= bad[c] != 0;
      target_out_of_range |= bad_target[c] != 0;
    }
  });
  // torch's own messages for nn.BCELoss on the CPU; masks have their own
  TORCH_CHECK(!out_of_range, "all elements of input should be between 0 and 1");
  TORCH_CHECK(!target_out_of_range, at::isFloatingType(target.scalar_type()) ? math::kTargetRangeMessage
                                                                             : kMaskMessage);

  const auto result_dtype = at::promote_types(input.scalar_type(), target.scalar_type());
  const auto result_options = input.options().dtype(result_dtype);
  if (reduction == at::Reduction::None) {
    std::vector<double> values(geo.batch);
    for (int64_t b = 0; b < geo.batch; ++b) {
      values[b] = seg_reduce(per_sample[b], double(geo.per_sample), extent, alpha, beta, true);
    }
    at::Tensor loss = at::tensor(values, input.options().dtype(at::kDouble));
    return {loss.to(result_dtype), grad_in, grad_t};
  }
  SegSums<double> total;
  for (const auto& s : per_sample) {
    total.bce += s.bce;
    total.tv_w += s.tv_w;
    total.tv_h += s.tv_h;
    total.tv_d += s.tv_d;
  }
  const double value = seg_reduce(total, double(input.numel()), extent, alpha, beta, reduction == at::Reduction::Mean);
  return {at::scalar_tensor(value, result_options), grad_in, grad_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) { m.impl("seg_loss_fwd", &seg_loss_fwd_cpu); }

}  // namespace pylosses::cpu
