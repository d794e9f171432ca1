// beta * the total variation of softmax(input) over the classes, on CUDA (op softmax_tv_fwd; the
// CPU kernel, csrc/cpu/softmax_tv.cpp, is the other backend): the lambda_tv term of DiceCELoss
// with no softmax tensor in memory, its input gradient written in the forward. The per-element
// math (tv_loss, tv_grad, seg_reduce, SegGradWeights) is csrc/seg_loss_math.h's.
//
// The contiguous input is B samples of C planes of S pixels (S = H x W, or D x H x W); a
// pixel's C logits lie S apart. With p_c a pixel's probability of class c and G_c = sum over
// the axes of w_a * tv_grad(prev, p_c, next) (a missing neighbour at the axis's ends standing
// in by the pixel itself, so that its difference is 0), the gradient is
// dx_c = p_c (G_c - sum_k G_k p_k). The loss counts each pair once, at its earlier element,
// |p(i + e_a) - p(i)|.
//
// A thread a pixel, grid-stride (softmax_tv_kernel); per-block sums of the three axes' terms in
// a row of partials, which sum_and_finish adds in a fixed order: no atomics, no host sync, the
// same bits run after run.
#include <torch/library.h>

#include <limits>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../seg_loss_math.h"

namespace pylosses::cuda {
namespace {

constexpr int kTvSums = 3;  // sums of |differences| along W, H, D (seg_reduce's order)

// Blocks of softmax_tv_kernel that a multiprocessor keeps, which __launch_bounds__ makes ptxas
// fit into: 4 (64 registers a thread; 47 to 59 in use) in float32 arithmetic, 2 (128) in float64,
// whose maxima and reciprocals of the pixel and its neighbours take twice the registers (3-D:
// 128, without spilling once the neighbours' offsets were 32-bit).
template <typename acc_t>
constexpr int kTvBlocksPerSM = std::is_same_v<acc_t, double> ? 2 : 4;

template <typename input_t>
struct TvArgs {
  using acc_t = acc_type_t<input_t>;
  const input_t* x;              // (B, C, S), contiguous
  saved_grad_t<input_t>* grad;   // of x's shape, or null
  acc_t* partials;               // a row of kTvSums a block
  int64_t pixels, S, CS;         // B x S, pixels a plane, C x S
  int64_t W, H, D;               // D = 1 in 2-D
  int C;                         // classes
  acc_t w[3];                    // the gradient's factors along W, H, D (math::SegGradWeights)
};

// A thread a pixel: the softmax of the pixel and of each of its 2 kDims neighbours (along W, H
// and in 3-D D), the loss terms of the pairs it begins, and the gradient of its C logits. Four
// sweeps over the classes, each reading logits of the kValues pixels (the pixel's own from DRAM
// in the first sweep; the rest, and the neighbours', which the neighbouring threads and blocks
// read too, from L1 or L2):
//   1. the max of each pixel's logits,
//   2. the sum of their exponentials, and its reciprocal,
//   3. the pixel's and its next neighbours' probabilities, the loss terms, and with a gradient
//      the previous neighbours' probabilities, G_c and sum_k G_k p_k,
//   4. (with a gradient) the probabilities and G_c again, and dx_c.
// Its cost a logit (an element), with the gradient: 3 x kValues exponentials (15 in 2-D, 21 in
// 3-D; MUFU.EX2 in float32) and 4 x kValues loads; without it kValues + 1 + kDims exponentials
// (8, 11); where an element needs one exponential and one load. Each pixel's softmax is computed
// 1 + 2 kDims times: by its own thread and by each neighbour's. A first version, for correctness
// and clarity (issue 15). The next step is a ring of rows: a block walks an axis keeping the
// probabilities of three rows (planes in 3-D) of all C classes in registers or shared memory,
// as the CPU kernel keeps three slices, so that each pixel's softmax is computed once and each
// logit read once. The class sweeps are loops of one class a pass (#pragma unroll 1), which the
// sm_90 gate adds up as the cost of an element (tools/sm90_gate.py, count_class_sweeps).
template <int kDims, typename input_t>
__global__ void __launch_bounds__(kThreads, kTvBlocksPerSM<acc_type_t<input_t>>)
    softmax_tv_kernel(const TvArgs<input_t> a) {
  using acc_t = acc_type_t<input_t>;
  using grad_t = saved_grad_t<input_t>;
  // the pixel, then its previous and next neighbour along each axis (W, H, D)
  constexpr int kValues = 1 + 2 * kDims;
  const int64_t len[3] = {a.W, a.H, a.D};
  const int32_t step[3] = {1, int32_t(a.W), int32_t(a.W * a.H)};  // below 2^31 (the host checks)
  acc_t sums[kTvSums] = {};
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < a.pixels; i += stride) {
    const int64_t b = i / a.S, s = i - b * a.S;
    const int64_t row = s / a.W;  // h + H d
    const int64_t coord[3] = {s - row * a.W, kDims == 3 ? row % a.H : row, kDims == 3 ? row / a.H : 0};
    // the offsets of the kValues pixels from the pixel, within a plane (32 bits: the registers
    // that keep float64's 3-D kernel from spilling); a missing neighbour is the pixel itself
    const int64_t pixel = b * a.CS + s;  // its class 0
    int32_t delta[kValues];
    delta[0] = 0;
#pragma unroll
    for (int ax = 0; ax < kDims; ++ax) {
      delta[1 + 2 * ax] = coord[ax] > 0 ? -step[ax] : 0;
      delta[2 + 2 * ax] = coord[ax] + 1 < len[ax] ? step[ax] : 0;
    }
    // value k's logit of the class whose pixel's logit is at xc
    const auto logit = [&](const input_t* xc, int k) { return static_cast<acc_t>(xc[delta[k]]); };
    const input_t* const first = a.x + pixel;

    acc_t m[kValues], inv[kValues];  // each pixel's max logit, and 1 / its sum of exp(x_c - m)
#pragma unroll
    for (int k = 0; k < kValues; ++k) {
      m[k] = logit(first, k);
      inv[k] = 0;
    }
    const input_t* x = first + a.S;
#pragma unroll 1
    for (int c = 1; c < a.C; ++c, x += a.S) {
#pragma unroll
      for (int k = 0; k < kValues; ++k) {
        m[k] = math::pmax(logit(x, k), m[k]);
      }
    }
    x = first;
#pragma unroll 1
    for (int c = 0; c < a.C; ++c, x += a.S) {
#pragma unroll
      for (int k = 0; k < kValues; ++k) {
        inv[k] += math::pexp_nonpositive_approx(logit(x, k) - m[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kValues; ++k) {
      inv[k] = math::preciprocal(inv[k]);
    }

    // p_c of value k, for the class whose logits start at xc
    const auto prob = [&](const input_t* xc, int k) {
      return math::pexp_nonpositive_approx(logit(xc, k) - m[k]) * inv[k];
    };
    // the pixel's p_c, and in next[ax] its next neighbour's along each axis
    const auto prob_and_next = [&](const input_t* xc, acc_t (&next)[kDims]) {
#pragma unroll
      for (int ax = 0; ax < kDims; ++ax) {
        next[ax] = prob(xc, 2 + 2 * ax);
      }
      return prob(xc, 0);
    };
    // G_c, from the pixel's p_c, its next neighbours' and (read here) its previous ones'
    const auto grad_of = [&](const input_t* xc, acc_t p, const acc_t (&next)[kDims]) {
      acc_t G = 0;
#pragma unroll
      for (int ax = 0; ax < kDims; ++ax) {
        G += a.w[ax] * math::tv_grad(prob(xc, 1 + 2 * ax), p, next[ax]);
      }
      return G;
    };
    acc_t dot = 0;  // sum_k G_k p_k
    x = first;
#pragma unroll 1
    for (int c = 0; c < a.C; ++c, x += a.S) {
      acc_t next[kDims];
      const acc_t p = prob_and_next(x, next);
#pragma unroll
      for (int ax = 0; ax < kDims; ++ax) {
        sums[ax] += math::tv_loss(p, next[ax]);  // 0 where the next is missing
      }
      if (a.grad) {  // the same for the whole launch: no divergence
        dot += grad_of(x, p, next) * p;
      }
    }
    if (a.grad) {
      x = first;
      grad_t* g = a.grad + pixel;
#pragma unroll 1
      for (int c = 0; c < a.C; ++c, x += a.S, g += a.S) {
        acc_t next[kDims];
        const acc_t p = prob_and_next(x, next);
        *g = static_cast<grad_t>(p * (grad_of(x, p, next) - dot));
      }
    }
  }
  block_sum(sums);
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < kTvSums; ++k) {
      a.partials[int64_t(blockIdx.x) * kTvSums + k] = sums[k];
    }
  }
}

template <typename loss_t>
struct TvFinish {
  loss_t* out;
  double n, extent[3], beta;
  bool mean;
  __device__ void operator()(int64_t, const double (&s)[kTvSums]) const {
    // as the reference: with no axis longer than 1 nothing is added (0, an empty input's mean
    // included); else a mean over no pairs is NaN
    const bool varies = extent[0] > 1 || extent[1] > 1 || extent[2] > 1;
    *out = static_cast<loss_t>(varies ? math::seg_reduce(0.0, s, n, extent, 0.0, beta, mean) : 0.0);
  }
};

// Returns (loss, grad): grad is d loss / d input for grad_output = 1, or an empty (0,) tensor.
std::tuple<at::Tensor, at::Tensor> softmax_tv_fwd_cuda(const at::Tensor& input_, double beta, int64_t spatial_dims,
                                                       int64_t reduction, bool compute_grad) {
  check_softmax_tv_args(input_, spatial_dims, reduction);
  const int64_t nd = input_.dim(), W = input_.size(nd - 1), H = input_.size(nd - 2);
  TORCH_CHECK_VALUE(input_.size(1) <= std::numeric_limits<int>::max(), "softmax_tv_fwd: too many classes, ",
                    input_.size(1));
  // the kernel's neighbour offsets are 32-bit: at most an (H, W) plane in 3-D, a row in 2-D
  const int64_t widest_step = spatial_dims == 3 ? W * H : W;
  TORCH_CHECK_VALUE(widest_step <= std::numeric_limits<int32_t>::max(), "softmax_tv_fwd on CUDA: input of shape ",
                    input_.sizes(), " has ", spatial_dims == 3 ? "(H, W) planes" : "rows", " of ", widest_step,
                    " elements; at most 2^31 - 1 are supported");
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();

  const int64_t n = input.numel(), B = input.size(0), C = input.size(1);
  const int64_t D = spatial_dims == 3 ? input.size(nd - 3) : 1;
  const bool mean = reduction == at::Reduction::Mean;
  const double extent[3] = {double(W), double(H), double(D)};
  const math::SegGradWeights weights(0.0, beta, mean, double(n), extent);

  at::Tensor grad = at::empty(compute_grad ? input.sizes() : at::IntArrayRef{0},
                              input.options().dtype(saved_grad_dtype(input.scalar_type())));
  at::Tensor loss = at::empty({}, input.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_float(input.scalar_type(), [&](auto in_tag) {
    using input_t = decltype(in_tag);
    using acc_t = acc_type_t<input_t>;
    TvArgs<input_t> args{};
    args.x = input.const_data_ptr<input_t>();
    args.grad = compute_grad ? grad.mutable_data_ptr<saved_grad_t<input_t>>() : nullptr;
    args.S = n ? n / (B * C) : 0;
    args.pixels = B * args.S;
    args.CS = C * args.S;
    args.C = int(C);
    args.W = W;
    args.H = H;
    args.D = D;
    for (int ax = 0; ax < 3; ++ax) {
      args.w[ax] = acc_t(weights.axis[ax]);
    }
    const TvFinish<input_t> finish{loss.mutable_data_ptr<input_t>(), double(n), {extent[0], extent[1], extent[2]},
                                   beta, mean};
    dispatch_bool(spatial_dims == 3, [&](auto three_d) {
      constexpr auto kernel = &softmax_tv_kernel<decltype(three_d)::value ? 3 : 2, input_t>;
      const int64_t blocks = n ? grid_size<kernel>(ceil_div(args.pixels, kThreads)) : 0;
      // a row of partials a block: as TileSplit counts them, `blocks` tiles of one group, a tile
      // a block, so that sum_and_finish adds rows 0 to blocks - 1 in order (none for no blocks)
      const TileSplit split = TileSplit::make(blocks, blocks, blocks);
      at::Tensor partials = at::empty({split.rows(1) * kTvSums}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      args.partials = partials.mutable_data_ptr<acc_t>();
      if (blocks > 0) {
        PYLOSSES_LAUNCH(kernel, blocks, kThreads, 0, stream, args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      sum_and_finish<kTvSums, acc_t>(partials, 1, split, finish);
    });
  });
  return {loss, grad};
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) { m.impl("softmax_tv_fwd", &softmax_tv_fwd_cuda); }

}  // namespace pylosses::cuda
