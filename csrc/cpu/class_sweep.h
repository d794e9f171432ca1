#pragma once
// What the CPU's multi-class kernels (cross_entropy.cpp, softmax_region.cpp) share: a block of
// pixels' logits, a row a class, and one sweep across the classes of a pixel vector (the
// maximum, the exponentials, their sum, and the label's logit and weight). Include after
// cpu_common.h.
#include "cpu_common.h"

namespace pylosses::cpu {

// Points rows[c] at the n logits of class c from element `base` on (a pixel's classes lie S
// apart): read where they are, converted into scratch + c * stride, or, where `gather` says so
// (gather_class_rows: many rows would share a cache set), copied there first.
template <typename acc_t>
inline void class_rows(const RowSource<acc_t>& input, int64_t base, int64_t C, int64_t S, int64_t n, bool gather,
                       acc_t* scratch, int64_t stride, std::vector<const acc_t*>& rows) {
  for (int64_t c = 0; c < C; ++c) {
    acc_t* row = scratch + c * stride;
    const acc_t* from = input(base + c * S, row, n);
    if (from != row && gather) {
      std::copy_n(from, n, row);
      from = row;
    }
    rows[c] = from;
  }
}

// A pixel vector's sweep across the classes (ce_loss's terms): y_c = x_c - m with m the maximum,
// sum = sum_c exp(y_c); with kLabel also y_t and w_t, the label's y and weight (a compare and a
// select a class, no gather; 0 where no class matches), and wy = sum_c w_c y_c.
template <typename acc_t>
struct ClassSweep {
  Vec<acc_t> sum{acc_t(0)}, y_t{acc_t(0)}, w_t{acc_t(0)}, wy{acc_t(0)};
};

// The sweep of the pixels i.. (lanes of them) of rows; with kStoreExps each exp(y_c) is stored at
// exps + c * stride + i (a full vector: the scratch has room past a tail).
template <bool kLabel, bool kStoreExps, bool kTail, typename acc_t>
C10_ALWAYS_INLINE ClassSweep<acc_t> class_sweep(const std::vector<const acc_t*>& rows, int64_t i, int64_t lanes,
                                                const Vec<acc_t>& label, const acc_t* weight, acc_t* exps,
                                                int64_t stride) {
  using V = Vec<acc_t>;
  const int64_t C = int64_t(rows.size());
  V m = load<kTail>(rows[0] + i, lanes);
  for (int64_t c = 1; c < C; ++c) {
    m = math::pmax(load<kTail>(rows[c] + i, lanes), m);
  }
  ClassSweep<acc_t> r;
  for (int64_t c = 0; c < C; ++c) {
    const V y = load<kTail>(rows[c] + i, lanes) - m;
    const V e = math::pexp(y);
    r.sum = r.sum + e;
    if constexpr (kStoreExps) {
      e.store(exps + c * stride + i);
    }
    if constexpr (kLabel) {
      const V is_c = label == V(acc_t(c)), w_c(weight[c]);
      r.y_t = V::blendv(r.y_t, y, is_c);
      r.w_t = V::blendv(r.w_t, w_c, is_c);
      r.wy = at::vec::fmadd(w_c, y, r.wy);
    }
  }
  return r;
}

}  // namespace pylosses::cpu
