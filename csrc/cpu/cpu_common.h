#pragma once
// What the CPU kernels share: Vectorized overloads of the math primitives, row conversion,
// fixed-order chunked reduction (the dtype rules and dispatch are ../kernel_common.h's).
//
// Include this before any csrc/<loss>_math.h: the math templates find these overloads by
// ordinary lookup, which only sees what was declared before the template.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../kernel_common.h"
#include "../math_common.h"

namespace pylosses::math {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> plog(const Vec<T>& x) { return x.log(); }
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
  return u.log() + Vec<T>::blendv(Vec<T>(T(0)), r, x <= one);
}
template <typename T>
inline Vec<T> pexp(const Vec<T>& x) { return x.exp(); }
template <typename T>
inline Vec<T> pabs(const Vec<T>& x) { return x.abs(); }
template <typename T>
inline Vec<T> pmax(const Vec<T>& a, const Vec<T>& b) { return at::vec::maximum(a, b); }
template <typename T>
inline Vec<T> psign(const Vec<T>& x) {
  const Vec<T> zero(T(0));
  return x.gt(zero) - x.lt(zero);  // gt/lt give 1 or 0 in each lane
}
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

// A row of n values as acc_t: the data itself when it already is acc_t, else converted into buf.
template <typename acc_t, typename src_t>
inline const acc_t* load_row(const src_t* src, acc_t* buf, int64_t n) {
  if constexpr (std::is_same_v<src_t, acc_t>) {
    return src;
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

// Runs f(chunk, scratch) for every chunk in [0, n_chunks) on the intra-op thread pool. Chunks
// are fixed by the problem, not by the thread count, and each writes only its own partial
// results, so a fixed-order sum of those partials is the same bits for any number of threads.
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

