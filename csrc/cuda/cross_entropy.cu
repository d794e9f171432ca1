// The multi-class cross-entropy on CUDA (op cross_entropy_fwd; csrc/cross_entropy_math.h has the
// per-pixel math, pylosses/reference.py cross_entropy the ground truth): one pass that reads the
// logits and the labels and writes the loss ("none": one a pixel) and, when asked, the gradient.
//
// Layout. The contiguous input is (B, C, P), P = prod(spatial) (1 for (B, C) input): a pixel's C
// logits lie P elements apart, and the pixels of a plane are consecutive. A thread takes kPix
// consecutive pixels of a plane (a pack: one load of kPix elements for each class, contiguous
// along the plane; coalesced across the warp for any kPix) and grid-strides over the B * P
// pixels in packs, keeping its place in (sample, plane) by counting (one 64-bit division a
// thread, before the loop). Packs need P to be a multiple of kPix, so that a pack never
// straddles two samples, and every pointer aligned for them; other shapes take one pixel at a
// time (kPix = 1).
//
// Registers. For C up to a bound kC (4 or 8) a thread keeps the kPix x kC logits of its pack in
// registers: it loads them once, takes the max, the exponentials and their sum, and writes the
// gradient from the same registers. kPix keeps them within 16 registers, beside 5 values a pixel
// (label, weight, the label's logit, ...) and the loop's 64-bit offsets, in the 64 registers a
// thread that the launch's 4 blocks of 256 threads an SM leave: float32 and 16-bit inputs take
// packs of 4 pixels for C <= 4 (128-bit loads of float32, 64-bit of 16-bit inputs) and of 2 for
// C <= 8. 32 values (kC = 16 with one pixel, kC = 32, or 8 classes x 4 pixels) spilled in every
// dtype (ptxas, sm_90). Classes from C up to the bound take a padding logit and store nothing,
// so that every class's code runs without a branch.
//
// Above 8 classes (the streaming path, kC = 0; float64 always: its exponentials' temporaries
// leave no room for a pack's logits) a pixel's classes are read twice, in chunks of 4 classes of
// 2 pixels (float64: 4 of 1): the first pass keeps a running max and a sum rescaled to it when a
// chunk raises it, the second writes the gradient. The second read comes from L1 or L2: the
// resident threads read C x 8 KiB an SM of float32 between a pixel's two passes (C x 1 MiB on an
// H200), within L1 up to C of about 24, within L2 up to about 50, and from DRAM again beyond (at
// C = 150 the kernel reached about half of a copy's bandwidth on an H200). Whole chunks run
// without a test of c against C; the last, partial one masks its classes. Neither path writes a
// one-hot, softmax or log-softmax anywhere but into registers.
//
// Reductions and the gradient's scale. Each block adds its pixels' losses, D = sum of w_t
// (torch's "mean" denominator) and the pixels that count in registers, then one fixed-order
// block sum into one row of partials; sum_and_finish adds the rows in a fixed order and writes
// the loss and grad_scale: bitwise the same run after run, no atomics, no host sync. The
// gradient is written unnormalised (as for grad_output = 1 and "sum"), and for "mean" the
// device epilogue gives grad_scale = 1 / D, or 0 when no pixel counts (every gradient is then 0,
// as torch's); the caller multiplies. A label outside [0, C) that is not ignore_index gives its
// pixel a NaN loss and gradient (w_t = NaN), which makes "mean" and "sum" NaN: no device assert
// (it would kill the CUDA context), no host sync. It adds nothing to D, so that the other
// pixels' gradients keep their scale.
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../cross_entropy_math.h"

namespace pylosses::cuda {
namespace {

// A block's sums: the losses, D = sum of w_t, the pixels that count. (An out-of-range label
// needs no count of its own: its NaN loss makes the sum of the losses NaN.)
constexpr int kCeSums = 3;

// Blocks of cross_entropy_fwd_kernel that a multiprocessor keeps (see cuda_common.cuh): 4, 64
// registers a thread, 32 warps an SM; 2 in float64 (128 registers: at 64 every float64
// instantiation spilled, its exponential's temporaries and its 64-bit sums beside the loop's).
template <typename acc_t>
constexpr int kCeBlocksPerSM = std::is_same_v<acc_t, double> ? 2 : 4;

// The largest class bound that keeps a pixel's logits in registers: 8; 0 in float64 (whose
// exponentials' temporaries leave no room for them: every float64 instantiation spilled).
template <typename input_t>
constexpr int kMaxRegisterClasses = std::is_same_v<input_t, double> ? 0 : 8;

// 32-bit registers for a thread's logits: kPix x kC values.
constexpr int kValueRegisters = 16;

// Pixels a thread takes at a time for the class bound kC (0: the streaming path): 4 as far as
// kValueRegisters allows, 2 on the streaming path, 1 in float64 (see the header comment).
template <int kC, typename input_t>
constexpr int kCePix = [] {
  if (std::is_same_v<input_t, double>) {
    return 1;
  }
  return kC == 0 ? 2 : std::min(4, std::max(1, kValueRegisters / kC));
}();

// Classes a chunk of the streaming path holds in registers: 8 values, half the register path's
// (its loops keep more state alive: the running max and sum, and the offsets of two passes; 16
// values spilled).
template <int kPix, typename acc_t>
constexpr int kCeChunk = std::is_same_v<acc_t, double> ? 4 : kValueRegisters / 2 / kPix;

// The exponentials in base 2 (float32) or e (float64). float32 scales the logits by log2(e) and
// takes 2^z from the special-function unit (MUFU.EX2: one instruction where expf takes ten,
// after one FFMA z = x log2(e) - M that folds the shift by the max into the scale), and the log
// of the sum from MUFU.LG2; the loss scales back by ln(2). M is the scaled max rounded down to
// an integer: the same M shifts every z of a pixel, the label's too, so that it cancels from
// p_c = 2^z_c / S and from log S - z_t whatever it is (z_c < 1, S < 2C), and the streaming path
// rescales its sum by exact powers of two when a chunk raises it (an approximate exponential
// there would add its error once a rescale, 2^-22 each). Only each z's own rounding, |z| 2^-24,
// is left. CUDA's math API documents exp2f within 2 ulp and log2f within 2^-22 absolute in [0.5, 2] and 2 ulp elsewhere (S lies in
// [1, 2C), never subnormal); ex2.approx.ftz flushes results below 2^-126 to 0 (a probability
// that small is 0 to the loss and the gradient). The CUDA emulation that the tests run takes
// both with those worst errors (math::plog2_approx's rule for the log; the exponentials' of
// either sign, class by class) and flushes as the device does.
template <typename T>
struct ExpDomain;

template <>
struct ExpDomain<float> {
  // The label's loss and gradient from the other classes' exponentials (see label_terms).
  static constexpr bool kLabelRatio = true;
  static constexpr float kToExp = 1.44269504088896341f;     // log2(e)
  static constexpr float kFromExp = 0.693147180559945309f;  // ln(2)
  static C10_HOST_DEVICE float fma(float a, float b, float c) { return ::fmaf(a, b, c); }
  // the shift M of a scaled max
  static C10_HOST_DEVICE float shift(float scaled_max) { return ::floorf(scaled_max); }
  // 2^d for the difference d <= 0 of two shifts (an integer), exactly: 0 below 2^-126 (the
  // exponent field of -127 is 0's)
  static C10_HOST_DEVICE float rescale(float d) {
    const int32_t bits = (int32_t(::fmaxf(d, -127.f)) + 127) << 23;
#if defined(__CUDA_ARCH__)
    return __int_as_float(bits);
#else
    float power;
    std::memcpy(&power, &bits, sizeof(power));
    return power;
#endif
  }
  static C10_HOST_DEVICE float exp(float z) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(z));
    return r;
#else
    // the worst error, of a sign that the argument's last bit picks: the same sign for every
    // class would cancel from p_c = 2^z_c / S
    uint32_t bits;
    std::memcpy(&bits, &z, sizeof(bits));
    const float r = ::exp2f(z) * (bits & 1 ? 1.f + 0x1p-22f : 1.f - 0x1p-22f);
    return r < 0x1p-126f ? 0.f : r;
#endif
  }
  static C10_HOST_DEVICE float log(float s) {
#if defined(__CUDA_ARCH__)
    float r;
    asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
    return r;
#else
    return math::plog2_approx(s);
#endif
  }
  // 1 / S for S in [1, 2C)
  static C10_HOST_DEVICE float inverse(float s) { return math::preciprocal(s); }
};

template <>
struct ExpDomain<double> {
  static constexpr bool kLabelRatio = false;  // (accurate exponentials and log)
  static constexpr double kToExp = 1.0;
  static constexpr double kFromExp = 1.0;
  static C10_HOST_DEVICE double fma(double a, double b, double c) { return ::fma(a, b, c); }
  static C10_HOST_DEVICE double shift(double scaled_max) { return scaled_max; }
  static C10_HOST_DEVICE double rescale(double d) { return math::pexp(d); }
  static C10_HOST_DEVICE double exp(double z) { return math::pexp(z); }
  static C10_HOST_DEVICE double log(double s) { return math::plog(s); }
  // 1 / S for S in [1, C]: float32's estimate and two Newton steps (2^-23 -> 2^-46 -> below
  // double's rounding), without the IEEE division's call to its slow path
  static C10_HOST_DEVICE double inverse(double s) {
    double r = math::preciprocal(static_cast<float>(s));
    r = r * (2.0 - s * r);
    return r * (2.0 - s * r);
  }
};

// The max of the logits: fmax (one instruction), which drops a NaN; a NaN logit still makes its
// pixel's loss and gradient NaN, through its exponential.
C10_HOST_DEVICE inline float ce_max(float a, float b) { return ::fmaxf(a, b); }
C10_HOST_DEVICE inline double ce_max(double a, double b) { return ::fmax(a, b); }

template <typename input_t, typename target_t>
struct CeArgs {
  using acc_t = acc_type_t<input_t>;
  using grad_t = saved_grad_t<input_t>;
  using loss_t = input_t;
  using input_type = input_t;
  using target_type = target_t;
  const input_t* x;             // (B, C, P)
  const target_t* t;            // (B, P)
  const acc_t* weight;          // (C) class weights, or null (all 1)
  loss_t* loss;                 // a value a pixel ("none"), or null
  grad_t* grad;                 // (B, C, P), or null
  acc_t* partials;              // kCeSums a block ("mean", "sum"), or null
  int64_t pixels, P, CP;        // B * P, the plane, C * P
  int64_t step_x, step_rest;    // a grid-stride step: in input elements, and its part within a plane
  int64_t ignore_label;         // ignore_index; for uint8 labels -1 where it lies outside [0, 255]
  int C;
  bool smoothing;               // s > 0
  math::CeOptions<acc_t> o;     // weight_sum: W = C; with weights and s > 0 summed on the device
};

// The class weights as the kernel reads them: from shared memory for the classes of the
// register path (kC of them, 0 from C on), else from global memory (L1), or 1 without weights.
template <int kC, typename acc_t>
struct ClassWeights {
  const acc_t* shared;  // kC values (the register path)
  const acc_t* global;  // C values, or null (no weights)
  __device__ __forceinline__ acc_t operator[](int c) const {
    if constexpr (kC > 0) {
      return shared[c];
    } else {
      return global ? global[c] : acc_t(1);
    }
  }
};

// The per-pixel values that a pack's loss and gradient need.
template <int kPix, typename acc_t>
struct PixelState {
  int cls[kPix];        // the label where it counts and is in range, else -1 (matches no class)
  acc_t w_t[kPix];      // NaN for an out-of-range label: its pixel's loss and gradient are NaN
  acc_t v[kPix];
  acc_t x_t[kPix];      // the label's logit (0 where cls = -1)
  acc_t factor[kPix];   // A / S: the gradient is A p_c - B_c = (A / S) e_c - B_c
  acc_t log_sum[kPix];   // log S, and the label's -log p_t (label_terms)
  acc_t nll_t[kPix];
  acc_t label_grad[kPix];  // kLabelRatio: the label's gradient (label_terms)
};

// The labels of the pack of kPix pixels at j into st (cls, w_t and v as cross_entropy_math.h has
// them, and the label's logit, loaded here, early, from the pack's logits at x: one load a pixel
// where picking it out of the classes would take two instructions a class); adds D and the
// pixels that count to sums. uint8 labels are compared in 32 bits, others in 64.
template <int kPix, int kC, typename A>
__device__ __forceinline__ void read_labels(const A& a, const ClassWeights<kC, typename A::acc_t>& w, int64_t j,
                                            const typename A::input_type* x, PixelState<kPix, typename A::acc_t>& st,
                                            typename A::acc_t (&sums)[kCeSums]) {
  using acc_t = typename A::acc_t;
  using label_t = std::conditional_t<std::is_same_v<typename A::target_type, uint8_t>, int32_t, int64_t>;
  using unsigned_t = std::make_unsigned_t<label_t>;
  const auto labels = load_pack<kPix>(a.t, j);
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    const label_t label = static_cast<label_t>(labels.v[k]);
    const bool counts = label != static_cast<label_t>(a.ignore_label);
    const bool in_range = static_cast<unsigned_t>(label) < static_cast<unsigned_t>(a.C);
    st.cls[k] = counts && in_range ? int(label) : -1;
    acc_t w_t = 0, x_t = 0;
    if (st.cls[k] >= 0) {
      w_t = w[st.cls[k]];
      x_t = static_cast<acc_t>(x[static_cast<uint64_t>(static_cast<uint32_t>(st.cls[k])) * a.P + k]);
    }
    st.x_t[k] = x_t;
    st.v[k] = counts ? acc_t(1) : acc_t(0);
    st.w_t[k] = counts && !in_range ? static_cast<acc_t>(CUDART_NAN) : w_t;
    sums[1] += w_t;  // D: not an out-of-range label's NaN
    sums[2] += st.v[k];
  }
}

// What a pixel's loss and gradient need, from the sum S of its exponentials and the scaled max M:
// log S and the label's -log p_t (nll_t) for the loss, and the gradient's factor A / S. With
// kLabelRatio, S holds the classes' other than the label (the kernels leave the label out as they
// add: mark_label) and this adds the label's, e_t = 2^z_t of the same z, so the same bits, and
// keeps the relative accuracy of a confident pixel's loss and label gradient
// (cross_entropy_math.h's ce_label_nll and ce_grad_label, from R = (the others) / e_t and
// A q_t = (A / S) (the others)). e_t = 0 (a label's exponential flushed, or no label) makes R
// NaN or inf: the plain log's path.
template <int kPix, typename A>
__device__ __forceinline__ void label_terms(const math::CeOptions<typename A::acc_t>& o,
                                            const typename A::acc_t (&S)[kPix], const typename A::acc_t (&M)[kPix],
                                            PixelState<kPix, typename A::acc_t>& st) {
  using acc_t = typename A::acc_t;
  using D = ExpDomain<acc_t>;
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    const acc_t prob_factor = math::ce_grad_prob_factor(o, st.w_t[k], st.v[k]);
    // z_t, and y_t = x_t - m in natural units
    const acc_t z_t = D::fma(st.x_t[k], D::kToExp, -M[k]);
    const acc_t y_t = D::kFromExp * z_t;
    if constexpr (D::kLabelRatio) {
      const acc_t others = S[k];
      const acc_t e_t = st.cls[k] >= 0 ? D::exp(z_t) : acc_t(0);
      const acc_t sum = others + e_t;
      st.log_sum[k] = D::kFromExp * D::log(sum);
      st.nll_t[k] = math::ce_label_nll(st.log_sum[k] - y_t, others * D::inverse(e_t));
      st.factor[k] = prob_factor * D::inverse(sum);
      st.label_grad[k] = math::ce_grad_label(o, st.factor[k] * others, st.w_t[k], st.v[k]);
    } else {
      st.log_sum[k] = D::kFromExp * D::log(S[k]);
      st.nll_t[k] = st.log_sum[k] - y_t;
      st.factor[k] = prob_factor * D::inverse(S[k]);
    }
  }
}

// The loss of each pixel (stored for "none", added to sums), from label_terms' values and
// wz = sum_c w_c z_c.
template <bool kSmooth, int kPix, typename A>
__device__ __forceinline__ void pixel_losses(const A& a, const math::CeOptions<typename A::acc_t>& o, int64_t j,
                                             const typename A::acc_t (&wz)[kPix],
                                             const PixelState<kPix, typename A::acc_t>& st,
                                             typename A::acc_t (&sums)[kCeSums]) {
  using acc_t = typename A::acc_t;
  using D = ExpDomain<acc_t>;
  Pack<typename A::loss_t, kPix> losses;
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    // (without smoothing its term, s / C = 0 times a finite value where the loss is, left out)
    const acc_t loss = kSmooth ? math::ce_loss_of_nll(o, st.nll_t[k], st.log_sum[k], st.w_t[k], st.v[k],
                                                      D::kFromExp * wz[k])
                               : acc_t(o.keep) * st.w_t[k] * st.nll_t[k];
    losses.v[k] = static_cast<typename A::loss_t>(loss);
    sums[0] += loss;
  }
  if (a.loss) {
    store_pack(a.loss, j, losses);
  }
}

// kLabelRatio: the label's exponential e_c marked as -0 (every other one is +0 or above, NaN
// aside), where the kernels add the others (-0 adds nothing) and where store_grads picks the
// label's gradient by it: the test of c against the label made once a class, and no label kept
// in registers for the stores. (label_terms takes the label's own exponential from its logit.)
template <typename acc_t>
__device__ __forceinline__ acc_t mark_label(acc_t e, bool is_label) {
  return ExpDomain<acc_t>::kLabelRatio && is_label ? -acc_t(0) : e;
}
template <typename acc_t>
__device__ __forceinline__ bool is_marked(acc_t e) { return std::signbit(e); }

// w_c of the smoothing terms, 0 for a class c >= C of the bound; without smoothing (where the
// math's s/C v w_c is 0 x w_c) 0, read from nowhere.
template <bool kSmooth, bool kMasked, int kC, typename A>
__device__ __forceinline__ typename A::acc_t smoothing_weight(const A& a, const ClassWeights<kC, typename A::acc_t>& w,
                                                              int c) {
  using acc_t = typename A::acc_t;
  if constexpr (!kSmooth) {
    return acc_t(0);
  } else if constexpr (kC > 0 || !kMasked) {
    return w[c];  // the register path's: 0 from C on
  } else {
    return c < a.C ? w[c] : acc_t(0);
  }
}

// The gradient of class c of a pack (grad points at its place) from its exponentials e (the
// label's marked: mark_label), stored unless c >= C (kMasked: c may be).
template <bool kSmooth, bool kMasked, int kPix, int kC, typename A>
__device__ __forceinline__ void store_grads(const A& a, const math::CeOptions<typename A::acc_t>& o,
                                            const ClassWeights<kC, typename A::acc_t>& w, typename A::grad_t* grad,
                                            int c, const typename A::acc_t (&e)[kPix],
                                            const PixelState<kPix, typename A::acc_t>& st) {
  using acc_t = typename A::acc_t;
  const acc_t w_c = smoothing_weight<kSmooth, kMasked>(a, w, c);
  Pack<typename A::grad_t, kPix> g;
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    // A p_c - B_c with A p_c = (A / S) e_c
    acc_t dx;
    if constexpr (ExpDomain<acc_t>::kLabelRatio) {
      // (without smoothing the other classes' term is (A / S) e_c alone: no v and w_c kept for it)
      const acc_t other = kSmooth ? math::ce_grad_other(o, e[k], st.factor[k], st.v[k], w_c) : e[k] * st.factor[k];
      dx = is_marked(e[k]) ? st.label_grad[k] : other;
    } else {
      const acc_t is_t = c == st.cls[k] ? acc_t(1) : acc_t(0);
      dx = math::ce_grad(o, e[k], st.factor[k], is_t, st.w_t[k], st.v[k], w_c);
    }
    g.v[k] = static_cast<typename A::grad_t>(dx);
  }
  if (!kMasked || c < a.C) {
    store_pack(grad, 0, g);
  }
}

// The logit of a class c >= C of the bound: an exponential of 0 that moves no max, and with
// w_c = 0 no smoothing term; finite also when scaled by log2(e) (the lowest value is not).
template <typename acc_t>
constexpr acc_t kPadLogit = std::numeric_limits<acc_t>::lowest() / 4;

// The logits of class c of a pack (x points at them), as acc_t; kPadLogit for c >= C (kMasked: c
// may be).
template <bool kMasked, int kPix, typename A>
__device__ __forceinline__ void load_class(const A& a, const typename A::input_type* x, int c, bool first,
                                           typename A::acc_t (&values)[kPix]) {
  using acc_t = typename A::acc_t;
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    values[k] = kPadLogit<acc_t>;
  }
  if (!kMasked || first || c < a.C) {  // the first class of a pixel always is real (C >= 1)
    const auto xs = load_pack<kPix>(x, 0);
#pragma unroll
    for (int k = 0; k < kPix; ++k) {
      values[k] = static_cast<acc_t>(xs.v[k]);
    }
  }
}

// The pack of kPix pixels at j (labels) and x (their class 0's logits), C <= kC: the logits stay
// in registers from the load to the gradient (x_c, then z_c, then 2^z_c).
template <bool kSmooth, int kPix, int kC, typename A>
__device__ __forceinline__ void ce_pack_in_registers(const A& a, const math::CeOptions<typename A::acc_t>& o,
                                                     const ClassWeights<kC, typename A::acc_t>& w, int64_t j,
                                                     const typename A::input_type* x, typename A::grad_t* grad,
                                                     typename A::acc_t (&sums)[kCeSums]) {
  using acc_t = typename A::acc_t;
  using D = ExpDomain<acc_t>;
  PixelState<kPix, acc_t> st;
  read_labels<kPix>(a, w, j, x, st, sums);
  acc_t e[kC][kPix], M[kPix];
  // the classes' addresses by steps of P (two additions; c x P would be four instructions)
  const typename A::input_type* x_c = x;
#pragma unroll
  for (int c = 0; c < kC; ++c, x_c += a.P) {
    load_class<true, kPix>(a, x_c, c, c == 0, e[c]);
#pragma unroll
    for (int k = 0; k < kPix; ++k) {
      M[k] = c == 0 ? e[c][k] : ce_max(e[c][k], M[k]);
    }
  }
  acc_t S[kPix] = {}, wz[kPix] = {};
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    M[k] = D::shift(M[k] * D::kToExp);
  }
#pragma unroll
  for (int c = 0; c < kC; ++c) {
    const acc_t w_c = smoothing_weight<kSmooth, true>(a, w, c);
#pragma unroll
    for (int k = 0; k < kPix; ++k) {
      const acc_t z = D::fma(e[c][k], D::kToExp, -M[k]);
      if constexpr (kSmooth) {
        wz[k] += w_c * z;
      }
      e[c][k] = D::exp(z);
      e[c][k] = mark_label(e[c][k], c == st.cls[k]);
      S[k] += e[c][k];  // (kLabelRatio: the label's e is -0 here; label_terms adds it)
    }
  }
  label_terms<kPix, A>(o, S, M, st);
  pixel_losses<kSmooth, kPix>(a, o, j, wz, st, sums);
  if (grad) {
#pragma unroll
    for (int c = 0; c < kC; ++c, grad += a.P) {
      store_grads<kSmooth, true>(a, o, w, grad, c, e[c], st);
    }
  }
}

// The same for any C (the streaming path): two passes over the classes in chunks of kChunk,
// the first for the max and the sum (rescaled when a chunk raises the max: one exponential a
// chunk), the second for sum_c w_c z_c (from the final max: terms of one sign, as the math
// header wants them) and the gradient.
template <bool kSmooth, int kPix, int kC, typename A>
__device__ __forceinline__ void ce_pack_streaming(const A& a, const math::CeOptions<typename A::acc_t>& o,
                                                  const ClassWeights<kC, typename A::acc_t>& w, int64_t j,
                                                  const typename A::input_type* x, typename A::grad_t* grad,
                                                  typename A::acc_t (&sums)[kCeSums]) {
  using acc_t = typename A::acc_t;
  using D = ExpDomain<acc_t>;
  constexpr int kChunk = kCeChunk<kPix, acc_t>;
  PixelState<kPix, acc_t> st;
  read_labels<kPix>(a, w, j, x, st, sums);
  acc_t M[kPix], S[kPix] = {};
#pragma unroll
  for (int k = 0; k < kPix; ++k) {
    M[k] = std::numeric_limits<acc_t>::lowest();
  }
  // the classes in whole chunks, then the rest in a chunk whose classes from C on are masked:
  // the hot loop carries no test of c against C
  const typename A::input_type* x_c = x;
  int c0 = 0;
  const auto first_pass = [&](auto masked) {
    constexpr bool kMasked = decltype(masked)::value;
    acc_t values[kChunk][kPix], m[kPix];
#pragma unroll
    for (int i = 0; i < kChunk; ++i, x_c += a.P) {
      load_class<kMasked, kPix>(a, x_c, c0 + i, i == 0, values[i]);
#pragma unroll
      for (int k = 0; k < kPix; ++k) {
        m[k] = i == 0 ? values[i][k] : ce_max(values[i][k], m[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kPix; ++k) {
      const acc_t M_new = ce_max(M[k], D::shift(m[k] * D::kToExp));
      acc_t sum = S[k] * D::rescale(M[k] - M_new);
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        sum += mark_label(D::exp(D::fma(values[i][k], D::kToExp, -M_new)), c0 + i == st.cls[k]);
      }
      S[k] = sum;
      M[k] = M_new;
    }
  };
  for (; c0 + kChunk <= a.C; c0 += kChunk) {
    first_pass(std::false_type{});
  }
  if (c0 < a.C) {
    first_pass(std::true_type{});
  }
  // the gradient's factor and the loss; with smoothing the loss waits for wz, the second pass's
  acc_t wz[kPix] = {};
  label_terms<kPix, A>(o, S, M, st);
  if constexpr (!kSmooth) {
    pixel_losses<kSmooth, kPix>(a, o, j, wz, st, sums);
  }
  // the second pass, with and without the gradient's stores (a test on the moving pointer in
  // the loop would cost its classes a branch each)
  const auto second_pass = [&](auto store) {
    constexpr bool kStore = decltype(store)::value;
    x_c = x;
    typename A::grad_t* grad_c = grad;
    const auto chunk = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      acc_t values[kChunk][kPix];
#pragma unroll
      for (int i = 0; i < kChunk; ++i, x_c += a.P) {
        load_class<kMasked, kPix>(a, x_c, c0 + i, i == 0, values[i]);
      }
#pragma unroll
      for (int i = 0; i < kChunk; ++i) {
        const int c = c0 + i;
        const acc_t w_c = smoothing_weight<kSmooth, kMasked>(a, w, c);
        acc_t e[kPix];
#pragma unroll
        for (int k = 0; k < kPix; ++k) {
          const acc_t z = D::fma(values[i][k], D::kToExp, -M[k]);
          if constexpr (kSmooth) {
            wz[k] += w_c * z;
          }
          e[k] = mark_label(D::exp(z), c == st.cls[k]);
        }
        if constexpr (kStore) {
          store_grads<kSmooth, kMasked>(a, o, w, grad_c, c, e, st);
          grad_c += a.P;
        }
      }
    };
    for (c0 = 0; c0 + kChunk <= a.C; c0 += kChunk) {
      chunk(std::false_type{});
    }
    if (c0 < a.C) {
      chunk(std::true_type{});
    }
  };
  if (grad) {
    second_pass(std::true_type{});
  } else if constexpr (kSmooth) {
    second_pass(std::false_type{});
  }
  if constexpr (kSmooth) {
    pixel_losses<kSmooth, kPix>(a, o, j, wz, st, sums);
  }
}

// kPix pixels a thread at a time (see the header comment), kC the class bound (0: streaming).
template <int kPix, int kC, typename input_t, typename target_t>
__global__ void __launch_bounds__(kThreads, kCeBlocksPerSM<acc_type_t<input_t>>)
    cross_entropy_fwd_kernel(const CeArgs<input_t, target_t> a) {
  using acc_t = acc_type_t<input_t>;
  // the register path's class weights: kC of them, 0 from C on
  __shared__ acc_t class_weights[kC > 0 ? kC : 1];
  if constexpr (kC > 0) {
    if (threadIdx.x < kC) {
      const int c = threadIdx.x;
      class_weights[c] = c >= a.C ? acc_t(0) : a.weight ? a.weight[c] : acc_t(1);
    }
    __syncthreads();
  }
  const ClassWeights<kC, acc_t> w{class_weights, a.weight};
  math::CeOptions<acc_t> o = a.o;
  if (a.weight && a.smoothing) {  // W = sum_c w_c, in a fixed order (the same in every thread)
    acc_t W = 0;
    for (int c = 0; c < a.C; ++c) {
      W += a.weight[c];
    }
    o.weight_sum = W;
  }
  acc_t sums[kCeSums] = {};
  // the thread's first pack, by a division; then by counting: s is the pack's place in its
  // plane, xo the offset of its class 0 in the input
  const int64_t stride = int64_t(gridDim.x) * kThreads * kPix;
  const int64_t first = (int64_t(blockIdx.x) * kThreads + threadIdx.x) * kPix;
  const int64_t first_s = first % a.P, first_xo = first / a.P * a.CP + first_s;
  // the loop twice, with and without smoothing: the one without spares the w_c and sum_c w_c z_c
  const auto walk = [&](auto smooth) {
    constexpr bool kSmooth = decltype(smooth)::value;
    int64_t s = first_s, xo = first_xo;
    for (int64_t j = first; j < a.pixels; j += stride) {
      typename CeArgs<input_t, target_t>::grad_t* grad = a.grad ? a.grad + xo : nullptr;
      if constexpr (kC > 0) {
        ce_pack_in_registers<kSmooth, kPix, kC>(a, o, w, j, a.x + xo, grad, sums);
      } else {
        ce_pack_streaming<kSmooth, kPix, kC>(a, o, w, j, a.x + xo, grad, sums);
      }
      s += a.step_rest;
      xo += a.step_x;
      if (s >= a.P) {
        s -= a.P;
        xo += a.CP - a.P;
      }
    }
  };
  a.smoothing ? walk(std::true_type{}) : walk(std::false_type{});
  if (a.partials) {
    block_sum(sums);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int c = 0; c < kCeSums; ++c) {
        a.partials[int64_t(blockIdx.x) * kCeSums + c] = sums[c];
      }
    }
  }
}

template <typename loss_t, typename acc_t>
struct CeFinish {
  loss_t* loss;
  acc_t* grad_scale;
  bool mean;
  __device__ void operator()(int64_t, const double (&s)[kCeSums]) const {
    const double total = s[0], D = s[1], counted = s[2];  // total is NaN where a label is out of range
    if (mean) {
      // torch: NaN for D = 0 (every pixel ignored, or zero weights), also where the smoothing's
      // sum over D alone would be inf
      loss[0] = static_cast<loss_t>(D == 0 ? static_cast<double>(CUDART_NAN) : total / D);
      grad_scale[0] = static_cast<acc_t>(counted > 0 ? 1.0 / D : 0.0);
    } else {
      loss[0] = static_cast<loss_t>(total);
      grad_scale[0] = acc_t(1);
    }
  }
};

// Calls f(std::integral_constant<int, kC>{}) for the class bound of C (0: streaming).
template <typename input_t, typename F>
void dispatch_ce_bound(int64_t C, const F& f) {
  if constexpr (kMaxRegisterClasses<input_t> >= 8) {
    dispatch_class_bound<4, 8>(C, f);
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fwd_cuda(const at::Tensor& input_,
                                                                      const at::Tensor& target_,
                                                                      const c10::optional<at::Tensor>& weight_,
                                                                      int64_t ignore_index, double label_smoothing,
                                                                      int64_t reduction, bool compute_grad) {
  check_ce_args(input_, target_, weight_, label_smoothing, reduction);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const int64_t C = input.size(1), pixels = target.numel();
  int64_t P = 1;  // the plane: the product of the spatial sizes
  for (int64_t d = 2; d < input.dim(); ++d) {
    P *= input.size(d);
  }
  TORCH_CHECK_VALUE(C <= std::numeric_limits<int>::max(), "cross_entropy_fwd: too many classes, ", C);
  const bool none = reduction == at::Reduction::None;
  const auto acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_options = input.options().dtype(acc_dtype);
  const bool weighted = weight_.has_value() && weight_->defined();
  const at::Tensor weight = weighted ? weight_->to(acc_dtype).contiguous() : at::Tensor();

  at::Tensor grad = at::empty(compute_grad ? input.sizes() : at::IntArrayRef{0},
                              input.options().dtype(saved_grad_dtype(input.scalar_type())));
  at::Tensor loss = at::empty(none ? target.sizes() : at::IntArrayRef{}, input.options());
  at::Tensor grad_scale = none ? at::ones({}, acc_options) : at::empty({}, acc_options);
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_float(input.scalar_type(), [&](auto in_tag) {
    using input_t = decltype(in_tag);
    using acc_t = acc_type_t<input_t>;
    AT_DISPATCH_V2(target.scalar_type(), "cross_entropy_fwd", AT_WRAP([&] {
      using target_t = scalar_t;
      CeArgs<input_t, target_t> args{};
      args.x = input.const_data_ptr<input_t>();
      args.t = target.const_data_ptr<target_t>();
      args.weight = weighted ? weight.const_data_ptr<acc_t>() : nullptr;
      args.loss = none ? loss.mutable_data_ptr<input_t>() : nullptr;
      args.grad = compute_grad ? grad.mutable_data_ptr<saved_grad_t<input_t>>() : nullptr;
      args.pixels = pixels;
      args.P = P;
      args.CP = C * P;
      // uint8 labels are compared in 32 bits: an ignore_index that no uint8 equals becomes -1
      args.ignore_label = std::is_same_v<target_t, uint8_t> && (ignore_index < 0 || ignore_index > 255)
                              ? -1 : ignore_index;
      args.C = int(C);
      args.smoothing = label_smoothing > 0;
      // W = C without weights; with weights and smoothing the kernel sums them (no host sync)
      args.o = math::CeOptions<acc_t>{acc_t(1.0 - label_smoothing), acc_t(label_smoothing / double(C > 0 ? C : 1)),
                                       acc_t(C)};
      dispatch_ce_bound<input_t>(C, [&](auto bound) {
        constexpr int kC = decltype(bound)::value;
        constexpr int kPix = kCePix<kC, input_t>;
        const bool packs = kPix > 1 && P % kPix == 0 && packs_aligned<kPix>(args.x, args.t, args.loss, args.grad);
        dispatch_vec<kPix>(packs, [&](auto vec) {
          constexpr int kVec = decltype(vec)::value;
          constexpr auto kernel = &cross_entropy_fwd_kernel<kVec, kC, input_t, target_t>;
          const int64_t blocks = grid_size<kernel>(ceil_div(pixels / kVec, kThreads));
          // one row of partials a block, in one group (as the MSE kernel's)
          const TileSplit split = TileSplit::make(pixels > 0 ? blocks : 0, blocks, blocks);
          at::Tensor partials = at::empty({none ? 0 : blocks * kCeSums}, acc_options);
          args.partials = none ? nullptr : partials.mutable_data_ptr<acc_t>();
          if (pixels > 0) {
            const int64_t step = blocks * kThreads * kVec;  // pixels a grid-stride step
            args.step_rest = step % P;
            args.step_x = step / P * args.CP + args.step_rest;
            PYLOSSES_LAUNCH(kernel, blocks, kThreads, 0, stream, args);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
          if (!none) {
            sum_and_finish<kCeSums, acc_t>(partials, 1, split,
                                           CeFinish<input_t, acc_t>{loss.mutable_data_ptr<input_t>(),
                                                                    grad_scale.mutable_data_ptr<acc_t>(),
                                                                    reduction == at::Reduction::Mean});
          }
        });
      });
    }), at::kLong, at::kInt, at::kByte);
  });
  return {loss, grad, grad_scale};
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) { m.impl("cross_entropy_fwd", &cross_entropy_fwd_cuda); }

}  // namespace pylosses::cuda
