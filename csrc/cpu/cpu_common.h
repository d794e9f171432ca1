#pragma once
// What the CPU kernels share: Vectorized overloads of the math primitives, row conversion,
// fixed-order chunked reduction (the dtype rules and dispatch are ../kernel_common.h's).
//
// Include this before any csrc/<loss>_math.h: the math templates find these overloads by
// ordinary lookup, which only sees what was declared before the template.
#include "../aten_ops.h"
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../kernel_common.h"
#include "../math_common.h"

namespace pylosses::math {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// float32 log, exp and reciprocal, several times cheaper than Sleef's (and the division) that
// ATen calls, at about 1 to 2 ulp where Sleef's are within 1: a log and an exp per element are
// most of the segmentation loss's time. A vector with a lane outside the plain range (0, a
// negative, a subnormal, inf, NaN; |x| large for exp; a row's padded tail lanes, 0) takes a
// longer path that handles them, inline: a call there (to Sleef) would make the compiler keep
// the kernels' loop-carried sums in memory. tests/test_cpu_math.py checks the error over every
// float32 of the ranges, and the special values. double keeps Sleef.
namespace fast {
// log(x) = n ln 2 + log(1 + r), x = 2^n (1 + r) with 2/3 <= 1 + r < 4/3, and
// log(1 + r) = r + r^2 P(r): P of degree 7 (a weighted minimax fit, 3e-8 relative on the
// interval), in Estrin's scheme. ln 2 in two parts: n ln2_hi is exact.
constexpr float kLogP[8] = {-0x1.ffffd6p-2f, 0x1.5554fap-2f,  -0x1.00147ep-2f, 0x1.99d426p-3f,
                            -0x1.5032fcp-3f, 0x1.1ea26ap-3f, -0x1.3b27dcp-3f, 0x1.1f4226p-3f};
constexpr float kLn2Hi = 0x1.62e4p-1f, kLn2Lo = 0x1.7f7d1cp-20f;
constexpr int32_t kLogOffset = 0x3f2aaaab;  // the bits of 2/3
// exp(x) = 2^n exp(r), n = round(x / ln 2), exp(r) = 1 + r + r^2 Q(r), Q of degree 4
// (3e-9 relative on |r| <= ln(2) / 2). On [-86, 88], 2^n is one normal float.
constexpr float kExpQ[5] = {0x1.fffffcp-2f, 0x1.555492p-3f, 0x1.5558f2p-5f, 0x1.1239d0p-7f, 0x1.6a242ap-10f};
constexpr float kExpMin = -86.f, kExpMax = 88.f;
// Below this exp(x) rounds to 0 (half the smallest subnormal); above the other, to inf.
constexpr float kExpZero = -0x1.9fe368p+6f, kExpInf = 0x1.62e430p+6f;  // -103.97, 88.72
}  // namespace fast

// The bits of a float vector as int32 lanes (ATen's generic cast goes through memory).
inline Vec<int32_t> bits_of(const Vec<float>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castps_si512(x);
#elif defined(CPU_CAPABILITY_AVX2)
  return _mm256_castps_si256(x);
#else
  return at::vec::cast<int32_t>(x);
#endif
}

// 2^k for integer k in [-126, 127], as a float built from its bits.
inline Vec<float> pow2(const Vec<int32_t>& k) { return at::vec::cast<float>((k + Vec<int32_t>(127)) << Vec<int32_t>(23)); }

// Whether every lane of a comparison's mask (all bits set, or none) is set.
template <typename T>
inline bool all_lanes(const Vec<T>& mask) { return mask.zero_mask() == 0; }

// A mask with every lane set.
template <typename T>
inline Vec<T> all_set() { return Vec<T>(T(0)) == Vec<T>(T(0)); }

// log of x in [FLT_MIN, FLT_MAX], exponent e_adjust added to x's own (a scaled subnormal).
C10_ALWAYS_INLINE Vec<float> log_normal(const Vec<float>& x, const Vec<int32_t>& e_adjust) {
  using F = Vec<float>;
  using I = Vec<int32_t>;
  const I bits = bits_of(x) - I(fast::kLogOffset);
  const F n = at::vec::convert_to_fp_of_same_size<float>((bits >> I(23)) + e_adjust);  // arithmetic shift
  const F r = at::vec::cast<float>((bits & I(0x007fffff)) + I(fast::kLogOffset)) - F(1.f);  // exact
  const F r2 = r * r, r4 = r2 * r2;
  const auto c = [](int i) { return F(fast::kLogP[i]); };
  const F p01 = at::vec::fmadd(c(1), r, c(0)), p23 = at::vec::fmadd(c(3), r, c(2));
  const F p45 = at::vec::fmadd(c(5), r, c(4)), p67 = at::vec::fmadd(c(7), r, c(6));
  const F p = at::vec::fmadd(at::vec::fmadd(p67, r2, p45), r4, at::vec::fmadd(p23, r2, p01));
  const F y = at::vec::fmadd(n, F(fast::kLn2Lo), at::vec::fmadd(p, r2, r));
  return at::vec::fmadd(n, F(fast::kLn2Hi), y);
}

inline Vec<float> plog(const Vec<float>& x) {
  using F = Vec<float>;
  using I = Vec<int32_t>;
  const F tiny(std::numeric_limits<float>::min()), huge(std::numeric_limits<float>::max());
  if (all_lanes((x >= tiny) & (x <= huge))) {
    return log_normal(x, I(0));
  }
  // subnormals scaled by 2^24 into the normal range; log(0) = -inf, log(inf) = inf, NaN below 0
  const F subnormal = x < tiny;
  const F scaled = F::blendv(x, x * F(0x1p24f), subnormal);
  F y = log_normal(scaled, bits_of(subnormal) & I(-24));  // the mask's lanes are -1 or 0
  y = F::blendv(y, F(-std::numeric_limits<float>::infinity()), x == F(0.f));
  y = F::blendv(y, x, x > huge);
  return y | (x < F(0.f)) | x.isnan();  // all bits set: NaN
}

C10_ALWAYS_INLINE Vec<float> exp_poly(const Vec<float>& x, Vec<int32_t>& n) {  // exp(x) / 2^n
  using F = Vec<float>;
  const F nf = (x * F(0x1.715476p+0f)).round();  // x / ln 2, to nearest
  n = at::vec::convert_to_int_of_same_size(nf);
  const F r = at::vec::fmadd(nf, F(-fast::kLn2Lo), at::vec::fmadd(nf, F(-fast::kLn2Hi), x));
  const auto c = [](int i) { return F(fast::kExpQ[i]); };
  const F r2 = r * r;
  const F q = at::vec::fmadd(at::vec::fmadd(at::vec::fmadd(c(4), r, c(3)), r2, at::vec::fmadd(c(2), r, c(1))), r, c(0));
  return at::vec::fmadd(q, r2, r) + F(1.f);
}

inline Vec<float> pexp(const Vec<float>& x) {
  using F = Vec<float>;
  using I = Vec<int32_t>;
  I n;
  if (all_lanes((x >= F(fast::kExpMin)) & (x <= F(fast::kExpMax)))) {  // NaN is not
    const F y = exp_poly(x, n);
    return at::vec::cast<float>(bits_of(y) + (n << I(23)));  // times 2^n: n added to the exponent
  }
  // 2^n in two factors, each a normal float, so that a subnormal result is rounded once
  const F clamped = at::vec::minimum(at::vec::maximum(x, F(fast::kExpZero)), F(fast::kExpInf + 1.f));
  const F y = exp_poly(clamped, n);
  const I half = n >> I(1);
  F e = y * pow2(half) * pow2(n - half);
  e = F::blendv(e, F(0.f), x < F(fast::kExpZero));
  e = F::blendv(e, F(std::numeric_limits<float>::infinity()), x > F(fast::kExpInf));
  return e | x.isnan();
}

// 1 / d, correctly rounded but for a few in ten million (within 0.5 ulp): the hardware's
// estimate (12 bits; 14 with AVX512) and two Newton steps, in place of a division. One step
// would do for 1.9 ulp, but its error is one-sided (always below 1 / d), and that bias adds up
// in gradients summed over many pixels (tests/test_cpu_math.py, test_errors_are_not_one_sided).
inline Vec<float> preciprocal(const Vec<float>& d) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
  const Vec<float> r = _mm512_rcp14_ps(d);
#else
  const Vec<float> r = _mm256_rcp_ps(d);
#endif
  const Vec<float> r1 = at::vec::fmadd(r, at::vec::fnmadd(d, r, Vec<float>(1.f)), r);  // r + r (1 - d r)
  return at::vec::fmadd(r1, at::vec::fnmadd(d, r1, Vec<float>(1.f)), r1);
#else
  return Vec<float>(1.f) / d;
#endif
}

template <typename T>
inline Vec<T> plog(const Vec<T>& x) { return x.log(); }
template <typename T>
inline Vec<T> preciprocal(const Vec<T>& d) { return Vec<T>(T(1)) / d; }
// log(1 + x) as log(u) + r with u = 1 + x rounded and r = x - (u - 1) its rounding residue,
// exact for |x| <= 1 (Fast2Sum): log(u + r) = log(u) + r / u + O(r^2), and r / u differs from r
// by less than an ulp of the result there (u near 1 where r matters). A few ulps, with no
// division (Goldberg's log(u) x / (u - 1) takes one) and several times faster than Sleef's
// log1p. Above 1, log(u) alone is as accurate, and r is left out.
template <typename T>
inline Vec<T> plog1p(const Vec<T>& x) {
  const Vec<T> one(T(1));
  const Vec<T> u = one + x;
  const Vec<T> r = x - (u - one);
  return plog(u) + Vec<T>::blendv(Vec<T>(T(0)), r, x <= one);
}
template <typename T>
inline Vec<T> pexp(const Vec<T>& x) { return x.exp(); }
template <typename T>
inline Vec<T> pabs(const Vec<T>& x) { return x.abs(); }
// The scalar pmax's rule, lane by lane (a NaN in a propagates, one in b does not): one max
// instruction (maxps(b, a) returns a where either is NaN), where at::vec::maximum takes three.
template <typename T>
inline Vec<T> pmax(const Vec<T>& a, const Vec<T>& b) { return at::vec::clamp_min(a, b); }
template <typename T>
inline Vec<T> psign(const Vec<T>& x) {
  const Vec<T> zero(T(0));
  return x.gt(zero) - x.lt(zero);  // gt/lt give 1 or 0 in each lane
}
// sign(a) - sign(b) in float32 from the comparison masks, which are -1 where true as int32
// lanes: [a > 0] - [a < 0] - [b > 0] + [b < 0] is (a < 0) + (b > 0) - (a > 0) - (b < 0) in
// masks. Eight operations where two psign take eleven.
inline Vec<float> psign_diff(const Vec<float>& a, const Vec<float>& b) {
  const Vec<float> zero(0.f);
  return at::vec::convert_to_fp_of_same_size<float>((bits_of(a < zero) + bits_of(b > zero)) -
                                                    (bits_of(a > zero) + bits_of(b < zero)));
}
template <typename T>
inline Vec<T> psign_diff(const Vec<T>& a, const Vec<T>& b) { return psign(a) - psign(b); }
template <typename T>
inline bool phard(const Vec<T>& t) {  // in every lane (lanes past a row hold 0)
  return (t * (Vec<T>(T(1)) - t)).zero_mask() == (1 << Vec<T>::size()) - 1;
}
template <typename T>
inline Vec<T> pselect_ge0(const Vec<T>& x, const Vec<T>& a, const Vec<T>& b) {
  return Vec<T>::blendv(b, a, x >= Vec<T>(T(0)));
}

}  // namespace pylosses::math

namespace pylosses::cpu {

using math::Vec;

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// A float vector of 16-bit floats from memory, exactly: float16 by the F16C (AVX512F)
// conversion, bfloat16 (a float's upper half) by a shift.
template <typename src_t>
inline Vec<float> widen_16_bit(const src_t* p) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  if constexpr (std::is_same_v<src_t, c10::Half>) {
    return _mm512_cvtph_ps(half);
  } else {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
#else
  const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (std::is_same_v<src_t, c10::Half>) {
    return _mm256_cvtph_ps(half);
  } else {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
  }
#endif
}
#endif

// A row of n values as acc_t: the data itself when it already is acc_t, else converted into buf.
template <typename acc_t, typename src_t>
inline const acc_t* load_row(const src_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return src;
  } else if constexpr (std::is_same_v<src_t, bool> || std::is_same_v<src_t, uint8_t>) {
    // a loop the compiler vectorises, where at::vec::convert converts a byte at a time; a bool
    // is read as its byte, nonzero for true (as c10::load reads it)
    const auto* bytes = reinterpret_cast<const uint8_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      buf[i] = std::is_same_v<src_t, bool> ? acc_t(bytes[i] != 0) : acc_t(bytes[i]);
    }
    return buf;
  } else if constexpr (at::is_reduced_floating_point_v<src_t> && std::is_same_v<acc_t, float>) {
    // a vector at a time, by our own intrinsics: at::vec::convert has no vector path from these
    // to float, and at::vec::convert_to_float is declared but not defined for AVX512 in torch
    // 2.11's headers (an undefined symbol: the extension did not load on the GPU machine)
    int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    for (; i + Vec<float>::size() <= n; i += Vec<float>::size()) {
      widen_16_bit<src_t>(src + i).store(buf + i);
    }
#endif
    for (; i < n; ++i) {
      buf[i] = float(src[i]);
    }
    return buf;
  } else {
    at::vec::convert(src, buf, n);
    return buf;
  }
}

// Where to compute a row that will be stored to dst: dst itself when it is acc_t, else buf.
template <typename acc_t, typename dst_t>
inline acc_t* out_row(dst_t* dst, acc_t* buf) {
  if constexpr (std::is_same_v<dst_t, acc_t>) {
    return dst;
  } else {
    return buf;
  }
}

// Finishes a row computed in out_row(dst, buf).
template <typename acc_t, typename dst_t>
inline void store_row(const acc_t* buf, dst_t* dst, int64_t n) {
  if constexpr (!std::is_same_v<dst_t, acc_t>) {
    at::vec::convert(buf, dst, n);
  }
}

// Whether a kernel that reads C rows stride_bytes apart (a pixel vector's logits across the
// classes, the rows a plane apart) first copies a block of each into a scratch. Where the stride is a multiple of 4 KiB (a 64^3 volume, a 1024^2 image) all C rows
// fall into one set of L1 (and of L2), which holds 8 lines a set (here): with 14 classes a
// second sweep over a pixel vector missed every cache and read the logits from DRAM again (the
// cross-entropy forward at (2, 14, 64, 128, 128) was 6x the time of its arithmetic). Up to 4
// rows share a set without evicting each other (half its ways, the rest for the kernel's other
// streams), and then the copy is left out: it was a quarter of the cross-entropy's forward at
// (4, 4, 1024, 1024).
inline bool gather_class_rows(int64_t C, int64_t stride_bytes) {
  constexpr int64_t kSetPeriod = 4096, kRowsASetHolds = 4;
  return C > kRowsASetHolds && stride_bytes % kSetPeriod == 0;
}

// Rows of a contiguous tensor whose dtype is known only at run time, as acc_t. A kernel that
// converts its rows to acc_t anyway (load_row) can take these in place of typed pointers: its
// math is then compiled once per acc_t, and only the conversions once per dtype, where the
// region losses' 4 input and 6 target dtypes would multiply every instantiation (and the build
// time) by 24.
template <typename acc_t>
class RowSource {
 public:
  // a floating, bool or uint8 tensor; contiguous
  explicit RowSource(const at::Tensor& t) {
    AT_DISPATCH_V2(
        t.scalar_type(), "pylosses",
        AT_WRAP([&] {
          data_ = t.const_data_ptr<scalar_t>();
          load_ = &load<scalar_t>;
        }),
        AT_EXPAND(AT_FLOATING_TYPES), at::kHalf, at::kBFloat16, at::kBool, at::kByte);
  }
  // The n values from element offset on: the data itself where it is acc_t, else converted into buf.
  const acc_t* operator()(int64_t offset, acc_t* buf, int64_t n) const { return load_(data_, offset, buf, n); }

 private:
  template <typename src_t>
  static const acc_t* load(const void* data, int64_t offset, acc_t* buf, int64_t n) {
    return load_row(static_cast<const src_t*>(data) + offset, buf, n);
  }
  const void* data_ = nullptr;
  const acc_t* (*load_)(const void*, int64_t, acc_t*, int64_t) = nullptr;
};

// A label map's rows (int64, int32 or uint8) as acc_t, with an ignored pixel's label `ignored`
// (-1 unless given), which no class matches. As RowSource: converted once a dtype, not compiled
// into each instantiation of the math.
template <typename acc_t>
class LabelRows {
 public:
  LabelRows(const at::Tensor& t, int64_t ignore_index, acc_t ignored = acc_t(-1))
      : ignore_(ignore_index), ignored_(ignored) {
    AT_DISPATCH_V2(t.scalar_type(), "pylosses", AT_WRAP([&] {
                     data_ = t.const_data_ptr<scalar_t>();
                     load_ = &load<scalar_t>;
                   }),
                   at::kLong, at::kInt, at::kByte);
  }
  const acc_t* operator()(int64_t offset, acc_t* buf, int64_t n) const {
    load_(data_, offset, buf, n, ignore_, ignored_);
    return buf;
  }

 private:
  template <typename label_t>
  static void load(const void* data, int64_t offset, acc_t* buf, int64_t n, int64_t ignore, acc_t ignored) {
    const label_t* t = static_cast<const label_t*>(data) + offset;
    for (int64_t i = 0; i < n; ++i) {  // vectorised by the compiler
      buf[i] = int64_t(t[i]) == ignore ? ignored : acc_t(t[i]);
    }
  }
  const void* data_ = nullptr;
  void (*load_)(const void*, int64_t, acc_t*, int64_t, int64_t, acc_t) = nullptr;
  int64_t ignore_;
  acc_t ignored_;
};

// A map of class labels (int64, int32 or uint8) checked, and counted: how many pixels hold each
// class (ignore_index left out), in fixed chunks added in order. A label outside [0, C) that is
// not ignore_index raises torch's IndexError, naming the first in the map's order (as
// reference.check_class_targets does). The cross-entropy's pre-pass (its mean's denominator),
// and the softmax region passes' check on the CPU.
struct LabelCounts {
  std::vector<int64_t> per_class;
  bool bad = false;
  int64_t first_bad = 0;
};

template <typename label_t>
LabelCounts count_labels(const label_t* t, int64_t n, int64_t classes, int64_t ignore) {
  constexpr int64_t kChunk = 1 << 14;  // labels a task takes at a time
  const int64_t chunks = at::divup(n, kChunk);
  std::vector<LabelCounts> parts(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      LabelCounts& part = parts[chunk];
      part.per_class.assign(classes, 0);
      const int64_t lo = chunk * kChunk, hi = std::min(n, lo + kChunk);
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t label = int64_t(t[i]);
        if (label == ignore) {
          continue;
        }
        if (label < 0 || label >= classes) {
          part.bad = true;
          part.first_bad = label;
          break;
        }
        ++part.per_class[label];
      }
    }
  });
  LabelCounts total;
  total.per_class.assign(classes, 0);
  for (const LabelCounts& part : parts) {
    if (part.bad) {
      return part;  // the first in the map's order
    }
    for (int64_t c = 0; c < classes; ++c) {
      total.per_class[c] += part.per_class[c];
    }
  }
  return total;
}

inline LabelCounts checked_label_counts(const at::Tensor& labels, int64_t classes, int64_t ignore_index) {
  LabelCounts counts;
  const at::Tensor map = labels.contiguous();
  AT_DISPATCH_V2(map.scalar_type(), "pylosses", AT_WRAP([&] {
                   counts = count_labels(map.const_data_ptr<scalar_t>(), map.numel(), classes, ignore_index);
                 }),
                 at::kLong, at::kInt, at::kByte);
  TORCH_CHECK_INDEX(!counts.bad, "Target ", counts.first_bad, " is out of bounds.");
  return counts;
}

// The rows of a floating output tensor (or none: false), written as acc_t: row() says where to
// compute the n values from element offset on, finish() stores them. direct(): rows are the
// tensor itself (it is acc_t), so that streaming stores can go straight into it.
template <typename acc_t>
class RowSink {
 public:
  RowSink() = default;
  explicit RowSink(at::Tensor& t) {
    dispatch_float(t.scalar_type(), [&](auto tag) {
      using dst_t = decltype(tag);
      data_ = t.mutable_data_ptr<dst_t>();
      direct_ = std::is_same_v<dst_t, acc_t>;
      store_ = &store<dst_t>;
    });
  }
  explicit operator bool() const { return data_ != nullptr; }
  bool direct() const { return direct_; }
  acc_t* row(int64_t offset, acc_t* buf) const { return direct_ ? static_cast<acc_t*>(data_) + offset : buf; }
  void finish(const acc_t* row, int64_t offset, int64_t n) const {
    if (!direct_) {
      store_(row, data_, offset, n);
    }
  }

 private:
  template <typename dst_t>
  static void store(const acc_t* row, void* data, int64_t offset, int64_t n) {
    store_row(row, static_cast<dst_t*>(data) + offset, n);
  }
  void* data_ = nullptr;
  bool direct_ = false;
  void (*store_)(const acc_t*, void*, int64_t, int64_t) = nullptr;
};

// Runs f(chunk, scratch) for every chunk in [0, n_chunks) on the intra-op thread pool. Chunks
// are fixed by the problem, not by the thread count, and each writes only its own partial
// results, so a fixed-order sum of those partials is the same bits for any number of threads.
// A gradient the kernel is about to write whole: at::empty, its pages advised for transparent
// huge pages where Linux offers them on request (THP "madvise", a common default). A gradient
// is a new tensor each step (zero_grad() sets .grad to None), and from 32 MiB on glibc always
// takes it from fresh mmap pages, whose first touch is a fault that clears the page: with
// 4 KiB pages those faults cost more than the kernel's own work (a 117 MB gradient: 61 ms to
// fill fresh, 8 ms reused, on the development machine), with 2 MiB pages a fraction of it.
// Below 32 MiB glibc reuses its heap, whose pages are already there: no advice is given (it
// would also split the heap's mapping). Only advice: the memory and its contents are as
// at::empty's; a kernel without THP ignores it. torch's own THP_MEM_ALLOC_ENABLE=1 does the
// same for every large CPU allocation.
constexpr int64_t kHugePageAdviceBytes = int64_t(32) << 20;

inline at::Tensor empty_gradient(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor grad = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const int64_t bytes = int64_t(grad.nbytes());
  if (bytes >= kHugePageAdviceBytes) {
    constexpr uintptr_t kPage = 4096;
    const uintptr_t start = reinterpret_cast<uintptr_t>(grad.data_ptr());
    const uintptr_t first = (start + kPage - 1) & ~(kPage - 1), last = (start + bytes) & ~(kPage - 1);
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);  // advice: failure is harmless
  }
#endif
  return grad;
}

// Each task makes its own Scratch, reused across its chunks.
template <typename Scratch, typename F>
inline void for_each_chunk(int64_t n_chunks, const F& f) {
  at::parallel_for(0, n_chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch;
    for (int64_t c = begin; c < end; ++c) {
      f(c, scratch);
    }
  });
}

// Horizontal sum of a vector accumulator, lane by lane in a fixed order.
template <typename acc_t>
inline acc_t lane_sum(const Vec<acc_t>& v) {
  acc_t lanes[Vec<acc_t>::size()];
  v.store(lanes);
  acc_t s = 0;
  for (int64_t i = 0; i < Vec<acc_t>::size(); ++i) {
    s += lanes[i];
  }
  return s;
}

// Runs body(vector_index, lanes) over a row of n values, full vectors first and then one
// partial vector. body receives std::true_type for the partial one, whose lanes past `lanes`
// are loaded as 0 and must not be accumulated or stored.
template <typename acc_t, typename Body>
inline void for_each_vector(int64_t n, const Body& body) {
  constexpr int64_t kLanes = Vec<acc_t>::size();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    body(std::false_type{}, i, kLanes);
  }
  if (i < n) {
    body(std::true_type{}, i, n - i);
  }
}

template <bool kTail, typename acc_t>
inline Vec<acc_t> load(const acc_t* p, int64_t lanes) {
  return kTail ? Vec<acc_t>::loadu(p, lanes) : Vec<acc_t>::loadu(p);
}

template <bool kTail, typename acc_t>
inline void store(const Vec<acc_t>& v, acc_t* p, int64_t lanes) {
  if (kTail) {
    v.store(p, lanes);
  } else {
    v.store(p);
  }
}

// Lanes [lo, hi) from base[lo, hi) and the other lanes from `other`, reading nothing of base
// outside [lo, hi) (masked loads: the lanes left out cannot fault). A row's first and last
// vector take their outer neighbour this way where nothing is readable past the row's ends.
template <typename acc_t>
inline Vec<acc_t> load_lanes_or(const acc_t* base, int64_t lo, int64_t hi, const Vec<acc_t>& other) {
#if defined(CPU_CAPABILITY_AVX512)
  const auto bits = ((uint32_t(1) << hi) - 1) & ~((uint32_t(1) << lo) - 1);
  if constexpr (std::is_same_v<acc_t, float>) return _mm512_mask_loadu_ps(other, __mmask16(bits), base);
  if constexpr (std::is_same_v<acc_t, double>) return _mm512_mask_loadu_pd(other, __mmask8(bits), base);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(int32_t(lo) - 1)),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(hi)), lane));
    return _mm256_blendv_ps(other, _mm256_maskload_ps(base, in), _mm256_castsi256_ps(in));
  }
  if constexpr (std::is_same_v<acc_t, double>) {
    const __m256i lane = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi64(lane, _mm256_set1_epi64x(lo - 1)),
                                        _mm256_cmpgt_epi64(_mm256_set1_epi64x(hi), lane));
    return _mm256_blendv_pd(other, _mm256_maskload_pd(base, in), _mm256_castsi256_pd(in));
  }
#endif
  acc_t lanes[Vec<acc_t>::size()];
  other.store(lanes);
  for (int64_t j = lo; j < hi; ++j) {
    lanes[j] = base[j];
  }
  return Vec<acc_t>::loadu(lanes);
}

// A full vector to memory that nothing reads soon (a gradient, for the optimizer): past the
// caches when the address allows, which spares reading the line before writing it. Call
// stream_fence() after the last one.
template <typename acc_t>
inline void store_stream(const Vec<acc_t>& v, acc_t* p) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  if (reinterpret_cast<uintptr_t>(p) % sizeof(Vec<acc_t>) == 0) {
#if defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) return _mm512_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm512_stream_pd(p, v);
#else
    if constexpr (std::is_same_v<acc_t, float>) return _mm256_stream_ps(p, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm256_stream_pd(p, v);
#endif
  }
#endif
  v.store(p);
}

inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// acc += v on the first `lanes` lanes only.
template <bool kTail, typename acc_t>
inline void accumulate(Vec<acc_t>& acc, const Vec<acc_t>& v, int64_t lanes) {
  acc = acc + (kTail ? Vec<acc_t>::set(Vec<acc_t>(acc_t(0)), v, lanes) : v);
}

}  // namespace pylosses::cpu

