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
  int64_t step_groups, step_rest;  // a grid-stride step (threads x kVec elements) in groups
  acc_t scale;
  out_t* out;
};

// The kVec elements at i, the first of them element r of group g; the others' groups by counting.
template <int kVec, typename A>
__device__ __forceinline__ void backward_elements(const A& a, int64_t i, int64_t g, int64_t r) {
  using acc_t = typename A::acc_t;
  const auto s = load_pack<kVec>(a.saved, i);
  Pack<std::remove_pointer_t<decltype(a.out)>, kVec> o;
  // the pack's first element of the next group, and of the one after (kVec or more: none)
  int next = kVec == 1 ? 1 : int(std::min<int64_t>(a.group - r, kVec));
  const int group = int(std::min<int64_t>(a.group, kVec));
  acc_t f = a.grad_output[g] * a.scale;
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    if (k == next) {
      ++g;
      next += group;
      f = a.grad_output[g] * a.scale;
    }
    o.v[k] = static_cast<acc_t>(s.v[k]) * f;
  }
  store_pack(a.out, i, o);
}

// Blocks of loss_backward_kernel that a multiprocessor keeps (see cuda_common.cuh): 8 (32
// registers); 6 (40) in double, whose packs of 8 (from bfloat16 or float16) spill at 32.
template <typename acc_t>
constexpr int kBackwardBlocksPerSM = std::is_same_v<acc_t, double> ? 6 : 8;

template <int kVec, typename A>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSM<typename A::acc_t>) loss_backward_kernel(const A a) {
  // the group of the thread's first pack, by a division; in the loop by counting: a 64-bit
  // division is a subroutine call of dozens of instructions
  const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  int64_t g = first / a.group, r = first % a.group;
  grid_stride_packs<kVec>(a.n, [&](auto width, int64_t i) {
    if constexpr (decltype(width)::value == kVec) {
      backward_elements<kVec>(a, i, g, r);
      g += a.step_groups;
      r += a.step_rest;
      if (r >= a.group) {
        r -= a.group;
        ++g;
      }
    } else {  // one of the n % kVec left over
      backward_elements<1>(a, i, i / a.group, i % a.group);
    }
  });
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
      constexpr int kVec = kVec128<saved_t>;  // the one stream read: its 128 bits
      Args args{saved.const_data_ptr<saved_t>(), go.const_data_ptr<acc_t>(), n, n / k, 0, 0, acc_t(scale),
                out.mutable_data_ptr<out_t>()};
      dispatch_vec<kVec>(packs_aligned<kVec>(args.saved, args.out), [&](auto vec) {
        constexpr auto kernel = &loss_backward_kernel<decltype(vec)::value, Args>;
        const int64_t blocks = grid_size<kernel>(ceil_div(n, int64_t(kThreads) * kVec));
        const int64_t step = blocks * kThreads * decltype(vec)::value;
        args.step_groups = step / args.group;
        args.step_rest = step % args.group;
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
