#pragma once
// Per-pixel math of the multi-class cross-entropy (torch.nn.functional.cross_entropy over
// (B, C, spatial...) logits and class-index maps), shared by the CPU and CUDA kernels. T is
// float or double (CUDA) or an at::vec::Vectorized of them (CPU: one lane a pixel).
//
// A pixel's C logits x_c are shifted by their maximum m, y_c = x_c - m <= 0, so that
// e_c = exp(y_c) never overflows and the sum S = sum_c e_c lies in [1, C]. With L = log S
// (= logsumexp - m), p_c = e_c / S, the label t, its weight w_t (0 for an ignored pixel),
// v = 1 for a pixel that counts and 0 for an ignored one, W = sum_c w_c and s the smoothing:
//
//   loss  = (1 - s) w_t (L - y_t) + s / C * v * (W L - sum_c w_c y_c)
//   dx_c  = A p_c - B_c,  A = (1 - s) w_t + s / C * v * W,  B_c = (1 - s) w_t [c == t] + s / C * v * w_c
//
// (torch's terms: -w_t log p_t, and the smoothing's -sum_c w_c log p_c = W L - sum_c w_c y_c;
// every y_c <= 0, so that sum adds terms of one sign for weights >= 0: no cancellation).
// "mean" divides the sum of the losses, and every gradient, by D = sum of w_t over the pixels
// that count: that is for the kernels' reductions, not for these functions.
#include "math_common.h"

namespace pylosses::math {

// The options that are the same for every pixel, as the per-pixel functions take them: scalars
// (float or double, S), also where T is a vector of pixels.
template <typename S>
struct CeOptions {
  S keep;        // 1 - s: the weight of the label's own term
  S smooth;      // s / C: the weight of each class's smoothing term
  S weight_sum;  // W = sum_c w_c (C when there are no weights)
};

// The loss of one pixel, from the label's -log p_t (nll_t), L = log S, w_t, v, and wy = sum_c w_c y_c
// (used only where s > 0: the caller may pass 0 for it when it is not).
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_loss_of_nll(const CeOptions<S>& o, T nll_t, T log_sum, T w_t, T v, T wy) {
  return T(o.keep) * w_t * nll_t + T(o.smooth) * v * (T(o.weight_sum) * log_sum - wy);
}

// The same with the label's -log p_t as L - y_t: within a rounding of S (2^-24 absolute, as
// torch's float32) of exact, which is not relative accuracy for a confident pixel's small loss.
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_loss(const CeOptions<S>& o, T log_sum, T y_t, T w_t, T v, T wy) {
  return ce_loss_of_nll(o, log_sum - y_t, log_sum, w_t, v, wy);
}

// The label's -log p_t = log(1 + R), R = sum_{c != t} e_c / e_t (the others' exponentials over
// the label's), for a kernel whose exponentials and log are approximate (CUDA's float32: within
// 2^-22 relative and absolute): where R < 1/8 (a loss below log(9/8), the label leading the
// pixel) log1m_series(-R), which keeps R's relative accuracy, so a loss of 1e-7 is right to a few
// 1e-7 of itself; elsewhere L - y_t (nll_plain), at least 0.118, to which an absolute error of a
// few 1e-7 is small. A NaN or infinite R (the label's exponential 0) takes nll_plain.
template <typename T>
C10_HOST_DEVICE inline T ce_label_nll(T nll_plain, T ratio) {
  return pselect(ratio < T(kSeriesBelow), log1m_series(pneg(ratio)), nll_plain);
}

// wy as ce_loss takes it from a kernel that sums it whether or not there is smoothing: 0 without,
// where a class's logit of -inf (a class masked out, which torch takes: a finite loss) makes wy
// -inf and the smoothing's term 0 x -inf, NaN. (The CUDA cross-entropy sums wy only with
// smoothing, a template argument, and needs none of this.)
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_smoothing_wy(const CeOptions<S>& o, T wy) {
  return o.smooth == S(0) ? T(0) : wy;
}

// A of the gradient dx_c = A p_c - B_c: the factor of every class's probability.
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_grad_prob_factor(const CeOptions<S>& o, T w_t, T v) {
  return T(o.keep) * w_t + T(o.smooth * o.weight_sum) * v;
}

// dx_c of one pixel, from p_c, A (ce_grad_prob_factor), is_t (1 where c is the label, else 0),
// w_t, v and w_c.
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_grad(const CeOptions<S>& o, T p_c, T a, T is_t, T w_t, T v, T w_c) {
  return a * p_c - (T(o.keep) * w_t * is_t + T(o.smooth) * v * w_c);
}

// The same split by class, for the kernels that keep the label's gradient accurate: a class c
// other than the label, A p_c - s/C v w_c ...
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_grad_other(const CeOptions<S>& o, T p_c, T a, T v, T w_c) {
  return a * p_c - T(o.smooth) * v * w_c;
}

// ... and the label t, A p_t - B_t = s/C v (W - w_t) - A q_t from a_q = A q_t, q_t = 1 - p_t =
// (sum_{c != t} e_c) / S: without smoothing -A q_t, as accurate as q_t, where A (p_t - 1) from a
// rounded p_t would be off by about 2^-24 A absolute (most of a confident pixel's gradient).
template <typename S, typename T>
C10_HOST_DEVICE inline T ce_grad_label(const CeOptions<S>& o, T a_q, T w_t, T v) {
  return T(o.smooth) * v * (T(o.weight_sum) - w_t) - a_q;
}

}  // namespace pylosses::math
