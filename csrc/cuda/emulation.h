#pragma once
// A CPU emulation of the little of CUDA that csrc/cuda uses, so that the tests can run the
// CUDA kernels' code (their tiling, shared memory, barriers, shuffles, vector packs and
// reductions) on a machine without a GPU: tests/cuda_emulation builds csrc/cuda/*.cu as C++
// with PYLOSSES_CUDA_EMULATION defined and compares the ops with the CPU kernels'.
//
// A launch runs its blocks one after another; a block runs each of its threads on its own OS
// thread, with std::barrier for __syncthreads and for the warp shuffles. Slow, and only for
// small tests; it says nothing about speed or about the memory model of a real GPU.
#include <ATen/ATen.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time: its threads share a static
#define CUDART_NAN NAN

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace pylosses::emu {

// Resources of the emulated device: a few multiprocessors, so that grids have several blocks,
// and the least shared memory of the GPUs CUDA 13 builds for (64 KB an SM, Turing's; an H200
// has 228 KB), so that kernels with more than 32 KB a block get fewer blocks (the grids differ).
constexpr int kSMs = 3;
constexpr int kThreadsPerSM = 512;
constexpr size_t kSmemPerSM = 64 << 10;

struct Warp {
  explicit Warp(int n) : barrier(n) {}
  std::barrier<> barrier;
  double slots[32] = {};
};

struct Block {
  Block(int n_threads, size_t smem_bytes) : barrier(n_threads), smem(smem_bytes + 16) {
    for (int w = 0; w < (n_threads + 31) / 32; ++w) {
      warps.push_back(std::make_unique<Warp>(std::min(32, n_threads - 32 * w)));
    }
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> smem;
};

inline thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
inline thread_local Block* block = nullptr;

inline int linear_thread() { return int(thread_idx.x + thread_idx.y * block_dim.x); }

inline unsigned char* dynamic_smem() {
  auto address = reinterpret_cast<uintptr_t>(block->smem.data());
  return block->smem.data() + (16 - address % 16) % 16;  // 16-byte aligned, as CUDA's
}

template <typename Kernel, typename... Args>
void launch(Kernel kernel, dim3 grid, dim3 threads, size_t smem_bytes, const Args&... args) {
  const int n = int(threads.x * threads.y * threads.z);
  for (unsigned b = 0; b < grid.x; ++b) {
    Block state(n, smem_bytes);
    std::vector<std::thread> pool;
    pool.reserve(n);
    for (int i = 0; i < n; ++i) {
      pool.emplace_back([&, i] {
        thread_idx = dim3(i % threads.x, i / threads.x % threads.y, i / (threads.x * threads.y));
        block_idx = dim3(b);
        block_dim = threads;
        grid_dim = grid;
        block = &state;
        kernel(args...);
      });
    }
    for (auto& t : pool) {
      t.join();
    }
  }
}

}  // namespace pylosses::emu

#define threadIdx (::pylosses::emu::thread_idx)
#define blockIdx (::pylosses::emu::block_idx)
#define blockDim (::pylosses::emu::block_dim)
#define gridDim (::pylosses::emu::grid_dim)

inline void __syncthreads() { ::pylosses::emu::block->barrier.arrive_and_wait(); }

namespace pylosses::emu {
// The value of lane source(lane) of this thread's warp (its own where source is outside the warp).
template <typename T, typename Source>
T exchange(T value, const Source& source) {
  auto& warp = *block->warps[linear_thread() / 32];
  const int lane = linear_thread() % 32, from = source(lane);
  warp.slots[lane] = static_cast<double>(value);
  warp.barrier.arrive_and_wait();
  const T result = from >= 0 && from < 32 ? static_cast<T>(warp.slots[from]) : value;
  warp.barrier.arrive_and_wait();
  return result;
}
}  // namespace pylosses::emu

template <typename T>
T __shfl_down_sync(unsigned, T value, int offset) {
  return ::pylosses::emu::exchange(value, [offset](int lane) { return lane + offset; });
}

template <typename T>
T __shfl_up_sync(unsigned, T value, int offset) {
  return ::pylosses::emu::exchange(value, [offset](int lane) { return lane - offset; });
}

template <typename T>
T __shfl_xor_sync(unsigned, T value, int mask) {
  return ::pylosses::emu::exchange(value, [mask](int lane) { return lane ^ mask; });
}

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin };
inline int cudaGetDevice(int* device) {
  *device = 0;
  return 0;
}
inline int cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? ::pylosses::emu::kSMs : int(::pylosses::emu::kSmemPerSM);
  return 0;
}
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename Kernel>
int cudaFuncSetAttribute(Kernel, cudaFuncAttribute, int) {
  return 0;
}
// The emulated device has no registers to run out of: threads and shared memory limit it.
template <typename Kernel>
int cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel, int threads, size_t smem) {
  using namespace ::pylosses::emu;
  *blocks = int(std::min<size_t>(kThreadsPerSM / threads, smem ? kSmemPerSM / smem : kThreadsPerSM));
  return 0;
}
#define C10_CUDA_CHECK(expr) (void)(expr)
#define C10_CUDA_KERNEL_LAUNCH_CHECK()

namespace c10::cuda {
inline int getCurrentCUDAStream() { return 0; }
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
}  // namespace c10::cuda
