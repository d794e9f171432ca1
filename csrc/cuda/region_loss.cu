// The region losses' sums on CUDA (ops region_sums and region_sums_backward; csrc/region_loss_math.h
// has the per-element math and what the sums are).
//
// The contiguous input is a sequence of planes, one for each (sample, channel), of S elements.
// Pass 1 (region_sums_kernel) cuts each plane into tiles of one block pass (a pack, or a run of
// elements, for each of kThreads threads), and each block of a one-wave grid takes a contiguous
// run of tiles (TileSplit in cuda_common.cuh): a run crosses few planes, and a plane of 10^6
// elements spreads over hundreds of blocks. The block walks its run plane by plane, and its
// sums for a plane go to one row of partials; then sum_and_finish adds each plane's rows in a
// fixed order into the (B, C, 4) sums. Where a plane fits into one block pass (many small
// planes), a block pass would leave most threads idle and pay a block-wide sum for a few
// elements: each warp then takes whole planes of the block's run and sums them with shuffles
// alone. No atomics, no host sync; uint8 targets above 1 are only counted (the fourth sum),
// with no device assert. With the mode's bit math::kWithBce (logits only) the same pass adds
// DiceBCE's two BCE sums, and the backward their gradient (kBce).
//
// The backward (region_sums_backward_kernel) walks the planes in the same way, elementwise:
// a plane's part holds its coefficients (g0, g1, g2, read once from grad_sums) and its mask's
// offset, so that the loop over its packs carries no plane arithmetic. (A grid-stride loop that
// counts each pack's plane and sample along took about 30 instructions a pack for that alone:
// over the budget of the one-element path.)
//
// Packs (128 bits of the input) need S to be a multiple of the pack, so that a pack never
// straddles two planes and a broadcast mask's pack is aligned too, and every pointer aligned;
// other shapes take one element at a time (kVec = 1), in runs of a few a thread (kRun).
#include <torch/library.h>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../region_loss_math.h"
#include "../seg_loss_math.h"  // bce_logits_loss, sigmoid_softplus

namespace pylosses::cuda {
namespace {

using math::RegionMode;
// The sums of a plane: the mode's three and the count of bad targets, then with kBce DiceBCE's two.
template <bool kBce>
constexpr int kSumsOf = math::kRegionSums + (kBce ? math::kBceSums : 0);
constexpr int kWarpsPerBlock = kThreads / kWarp;

// Elements a thread takes at a time: a pack of kVec, or on the one-element path (kVec = 1) a run
// of 4 loaded one by one (2 in float64 arithmetic, whose runs of 4 spill), for which the loop's
// addresses and test are paid once (about 13 instructions: half of what one element's sums cost).
template <int kVec, typename acc_t>
constexpr int kRun = kVec > 1 ? kVec : std::is_same_v<acc_t, double> ? 2 : 4;

// How both kernels share out the planes: tiles of one block pass (kThreads runs) of a plane, a
// contiguous run of them to each block (TileSplit, tiles_per_group = tiles a plane); with
// warp_planes (a plane fits into one block pass) each warp of a block takes whole planes of the
// block's run.
struct PlaneWalk {
  int64_t S;           // elements a plane
  int64_t tile_elems;  // a block pass: kThreads runs
  TileSplit split;
  bool warp_planes;

  // For the planes of S elements of kKernel, whose threads take runs of kLen.
  template <auto kKernel, int kLen>
  static PlaneWalk make(int64_t planes, int64_t S) {
    PlaneWalk w;
    w.S = S;
    w.tile_elems = int64_t(kThreads) * kLen;
    const int64_t tiles_per_plane = ceil_div(S, w.tile_elems), n_tiles = planes * tiles_per_plane;
    w.warp_planes = tiles_per_plane == 1;
    // warp_planes: runs of a plane a warp at least, so that a block's warps all have work
    const int64_t blocks = grid_size<kKernel>(w.warp_planes ? ceil_div(n_tiles, kWarpsPerBlock) : n_tiles);
    w.split = TileSplit::make(n_tiles, tiles_per_plane, blocks);
    return w;
  }
};

// Calls range(plane, i, end, step, leader) for each part of a plane that this thread's block (or,
// with warp_planes, warp) takes, in order: the thread's runs start at i, i + step, ... below end
// (offsets in the plane), and leader says that it is the first thread of the block (warp).
// Block-uniform without warp_planes, so that range may call block_sum.
template <int kLen, typename Range>
__device__ __forceinline__ void walk_planes(const PlaneWalk& w, const Range& range) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int rank = w.warp_planes ? lane : int(threadIdx.x);
  const int64_t step = int64_t(w.warp_planes ? kWarp : kThreads) * kLen;
  // this block's tiles (the grid is split.blocks(): every block has tiles)
  const uint32_t first = blockIdx.x * w.split.tiles_per_block;
  const uint32_t end = first + std::min(w.split.tiles_per_block, w.split.n_tiles - first);
  const uint32_t tiles_per_plane = w.split.tiles_per_group;
  for (uint32_t tile = first + (w.warp_planes ? warp : 0); tile < end;) {
    // the run's tiles of this plane: elements [lo, hi) of it
    const uint32_t plane = tile / tiles_per_plane, plane_first = plane * tiles_per_plane;
    const uint32_t stop = std::min(end, plane_first + tiles_per_plane);
    const int64_t lo = int64_t(tile - plane_first) * w.tile_elems;
    const int64_t hi = std::min(w.S, int64_t(stop - plane_first) * w.tile_elems);
    range(plane, lo + int64_t(rank) * kLen, hi, step, rank == 0);
    tile = w.warp_planes ? tile + kWarpsPerBlock : stop;
  }
}

// Calls run(std::bool_constant<partial>{}, i) for the thread's runs of kLen at i, i + step, ...
// below end: partial for a run that end cuts short (only on the one-element path, and only the
// last).
template <int kVec, int kLen, typename Run>
__device__ __forceinline__ void for_each_run(int64_t i, int64_t end, int64_t step, const Run& run) {
  for (; i + kLen <= end; i += step) {
    run(std::false_type{}, i);
  }
  if constexpr (kVec == 1) {
    if (i < end) {
      run(std::true_type{}, i);
    }
  }
}

// The run of p at i: a pack, or one element at a time (those at end and beyond read as 0 in a
// partial run).
template <int kVec, int kLen, bool kPartial, typename T>
__device__ __forceinline__ Pack<T, kLen> load_run(const T* p, int64_t i, int64_t end) {
  if constexpr (kVec > 1) {
    return load_pack<kVec>(p, i);
  } else {
    Pack<T, kLen> v;
#pragma unroll
    for (int k = 0; k < kLen; ++k) {
      v.v[k] = !kPartial || i + k < end ? p[i + k] : T(0);
    }
    return v;
  }
}

template <int kVec, int kLen, bool kPartial, typename T>
__device__ __forceinline__ void store_run(T* p, int64_t i, int64_t end, const Pack<T, kLen>& v) {
  if constexpr (kVec > 1) {
    store_pack(p, i, v);
  } else {
#pragma unroll
    for (int k = 0; k < kLen; ++k) {
      if (!kPartial || i + k < end) {
        p[i + k] = v.v[k];
      }
    }
  }
}

// The streams that both kernels read: the mask is (B, 1, S), shared by a sample's channels, or
// (B, C, S), or null.
template <typename input_t, typename target_t>
struct RegionInputs {
  const input_t* x;
  const target_t* t;
  const bool* mask;
  uint32_t C;  // channels (planes are 32-bit numbers: TileSplit checks the tile count)
  bool mask_per_channel;

  // the offset of a plane's mask
  __device__ int64_t mask_offset(uint32_t plane, int64_t S) const {
    return int64_t(mask_per_channel ? plane : plane / C) * S;
  }
};

// One run's elements, as both kernels read them: x, t, and whether each counts (the mask's
// value; in a partial run, also whether it comes before the end).
template <int kVec, int kLen, bool kMasked, bool kPartial, typename input_t, typename target_t>
struct RunValues {
  using target_type = target_t;
  static constexpr int kSize = kLen;
  Pack<input_t, kLen> x;
  Pack<target_t, kLen> t;
  Pack<bool, kLen> keep;
  static constexpr bool kSelects = kMasked || kPartial;  // whether keep is read

  // x, t and mask point at the plane's first element (mask: its mask's, or null)
  __device__ __forceinline__ RunValues(const input_t* x_, const target_t* t_, const bool* mask, int64_t i,
                                       int64_t end) {
    x = load_run<kVec, kLen, kPartial>(x_, i, end);
    t = load_run<kVec, kLen, kPartial>(t_, i, end);
    if constexpr (kMasked) {
      keep = load_run<kVec, kLen, kPartial>(mask, i, end);
    } else if constexpr (kPartial) {
#pragma unroll
      for (int k = 0; k < kLen; ++k) {
        keep.v[k] = i + k < end;
      }
    }
  }
  __device__ __forceinline__ bool kept(int k) const { return !kSelects || keep.v[k]; }
};

template <typename input_t, typename target_t>
struct RegionSumsArgs {
  using acc_t = acc_type_t<input_t, target_t>;
  RegionInputs<input_t, target_t> in;
  PlaneWalk walk;
  acc_t* partials;  // walk.split.rows(planes) x kSumsOf<kBce>
};

// Adds the terms of a run's elements to sums, and for uint8 targets the count of those above 1;
// with kBce (logits) also the two BCE sums, from the sigmoid's exponential. An element that does
// not count (masked out, or past the end) adds nothing: p and t taken as 0, also where they are
// NaN, its BCE terms 0; nor is it a bad target.
template <RegionMode kMode, bool kSigmoid, bool kBce, typename V, typename acc_t>
__device__ __forceinline__ void add_terms(const V& v, acc_t (&sums)[kSumsOf<kBce>]) {
#pragma unroll
  for (int k = 0; k < V::kSize; ++k) {
    const acc_t x = static_cast<acc_t>(v.x.v[k]);
    [[maybe_unused]] acc_t softplus;
    acc_t p = kBce ? math::sigmoid_softplus(x, softplus) : kSigmoid ? math::sigmoid(x) : x;
    acc_t t = static_cast<acc_t>(v.t.v[k]);
    if constexpr (V::kSelects) {
      p = v.kept(k) ? p : acc_t(0);
      t = v.kept(k) ? t : acc_t(0);
    }
    acc_t s0, s1, s2;
    math::region_terms<kMode>(p, t, s0, s1, s2);
    sums[0] += s0;
    sums[1] += s1;
    sums[2] += s2;
    if constexpr (std::is_same_v<typename V::target_type, uint8_t>) {
      sums[3] += v.t.v[k] > 1 && v.kept(k) ? acc_t(1) : acc_t(0);
    }
    if constexpr (kBce) {
      const acc_t a = math::bce_logits_loss(x, t, softplus), b = math::bce_sums_term_b(x, t, softplus);
      sums[4] += v.kept(k) ? a : acc_t(0);
      sums[5] += v.kept(k) ? b : acc_t(0);
    }
  }
}

// Blocks of region_sums_kernel and region_sums_backward_kernel that a multiprocessor keeps (see
// cuda_common.cuh): 5 (48 registers); 4 (64) in float64 arithmetic, for packs of 8 (a 16-bit
// input's) and with the BCE sums (kBce) on float32 packs of 4, which spill at 48; 3 (85) with the
// BCE sums otherwise (float64, packs of 8, one element at a time), which spill at 64 (ptxas, the
// sm_90 gate).
template <int kVec, typename acc_t, bool kBce>
constexpr int kRegionBlocksPerSM = kBce && kVec != 4 ? 3 : std::is_same_v<acc_t, double> || kVec == 8 || kBce ? 4 : 5;

template <int kVec, RegionMode kMode, bool kSigmoid, bool kBce, typename input_t, typename target_t>
__global__ void __launch_bounds__(kThreads, kRegionBlocksPerSM<kVec, acc_type_t<input_t, target_t>, kBce>)
    region_sums_kernel(const RegionSumsArgs<input_t, target_t> a) {
  using acc_t = acc_type_t<input_t, target_t>;
  constexpr int kLen = kRun<kVec, acc_t>;
  constexpr int kSums = kSumsOf<kBce>;
  walk_planes<kLen>(a.walk, [&](uint32_t plane, int64_t i, int64_t end, int64_t step, bool leader) {
    const input_t* x = a.in.x + int64_t(plane) * a.walk.S;
    const target_t* t = a.in.t + int64_t(plane) * a.walk.S;
    acc_t sums[kSums] = {};
    // the loop twice, with and without a mask: the one without spares the mask's loads and selects
    const auto add_runs = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      const bool* mask = kMasked ? a.in.mask + a.in.mask_offset(plane, a.walk.S) : nullptr;
      for_each_run<kVec, kLen>(i, end, step, [&](auto partial, int64_t j) {
        add_terms<kMode, kSigmoid, kBce>(RunValues<kVec, kLen, kMasked, decltype(partial)::value, input_t, target_t>(
                                       x, t, mask, j, end),
                                   sums);
      });
    };
    a.in.mask ? add_runs(std::true_type{}) : add_runs(std::false_type{});
    if (a.walk.warp_planes) {
      warp_sum(sums);
    } else {
      block_sum(sums);
    }
    if (leader) {
      acc_t* row = a.partials + a.walk.split.row(plane, blockIdx.x) * kSums;
#pragma unroll
      for (int c = 0; c < kSums; ++c) {
        row[c] = sums[c];
      }
    }
  });
}

template <typename sums_t, int kSums>
struct RegionFinish {
  sums_t* out;  // (planes, kSums)
  __device__ void operator()(int64_t plane, const double (&s)[kSums]) const {
#pragma unroll
    for (int c = 0; c < kSums; ++c) {
      out[plane * kSums + c] = static_cast<sums_t>(s[c]);
    }
  }
};

template <typename input_t, typename target_t>
struct RegionBackwardArgs {
  using acc_t = acc_type_t<input_t, target_t>;
  RegionInputs<input_t, target_t> in;
  PlaneWalk walk;
  const acc_t* grad_sums;  // (B, C, kSumsOf<kBce>)
  input_t* grad_x;         // or null
  target_t* grad_t;        // or null (always for bool and uint8 targets)
};

template <int kVec, RegionMode kMode, bool kSigmoid, bool kBce, typename input_t, typename target_t>
__global__ void __launch_bounds__(kThreads, kRegionBlocksPerSM<kVec, acc_type_t<input_t, target_t>, kBce>)
    region_sums_backward_kernel(const RegionBackwardArgs<input_t, target_t> a) {
  using acc_t = acc_type_t<input_t, target_t>;
  constexpr int kLen = kRun<kVec, acc_t>;
  walk_planes<kLen>(a.walk, [&](uint32_t plane, int64_t i, int64_t end, int64_t step, bool) {
    const int64_t offset = int64_t(plane) * a.walk.S;
    const input_t* x = a.in.x + offset;
    const target_t* t = a.in.t + offset;
    input_t* grad_x = a.grad_x ? a.grad_x + offset : nullptr;
    target_t* grad_t = a.grad_t ? a.grad_t + offset : nullptr;
    // the gradient of the loss with respect to the plane's sums
    const acc_t* g = a.grad_sums + int64_t(plane) * kSumsOf<kBce>;
    const acc_t g0 = g[0], g1 = g[1], g2 = g[2];
    const acc_t ga = kBce ? g[4] : acc_t(0), gb = kBce ? g[5] : acc_t(0);  // of the BCE sums
    // the loop twice, with and without a mask: the one without spares the mask's loads and selects
    const auto write_runs = [&](auto masked) {
      constexpr bool kMasked = decltype(masked)::value;
      const bool* mask = kMasked ? a.in.mask + a.in.mask_offset(plane, a.walk.S) : nullptr;
      for_each_run<kVec, kLen>(i, end, step, [&](auto partial, int64_t j) {
        constexpr bool kPartial = decltype(partial)::value;
        const RunValues<kVec, kLen, kMasked, kPartial, input_t, target_t> v(x, t, mask, j, end);
        Pack<input_t, kLen> dx;
        [[maybe_unused]] Pack<target_t, kLen> dt;  // for a floating target
#pragma unroll
        for (int k = 0; k < kLen; ++k) {
          const acc_t x_k = static_cast<acc_t>(v.x.v[k]), t_k = static_cast<acc_t>(v.t.v[k]);
          const acc_t p = kSigmoid ? math::sigmoid(x_k) : x_k;
          acc_t dp = math::region_grad_p<kMode>(p, t_k, g0, g1);
          if constexpr (kSigmoid) {
            dp *= math::sigmoid_grad(p);
          }
          if constexpr (kBce) {
            dp += math::bce_sums_grad_x(p, t_k, ga, gb);
          }
          // a masked-out element gets 0
          dx.v[k] = static_cast<input_t>(v.kept(k) ? dp : acc_t(0));
          if constexpr (is_float_v<target_t>) {
            // with kBce it needs log(1 + exp(-|x|)): only where the target's gradient is asked for
            if (!kBce || grad_t) {
              acc_t dt_k = math::region_grad_t<kMode>(p, t_k, g0, g2);
              if constexpr (kBce) {
                acc_t softplus;
                math::sigmoid_softplus(x_k, softplus);
                dt_k += math::bce_sums_grad_t(x_k, softplus, ga, gb);
              }
              dt.v[k] = static_cast<target_t>(v.kept(k) ? dt_k : acc_t(0));
            }
          }
        }
        if (grad_x) {
          store_run<kVec, kLen, kPartial>(grad_x, j, end, dx);
        }
        if constexpr (is_float_v<target_t>) {
          if (grad_t) {
            store_run<kVec, kLen, kPartial>(grad_t, j, end, dt);
          }
        }
      });
    };
    a.in.mask ? write_runs(std::true_type{}) : write_runs(std::false_type{});
  });
}

// The mask as a contiguous bool tensor, or undefined.
at::Tensor region_mask(const c10::optional<at::Tensor>& mask) {
  return mask.has_value() && mask->defined() ? mask->contiguous() : at::Tensor();
}

// Elements a plane: the product of the spatial sizes (1 with none).
int64_t plane_size(const at::Tensor& input) {
  int64_t S = 1;
  for (int64_t d = 2; d < input.dim(); ++d) {
    S *= input.size(d);
  }
  return S;
}

template <typename input_t, typename target_t>
RegionInputs<input_t, target_t> region_inputs(const at::Tensor& input, const at::Tensor& target,
                                              const at::Tensor& mask) {
  RegionInputs<input_t, target_t> in{};
  in.x = input.const_data_ptr<input_t>();
  in.t = target.const_data_ptr<target_t>();
  in.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  in.C = uint32_t(input.size(1));
  in.mask_per_channel = mask.defined() && mask.size(1) == input.size(1);
  return in;
}

// Calls f(input_t{}, target_t{}, mode, sigmoid, bce) with the kernels' template arguments, the
// mode, sigmoid and bce (the mode's bit math::kWithBce, which op_checks.h allows with sigmoid
// only) as integral constants.
template <typename F>
void dispatch_region(const at::Tensor& input, const at::Tensor& target, int64_t mode, bool sigmoid, const F& f) {
  dispatch_input_target<true>(input.scalar_type(), target.scalar_type(), [&](auto in_tag, auto t_tag) {
    math::dispatch_region_mode(mode, [&](auto mode_tag) {
      dispatch_bool(sigmoid, [&](auto sigmoid_tag) {
        if constexpr (decltype(sigmoid_tag)::value) {
          dispatch_bool((mode & math::kWithBce) != 0,
                        [&](auto bce_tag) { f(in_tag, t_tag, mode_tag, sigmoid_tag, bce_tag); });
        } else {
          f(in_tag, t_tag, mode_tag, sigmoid_tag, std::false_type{});
        }
      });
    });
  });
}

// Packs of kVec where S allows them (a pack then never straddles two planes, and a broadcast
// mask's packs are aligned too) and the pointers are aligned for them.
template <int kVec, typename... Ts>
bool region_packs(int64_t S, const Ts*... pointers) {
  return S % kVec == 0 && packs_aligned<kVec>(pointers...);
}

at::Tensor region_sums_cuda(const at::Tensor& input_, const at::Tensor& target_, const c10::optional<at::Tensor>& mask_,
                            bool sigmoid, int64_t mode) {
  check_region_args("region_sums", input_, target_, mask_, mode, sigmoid, /*with_bce=*/true);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = region_mask(mask_);
  const int64_t B = input.size(0), C = input.size(1), S = plane_size(input);
  at::Tensor sums;
  dispatch_region(input, target, mode, sigmoid, [&](auto in_tag, auto t_tag, auto mode_tag, auto sigmoid_tag,
                                                   auto bce_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    constexpr bool kBce = decltype(bce_tag)::value;
    constexpr int kSums = kSumsOf<kBce>;
    const auto options = input.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    if (input.numel() == 0) {
      sums = at::zeros({B, C, kSums}, options);
      return;
    }
    sums = at::empty({B, C, kSums}, options);
    RegionSumsArgs<input_t, target_t> args{};
    args.in = region_inputs<input_t, target_t>(input, target, mask);
    constexpr int kVec = kVecOf<input_t, acc_t>;
    dispatch_vec<kVec>(region_packs<kVec>(S, args.in.x, args.in.t, args.in.mask), [&](auto vec) {
      constexpr auto kernel = &region_sums_kernel<decltype(vec)::value, decltype(mode_tag)::value,
                                                  decltype(sigmoid_tag)::value, kBce, input_t, target_t>;
      args.walk = PlaneWalk::make<kernel, kRun<decltype(vec)::value, acc_t>>(B * C, S);
      at::Tensor partials = at::empty({args.walk.split.rows(B * C) * kSums}, options);
      args.partials = partials.mutable_data_ptr<acc_t>();
      PYLOSSES_LAUNCH(kernel, args.walk.split.blocks(), kThreads, 0, c10::cuda::getCurrentCUDAStream(), args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sum_and_finish<kSums, acc_t>(partials, B * C, args.walk.split,
                                   RegionFinish<acc_t, kSums>{sums.mutable_data_ptr<acc_t>()});
    });
  });
  return sums;
}

std::tuple<at::Tensor, at::Tensor> region_sums_backward_cuda(const at::Tensor& grad_sums_, const at::Tensor& input_,
                                                             const at::Tensor& target_,
                                                             const c10::optional<at::Tensor>& mask_, bool sigmoid,
                                                             int64_t mode, bool grad_input, bool grad_target) {
  check_region_backward_args(grad_sums_, input_, target_, mask_, mode, grad_target, sigmoid, /*with_bce=*/true);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();
  const at::Tensor mask = region_mask(mask_);
  at::Tensor grad_in = at::empty(grad_input ? input.sizes() : at::IntArrayRef{0}, input.options());
  at::Tensor grad_t = at::empty(grad_target ? target.sizes() : at::IntArrayRef{0}, target.options());
  if (input.numel() == 0 || (!grad_input && !grad_target)) {
    return {grad_in, grad_t};
  }
  const int64_t planes = input.size(0) * input.size(1), S = plane_size(input);
  dispatch_region(input, target, mode, sigmoid, [&](auto in_tag, auto t_tag, auto mode_tag, auto sigmoid_tag,
                                                   auto bce_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    // in the sums' dtype: a copy only where a direct call passes another, or a strided one
    const at::Tensor g = grad_sums_.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    RegionBackwardArgs<input_t, target_t> args{};
    args.in = region_inputs<input_t, target_t>(input, target, mask);
    args.grad_sums = g.const_data_ptr<acc_t>();
    args.grad_x = grad_input ? grad_in.mutable_data_ptr<input_t>() : nullptr;
    if constexpr (is_float_v<target_t>) {
      args.grad_t = grad_target ? grad_t.mutable_data_ptr<target_t>() : nullptr;
    }
    constexpr int kVec = kVecOf<input_t, acc_t>;
    const bool packs = region_packs<kVec>(S, args.in.x, args.in.t, args.in.mask, args.grad_x, args.grad_t);
    dispatch_vec<kVec>(packs, [&](auto vec) {
      constexpr auto kernel = &region_sums_backward_kernel<decltype(vec)::value, decltype(mode_tag)::value,
                                                           decltype(sigmoid_tag)::value, decltype(bce_tag)::value,
                                                           input_t, target_t>;
      args.walk = PlaneWalk::make<kernel, kRun<decltype(vec)::value, acc_t>>(planes, S);
      PYLOSSES_LAUNCH(kernel, args.walk.split.blocks(), kThreads, 0, c10::cuda::getCurrentCUDAStream(), args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_in, grad_t};
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) {
  m.impl("region_sums", &region_sums_cuda);
  m.impl("region_sums_backward", &region_sums_backward_cuda);
}

}  // namespace pylosses::cuda
