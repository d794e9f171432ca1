// beta * the total variation of softmax(input) over the classes, on the CPU (op softmax_tv_fwd):
// the lambda_tv term of DiceCELoss with no softmax tensor in memory, its gradient written in the
// forward.
//
// The contiguous input is B samples of C planes of S = O x L pixels: O slices along the outer
// spatial axis (H in 2-D, D in 3-D), each a slice of L = Hi x W pixels (Hi = 1 in 2-D, H in
// 3-D). A work item is a band of slices [o0, o1) of one sample; it walks them keeping the
// softmax probabilities of slices o - 1, o and o + 1 (all C classes, rows padded by one element
// on each side) in a ring of three, so each pixel's softmax is computed once (the band's two
// halo slices twice) and every neighbour comes from cache. With p_c a pixel's probability of
// class c and G_c = sum over axes of w_a * tv_grad(prev, p_c, next) (seg_loss_math.h, a missing
// neighbour standing in by the pixel itself), the gradient is dx_c = p_c (G_c - sum_k G_k p_k).
// The loss counts each pair once, at its later element (|p - prev|).
//
// Items are fixed by the shape and each writes its own partial sums, added in order: the same
// bits for any thread count (cpu_common.h).
#include <torch/library.h>

#include "cpu_common.h"
#include "../op_checks.h"
// after cpu_common.h (see there)
#include "../seg_loss_math.h"

namespace pylosses::cpu {
namespace {

constexpr int64_t kItemElements = 1 << 16;  // about this many logits a work item
constexpr int64_t kMinSlices = 4;           // at least this many slices an item: the halo's recomputation stays small

struct Geometry {
  int64_t B = 0, C = 0, O = 1, Hi = 1, W = 1, L = 1, S = 0;
  int64_t RW = 3;  // a padded row: W + 2
  int64_t slices_per_item = 1, items_per_sample = 0, n_items = 0;

  Geometry(const at::Tensor& input, int64_t spatial_dims) : B(input.size(0)), C(input.size(1)) {
    const int64_t nd = input.dim();
    W = input.size(nd - 1);
    Hi = spatial_dims == 3 ? input.size(nd - 2) : 1;
    O = input.size(nd - spatial_dims);
    L = Hi * W;
    S = O * L;
    RW = W + 2;
    if (B * C * S == 0) {
      return;
    }
    slices_per_item = std::min(O, std::max(kMinSlices, at::divup(kItemElements, C * L)));
    items_per_sample = at::divup(O, slices_per_item);
    n_items = B * items_per_sample;
  }
  int64_t slice_size() const { return C * Hi * RW; }  // a ring slice's values
};

template <typename acc_t>
struct Scratch {
  std::vector<acc_t> ring[3], g, dot, row;
};

template <typename acc_t>
struct Weights {
  acc_t w, h, o;  // the gradient's factors along W, the slice's inner H (3-D) and the outer axis
};

// Sums of |differences| of one item: along W, the inner H, the outer axis.
template <typename acc_t>
struct TvSums {
  acc_t w = 0, h = 0, o = 0;
};

// softmax over the classes of slice o of sample b into the ring slice p (padded rows).
template <typename acc_t>
void fill_slice(const Geometry& g, const RowSource<acc_t>& input, int64_t b, int64_t o, acc_t* p, acc_t* row_buf) {
  using V = Vec<acc_t>;
  const int64_t plane = g.Hi * g.RW;
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t h = 0; h < g.Hi; ++h) {
      acc_t* dst = p + c * plane + h * g.RW + 1;
      const acc_t* src = input(((b * g.C + c) * g.S) + o * g.L + h * g.W, row_buf, g.W);
      std::copy(src, src + g.W, dst);
    }
  }
  for (int64_t h = 0; h < g.Hi; ++h) {
    acc_t* base = p + h * g.RW + 1;  // class c's row: base + c * plane
    for_each_vector<acc_t>(g.W, [&](auto tail, int64_t i, int64_t lanes) {
      constexpr bool kTail = decltype(tail)::value;
      V m = load<kTail>(base + i, lanes);
      for (int64_t c = 1; c < g.C; ++c) {
        m = at::vec::maximum(m, load<kTail>(base + c * plane + i, lanes));
      }
      V sum(acc_t(0));
      for (int64_t c = 0; c < g.C; ++c) {
        const V e = math::pexp(load<kTail>(base + c * plane + i, lanes) - m);
        store<kTail>(e, base + c * plane + i, lanes);
        sum = sum + e;
      }
      // a division, not preciprocal: the probabilities keep the accuracy of torch's softmax
      const V inv = V(acc_t(1)) / (kTail ? V::set(V(acc_t(1)), sum, lanes) : sum);
      for (int64_t c = 0; c < g.C; ++c) {
        store<kTail>(load<kTail>(base + c * plane + i, lanes) * inv, base + c * plane + i, lanes);
      }
    });
    for (int64_t c = 0; c < g.C; ++c) {  // the padding repeats the row's ends: their differences are 0
      acc_t* r = base + c * plane;
      r[-1] = r[0];
      r[g.W] = r[g.W - 1];
    }
  }
}

// The loss sums of slice o (probabilities p, its outer neighbours prev and next: p itself at an
// end) and, kGrad, its gradient into the sink.
template <typename acc_t, bool k3D, bool kGrad>
void slice_terms(const Geometry& g, const acc_t* prev, const acc_t* p, const acc_t* next, const Weights<acc_t>& wt,
                 int64_t b, int64_t o, TvSums<Vec<acc_t>>& sums, Scratch<acc_t>& s, const RowSink<acc_t>& sink) {
  using V = Vec<acc_t>;
  const int64_t plane = g.Hi * g.RW;
  V tv_w = sums.w, tv_h = sums.h, tv_o = sums.o;
  for (int64_t h = 0; h < g.Hi; ++h) {
    const int64_t up = h > 0 ? h - 1 : h, down = h + 1 < g.Hi ? h + 1 : h;
    if constexpr (kGrad) {
      std::fill(s.dot.begin(), s.dot.end(), acc_t(0));
    }
    for (int64_t c = 0; c < g.C; ++c) {
      const int64_t row = c * plane + h * g.RW + 1;
      const acc_t* pr = p + row;
      acc_t* gc = s.g.data() + c * g.W;
      for_each_vector<acc_t>(g.W, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        const V pv = load<kTail>(pr + i, lanes), left = load<kTail>(pr + i - 1, lanes);
        const V before = load<kTail>(prev + row + i, lanes);
        accumulate<kTail>(tv_w, math::tv_loss(left, pv), lanes);
        accumulate<kTail>(tv_o, math::tv_loss(before, pv), lanes);
        V above;
        if constexpr (k3D) {
          above = load<kTail>(p + row + (up - h) * g.RW + i, lanes);
          accumulate<kTail>(tv_h, math::tv_loss(above, pv), lanes);
        }
        if constexpr (kGrad) {
          V grad = V(wt.w) * math::tv_grad(left, pv, load<kTail>(pr + i + 1, lanes)) +
                   V(wt.o) * math::tv_grad(before, pv, load<kTail>(next + row + i, lanes));
          if constexpr (k3D) {
            grad = grad + V(wt.h) * math::tv_grad(above, pv, load<kTail>(p + row + (down - h) * g.RW + i, lanes));
          }
          store<kTail>(grad, gc + i, lanes);
          store<kTail>(load<kTail>(s.dot.data() + i, lanes) + grad * pv, s.dot.data() + i, lanes);
        }
      });
    }
    if constexpr (kGrad) {
      for (int64_t c = 0; c < g.C; ++c) {  // dx_c = p_c (G_c - sum_k G_k p_k)
        const acc_t* pr = p + c * plane + h * g.RW + 1;
        const acc_t* gc = s.g.data() + c * g.W;
        const int64_t offset = (b * g.C + c) * g.S + o * g.L + h * g.W;
        acc_t* out = sink.row(offset, s.row.data());
        for_each_vector<acc_t>(g.W, [&](auto tail, int64_t i, int64_t lanes) {
          constexpr bool kTail = decltype(tail)::value;
          const V pv = load<kTail>(pr + i, lanes);
          store<kTail>(pv * (load<kTail>(gc + i, lanes) - load<kTail>(s.dot.data() + i, lanes)), out + i, lanes);
        });
        sink.finish(out, offset, g.W);
      }
    }
  }
  sums = {tv_w, tv_h, tv_o};
}

template <typename acc_t, bool k3D, bool kGrad>
void softmax_tv_kernel(const Geometry& g, const RowSource<acc_t>& input, const Weights<acc_t>& wt,
                       const RowSink<acc_t>& sink, std::vector<TvSums<acc_t>>& partials) {
  for_each_chunk<Scratch<acc_t>>(g.n_items, [&](int64_t item, Scratch<acc_t>& s) {
    for (auto& r : s.ring) {
      r.resize(g.slice_size());
    }
    s.g.resize(g.C * g.W);
    s.dot.resize(g.W);
    s.row.resize(g.W);
    const int64_t b = item / g.items_per_sample;
    const int64_t o0 = item % g.items_per_sample * g.slices_per_item, o1 = std::min(g.O, o0 + g.slices_per_item);
    const auto slot = [&](int64_t o) { return s.ring[o % 3].data(); };
    if (o0 > 0) {
      fill_slice(g, input, b, o0 - 1, slot(o0 - 1), s.row.data());
    }
    fill_slice(g, input, b, o0, slot(o0), s.row.data());
    TvSums<Vec<acc_t>> sums{Vec<acc_t>(acc_t(0)), Vec<acc_t>(acc_t(0)), Vec<acc_t>(acc_t(0))};
    for (int64_t o = o0; o < o1; ++o) {
      if (o + 1 < g.O) {
        fill_slice(g, input, b, o + 1, slot(o + 1), s.row.data());
      }
      const acc_t* p = slot(o);
      slice_terms<acc_t, k3D, kGrad>(g, o > 0 ? slot(o - 1) : p, p, o + 1 < g.O ? slot(o + 1) : p, wt, b, o, sums,
                                     s, sink);
    }
    partials[item] = {lane_sum(sums.w), lane_sum(sums.h), lane_sum(sums.o)};
  });
}

// Returns (loss, grad): grad is d loss / d input for grad_output = 1, or an empty tensor.
std::tuple<at::Tensor, at::Tensor> softmax_tv_fwd_cpu(const at::Tensor& input_, double beta, int64_t spatial_dims,
                                                      int64_t reduction, bool compute_grad) {
  check_softmax_tv_args(input_, spatial_dims, reduction);
  const at::Tensor input = input_.contiguous();
  const Geometry geo(input, spatial_dims);
  const bool mean = reduction == at::Reduction::Mean;
  const int64_t nd = input.dim();
  // (W, H, D), as seg_loss_math.h counts the axes
  const double extent[3] = {double(geo.W), double(input.size(nd - 2)), spatial_dims == 3 ? double(geo.O) : 1.0};
  const math::SegGradWeights weights(0.0, beta, mean, double(input.numel()), extent);
  at::Tensor grad = empty_gradient(compute_grad ? input.sizes() : at::IntArrayRef{0},
                                   input.options().dtype(saved_grad_dtype(input.scalar_type())));

  double tv[3] = {0, 0, 0};  // along W, H, D
  const auto run = [&](auto acc_tag) {
    using acc_t = decltype(acc_tag);
    const Weights<acc_t> wt{acc_t(weights.axis[0]), acc_t(weights.axis[1]),
                            acc_t(weights.axis[spatial_dims == 3 ? 2 : 1])};
    const RowSource<acc_t> source(input);
    const RowSink<acc_t> sink = compute_grad ? RowSink<acc_t>(grad) : RowSink<acc_t>();
    std::vector<TvSums<acc_t>> partials(geo.n_items);
    dispatch_bool(spatial_dims == 3, [&](auto three_d) {
      dispatch_bool(compute_grad, [&](auto with_grad) {
        softmax_tv_kernel<acc_t, decltype(three_d)::value, decltype(with_grad)::value>(geo, source, wt, sink,
                                                                                        partials);
      });
    });
    for (const auto& part : partials) {  // fixed order
      tv[0] += part.w;
      if (spatial_dims == 3) {
        tv[1] += part.h;
        tv[2] += part.o;
      } else {
        tv[1] += part.o;  // the outer axis is H
      }
    }
  };
  if (input.scalar_type() == at::kDouble) {
    run(double());
  } else {
    run(float());
  }
  // as the reference: with no axis longer than 1 nothing is added, an empty input's mean included
  const bool varies = extent[0] > 1 || extent[1] > 1 || extent[2] > 1;
  const double value = varies ? math::seg_reduce(0.0, tv, double(input.numel()), extent, 0.0, beta, mean) : 0.0;
  return {at::scalar_tensor(value, input.options()), grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) { m.impl("softmax_tv_fwd", &softmax_tv_fwd_cpu); }

}  // namespace pylosses::cpu
