#pragma once
// What the CUDA kernels share: aligned vector access, the deterministic block sum, the grid
// size, and the kernel that sums per-block partials in a fixed order and finishes the loss.
//
// Each kernel states next to it the blocks per multiprocessor that it is compiled for
// (__launch_bounds__(kThreads, blocks) holds ptxas to the registers that allow them), which the
// sm_90 gate checks against the cubin's register count.
#ifdef PYLOSSES_CUDA_EMULATION  // built as C++ for the CPU, by the tests (emulation.h)
#include "emulation.h"
#define PYLOSSES_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::pylosses::emu::launch(kernel, grid, block, smem, __VA_ARGS__)
#define PYLOSSES_DYNAMIC_SMEM(name) unsigned char* name = ::pylosses::emu::dynamic_smem()
#define PYLOSSES_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(pylosses_cuda_emulated, CPU, m)
#else
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <math_constants.h>
// kernel<<<grid, block, smem, stream>>>(args...); kernel is a name without template arguments
// (a pointer to the kernel), so that the emulation can take it as a macro argument
#define PYLOSSES_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define PYLOSSES_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define PYLOSSES_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(pylosses, CUDA, m)
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "../kernel_common.h"
#include "../math_common.h"

namespace pylosses::cuda {

constexpr int kThreads = 256;  // threads a block, in every kernel here
constexpr int kWarp = 32;

// kVec values of T, accessed with one aligned load or store (two where it spans 32 bytes).
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// How many values of T one 128-bit access holds: the vector width of a kernel whose widest
// stream is T.
template <typename T>
constexpr int kVec128 = static_cast<int>(16 / sizeof(T));

// The vector width of a kernel that reads input_t and computes in acc_t: 128-bit packs of the
// input, or of the accumulator when it is double (mixed with a narrower input), whose packs of
// kVec128<input_t> would need two to four times the registers.
template <typename input_t, typename acc_t>
constexpr int kVecOf = std::is_same_v<acc_t, double> ? kVec128<double> : kVec128<input_t>;

// The pack of kVec values of T at p[i], i a multiple of kVec. Indexed as an array of packs, not
// as *(Pack*)(p + i): the compiler copies a pack element by element and relies on its
// load/store vectoriser to merge them again, which fails (four STG.E for one STG.E.128) when the
// element offset i + k is a sum of terms it reassociates, as in the segmentation kernel's
// stencil offsets; a pack index keeps one address and constant offsets into it.
template <int kVec, typename T>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p, int64_t i) {
  return reinterpret_cast<const Pack<T, kVec>*>(p)[static_cast<uint64_t>(i) / kVec];
}

template <int kVec, typename T>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const Pack<T, kVec>& v) {
  reinterpret_cast<Pack<T, kVec>*>(p)[static_cast<uint64_t>(i) / kVec] = v;
}

// A grid-stride loop over n elements: body(width, i) for the packs of kVec elements at i (width
// an std::integral_constant<int, kVec>), then for each of the n % kVec left (width 1). kVec = 1
// when the pointers are not aligned for packs.
template <int kVec, typename Body>
__device__ __forceinline__ void grid_stride_packs(int64_t n, const Body& body) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packed = n / kVec * kVec;
  for (int64_t i = first * kVec; i < packed; i += stride * kVec) {
    body(std::integral_constant<int, kVec>{}, i);
  }
  for (int64_t i = packed + first; i < n; i += stride) {
    body(std::integral_constant<int, 1>{}, i);
  }
}

// Whether every pointer is aligned for a Pack of kVec of its own type (a null pointer is).
template <int kVec, typename... Ts>
inline bool packs_aligned(const Ts*... ptrs) {
  return ((reinterpret_cast<uintptr_t>(ptrs) % (sizeof(Ts) * kVec) == 0) && ...);
}

// The sum of v[c] over the block, for each of kN values, in a fixed order (a shuffle tree in
// each warp, then the warps in order): the same bits run after run. The result is valid in
// thread 0. Every thread of the block must call it; it may be called again at once.
template <int kN, typename T>
__device__ __forceinline__ void block_sum(T (&v)[kN]) {
  __shared__ T warp_sums[kN][kThreads / kWarp];
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int n_warps = (blockDim.x * blockDim.y + kWarp - 1) / kWarp;
#pragma unroll
  for (int c = 0; c < kN; ++c) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      v[c] += __shfl_down_sync(0xffffffffu, v[c], offset);
    }
  }
  __syncthreads();  // a previous call's readers are done with warp_sums
  if (lane == 0) {
#pragma unroll
    for (int c = 0; c < kN; ++c) {
      warp_sums[c][warp] = v[c];
    }
  }
  __syncthreads();
  if (tid == 0) {
#pragma unroll
    for (int c = 0; c < kN; ++c) {
      T s = warp_sums[c][0];
      for (int w = 1; w < n_warps; ++w) {
        s += warp_sums[c][w];
      }
      v[c] = s;
    }
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks for `work` independent items of kThreads: no more than the device keeps resident at
// once (the kernels loop over the rest), so per-block partials stay few. The device's limits
// are read once per device.
inline int64_t grid_size(int64_t work) {
  static std::array<std::atomic<int64_t>, 64> resident_blocks{};  // per device; 0: not read yet
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int64_t resident = device < 64 ? resident_blocks[device].load(std::memory_order_relaxed) : 0;
  if (resident == 0) {
    int sms = 0, threads_per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&threads_per_sm, cudaDevAttrMaxThreadsPerMultiProcessor, device));
    resident = int64_t(sms) * std::max(threads_per_sm / kThreads, 1);
    if (device < 64) {
      resident_blocks[device].store(resident, std::memory_order_relaxed);
    }
  }
  return std::max<int64_t>(1, std::min(work, resident));
}

// Blocks a multiprocessor keeps of sum_and_finish_kernel (about 32 registers).
constexpr int kSumBlocksPerSM = 8;

// partials holds groups x rows x kN values: for each group (a sample, or one group for the
// whole tensor), the rows are the blocks of the forward kernel. One block a group sums its
// rows in a fixed order, in double, and thread 0 hands the sums to finish(group, sums), which
// writes the loss.
template <int kN, typename acc_t, typename Finish>
__global__ void __launch_bounds__(kThreads, kSumBlocksPerSM)
    sum_and_finish_kernel(const acc_t* partials, int64_t rows, Finish finish) {
  const int64_t group = blockIdx.x;
  double s[kN] = {};
  const acc_t* mine = partials + group * rows * kN;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
#pragma unroll
    for (int c = 0; c < kN; ++c) {
      s[c] += static_cast<double>(mine[r * kN + c]);
    }
  }
  block_sum(s);
  if (threadIdx.x == 0) {
    finish(group, s);
  }
}

template <int kN, typename acc_t, typename Finish>
void sum_and_finish(const at::Tensor& partials, int64_t groups, int64_t rows, const Finish& finish) {
  if (groups == 0) {
    return;
  }
  const auto kernel = &sum_and_finish_kernel<kN, acc_t, Finish>;
  PYLOSSES_LAUNCH(kernel, groups, kThreads, 0, c10::cuda::getCurrentCUDAStream(), partials.const_data_ptr<acc_t>(),
                  rows, finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace pylosses::cuda
