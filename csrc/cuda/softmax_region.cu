// The region losses with softmax=True over a label map, and with them the cross-entropy of
// DiceCELoss, on CUDA (ops softmax_region_sums and softmax_region_sums_backward; the CPU kernel,
// csrc/cpu/softmax_region.cpp, states what they compute, csrc/region_loss_math.h and
// csrc/cross_entropy_math.h hold the per-pixel math that both share). No one-hot and no softmax
// tensor in memory: a pixel's softmax lives in registers (or is recomputed), its one-hot is a
// comparison of the label with the class.
//
// Layout. The contiguous input is B samples of C planes of S pixels; a pixel's C logits lie S
// apart. Two ways to hold a pixel's classes, fixed by a class bound kC:
// - kC > 0 (C <= kC; kC of 8 or 32 in the forward, 8 in the backward and in float64): the C
//   logits in registers, read once; classes from C up to kC are skipped by a test that is the
//   same in every thread (uniform, no divergence).
// - kC = 0 (any C; the chunked path): the classes are read again for each sweep (max, then the
//   exponentials' sum, then the sums or the gradient), from L1 or L2 after the first, a class at
//   a time: nothing of size C is kept in registers.
//
// Forward (softmax_region_sums_kernel). Warps take tiles of 32 consecutive pixels of a sample,
// a lane a pixel (the loads of a class are coalesced), each warp a contiguous run of tiles
// (TileSplit, with a warp in the place of a block: a run crosses few samples).
// - Register path: each lane adds its own pixels' terms, in registers for the term of p that
//   every class gets (p, p^2 or |p|), and for the label's class (the one-hot target: one class a
//   pixel) its p and a count into the lane's own column of shared memory; at the end of the run
//   a shuffle tree adds the lanes' sums of each class, once (math::one_hot_region_sums turns the
//   three into the mode's sums). About 8 instructions a class and pixel.
// - Chunked path: for each class the warp adds its 32 pixels' three terms by a butterfly of
//   shuffles (every lane gets the same bits), and lane c % 32 adds them to the warp's sums of
//   class c in shared memory (8 warps x 3C values a block): some 30 instructions a class and
//   pixel, kept for C above the register bound, where there are too many sums for each lane.
// The labels out of range and the cross-entropy's three sums stay in each lane and are added by
// a fixed shuffle tree. At the end of its part of a sample a warp writes one row of partials (3C
// class sums, the bad labels, the cross-entropy's three) at row sample + warp, and
// softmax_region_sum_rows_kernel adds each sample's rows in a fixed order (in double) into sums
// (B, C, 4) and all of them into ce (3). No atomics, no host sync: the same bits run after run.
//
// Backward (softmax_region_grad_kernel): a thread a pixel, grid-stride; the softmax, then
// sum_k p_k G_k, then the gradient of every class, written coalesced along the plane. The
// cross-entropy's part is scaled by grad_ce[0], read on the device (no host sync); where it is
// 0 the kernel takes the loop without it, as the CPU does, so that a pixel that the Dice leaves
// out (NaN padding under a mask) gets a zero gradient. Its register path holds up to 8 classes;
// above 8 it takes the chunked path, a class at a time.
#include <torch/library.h>

#include <limits>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../cross_entropy_math.h"
#include "../region_loss_math.h"

namespace pylosses::cuda {
namespace {

using math::RegionMode;
constexpr int kSums = math::kRegionSums;
constexpr int kCeSums = 3;  // the cross-entropy's: sum of losses, D, pixels that count
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int kExtras = 1 + kCeSums;  // a row's values after the class sums: bad labels, then ce

// Blocks of the forward kernel that a multiprocessor keeps (64 registers a thread at 4, 80 at 3,
// 128 at 2): 2 for the 32-class register path and for float64, whose values spill at 64; 3 for
// the 8-class path with the cross-entropy, which keeps the class weights in registers.
template <int kC, bool kCe, typename acc_t>
constexpr int kSoftmaxBlocksPerSM = kC > 8 || std::is_same_v<acc_t, double> ? 2 : kC > 0 && kCe ? 3 : 4;
// The backward's: 3 (80 registers) for the 8-class register path, which keeps G_c a class.
template <int kC, typename acc_t>
constexpr int kSoftmaxGradBlocksPerSM = std::is_same_v<acc_t, double> ? 2 : kC > 0 ? 3 : 4;

// Calls f(std::integral_constant<int, kC>{}) for C's class bound in the forward: 8 or 32 classes
// in registers, else 0 (the chunked path); float64 only 8 (at 32 it spilled). The backward's is 8:
// at 32 its exponentials and loop state spilled from the 128 registers of 2 blocks an SM.
template <typename input_t, typename F>
void dispatch_softmax_bound(int64_t C, const F& f) {
  if constexpr (std::is_same_v<input_t, double>) {
    dispatch_class_bound<8>(C, f);
  } else {
    dispatch_class_bound<8, 32>(C, f);
  }
}

enum class LabelKind : int { kInt64 = 0, kInt32 = 1, kUInt8 = 2 };

template <typename input_t>
struct SoftmaxInputs {
  using acc_t = acc_type_t<input_t>;
  const input_t* x;       // (B, C, S)
  const void* labels;     // (B, S) of label_kind
  const bool* mask;       // (B, 1, S), or null
  const acc_t* weight;    // (C), or null (all 1)
  int64_t S, CS;          // pixels a plane, C * S
  int64_t ignore_index;   // NO_IGNORE (int64's lowest) matches no label
  double smoothing;       // label_smoothing
  int C;
  LabelKind label_kind;
};

// A pixel's label as the math needs it.
template <typename acc_t>
struct PixelLabel {
  int cls = -1;       // the label where it lies in [0, C) and is not ignore_index, else -1
  bool dice = false;  // the Dice takes the pixel: not ignore_index, and the mask keeps it
  bool bad = false;   // the Dice takes it and its label is out of range: counted in sums[b, 0, 3]
  acc_t w_t = 0;      // the label's weight, 0 where cls = -1
};

template <typename input_t>
__device__ __forceinline__ PixelLabel<acc_type_t<input_t>> read_label(const SoftmaxInputs<input_t>& in, int64_t b,
                                                                      int64_t s) {
  using acc_t = acc_type_t<input_t>;
  const int64_t i = b * in.S + s;
  int64_t label;
  switch (in.label_kind) {  // the same in every thread
    case LabelKind::kInt32:
      label = static_cast<const int32_t*>(in.labels)[i];
      break;
    case LabelKind::kUInt8:
      label = static_cast<const uint8_t*>(in.labels)[i];
      break;
    default:
      label = static_cast<const int64_t*>(in.labels)[i];
  }
  PixelLabel<acc_t> px;
  const bool labelled = label != in.ignore_index;
  const bool in_range = labelled && label >= 0 && label < in.C;
  px.dice = labelled && (in.mask == nullptr || in.mask[i]);
  px.bad = px.dice && !in_range;
  px.cls = in_range ? int(label) : -1;
  px.w_t = in_range ? (in.weight ? in.weight[label] : acc_t(1)) : acc_t(0);
  return px;
}

template <typename input_t>
__device__ __forceinline__ acc_type_t<input_t> class_weight(const SoftmaxInputs<input_t>& in, int c) {
  return in.weight ? in.weight[c] : acc_type_t<input_t>(1);
}

// The cross-entropy's options, its gradient's scaled by `scale`, as the CPU kernel takes them:
// W = the sum of the weights in double, in order (C without weights; only the smoothing uses it).
template <typename input_t>
__device__ __forceinline__ math::CeOptions<acc_type_t<input_t>> ce_options(const SoftmaxInputs<input_t>& in,
                                                                           double scale) {
  using acc_t = acc_type_t<input_t>;
  double W = in.C;
  if (in.weight && in.smoothing > 0) {
    W = 0;
    for (int c = 0; c < in.C; ++c) {
      W += double(in.weight[c]);
    }
  }
  return {acc_t((1.0 - in.smoothing) * scale), acc_t(in.smoothing / double(in.C) * scale), acc_t(W)};
}

// f(c) for each class c < C: unrolled up to the bound kC on the register path (each class's
// test the same in every thread), a loop on the chunked path (kC = 0).
template <int kC, typename F>
__device__ __forceinline__ void for_each_class(int C, const F& f) {
  if constexpr (kC > 0) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      if (c < C) {
        f(c);
      }
    }
  } else {
    for (int c = 0; c < C; ++c) {
      f(c);
    }
  }
}

// A pixel's softmax: the shift m (the max), the exponentials e_c = exp(x_c - m) (in float32 from
// MUFU.EX2: math::pexp_nonpositive_approx; the CPU's are accurate) and 1 / their sum, and for the
// cross-entropy log(sum), y_t = x_t - m, the label's -log p_t and sum_c w_c y_c. On the register
// path (kC > 0) the exponentials stay in e; on the chunked path prob(c) recomputes them.
// In float32 (kRatio) a confident pixel's cross-entropy keeps its relative accuracy as
// cross_entropy.cu's does: its -log p_t from R = (the other classes' exponentials) / e_t
// (math::ce_label_nll), and its label's gradient from the others' sum (label_q).
template <int kC, typename input_t>
struct PixelSoftmax {
  using acc_t = acc_type_t<input_t>;
  static constexpr bool kRatio = std::is_same_v<acc_t, float>;
  acc_t e[kC > 0 ? kC : 1];
  acc_t m = 0, inv = 0, log_sum = 0, y_t = 0, nll_t = 0, wy = 0;
  acc_t others = 0;  // kRatio, with_ce or with_others: sum_{c != cls} e_c
  const input_t* x = nullptr;  // the pixel's class 0 (null: a lane past the plane's end)
  int64_t S = 0;

  // with_ce: also log_sum, y_t, nll_t and wy, for the label cls; with_label: y_t alone;
  // with_others: the others' sum alone (the cross-entropy's gradient). weights: the class
  // weights in the caller's registers (register path), or null to read them
  __device__ __forceinline__ PixelSoftmax(const SoftmaxInputs<input_t>& in, const input_t* x_, int cls, bool with_ce,
                                          bool with_label = false, const acc_t* weights = nullptr,
                                          bool with_others = false)
      : x(x_), S(in.S) {
    const int C = in.C;
    const bool count_others = kRatio && (with_ce || with_others);
    acc_t sum = 0;
    if constexpr (kC > 0) {
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        e[c] = c < C && x ? static_cast<acc_t>(x[c * S]) : acc_t(0);
        m = c == 0 ? e[c] : c < C ? math::pmax(e[c], m) : m;
      }
      for_each_class<kC>(C, [&](int c) {
        const acc_t y = e[c] - m;
        if (with_ce || with_label) {
          y_t = c == cls ? y : y_t;
        }
        if (with_ce) {
          wy += (weights ? weights[c] : class_weight(in, c)) * y;
        }
        e[c] = math::pexp_nonpositive_approx(y);
        sum += e[c];
        if (count_others) {
          others += c == cls ? acc_t(0) : e[c];
        }
      });
    } else {
      m = x ? static_cast<acc_t>(x[0]) : acc_t(0);
      for (int c = 1; c < C; ++c) {
        m = math::pmax(value(c), m);
      }
      for (int c = 0; c < C; ++c) {
        const acc_t y = value(c) - m;
        if (with_ce) {
          wy += class_weight(in, c) * y;
        }
        const acc_t e_c = math::pexp_nonpositive_approx(y);
        sum += e_c;
        if (count_others) {
          others += c == cls ? acc_t(0) : e_c;
        }
      }
      if ((with_ce || with_label) && cls >= 0) {
        y_t = value(cls) - m;
      }
    }
    inv = math::preciprocal(sum);
    if (with_ce) {
      log_sum = math::plog(sum);
      nll_t = log_sum - y_t;
      if constexpr (kRatio) {
        // e_t: the same bits as the label's e_c (the same y); 0 (flushed) makes R inf or NaN, the
        // plain path's. (A pixel without a label: its loss is not taken.)
        nll_t = math::ce_label_nll(nll_t, others * math::preciprocal(math::pexp_nonpositive_approx(y_t)));
      }
    }
  }
  // q_t = 1 - p_t = (the others' sum) / (the sum), kRatio with_ce or with_others
  __device__ __forceinline__ acc_t label_q() const { return others * inv; }
  __device__ __forceinline__ acc_t value(int c) const { return x ? static_cast<acc_t>(x[c * S]) : acc_t(0); }
  // p_c
  __device__ __forceinline__ acc_t prob(int c) const {
    if constexpr (kC > 0) {
      return e[c] * inv;
    } else {
      return math::pexp_nonpositive_approx(value(c) - m) * inv;
    }
  }
};

// The sum of v over the warp, in every lane: a butterfly, whose pairs add the same two values in
// either lane, so that every lane holds the same bits.
template <int kN, typename T>
__device__ __forceinline__ void warp_allsum(T (&v)[kN]) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      v[k] += __shfl_xor_sync(0xffffffffu, v[k], offset);
    }
  }
}

template <typename input_t>
struct SumsArgs {
  using acc_t = acc_type_t<input_t>;
  SoftmaxInputs<input_t> in;
  acc_t* rows;       // split.rows(B) rows of row_len = 3C + kExtras
  int64_t row_len;
  TileSplit split;   // tiles of 32 pixels, tiles_per_group a sample's, a warp in the place of a block
  uint32_t warps;    // split.blocks(): the warps that have tiles
};

// Dynamic shared memory of the forward: on the register path each lane's own columns of the
// one-hot sums (2C values a lane), on the chunked path each warp's class sums (3C).
template <int kC, typename acc_t>
size_t sums_smem_bytes(int64_t C) {
  return size_t(kWarpsPerBlock) * (kC > 0 ? 2 * kWarp : 3) * size_t(C) * sizeof(acc_t);
}

template <int kC, RegionMode kMode, typename input_t, bool kCe>
__global__ void __launch_bounds__(kThreads, kSoftmaxBlocksPerSM<kC, kCe, acc_type_t<input_t>>)
    softmax_region_sums_kernel(const SumsArgs<input_t> a) {
  using acc_t = acc_type_t<input_t>;
  PYLOSSES_DYNAMIC_SMEM(smem);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const uint32_t w = blockIdx.x * kWarpsPerBlock + warp;
  if (w >= a.warps) {
    return;  // (the kernel has no block barrier)
  }
  const SoftmaxInputs<input_t>& in = a.in;
  const int C = in.C;
  const math::CeOptions<acc_t> o = ce_options(in, 1.0);
  // register path: this lane's hit sums, hits[c * kWarp] (sum of p_c over the pixels labelled
  // c) and hits[(C + c) * kWarp] (their count), a column of the warp's [2C][kWarp] slice: lanes
  // touch only their own column (no barrier), and a warp's accesses fall in 32 banks.
  // chunked path: class_sums[3c + k], the warp's sums of class c.
  acc_t* const warp_smem = reinterpret_cast<acc_t*>(smem) + int64_t(warp) * (kC > 0 ? 2 * kWarp : 3) * C;
  acc_t* const hits = warp_smem + lane;
  acc_t* const class_sums = warp_smem;
  // the 8-class path's cross-entropy takes the class weights from registers (no test of their
  // presence a class); 32 of them would not fit beside the exponentials and sums
  constexpr bool kWeightsInRegisters = kCe && kC > 0 && kC <= 8;
  [[maybe_unused]] acc_t weights[kWeightsInRegisters ? kC : 1];
  if constexpr (kWeightsInRegisters) {
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      weights[c] = c < C ? class_weight(in, c) : acc_t(0);
    }
  }
  const uint32_t tiles_per_sample = a.split.tiles_per_group;
  const uint32_t first = w * a.split.tiles_per_block;
  const uint32_t end = first + std::min(a.split.tiles_per_block, a.split.n_tiles - first);
  for (uint32_t tile = first; tile < end;) {
    const uint32_t b = tile / tiles_per_sample;
    const uint32_t stop = std::min<uint64_t>(end, uint64_t(b + 1) * tiles_per_sample);
    acc_t s1[kC > 0 ? kC : 1] = {};  // register path: this lane's sums of each class's s1 term
    acc_t extra[kExtras] = {};       // this lane's bad labels and cross-entropy sums
    if constexpr (kC > 0) {
      for (int c = 0; c < 2 * C; ++c) {
        hits[c * kWarp] = acc_t(0);
      }
    } else {
      for (int c = lane; c < C; c += kWarp) {
        class_sums[3 * c] = class_sums[3 * c + 1] = class_sums[3 * c + 2] = acc_t(0);
      }
    }
    for (; tile < stop; ++tile) {
      const int64_t s = int64_t(tile - b * tiles_per_sample) * kWarp + lane;
      const bool valid = s < in.S;
      const PixelLabel<acc_t> px = valid ? read_label(in, b, s) : PixelLabel<acc_t>{};
      const PixelSoftmax<kC, input_t> sm(in, valid ? in.x + int64_t(b) * in.CS + s : nullptr, px.cls, kCe, kC > 0,
                                         kWeightsInRegisters ? weights : nullptr);
      extra[0] += px.bad ? acc_t(1) : acc_t(0);
      if constexpr (kC > 0) {
        // each class's s1 term in this lane's registers (kL1's |p| is p: p >= 0), the label's
        // p (the same bits as prob(cls)) and count in its column
        constexpr RegionMode kTerm = kMode == RegionMode::kL1 ? RegionMode::kLinear : kMode;
        if (px.dice) {
          for_each_class<kC>(C, [&](int c) {
            acc_t unused0, term, unused2;
            math::region_terms<kTerm>(sm.prob(c), acc_t(0), unused0, term, unused2);
            s1[c] += term;
          });
          if (px.cls >= 0) {
            hits[px.cls * kWarp] += math::pexp_nonpositive_approx(sm.y_t) * sm.inv;
            hits[(C + px.cls) * kWarp] += acc_t(1);
          }
        }
      } else {
        // each class's three terms summed over the tile's 32 pixels, added by lane c % 32
        for (int c = 0; c < C; ++c) {
          const acc_t p = px.dice ? sm.prob(c) : acc_t(0);
          const acc_t t = px.dice && c == px.cls ? acc_t(1) : acc_t(0);
          acc_t terms[3];
          math::region_terms<kMode>(p, t, terms[0], terms[1], terms[2]);
          warp_allsum(terms);
          if (lane == c % kWarp) {
#pragma unroll
            for (int k = 0; k < 3; ++k) {
              class_sums[3 * c + k] += terms[k];
            }
          }
        }
      }
      if constexpr (kCe) {
        const acc_t v = px.cls >= 0 ? acc_t(1) : acc_t(0);
        const acc_t loss = math::ce_loss_of_nll(o, sm.nll_t, sm.log_sum, px.w_t, v, math::ce_smoothing_wy(o, sm.wy));
        extra[1] += px.cls >= 0 ? loss : acc_t(0);  // a select: padding's NaN stays out
        extra[2] += px.w_t;
        extra[3] += v;
      }
    }
    acc_t* row = a.rows + a.split.row(b, w) * a.row_len;
    if constexpr (kC > 0) {
      // the lanes' sums of each class by a shuffle tree, once a run
      for_each_class<kC>(C, [&](int c) {
        acc_t v[3] = {hits[c * kWarp], s1[c], hits[(C + c) * kWarp]};
        warp_sum(v);
        if (lane == 0) {
          math::one_hot_region_sums<kMode>(v[0], v[1], v[2], row[3 * c], row[3 * c + 2]);
          row[3 * c + 1] = v[1];
        }
      });
    } else {
      for (int c = lane; c < C; c += kWarp) {
#pragma unroll
        for (int k = 0; k < 3; ++k) {
          row[3 * c + k] = class_sums[3 * c + k];
        }
      }
    }
    warp_sum(extra);
    if (lane == 0) {
#pragma unroll
      for (int k = 0; k < kExtras; ++k) {
        row[3 * C + k] = extra[k];
      }
    }
  }
}

// sums (B, C, 4) and ce (3) from the rows, a thread an output value: a sample's rows in order,
// in double; ce over the samples in order.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    softmax_region_sum_rows_kernel(const acc_t* rows, int64_t row_len, TileSplit split, int64_t B, int C,
                                   acc_t* sums, acc_t* ce) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t n_sums = B * C * kSums;
  const auto sample_sum = [&](int64_t b, int64_t column) {
    const uint64_t per_sample = split.tiles_per_group, per_warp = split.tiles_per_block;
    const int64_t first = split.row(uint32_t(b), uint32_t(uint64_t(b) * per_sample / per_warp));
    const int64_t last = split.row(uint32_t(b), uint32_t((uint64_t(b + 1) * per_sample - 1) / per_warp));
    double s = 0;
    for (int64_t r = first; r <= last; ++r) {
      s += static_cast<double>(rows[r * row_len + column]);
    }
    return s;
  };
  if (i < n_sums) {
    const int64_t b = i / (int64_t(C) * kSums), c = i / kSums % C, k = i % kSums;
    const double s = k < 3 ? sample_sum(b, 3 * c + k) : c == 0 ? sample_sum(b, 3 * int64_t(C)) : 0.0;
    sums[i] = static_cast<acc_t>(s);
  } else if (i < n_sums + kCeSums) {
    double s = 0;
    for (int64_t b = 0; b < B; ++b) {
      s += sample_sum(b, 3 * int64_t(C) + 1 + (i - n_sums));
    }
    ce[i - n_sums] = static_cast<acc_t>(s);
  }
}

template <typename input_t>
struct GradArgs {
  using acc_t = acc_type_t<input_t>;
  SoftmaxInputs<input_t> in;
  const acc_t* grad_sums;  // (B, C, 4)
  const double* grad_ce;   // (3): [0] scales the cross-entropy's gradient
  input_t* grad;           // (B, C, S)
  int64_t pixels;          // B * S
};

template <int kC, RegionMode kMode, typename input_t>
__global__ void __launch_bounds__(kThreads, kSoftmaxGradBlocksPerSM<kC, acc_type_t<input_t>>)
    softmax_region_grad_kernel(const GradArgs<input_t> a) {
  using acc_t = acc_type_t<input_t>;
  const SoftmaxInputs<input_t>& in = a.in;
  const int C = in.C;
  const double scale = a.grad_ce[0];
  const math::CeOptions<acc_t> o = ce_options(in, scale);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  const auto walk = [&](auto ce_tag) {
    constexpr bool kCe = decltype(ce_tag)::value;
    // the pixel's sample b and place s by counting (a 64-bit division only for the first)
    const int64_t first = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    const int64_t step_b = stride / in.S, step_s = stride - step_b * in.S;
    int64_t b = first / in.S, s = first - b * in.S;
    // the class weights in registers on the register path (no test of their presence a pixel)
    [[maybe_unused]] acc_t weights[kC > 0 ? kC : 1];
    if constexpr (kC > 0 && kCe) {
#pragma unroll
      for (int c = 0; c < kC; ++c) {
        weights[c] = c < C ? class_weight(in, c) : acc_t(0);
      }
    }
    for (int64_t i = first; i < a.pixels; i += stride, b += step_b, s += step_s) {
      if (s >= in.S) {
        s -= in.S;
        ++b;
      }
      const PixelLabel<acc_t> px = read_label(in, b, s);
      const int64_t offset = b * in.CS + s;
      const PixelSoftmax<kC, input_t> sm(in, in.x + offset, px.cls, false, false, nullptr, kCe);
      const acc_t* g = a.grad_sums + b * C * kSums;
      const auto grad_p = [&](int c, acc_t p) {
        return math::region_grad_p<kMode>(p, c == px.cls ? acc_t(1) : acc_t(0), g[c * kSums], g[c * kSums + 1]);
      };
      // G_c = grad_p(c, p_c): kept on the register path (G's coefficients read once a pixel; the
      // gradient's stores could alias them), recomputed on the chunked path
      [[maybe_unused]] acc_t kept[kC > 0 ? kC : 1];
      acc_t dot = 0;  // sum_k p_k G_k
      const auto add_dot = [&](int c) {
        const acc_t p = sm.prob(c);
        const acc_t G = grad_p(c, p);
        if constexpr (kC > 0) {
          kept[c] = G;
        }
        dot += p * G;
      };
      const acc_t factor = math::ce_grad_prob_factor(o, px.w_t, acc_t(1));
      // float32: the label's cross-entropy gradient from q_t (ce_grad_label), not from p_t - 1
      [[maybe_unused]] acc_t label_ce = 0;
      if constexpr (kCe && PixelSoftmax<kC, input_t>::kRatio) {
        label_ce = math::ce_grad_label(o, factor * sm.label_q(), px.w_t, acc_t(1));
      }
      const auto write = [&](int c) {
        const acc_t p = sm.prob(c);
        acc_t G;
        if constexpr (kC > 0) {
          G = kept[c];
        } else {
          G = grad_p(c, p);
        }
        acc_t dx = px.dice ? p * (G - dot) : acc_t(0);
        if constexpr (kCe) {
          acc_t w_c;
          if constexpr (kC > 0) {
            w_c = weights[c];
          } else {
            w_c = class_weight(in, c);
          }
          acc_t ce;
          if constexpr (PixelSoftmax<kC, input_t>::kRatio) {
            ce = c == px.cls ? label_ce : math::ce_grad_other(o, p, factor, acc_t(1), w_c);
          } else {
            ce = math::ce_grad(o, p, factor, c == px.cls ? acc_t(1) : acc_t(0), px.w_t, acc_t(1), w_c);
          }
          dx += px.cls >= 0 ? ce : acc_t(0);  // a select: padding's NaN stays out
        }
        a.grad[offset + int64_t(c) * in.S] = static_cast<input_t>(dx);
      };
      for_each_class<kC>(C, add_dot);
      for_each_class<kC>(C, write);
    }
  };
  scale != 0 ? walk(std::true_type{}) : walk(std::false_type{});
}

template <typename input_t>
SoftmaxInputs<input_t> softmax_inputs(const at::Tensor& input, const at::Tensor& labels, const at::Tensor& mask,
                                      const at::Tensor& weight, int64_t ignore_index, double label_smoothing) {
  SoftmaxInputs<input_t> in{};
  in.x = input.const_data_ptr<input_t>();
  in.labels = labels.const_data_ptr();
  in.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  in.weight = weight.defined() ? weight.const_data_ptr<acc_type_t<input_t>>() : nullptr;
  in.C = int(input.size(1));
  in.S = in.C == 0 || input.size(0) == 0 ? 0 : input.numel() / (input.size(0) * in.C);
  in.CS = int64_t(in.C) * in.S;
  in.ignore_index = ignore_index;
  in.smoothing = label_smoothing;
  in.label_kind = labels.scalar_type() == at::kInt    ? LabelKind::kInt32
                  : labels.scalar_type() == at::kByte ? LabelKind::kUInt8
                                                      : LabelKind::kInt64;
  return in;
}

// The input, labels, mask and weight as the kernels read them: contiguous, the weight in the
// accumulation dtype.
struct Operands {
  at::Tensor input, labels, mask, weight;
  Operands(const at::Tensor& input_, const at::Tensor& labels_, const c10::optional<at::Tensor>& mask_,
           const c10::optional<at::Tensor>& weight_)
      : input(input_.contiguous()), labels(labels_.contiguous()) {
    TORCH_CHECK_VALUE(input.size(1) <= std::numeric_limits<int>::max(), "softmax_region_sums: too many classes, ",
                      input.size(1));
    if (mask_.has_value() && mask_->defined()) {
      mask = mask_->contiguous();
    }
    if (weight_.has_value() && weight_->defined()) {
      weight = weight_->to(acc_dtype()).contiguous();
    }
  }
  at::ScalarType acc_dtype() const { return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }
};

// The forward for the class bound kC (its grid read from the occupancy at each launch: the
// shared memory grows with C), then its rows added into sums (B, C, 4) and ce (3).
template <int kC, RegionMode kMode, bool kCe, typename input_t>
void launch_sums(SumsArgs<input_t> args, int64_t B, at::Tensor& sums, at::Tensor& ce) {
  using acc_t = acc_type_t<input_t>;
  constexpr auto kernel = &softmax_region_sums_kernel<kC, kMode, input_t, kCe>;
  const int64_t C = args.in.C;
  const int64_t tiles_per_sample = ceil_div(args.in.S, kWarp), n_tiles = B * tiles_per_sample;
  const size_t smem = sums_smem_bytes<kC, acc_t>(C);
  int device = 0, sms = 0, per_sm = 0, most = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&most, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(smem <= size_t(most), "softmax_region_sums: ", C,
                    " classes need more shared memory than a CUDA block has (", smem, " bytes)");
  // the most a block may take (the same value from every call: no race between host threads
  // launching with different C), not this launch's smem
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, most));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(n_tiles, kWarpsPerBlock),
                                                                int64_t(sms) * std::max(per_sm, 1)));
  args.split = TileSplit::make(n_tiles, tiles_per_sample, std::min(n_tiles, blocks * kWarpsPerBlock));
  args.warps = uint32_t(args.split.blocks());
  at::Tensor rows = at::empty({args.split.rows(B) * args.row_len}, sums.options());
  args.rows = rows.mutable_data_ptr<acc_t>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  PYLOSSES_LAUNCH(kernel, ceil_div(args.warps, kWarpsPerBlock), kThreads, smem, stream, args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto finish = &softmax_region_sum_rows_kernel<acc_t>;
  PYLOSSES_LAUNCH(finish, ceil_div(B * C * kSums + kCeSums, kThreads), kThreads, 0, stream, args.rows, args.row_len,
                  args.split, B, int(C), sums.mutable_data_ptr<acc_t>(), ce.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> softmax_region_sums_cuda(const at::Tensor& input_, const at::Tensor& labels_,
                                                            const c10::optional<at::Tensor>& mask_, int64_t mode,
                                                            const c10::optional<at::Tensor>& weight_,
                                                            int64_t ignore_index, double label_smoothing,
                                                            bool with_ce) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_softmax_region_call("softmax_region_sums", input_, labels_, mask_, mode, weight_, label_smoothing);
  const Operands op(input_, labels_, mask_, weight_);
  const int64_t B = op.input.size(0), C = op.input.size(1);
  const auto options = op.input.options().dtype(op.acc_dtype());
  at::Tensor sums = at::zeros({B, C, kSums}, options);
  at::Tensor ce = at::zeros({kCeSums}, options);
  if (op.input.numel() == 0) {
    return {sums, ce};
  }
  dispatch_float(op.input.scalar_type(), [&](auto in_tag) {
    using input_t = decltype(in_tag);
    SumsArgs<input_t> args{};
    args.in = softmax_inputs<input_t>(op.input, op.labels, op.mask, op.weight, ignore_index, label_smoothing);
    args.row_len = 3 * C + kExtras;
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_softmax_bound<input_t>(C, [&](auto bound) {
        dispatch_bool(with_ce, [&](auto ce_tag) {
          launch_sums<decltype(bound)::value, decltype(mode_tag)::value, decltype(ce_tag)::value>(args, B, sums, ce);
        });
      });
    });
  });
  return {sums, ce};
}

// The gradient of the input: the CPU kernel's (csrc/cpu/softmax_region.cpp), with grad_ce read on the device.
at::Tensor softmax_region_sums_backward_cuda(const at::Tensor& grad_sums, const at::Tensor& grad_ce,
                                             const at::Tensor& input_, const at::Tensor& labels_,
                                             const c10::optional<at::Tensor>& mask_, int64_t mode,
                                             const c10::optional<at::Tensor>& weight_, int64_t ignore_index,
                                             double label_smoothing) {
  const c10::cuda::CUDAGuard guard(input_.device());
  check_softmax_region_backward_call(grad_sums, grad_ce, input_, labels_, mask_, mode, weight_, label_smoothing);
  const Operands op(input_, labels_, mask_, weight_);
  at::Tensor grad = at::empty(op.input.sizes(), op.input.options());
  if (op.input.numel() == 0) {
    return grad;
  }
  // on the device, in the kernels' dtypes (copies of a few values; no host sync)
  const at::Tensor g = grad_sums.to(op.input.device(), op.acc_dtype()).contiguous();
  const at::Tensor g_ce = grad_ce.to(op.input.device(), at::kDouble).contiguous();
  dispatch_float(op.input.scalar_type(), [&](auto in_tag) {
    using input_t = decltype(in_tag);
    using acc_t = acc_type_t<input_t>;
    GradArgs<input_t> args{};
    args.in = softmax_inputs<input_t>(op.input, op.labels, op.mask, op.weight, ignore_index, label_smoothing);
    args.grad_sums = g.const_data_ptr<acc_t>();
    args.grad_ce = g_ce.const_data_ptr<double>();
    args.grad = grad.mutable_data_ptr<input_t>();
    args.pixels = op.input.size(0) * args.in.S;
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_class_bound<8>(args.in.C, [&](auto bound) {
        constexpr auto kernel = &softmax_region_grad_kernel<decltype(bound)::value, decltype(mode_tag)::value, input_t>;
        PYLOSSES_LAUNCH(kernel, grid_size<kernel>(ceil_div(args.pixels, kThreads)), kThreads, 0,
                        c10::cuda::getCurrentCUDAStream(), args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return grad;
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) {
  m.impl("softmax_region_sums", &softmax_region_sums_cuda);
  m.impl("softmax_region_sums_backward", &softmax_region_sums_backward_cuda);
}

}  // namespace pylosses::cuda
