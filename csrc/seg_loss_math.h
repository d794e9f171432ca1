#pragma once
// Per-element math of the segmentation loss alpha * BCE + beta * TV, shared by the CPU and CUDA
// kernels. T is float or double (CUDA) or an at::vec::Vectorized of them (CPU).
//
// x is the input as the user gave it (a probability, or a logit when kLogits), p the
// probability (x itself, or sigmoid(x)) and t the target as a number in [0, 1].
#include "math_common.h"
#include "sigmoid_math.h"

#include <type_traits>

namespace pylosses::math {

// Which targets must lie in [0, 1]: with probabilities, every target (nn.BCELoss checks them);
// with logits, uint8 masks only (nn.BCEWithLogitsLoss takes any float target); bool always does.
template <bool kLogits, bool kFloatTarget, bool kBoolTarget>
inline constexpr bool kTargetChecked = !kBoolTarget && (!kLogits || !kFloatTarget);
// The error for a float target (the CPU raises it; CUDA, in checking mode): torch's own.
// pylosses/reference.py has the same text; a uint8 mask's is kMaskMessage (../kernel_common.h).
inline constexpr const char* kTargetRangeMessage = "all elements of target should be between 0 and 1";

// Whether p lies in [0, 1], NaN not, with one product and one compare: p (1 - p) >= 0, where a
// NaN-propagating minimum and maximum take six. (Exact at the ends: 1 - p is exact for p near
// 1, and p (1 - p) of a p below 0 keeps its sign, a subnormal product included.) A bool for a
// scalar; for the CPU's vectors the mask of the lanes.
template <typename T>
C10_HOST_DEVICE inline auto in_unit_interval(T p) { return p * (T(1) - p) >= T(0); }

// Clamp of the logs in nn.BCELoss, so that p = 0 or 1 gives a finite loss.
constexpr double kBceLogClamp = -100.0;
// Floor of p (1 - p) in nn.BCELoss's backward: torch's EPSILON, a float (1e-12f, 9.99999996e-13
// as a double, which the float64 gradient then matches to the last bit).
constexpr double kBceGradEps = static_cast<double>(1e-12f);

// log(q + r), where q + r = 1 - s: q rounded, r its rounding residue, and s exact wherever it
// is below 1/8 (a hard label's probability, 1 + exp(-|x|) with s = -exp(-|x|)). The generic
// form is log(q) + r; CUDA in float32 takes log1m_series there and MUFU.LG2 elsewhere.
template <typename T>
C10_HOST_DEVICE inline T plog1m(T q, T r, T s) {
#if defined(PYLOSSES_APPROX_LOG2)
  if constexpr (std::is_same_v<T, float>) {
    return pselect(pabs(s) < T(kSeriesBelow), log1m_series(s), plog2_approx(q) * T(kLn2) + r);
  }
#endif
  return plog(q) + r;
}

// log(1 + exp(-|x|)) from e = exp(-|x|) and u = 1 + e, the sigmoid's denominator: log(u) plus
// u's rounding residue (exact, e <= 1), as accurate as log1p(e) (cpu_common.h's plog1p). CUDA
// in float32: the series where e < 1/8 (|x| > 2.08), so that a confident logit keeps the
// relative accuracy of its tiny loss, and MUFU.LG2 for the rest.
template <typename T>
C10_HOST_DEVICE inline T softplus_neg_abs(T e, T u) {
  return plog1m(u, e - (u - T(1)), pneg(e));
}

// The sigmoid of a logit and the log(1 + exp(-|x|)) of its BCE, from one exponential.
template <typename T>
C10_HOST_DEVICE inline T sigmoid_softplus(T x, T& softplus) {
  const T e = pexp(pneg(pabs(x)));
  const T u = T(1) + e;
  softplus = softplus_neg_abs(e, u);
  return pselect_ge0(x, T(1), e) * preciprocal(u);
}

// BCE of a logit, given softplus = log(1 + exp(-|x|)): the stable form of nn.BCEWithLogitsLoss,
// max(x, 0) - x t + log(1 + exp(-|x|)).
template <typename T>
C10_HOST_DEVICE inline T bce_logits_loss(T x, T t, T softplus) {
  return pmax(x, T(0)) - x * t + softplus;
}

// BCE of probabilities for a hard label (t = 0 or 1) with one log where a soft label takes two:
// -log q, with q the probability given to the label, p or 1 - p. 1 - p is rounded where
// p < 1/2; its rounding residue r (exact: Fast2Sum) restores log(1 - p) = log(q) + r to within
// an ulp, so that a confident p (1e-9 with t = 0) keeps its loss p, as log1p(-p) gives it.
// CUDA in float32 takes the log from MUFU.LG2 (plog2_approx), whose absolute error near 1 would
// swamp a confident loss, and the series for those: s = 1 - q - r, the distance of p from its
// label, is exact where it is below 1/8 (p itself, or 1 - p for p > 7/8). The rest, losses of
// 0.13 and more, is within 2^-22 ln 2 (about 1.7e-7) absolute.
template <typename T>
C10_HOST_DEVICE inline T bce_loss_hard(T p, T t) {
  const T one_minus_p = T(1) - p;
  const T residue = (T(1) - one_minus_p) - p;
  const T label = t - T(0.5);
  const T log_q = plog1m(pselect_ge0(label, p, one_minus_p), pselect_ge0(label, T(0), residue),
                         pselect_ge0(label, one_minus_p, p));
  return pneg(pmax(log_q, T(kBceLogClamp)));
}

// Which form the BCE of probabilities takes: the two-log form that any label needs, the one-log
// form of hard labels (bool and uint8 targets), or either, as a test of the labels finds them
// (the CPU, for a vector of float targets: hard where every lane is). CUDA keeps float targets
// soft: a per-element branch would hold both forms in its hot loop, and whether that pays for
// float masks is for a GPU measurement to say.
enum class Labels { kSoft, kHard, kTested };

// log p and log(1 - p), unclamped: plog and plog1p; CUDA in float32 both from plog1m (MUFU.LG2,
// or the series where p is within 1/8 of 1 or of 0), as the hard labels' one log is taken, so
// that the target's gradient, log(1 - p) - log p, reuses them.
template <typename T>
C10_HOST_DEVICE inline void bce_logs(T p, T& log_p, T& log_q) {
#if defined(PYLOSSES_APPROX_LOG2)
  if constexpr (std::is_same_v<T, float>) {
    const T one_minus_p = T(1) - p;
    log_p = plog1m(p, T(0), one_minus_p);
    log_q = plog1m(one_minus_p, (T(1) - one_minus_p) - p, p);
    return;
  }
#endif
  log_p = plog(p);
  log_q = plog1p(pneg(p));
}

// BCE of a probability p (one element, or a vector of them). The logits form is
// bce_logits_loss, from the softplus that the sigmoid's exponential gave.
template <typename T, Labels kLabels = Labels::kSoft>
C10_HOST_DEVICE inline T bce_loss(T p, T t) {
  if (kLabels == Labels::kHard || (kLabels == Labels::kTested && phard(t))) {
    return bce_loss_hard(p, t);
  }
  T log_p, log_q;
  bce_logs(p, log_p, log_q);
  return (t - T(1)) * pmax(log_q, T(kBceLogClamp)) - t * pmax(log_p, T(kBceLogClamp));
}

// d BCE / d x
template <typename T, bool kLogits>
C10_HOST_DEVICE inline T bce_grad_input(T p, T t) {
  if constexpr (kLogits) {
    return p - t;
  } else {
    return (p - t) * preciprocal(pmax((T(1) - p) * p, T(kBceGradEps)));
  }
}

// d BCE / d t, as torch gives it: -x for logits, -logit(p) for probabilities (unclamped, so
// p = 0 or 1 gives an infinite target gradient exactly as nn.BCELoss does).
template <typename T, bool kLogits>
C10_HOST_DEVICE inline T bce_grad_target(T x, T p) {
  if constexpr (kLogits) {
    return pneg(x);
  } else {
    T log_p, log_q;
    bce_logs(p, log_p, log_q);
    return log_q - log_p;
  }
}

// dp / dx: the factor that carries the TV gradient (taken on p) to the input.
template <typename T, bool kLogits>
C10_HOST_DEVICE inline T prob_grad(T p) {
  if constexpr (kLogits) {
    return sigmoid_grad(p);
  } else {
    return T(1);
  }
}

// The total-variation terms of one element along one axis. prev and next are its neighbours
// on that axis; at either end of the axis the element stands in for the missing neighbour, so
// the missing difference is 0 and adds nothing to the loss or the gradient.
// The loss counts each pair once: |p - prev| at the later element (the CPU), or the same pair
// as |next - p| at the earlier one (CUDA).
template <typename T>
C10_HOST_DEVICE inline T tv_loss(T prev, T p) { return pabs(p - prev); }

// The sign of a pair's difference, d|p - prev| / dp; the earlier element of the pair takes its
// negative. A kernel that walks an axis computes it once and carries it to the next element.
template <typename T>
C10_HOST_DEVICE inline T tv_sign(T prev, T p) { return psign(p - prev); }

// d/dp of |p - prev| + |next - p|: tv_sign(prev, p) - tv_sign(p, next)
template <typename T>
C10_HOST_DEVICE inline T tv_grad(T prev, T p, T next) {
  return psign_diff(p - prev, next - p);
}

// The loss from its sums: bce, and tv[a] the sum of |differences| along axis a (W, H, D), over
// n elements whose extents are extent[a] (1 for a missing axis):
// alpha * mean(BCE) + beta * sum over axes of mean |difference|, or the same with sums.
// An axis of length 1 has no differences and contributes 0. n = 0 gives NaN for the mean.
template <typename T>
C10_HOST_DEVICE inline T seg_reduce(T bce, const T tv[3], T n, const T extent[3], T alpha, T beta, bool mean) {
  if (!mean) {
    return alpha * bce + beta * (tv[0] + tv[1] + tv[2]);
  }
  T value = alpha * bce / n;
  for (int a = 0; a < 3; ++a) {
    if (extent[a] > 1) {  // the mean over its N (L - 1) / L differences
      value += beta * tv[a] / (n * (extent[a] - 1) / extent[a]);
    }
  }
  return value;
}

// The factors of the input gradient for grad_output = 1: `bce` on d BCE / d p, and axis[a] on
// each axis's TV term: beta / (number of differences along a) for a mean, beta for a sum.
// n_mean: the elements a mean is over (all, or a sample's for reduction "none").
struct SegGradWeights {
  double bce = 0;
  double axis[3] = {0, 0, 0};

  C10_HOST_DEVICE SegGradWeights(double alpha, double beta, bool mean, double n_mean, const double extent[3]) {
    const double inv_n = mean ? 1.0 / (n_mean > 1 ? n_mean : 1.0) : 1.0;
    bce = alpha * inv_n;
    for (int a = 0; a < 3; ++a) {
      const double len = extent[a];
      axis[a] = len > 1 ? beta * inv_n * (mean ? len / (len - 1) : 1.0) : 0.0;
    }
  }
};

}  // namespace pylosses::math
