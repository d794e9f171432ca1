#pragma once
// What the CUDA kernels share: aligned vector access, the deterministic block sum, the grid
// size, and the kernel that sums per-block partials in a fixed order and finishes the loss.
//
// Grids and partials. A forward kernel's grid is what the device keeps resident of that kernel
// (cudaOccupancyMaxActiveBlocksPerMultiprocessor x multiprocessors, read once per device and
// kernel), so it runs in one wave and loops over its work. Each kernel states next to it the
// blocks per multiprocessor that it is compiled for (__launch_bounds__(kThreads, blocks) holds
// ptxas to the registers that allow them): the occupancy that the launch counts on and that
// the sm_90 gate checks against the cubin's register count.
//
// Work that ends in per-group sums (a sample for reduction "none", else one group) is cut into
// tiles, consecutive tiles to a group, and each block takes a contiguous run of tiles
// (TileSplit). A block's run crosses few groups, and it writes one row of partials for each
// group it touches, at row group + block: along the run of (group, block) pairs in tile order
// both grow by at most one a step and one of them grows, so rows never collide, and a group
// reads exactly its own rows. At most groups + blocks - 1 rows, none zeroed or read unwritten
// (a row is skipped where a group's end meets a block's end). Each row is a fixed-order block
// sum and sum_and_finish adds a group's rows in a fixed order: bitwise the same run after run.
#ifdef PYLOSSES_CUDA_EMULATION  // built as C++ for the CPU, by the tests (emulation.h)
#include "emulation.h"
#define PYLOSSES_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::pylosses::emu::launch(kernel, grid, block, smem, __VA_ARGS__)
#define PYLOSSES_DYNAMIC_SMEM(name) unsigned char* name = ::pylosses::emu::dynamic_smem()
#define PYLOSSES_CUDA_IMPL(m) TORCH_LIBRARY_IMPL(pylosses_cuda_emulated, CPU, m)
#else
#include "../aten_ops.h"
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
#include <limits>
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
// an std::integral_constant<int, kVec>), then for each of the n % kVec left (width 1; at most one
// a thread, as the grid has more threads than a pack elements). kVec = 1 when the pointers are
// not aligned for packs.
template <int kVec, typename Body>
__device__ __forceinline__ void grid_stride_packs(int64_t n, const Body& body) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packed = n / kVec * kVec;
  for (int64_t i = first * kVec; i < packed; i += stride * kVec) {
    body(std::integral_constant<int, kVec>{}, i);
  }
  if constexpr (kVec > 1) {
    if (packed + first < n) {
      body(std::integral_constant<int, 1>{}, packed + first);
    }
  }
}

// Whether every pointer is aligned for a Pack of kVec of its own type (a null pointer is).
template <int kVec, typename... Ts>
inline bool packs_aligned(const Ts*... ptrs) {
  return ((reinterpret_cast<uintptr_t>(ptrs) % (sizeof(Ts) * kVec) == 0) && ...);
}

// Calls f(std::integral_constant<int, kVec>{}) when vectorised, else with width 1: the vector
// width as a template argument.
template <int kVec, typename F>
void dispatch_vec(bool vectorised, const F& f) {
  vectorised ? f(std::integral_constant<int, kVec>{}) : f(std::integral_constant<int, 1>{});
}

// Calls f(std::integral_constant<int, kC>{}) for the first class bound kC of kBounds (increasing)
// that C fits, else for kC = 0 (a kernel's path for any C): the bound as a template argument.
template <int... kBounds, typename F>
void dispatch_class_bound(int64_t C, const F& f) {
  bool done = false;
  ((done = done || (C <= kBounds && (f(std::integral_constant<int, kBounds>{}), true))), ...);
  if (!done) {
    f(std::integral_constant<int, 0>{});
  }
}

// The sum of v[c] over the warp, for each of kN values, by a fixed shuffle tree: the same bits
// run after run. The result is valid in lane 0. Every thread of the warp must call it.
template <int kN, typename T>
__device__ __forceinline__ void warp_sum(T (&v)[kN]) {
#pragma unroll
  for (int c = 0; c < kN; ++c) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      v[c] += __shfl_down_sync(0xffffffffu, v[c], offset);
    }
  }
}

// The sum of v[c] over the block, for each of kN values, in a fixed order (warp_sum in each
// warp, then the warps in order): the same bits run after run. The result is valid in thread 0.
// Every thread of the block must call it; it may be called again at once.
template <int kN, typename T>
__device__ __forceinline__ void block_sum(T (&v)[kN]) {
  __shared__ T warp_sums[kN][kThreads / kWarp];
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int n_warps = (blockDim.x * blockDim.y + kWarp - 1) / kWarp;
  warp_sum(v);
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

constexpr int kMaxDevices = 64;

// Blocks of kThreads threads of kKernel, with `smem` bytes of dynamic shared memory (the same at
// every launch of kKernel), that the current device keeps resident at once; read once per
// device for each kernel.
template <auto kKernel>
int64_t resident_blocks(size_t smem) {
  static std::array<std::atomic<int64_t>, kMaxDevices> cached{};  // 0: not read yet
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int64_t resident = device < kMaxDevices ? cached[device].load(std::memory_order_relaxed) : 0;
  if (resident == 0) {
    int sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kKernel, kThreads, smem));
    resident = int64_t(sms) * std::max(per_sm, 1);
    if (device < kMaxDevices) {
      cached[device].store(resident, std::memory_order_relaxed);
    }
  }
  return resident;
}

// Blocks of kKernel for `work` items of kThreads threads: no more than one wave (the kernel loops
// over the rest), at least one.
template <auto kKernel>
int64_t grid_size(int64_t work, size_t smem = 0) {
  return std::max<int64_t>(1, std::min(work, resident_blocks<kKernel>(smem)));
}

// n_tiles tiles of work: tiles_per_group consecutive tiles to a group, tiles_per_block
// consecutive tiles to a block (see the header comment). 32 bits (the host checks the count).
struct TileSplit {
  uint32_t n_tiles = 0, tiles_per_group = 1, tiles_per_block = 1;

  // Tiles of up to `blocks` blocks, in groups of tiles_per_group; blocks() says how many get tiles.
  static TileSplit make(int64_t n_tiles, int64_t tiles_per_group, int64_t blocks) {
    TORCH_CHECK(n_tiles < (int64_t(1) << 32), "pylosses: input too large: ", n_tiles, " tiles");
    TileSplit split;
    split.n_tiles = uint32_t(n_tiles);
    split.tiles_per_group = uint32_t(std::max<int64_t>(tiles_per_group, 1));
    split.tiles_per_block = uint32_t(std::max<int64_t>(ceil_div(n_tiles, std::max<int64_t>(blocks, 1)), 1));
    return split;
  }
  int64_t blocks() const { return std::max<int64_t>(ceil_div(n_tiles, tiles_per_block), 1); }
  // rows of partials that groups x blocks() need
  int64_t rows(int64_t groups) const { return groups + blocks() - 1; }
  // the most rows one group has
  int64_t rows_per_group() const {
    return std::min<int64_t>(blocks(), ceil_div(tiles_per_group, tiles_per_block) + 1);
  }
  __host__ __device__ int64_t row(uint32_t group, uint32_t block) const { return int64_t(group) + block; }
};

// Blocks a multiprocessor keeps of sum_and_finish_kernel (about 32 registers).
constexpr int kSumBlocksPerSM = 8;

// partials holds split.rows(groups) rows of kN values, written by the forward kernel as
// TileSplit says. One block a group sums the group's rows in a fixed order, in double, and
// thread 0 hands the sums to finish(group, sums), which writes the loss. A group with no tiles
// (empty input) sums nothing.
template <int kN, typename acc_t, typename Finish>
__global__ void __launch_bounds__(kThreads, kSumBlocksPerSM)
    sum_and_finish_kernel(const acc_t* partials, TileSplit split, Finish finish) {
  const uint32_t group = blockIdx.x;
  double s[kN] = {};
  const uint64_t begin = uint64_t(group) * split.tiles_per_group;
  if (begin < split.n_tiles) {  // then the group's tiles are 32-bit numbers
    const uint32_t last_tile = uint32_t(std::min<uint64_t>(begin + split.tiles_per_group, split.n_tiles) - 1);
    const int64_t first = split.row(group, uint32_t(begin) / split.tiles_per_block);
    const int64_t last = split.row(group, last_tile / split.tiles_per_block);
    for (int64_t r = first + threadIdx.x; r <= last; r += blockDim.x) {
#pragma unroll
      for (int c = 0; c < kN; ++c) {
        s[c] += static_cast<double>(partials[r * kN + c]);
      }
    }
  }
  block_sum(s);
  if (threadIdx.x == 0) {
    finish(group, s);
  }
}

template <int kN, typename acc_t, typename Finish>
void sum_and_finish(const at::Tensor& partials, int64_t groups, const TileSplit& split, const Finish& finish) {
  if (groups == 0) {
    return;
  }
  TORCH_CHECK_VALUE(groups <= std::numeric_limits<int32_t>::max(), "a loss of ", groups,
                    " groups (samples or planes) needs more CUDA blocks than a launch holds");
  // a warp for the few rows of a sample's group, the block for a whole tensor's rows
  const int64_t threads = std::min<int64_t>(kThreads, ceil_div(split.rows_per_group(), kWarp) * kWarp);
  const auto kernel = &sum_and_finish_kernel<kN, acc_t, Finish>;
  PYLOSSES_LAUNCH(kernel, groups, threads, 0, c10::cuda::getCurrentCUDAStream(), partials.const_data_ptr<acc_t>(), split,
                  finish);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace pylosses::cuda
