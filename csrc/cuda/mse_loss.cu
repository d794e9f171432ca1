// MSE loss on CUDA: one pass that reads input and target and writes the loss (per element for
// reduction="none", else one partial sum a block) and, when asked, the gradient; a second,
// one-block kernel adds the partials in a fixed order. No host sync.
#include <torch/library.h>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../mse_loss_math.h"

namespace pylosses::cuda {
namespace {

template <typename input_t, typename target_t, typename loss_t, typename grad_t>
struct MseArgs {
  using acc_t = acc_type_t<input_t, target_t>;
  const input_t* x;
  const target_t* t;
  int64_t n;
  loss_t* loss;     // per element ("none"), or null
  grad_t* grad;     // d loss / d input for grad_output = 1, or null
  acc_t grad_scale; // 1 / n for "mean", else 1
  acc_t* partials;  // one a block when loss is null
};

// The kVec elements at i: loss (stored or added to acc) and gradient.
template <int kVec, typename A>
__device__ __forceinline__ void mse_elements(const A& a, int64_t i, typename A::acc_t& acc) {
  using acc_t = typename A::acc_t;
  const auto xs = load_pack<kVec>(a.x, i);
  const auto ts = load_pack<kVec>(a.t, i);
  Pack<std::remove_pointer_t<decltype(a.loss)>, kVec> losses;
  Pack<std::remove_pointer_t<decltype(a.grad)>, kVec> grads;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    const acc_t x = static_cast<acc_t>(xs.v[k]), t = static_cast<acc_t>(ts.v[k]);
    const acc_t l = math::mse_loss(x, t);
    if (a.loss) {
      losses.v[k] = l;
    } else {
      acc += l;
    }
    grads.v[k] = a.grad_scale * math::mse_grad(x, t);
  }
  if (a.loss) {
    store_pack(a.loss, i, losses);
  }
  if (a.grad) {
    store_pack(a.grad, i, grads);
  }
}

// Blocks of mse_fwd_kernel that a multiprocessor keeps (see cuda_common.cuh): 8 (32 registers);
// 6 (40) in double, whose unrolled scalar loop spills at 32.
template <typename acc_t>
constexpr int kMseBlocksPerSM = std::is_same_v<acc_t, double> ? 6 : 8;

template <int kVec, typename A>
__global__ void __launch_bounds__(kThreads, kMseBlocksPerSM<typename A::acc_t>) mse_fwd_kernel(const A a) {
  typename A::acc_t acc[1] = {0};
  grid_stride_packs<kVec>(a.n, [&](auto width, int64_t i) { mse_elements<decltype(width)::value>(a, i, acc[0]); });
  if (a.partials) {
    block_sum(acc);
    if (threadIdx.x == 0) {
      a.partials[blockIdx.x] = acc[0];
    }
  }
}

template <typename loss_t>
struct MseFinish {
  loss_t* out;
  double n;
  bool mean;
  __device__ void operator()(int64_t, const double (&s)[1]) const {
    out[0] = static_cast<loss_t>(mean ? s[0] / n : s[0]);  // mean of nothing: 0 / 0 = NaN, as torch
  }
};

std::tuple<at::Tensor, at::Tensor> mse_loss_fwd_cuda(const at::Tensor& input_, const at::Tensor& target_,
                                                     int64_t reduction, bool compute_grad) {
  check_mse_args(input_, target_, reduction);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const auto result_dtype = at::promote_types(input.scalar_type(), target.scalar_type());
  const int64_t n = input.numel();
  const bool none = reduction == at::Reduction::None;

  at::Tensor grad = compute_grad ? at::empty(input.sizes(), input.options().dtype(saved_grad_dtype(result_dtype)))
                                 : at::empty({0}, input.options());
  at::Tensor loss = at::empty(none ? input.sizes() : at::IntArrayRef{}, input.options().dtype(result_dtype));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_input_target<false>(input.scalar_type(), target.scalar_type(), [&](auto in_tag, auto t_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using result_t = promote_t<input_t, target_t>;
    using acc_t = acc_type_t<input_t, target_t>;
    using Args = MseArgs<input_t, target_t, result_t, saved_grad_t<result_t>>;
    constexpr int kVec = kVecOf<input_t, acc_t>;
    Args args{input.const_data_ptr<input_t>(),
              target.const_data_ptr<target_t>(),
              n,
              none ? loss.mutable_data_ptr<result_t>() : nullptr,
              compute_grad ? grad.mutable_data_ptr<saved_grad_t<result_t>>() : nullptr,
              reduction == at::Reduction::Mean ? acc_t(1.0 / static_cast<double>(n)) : acc_t(1),
              nullptr};
    dispatch_vec<kVec>(packs_aligned<kVec>(args.x, args.t, args.loss, args.grad), [&](auto vec) {
      constexpr auto kernel = &mse_fwd_kernel<decltype(vec)::value, Args>;
      const int64_t blocks = grid_size<kernel>(ceil_div(n, int64_t(kThreads) * kVec));
      // one partial a block, in one group
      const TileSplit split = TileSplit::make(n > 0 ? blocks : 0, blocks, blocks);
      at::Tensor partials = at::empty({none ? 0 : blocks}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      args.partials = none ? nullptr : partials.mutable_data_ptr<acc_t>();
      if (n > 0) {
        PYLOSSES_LAUNCH(kernel, blocks, kThreads, 0, stream, args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (!none) {
        sum_and_finish<1, acc_t>(partials, 1, split,
                                 MseFinish<result_t>{loss.mutable_data_ptr<result_t>(), double(n),
                                                     reduction == at::Reduction::Mean});
      }
    });
  });
  return {loss, grad};
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) { m.impl("mse_loss_fwd", &mse_loss_fwd_cuda); }

}  // namespace pylosses::cuda
