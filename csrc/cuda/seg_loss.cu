// Segmentation loss alpha * BCE + beta * TV on CUDA, in one pass over memory.
//
// The contiguous input is a sequence of volumes of D x H rows of length W (D = 1 in 2-D), one
// for each sample and channel. A block owns a tile of a volume, TX * kVec columns wide; each
// thread owns kVec consecutive elements of a row and walks them along one axis, keeping the
// probabilities of the current and the next step in registers, with the sign of each
// element's difference with the step before (what the gradient needs of it), so that the
// walked axis's neighbours come from registers. In 2-D (kPlanar) the walk goes down H: each
// row of threads takes its own band of rows (seg_band), and reads the row above its band once
// before the walk. In 3-D it goes through the depth D, the tile being TY rows tall, and the H
// neighbours inside the tile come from shared memory, those across its edge from memory again.
// Each step the block shares its probabilities through shared memory, so W neighbours inside
// the tile come from there, and only those across the tile's edge are loaded again (from
// cache: the neighbouring tile reads them too). Every element is read from DRAM once.
//
// The grid is what the device keeps resident (one wave), and each block takes a contiguous run
// of tiles (TileSplit in cuda_common.cuh), so that its run crosses few samples. A block adds up
// its tiles' sums in registers and writes them as one row of partials for each group it
// touched (a sample for "none", else the whole tensor), when the group changes and at the
// end: rows group + block, O(groups + blocks) of them, none zeroed; sum_and_finish then adds
// each group's rows in a fixed order. Probabilities outside [0, 1] are counted, and make the
// loss NaN: no device assert, no host sync.
#include <torch/library.h>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../seg_loss_math.h"

namespace pylosses::cuda {
namespace {

constexpr int kSums = 5;  // bce, tv_w, tv_h, tv_d, count of inputs and targets out of range

template <typename input_t, typename target_t>
struct SegArgs {
  using acc_t = acc_type_t<input_t, target_t>;
  const input_t* x;
  const target_t* t;
  saved_grad_t<input_t>* grad;    // or null
  saved_grad_t<target_t>* grad_t; // or null (always for bool and uint8 targets)
  acc_t* partials;                // split.rows(groups) x kSums
  int64_t D, H, W;
  // tile counts in 32 bits (checked on the host), which keeps a tile's 64-bit-free index
  // arithmetic cheap next to the few elements a thread handles in it; offsets are int64
  uint32_t tiles_w, tiles_per_volume;
  int64_t band;                   // rows a band, planar kernels (D = 1)
  TileSplit split;
  acc_t w_bce, w_w, w_h, w_d;     // the gradient's factors (math::SegGradWeights)
};

// A pack's inputs and probabilities; for logits also the log(1 + exp(-|x|)) of their BCE, from
// the sigmoid's exponential (where softplus goes unused, the compiler drops its log).
template <bool kLogits, int kVec, typename input_t, typename acc_t>
__device__ __forceinline__ void load_probs(const input_t* p, int64_t i, acc_t (&x)[kVec], acc_t (&prob)[kVec],
                                           acc_t (&softplus)[kVec]) {
  const auto v = load_pack<kVec>(p, i);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    x[k] = static_cast<acc_t>(v.v[k]);
    if constexpr (kLogits) {
      prob[k] = math::sigmoid_softplus(x[k], softplus[k]);
    } else {
      prob[k] = x[k];
    }
  }
}

template <bool kLogits, typename input_t, typename acc_t>
__device__ __forceinline__ acc_t load_prob(const input_t* p) {
  const acc_t x = static_cast<acc_t>(*p);
  return kLogits ? math::sigmoid(x) : x;
}

// Elements a thread takes at a time: 8 in float32 arithmetic (one 128-bit load of a 16-bit
// input, two of a float32 one), 2 in float64. A pack's cost beyond its elements' math (its
// neighbours at the tile's edges, its addresses, the barrier) is paid once for 8: with 4 a
// pack, it was over a quarter of the hot loop (its sm_90 SASS). float32 input takes packs of 4
// where W is a multiple of 4 but not of 8.
template <typename acc_t>
constexpr int kSegVec = std::is_same_v<acc_t, double> ? 2 : 8;

// Blocks of seg_fwd_kernel<., kVec, ...> that a multiprocessor keeps, which __launch_bounds__
// makes ptxas fit into (65536 / (256 x blocks) registers: 64, 80, 128): the most that each
// instantiation reaches without spilling (ptxas -v, in the sm_90 cubin; double at 80 spills).
// Shared memory (2 x 256 x kVec accumulators) allows more.
template <int kVec, typename acc_t>
constexpr int kSegBlocksPerSM = std::is_same_v<acc_t, float> ? (kVec == 1 ? 4 : kVec == 4 ? 3 : 2) : 2;

template <int kVec, typename acc_t>
constexpr size_t kSegSmemBytes = 2 * size_t(kThreads) * kVec * sizeof(acc_t);  // two buffers of a tile

// The kernel walks one spatial axis of each tile, carrying the probabilities of the next step
// and the signs of the previous one in registers. kPlanar (D = 1): it walks down H, in bands of
// a.band rows, one band to each row of threads (ty), so that H neighbours come from registers
// and the hot loop has no H halo (the row above a band is read once, before its walk; the row
// below, as the walk's next step). Otherwise it walks D, and the H neighbours come from the
// tile's rows in shared memory, those across the tile's edge from memory.
template <bool kLogits, bool kPlanar, int kVec, typename input_t, typename target_t>
__global__ void __launch_bounds__(kThreads, kSegBlocksPerSM<kVec, acc_type_t<input_t, target_t>>)
    seg_fwd_kernel(const SegArgs<input_t, target_t> a) {
  using acc_t = acc_type_t<input_t, target_t>;
  using grad_t = saved_grad_t<input_t>;
  using grad_target_t = saved_grad_t<target_t>;
  PYLOSSES_DYNAMIC_SMEM(smem_bytes);
  acc_t* const smem = reinterpret_cast<acc_t*>(smem_bytes);  // two buffers of TY x row_len

  const int tx = threadIdx.x, ty = threadIdx.y, TX = blockDim.x, TY = blockDim.y;
  const int row_len = TX * kVec;  // columns a tile
  const int64_t plane = a.H * a.W;
  // the walked axis: its length, a step's stride, the steps of a walk, and its sum (tv_h, tv_d)
  const int64_t walk_len = kPlanar ? a.H : a.D, stride = kPlanar ? a.W : plane, steps = kPlanar ? a.band : a.D;
  constexpr int kWalkSum = kPlanar ? 2 : 3;
  const acc_t w_walk = kPlanar ? a.w_h : a.w_d;
  acc_t sums[kSums] = {};
  unsigned step = 0;  // depth steps taken, over all tiles: picks the shared-memory buffer
  // this block's tiles, and the group of the tiles summed so far (grid: every block has tiles)
  const uint32_t first = blockIdx.x * a.split.tiles_per_block;
  const uint32_t end = first + std::min(a.split.tiles_per_block, a.split.n_tiles - first);
  uint32_t group = first / a.split.tiles_per_group;
  uint32_t group_end = (group + 1) * a.split.tiles_per_group;  // <= n_tiles

  const auto flush = [&]() {  // block-uniform
    block_sum(sums);
    if (tx == 0 && ty == 0) {
      acc_t* row = a.partials + a.split.row(group, blockIdx.x) * kSums;
#pragma unroll
      for (int c = 0; c < kSums; ++c) {
        row[c] = sums[c];
      }
    }
#pragma unroll
    for (int c = 0; c < kSums; ++c) {
      sums[c] = 0;
    }
  };

  for (uint32_t tile = first; tile < end; ++tile) {
    if (tile == group_end) {
      flush();
      ++group;
      group_end += a.split.tiles_per_group;
    }
    const uint32_t volume = tile / a.tiles_per_volume, in_volume = tile % a.tiles_per_volume;
    // planar: the first row of this thread row's band; else its row of the tile
    const int64_t h = (int64_t(in_volume / a.tiles_w) * TY + ty) * (kPlanar ? steps : 1);
    const int64_t w0 = int64_t(in_volume % a.tiles_w) * row_len + int64_t(tx) * kVec;
    const bool inside = h < a.H && w0 < a.W;  // kVec divides W: a pack is all inside or all out
    const int64_t g0 = kPlanar ? h : 0;  // the walk's first position on its axis
    const int64_t base = int64_t(volume) * a.D * plane + (kPlanar ? 0 : h * a.W) + w0;  // at position 0

    // s_front: the sign of each element's difference with its front neighbour (the step
    // before), carried from that step (tv_sign; 0 where there is none)
    acc_t x_cur[kVec], p_cur[kVec], sp_cur[kVec], x_next[kVec], p_next[kVec], sp_next[kVec], s_front[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      x_cur[k] = p_cur[k] = sp_cur[k] = s_front[k] = acc_t(0);
    }
    if (inside) {
      load_probs<kLogits, kVec>(a.x, base + g0 * stride, x_cur, p_cur, sp_cur);
      if (kPlanar && g0 > 0) {  // the row above the band
        load_probs<kLogits, kVec>(a.x, base + (g0 - 1) * stride, x_next, p_next, sp_next);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          s_front[k] = math::tv_sign(p_next[k], p_cur[k]);
        }
      }
    }

    for (int64_t d = 0; d < steps; ++d) {
      const int64_t g = g0 + d;
      const bool here = inside && g < walk_len;
      const int64_t off = base + g * stride;
      if (here && g + 1 < walk_len) {
        load_probs<kLogits, kVec>(a.x, off + stride, x_next, p_next, sp_next);
      } else {  // no back neighbour
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          x_next[k] = x_cur[k];
          p_next[k] = p_cur[k];
          sp_next[k] = sp_cur[k];
        }
      }
      // double-buffered: the buffer written here was last read two steps ago (maybe in the
      // previous tile), before the previous step's barrier
      acc_t* const mine = smem + ((step++ & 1) * TY + ty) * row_len + tx * kVec;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        mine[k] = p_cur[k];
      }
      __syncthreads();
      if (here) {
        // neighbours; a missing one (at the edge of the volume) is the element itself
        const acc_t left_edge = w0 == 0 ? p_cur[0] : tx > 0 ? mine[-1] : load_prob<kLogits, input_t, acc_t>(a.x + off - 1);
        const acc_t right_edge = w0 + kVec >= a.W ? p_cur[kVec - 1]
                                 : tx + 1 < TX    ? mine[kVec]
                                                  : load_prob<kLogits, input_t, acc_t>(a.x + off + kVec);
        acc_t up[kVec], down[kVec];
        if constexpr (!kPlanar) {
          acc_t unused[kVec], unused_sp[kVec];
          if (h == 0) {
#pragma unroll
            for (int k = 0; k < kVec; ++k) up[k] = p_cur[k];
          } else if (ty > 0) {
#pragma unroll
            for (int k = 0; k < kVec; ++k) up[k] = mine[k - row_len];
          } else {
            load_probs<kLogits, kVec>(a.x, off - a.W, unused, up, unused_sp);
          }
          if (h == a.H - 1) {
#pragma unroll
            for (int k = 0; k < kVec; ++k) down[k] = p_cur[k];
          } else if (ty + 1 < TY) {
#pragma unroll
            for (int k = 0; k < kVec; ++k) down[k] = mine[k + row_len];
          } else {
            load_probs<kLogits, kVec>(a.x, off + a.W, unused, down, unused_sp);
          }
        }
        const auto targets = load_pack<kVec>(a.t, off);
        Pack<grad_t, kVec> grads;
        Pack<grad_target_t, kVec> grads_t;
        // Each pair of neighbours is counted once, at its earlier element (right, down, back),
        // and the sign of its difference is taken once along W and the walk: an element's left
        // sign is the previous one's right sign, its front sign the previous step's back sign.
        acc_t s_left = math::tv_sign(left_edge, p_cur[0]);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          const acc_t p = p_cur[k], t = static_cast<acc_t>(targets.v[k]);
          const acc_t right = k + 1 < kVec ? p_cur[k + 1] : right_edge;
          constexpr auto kLabels = is_float_v<target_t> ? math::Labels::kSoft : math::Labels::kHard;
          if constexpr (kLogits) {
            sums[0] += math::bce_logits_loss(x_cur[k], t, sp_cur[k]);
          } else {
            sums[0] += math::bce_loss<acc_t, kLabels>(p, t);
          }
          sums[1] += math::tv_loss(p, right);
          if constexpr (!kPlanar) {
            sums[2] += math::tv_loss(p, down[k]);
          }
          sums[kWalkSum] += math::tv_loss(p, p_next[k]);
          if (!kLogits) {
            sums[4] += math::in_unit_interval(p) ? acc_t(0) : acc_t(1);  // NaN is not
          }
          if constexpr (math::kTargetChecked<kLogits, is_float_v<target_t>, std::is_same_v<target_t, bool>>) {
            sums[4] += math::in_unit_interval(t) ? acc_t(0) : acc_t(1);  // a 0/255 mask is not
          }
          if (a.grad) {  // the same for the whole launch: no divergence
            const acc_t s_right = math::tv_sign(p, right), s_back = math::tv_sign(p, p_next[k]);
            acc_t tv = a.w_w * (s_left - s_right);
            if constexpr (!kPlanar) {
              tv += a.w_h * (math::tv_sign(up[k], p) - math::tv_sign(p, down[k]));
            }
            tv += w_walk * (s_front[k] - s_back);
            grads.v[k] = a.w_bce * math::bce_grad_input<acc_t, kLogits>(p, t) + math::prob_grad<acc_t, kLogits>(p) * tv;
            s_left = s_right;
            s_front[k] = s_back;
          }
          if constexpr (is_float_v<target_t>) {
            if (a.grad_t) {
              grads_t.v[k] = a.w_bce * math::bce_grad_target<acc_t, kLogits>(x_cur[k], p);
            }
          }
        }
        if (a.grad) {
          store_pack(a.grad, off, grads);
        }
        if constexpr (is_float_v<target_t>) {
          if (a.grad_t) {
            store_pack(a.grad_t, off, grads_t);
          }
        }
      }
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        p_cur[k] = p_next[k];
        x_cur[k] = x_next[k];
        sp_cur[k] = sp_next[k];
      }
    }
  }
  flush();
}

template <typename loss_t>
struct SegFinish {
  loss_t* out;
  double n, extent[3], alpha, beta;
  bool mean;
  __device__ void operator()(int64_t group, const double (&s)[kSums]) const {
    const double tv[3] = {s[1], s[2], s[3]};
    const double value = math::seg_reduce(s[0], tv, n, extent, alpha, beta, mean);
    out[group] = static_cast<loss_t>(s[4] > 0 ? CUDART_NAN : value);  // out of range: NaN
  }
};

// Rows a band of a planar (D = 1) launch: the longest band, up to kMaxSegBand rows, that
// leaves every row of threads a band in the volume (band <= H / TY) and the grid a tile for
// nearly every block it keeps resident. A band's walk reads the row above it once more (from
// cache, mostly): 1 / band of the input's traffic.
constexpr int64_t kMaxSegBand = 32;
template <typename Tiles>
int64_t seg_band(int64_t H, int64_t TY, const Tiles& tiles, int64_t resident) {
  int64_t band = 1;
  while (band < kMaxSegBand && 2 * band * TY <= H && tiles(2 * band) >= resident - resident / 8) {
    band *= 2;
  }
  return band;
}

// A block of TY x TX threads, TX a power of two that spans a row's packs up to a warp.
dim3 tile_threads(int64_t W, int kVec) {
  int tx = 1;
  while (tx < kWarp && int64_t(tx) * kVec < W) {
    tx *= 2;
  }
  return dim3(tx, kThreads / tx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> seg_loss_fwd_cuda(const at::Tensor& input_, const at::Tensor& target_,
                                                                 double alpha, double beta, int64_t spatial_dims,
                                                                 bool from_logits, int64_t reduction,
                                                                 bool compute_grad_input, bool compute_grad_target) {
  check_seg_args(input_, target_, spatial_dims, reduction, compute_grad_target);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor target = target_.contiguous();

  const int64_t nd = input.dim(), n = input.numel(), batch = input.size(0);
  const int64_t W = input.size(nd - 1), H = input.size(nd - 2), D = spatial_dims == 3 ? input.size(nd - 3) : 1;
  const int64_t per_sample = batch ? n / batch : 0;
  const bool none = reduction == at::Reduction::None, mean_like = reduction != at::Reduction::Sum;
  const int64_t groups = none ? batch : 1;
  const double extent[3] = {double(W), double(H), double(D)};
  const double n_mean = reduction == at::Reduction::Mean ? double(n) : double(per_sample);
  const math::SegGradWeights weights(alpha, beta, mean_like, n_mean, extent);

  const auto saved_options = [](const at::Tensor& t) { return t.options().dtype(saved_grad_dtype(t.scalar_type())); };
  at::Tensor grad_in = at::empty(compute_grad_input ? input.sizes() : at::IntArrayRef{0}, saved_options(input));
  at::Tensor grad_t = at::empty(compute_grad_target ? target.sizes() : at::IntArrayRef{0}, saved_options(target));
  const auto result_dtype = at::promote_types(input.scalar_type(), target.scalar_type());
  at::Tensor loss = at::empty(none ? at::IntArrayRef{batch} : at::IntArrayRef{}, input.options().dtype(result_dtype));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_input_target<true>(input.scalar_type(), target.scalar_type(), [&](auto in_tag, auto t_tag) {
    using input_t = decltype(in_tag);
    using target_t = decltype(t_tag);
    using acc_t = acc_type_t<input_t, target_t>;
    using result_t = promote_t<input_t, std::conditional_t<is_float_v<target_t>, target_t, input_t>>;
    constexpr int kVec = kSegVec<acc_t>;
    SegArgs<input_t, target_t> args{};
    args.x = input.const_data_ptr<input_t>();
    args.t = target.const_data_ptr<target_t>();
    args.grad = compute_grad_input ? grad_in.mutable_data_ptr<saved_grad_t<input_t>>() : nullptr;
    if constexpr (is_float_v<target_t>) {
      args.grad_t = compute_grad_target ? grad_t.mutable_data_ptr<saved_grad_t<target_t>>() : nullptr;
    }
    args.D = D;
    args.H = H;
    args.W = W;
    args.w_bce = acc_t(weights.bce);
    args.w_w = acc_t(weights.axis[0]);
    args.w_h = acc_t(weights.axis[1]);
    args.w_d = acc_t(weights.axis[2]);
    const SegFinish<result_t> finish{loss.mutable_data_ptr<result_t>(), n_mean, {extent[0], extent[1], extent[2]},
                                     alpha, beta, mean_like};
    // the pack width: kVec where W and the pointers allow it; for float32 input also 4 (one
    // 128-bit load), so that a width that is a multiple of 4 but not of 8 keeps a vector path
    constexpr int kNarrow = kVec128<input_t> < kVec ? kVec128<input_t> : 1;
    const auto fits = [&](int vec) {
      return W % vec == 0 && (vec == kVec ? packs_aligned<kVec>(args.x, args.t, args.grad, args.grad_t)
                                          : packs_aligned<kNarrow>(args.x, args.t, args.grad, args.grad_t));
    };
    const int width = fits(kVec) ? kVec : kNarrow > 1 && fits(kNarrow) ? kNarrow : 1;
    dispatch_bool(from_logits, [&](auto logits) {
      dispatch_bool(D == 1, [&](auto planar) {
        const auto launch = [&](auto vec_tag) {
          constexpr int vec = decltype(vec_tag)::value;
          constexpr auto kernel = &seg_fwd_kernel<decltype(logits)::value, decltype(planar)::value, vec, input_t, target_t>;
          constexpr size_t smem = kSegSmemBytes<vec, acc_t>;
          const dim3 threads = tile_threads(W, vec);
          const int64_t tiles_w = ceil_div(W, int64_t(threads.x) * vec);
          const int64_t volumes = n ? n / (D * H * W) : 0;
          const auto tiles = [&](int64_t band) { return volumes * tiles_w * ceil_div(H, int64_t(threads.y) * band); };
          args.band = planar ? seg_band(H, threads.y, tiles, resident_blocks<kernel>(smem)) : 1;
          const int64_t n_tiles = tiles(args.band);
          args.tiles_w = uint32_t(tiles_w);
          args.tiles_per_volume = uint32_t(volumes ? n_tiles / volumes : 0);
          args.split = TileSplit::make(n_tiles, none && batch > 0 ? n_tiles / batch : n_tiles,
                                       grid_size<kernel>(n_tiles, smem));
          at::Tensor partials = at::empty({args.split.rows(groups) * kSums},
                                          input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
          args.partials = partials.mutable_data_ptr<acc_t>();
          if (n_tiles > 0) {
            PYLOSSES_LAUNCH(kernel, args.split.blocks(), threads, smem, stream, args);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
          sum_and_finish<kSums, acc_t>(partials, groups, args.split, finish);
        };
        if (width == kVec) {
          launch(std::integral_constant<int, kVec>{});
        } else if (kNarrow > 1 && width == kNarrow) {
          launch(std::integral_constant<int, kNarrow>{});
        } else {
          launch(std::integral_constant<int, 1>{});
        }
      });
    });
  });
  return {loss, grad_in, grad_t};
}

}  // namespace

PYLOSSES_CUDA_IMPL(m) { m.impl("seg_loss_fwd", &seg_loss_fwd_cuda); }

}  // namespace pylosses::cuda
