// The backward of every loss on CUDA: out = saved_grad * grad_output[i / group] * scale, with
// grad_output read on the device (see csrc/cpu/loss_backward.cpp for what group and scale are).
#include <torch/library.h>

#include "cuda_common.cuh"
#include "../op_checks.h"

namespace pylosses::cuda {
namespace {

template <typename saved_t, typename out_t>
struct BackwardArgs {
  using acc_t = acc_type_t<saved_t, out_t>;
  const saved_t* saved;
  const acc_t* grad_output;  // one value a group, converted to acc_t
  int64_t n, group;
  acc_t scale;
  out_t* out;
};

template <int kVec, typename A>
__device__ __forceinline__ void backward_elements(const A& a, int64_t i) {
  using acc_t = typename A::acc_t;
  const auto s = load_pack<kVec>(a.saved, i);
  Pack<std::remove_pointer_t<decltype(a.out)>, kVec> o;
  // the group of the pack's first element (no division for one group, a mean's or a sum's, or
  // for groups of one element); the next ones by counting
  int64_t g = a.group >= a.n ? 0 : a.group == 1 ? i : i / a.group;
  int64_t next = (g + 1) * a.group;
  acc_t f = a.grad_output[g] * a.scale;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    if (i + k == next) {
      ++g;
      next += a.group;
      f = a.grad_output[g] * a.scale;
    }
    o.v[k] = static_cast<acc_t>(s.v[k]) * f;
  }
  store_pack(a.out, i, o);
}

// Blocks of loss_backward_kernel that a multiprocessor keeps (32 registers); see cuda_common.cuh.
constexpr int kBackwardBlocksPerSM = 8;

template <int kVec, typename A>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSM) loss_backward_kernel(const A a) {
  grid_stride_packs<kVec>(a.n, [&](auto width, int64_t i) { backward_elements<decltype(width)::value>(a, i); });
}

at::Tensor loss_backward_cuda(const at::Tensor& grad_output_, const at::Tensor& saved_, double scale,
                              at::ScalarType dtype) {
  check_backward_args(grad_output_, saved_, dtype);
  const int64_t n = saved_.numel(), k = grad_output_.numel();
  const c10::cuda::CUDAGuard guard(saved_.device());
  at::Tensor out = at::empty(saved_.sizes(), saved_.options().dtype(dtype));
  if (n == 0) {
    return out;
  }
  const at::Tensor saved = saved_.contiguous();
  dispatch_float(saved.scalar_type(), [&](auto saved_tag) {
    dispatch_float(dtype, [&](auto out_tag) {
      using saved_t = decltype(saved_tag);
      using out_t = decltype(out_tag);
      using Args = BackwardArgs<saved_t, out_t>;
      using acc_t = typename Args::acc_t;
      // grad_output in acc_t spares a kernel for every grad_output dtype; the conversion is a
      // copy only when the dtypes differ, and a full-size one only for MSE's "none" in float16
      // or bfloat16
      const at::Tensor go = grad_output_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      constexpr int kVec = kVecOf<saved_t, acc_t>;
      const Args args{saved.const_data_ptr<saved_t>(), go.const_data_ptr<acc_t>(), n, n / k, acc_t(scale),
                      out.mutable_data_ptr<out_t>()};
      dispatch_vec<kVec>(packs_aligned<kVec>(args.saved, args.out), [&](auto vec) {
        constexpr auto kernel = &loss_backward_kernel<decltype(vec)::value, Args>;
        const int64_t blocks = grid_size<kernel>(ceil_div(n, int64_t(kThreads) * kVec));
        PYLOSSES_LAUNCH(kernel, blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream(), args);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return out;
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) { m.impl("loss_backward", &loss_backward_cuda); }

}  // namespace pylosses::cuda
