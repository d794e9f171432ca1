#pragma once
// The primitives that the per-loss math headers (<loss>_math.h) are written in, for float and
// double on the host and on the device. The CPU kernels add overloads of the same names for
// at::vec::Vectorized (csrc/cpu/cpu_common.h, included before any math header), so a single
// template in <loss>_math.h serves the scalar CUDA code and the vectorised CPU code.
#include <c10/macros/Macros.h>

#include <cmath>

namespace pylosses::math {

C10_HOST_DEVICE inline float plog(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double plog(double x) { return ::log(x); }
C10_HOST_DEVICE inline float plog1p(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double plog1p(double x) { return ::log1p(x); }
C10_HOST_DEVICE inline float pexp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double pexp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float pabs(float x) { return ::fabsf(x); }
C10_HOST_DEVICE inline double pabs(double x) { return ::fabs(x); }

// 1 / d, where the math needs only a reciprocal (a multiplication follows): the CPU's vectors
// take an estimate and a Newton step in place of a division.
template <typename T>
C10_HOST_DEVICE inline T preciprocal(T d) { return T(1) / d; }
#if defined(__CUDA_ARCH__)
// On the device in float32: MUFU.RCP (within 1 ulp) and one Newton step, within 0.5 ulp but for
// rare misroundings, with errors of either sign and no slow path (an IEEE division branches to
// one for extreme operands). For d normal and below 2^126, which the callers' are: [1e-12, 2]
// (and 0, a label's flushed exponential, from the cross-entropy's ratio R in cross_entropy.cu
// and softmax_region.cu, which take the NaN it gives as "no ratio": math::ce_label_nll).
__device__ inline float preciprocal(float d) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return fmaf(r, fmaf(-d, r, 1.f), r);
}
#endif

#if defined(__CUDACC__) || defined(PYLOSSES_CUDA_EMULATION)
#define PYLOSSES_APPROX_LOG2 1
// CUDA's float32 log2 from the special-function unit (MUFU.LG2, __log2f): by CUDA's math API
// documentation within 2^-22 absolute for x in [0.5, 2] and 2 ulp elsewhere; subnormals are
// kept (no -ftz), log2(0) = -inf, NaN below 0. The CUDA emulation that the tests run takes
// log2 with that worst error added, always in the same direction, so that its tests hold the
// math that uses it to what the bound allows.
C10_HOST_DEVICE inline float plog2_approx(float x) {
#if defined(__CUDA_ARCH__)
  return __log2f(x);
#else
  const float y = ::log2f(x);
  return x >= 0.5f && x <= 2.f ? y + 0x1p-22f : y * (1.f + 0x1p-22f);
#endif
}

// exp(y) for y <= 0 (a softmax's logits less their max), float32, from the special-function
// unit: ex2.approx.ftz of y log2(e) (MUFU.EX2 within 2 ulp; rounding y log2(e) adds |y| 2^-24
// relative), results below 2^-126 flushed to 0: an error below 2^-21 absolute for any y (the
// largest, e^y |y| 2^-24 at y = -1, is 2^-25.4), which a sum of such terms with the largest
// exp(0) = 1 can take. The emulation returns expf with an error of 2^-20 relative, always in
// the same direction.
C10_HOST_DEVICE inline float pexp_nonpositive_approx(float y) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y * 1.4426950408889634f));
  return r;
#else
  return ::expf(y) * (1.f + 0x1p-20f);
#endif
}
C10_HOST_DEVICE inline double pexp_nonpositive_approx(double y) { return ::exp(y); }
#endif

// std::max's rule, written out so that it is usable on the device: a NaN in `a` propagates.
template <typename T>
C10_HOST_DEVICE inline T pmax(T a, T b) { return a < b ? b : a; }

// sign(x) with sign(0) = 0, as torch's abs backward uses it.
template <typename T>
C10_HOST_DEVICE inline T psign(T x) { return T(x > T(0)) - T(x < T(0)); }

// sign(a) - sign(b): the TV gradient's term, from the differences on either side of an element.
template <typename T>
C10_HOST_DEVICE inline T psign_diff(T a, T b) { return psign(a) - psign(b); }

// Whether t is a hard label, 0 or 1 (t (1 - t) is 0 for nothing else, NaN included). The CPU's
// overload for vectors asks it of every lane.
template <typename T>
C10_HOST_DEVICE inline bool phard(T t) { return t * (T(1) - t) == T(0); }

// x >= 0 ? a : b
template <typename T>
C10_HOST_DEVICE inline T pselect_ge0(T x, T a, T b) { return x >= T(0) ? a : b; }

// c ? a : b with both computed: on the device a select (selp), never a branch, where the
// compiler would otherwise branch around two costly operands (a warp whose lanes take both
// sides runs both anyway, and the branch adds its own instructions).
template <typename T>
C10_HOST_DEVICE inline T pselect(bool c, T a, T b) { return c ? a : b; }
#if defined(__CUDA_ARCH__)
__device__ inline float pselect(bool c, float a, float b) {
  float r;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n selp.f32 %0, %1, %2, p;\n}" : "=f"(r) : "f"(a), "f"(b), "r"(int(c)));
  return r;
}
#endif

// -x: for scalars an operand's sign, which the instruction that takes it absorbs (0 - x is an
// addition of its own); the CPU's vectors take 0 - x.
template <typename T>
C10_HOST_DEVICE inline T pneg(T x) { return T(0) - x; }
C10_HOST_DEVICE inline float pneg(float x) { return -x; }
C10_HOST_DEVICE inline double pneg(double x) { return -x; }

// log(1 - s) for |s| <= 1/8: -s c(s), c a degree-5 polynomial, fitted (Remez, minimax in the
// relative error) to -log(1 - s) / s on [-1/8, 1/8]: within 2^-25.8 of it in exact arithmetic,
// 1.3 ulp of the result in float32's (measured against log1p in float64 at 204,000 points);
// Taylor's series needs degree 7 for the same. log(1 + e) is log1m_series(-e).
template <typename T>
C10_HOST_DEVICE inline T log1m_series(T s) {
  constexpr double kC[6] = {1.0, 0x1.000002p-1, 0x1.555018p-2, 0x1.fff26cp-3, 0x1.a08e3ap-3, 0x1.5c4d34p-3};
  T c = T(kC[5]);
  for (int k = 4; k >= 0; --k) {
    c = c * s + T(kC[k]);
  }
  return pneg(s * c);
}

// Below this |s|, CUDA's float32 log(1 - s) is log1m_series (seg_loss_math.h's plog1m), within
// 1.3 ulp of it; from it on, MUFU.LG2 (plog2_approx), whose error (2^-22 absolute near 1) the
// result's size, at least log(9/8) = 0.118, keeps below 1.4e-6 relative. (The cross-entropy's
// ce_label_nll takes the series below the same bound.)
constexpr double kSeriesBelow = 0.125;
constexpr double kLn2 = 0.693147180559945309;

}  // namespace pylosses::math
