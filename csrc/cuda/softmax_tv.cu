// beta * the total variation of softmax(input) over the classes, on CUDA (op softmax_tv_fwd; the
// CPU kernel, csrc/cpu/softmax_tv.cpp, is the other backend): the lambda_tv term of DiceCELoss
// with no softmax tensor in memory, its input gradient written in the forward. The per-element
// math (tv_loss, tv_grad, seg_reduce, SegGradWeights) is csrc/seg_loss_math.h's.
//
// The contiguous input is B samples of C planes of S pixels (S = H x W, or D x H x W); a
// pixel's C logits lie S apart. With p_c a pixel's probability of class c and G_c = sum over
// the axes of w_a * tv_grad(prev, p_c, next) (a missing neighbour at the axis's ends standing
// in by the pixel itself, so that its difference is 0), the gradient is
// dx_c = p_c (G_c - sum_k G_k p_k). The loss counts each pair once, at its later element,
// |p(i) - p(i - e_a)|.
//
// A ring along one axis (softmax_tv_kernel). A thread owns a column of pixels along the walked
// axis (H in 2-D, D in 3-D) and an item is kWalk consecutive positions of it (8; 4 in float64),
// with one more before and after. For each it computes the softmax's maximum and 1 / sum once (a
// sweep over the classes for the maxima, one for the sums of exponentials), then sweeps the
// classes with the kWalk + 2 probabilities of a class in registers: the walked axis's
// neighbours are its own, and each pair's sign along it is computed once; W neighbours come from
// the next lanes (warp shuffles of the probability and of the left pair's sign: lanes 0 and 31
// are a halo, so a warp outputs 30 columns), and in 3-D H neighbours from the warps above and
// below (shared memory: a block stacks 8 warps along H, the first and last a halo, 6 output
// rows). The first sweep adds the loss terms and sum_k G_k p_k, the second (with a gradient)
// writes dx_c. Each probability is thus computed three times an item, the halo's share on top:
// about 4 exponentials an output element in 2-D, 5.3 in 3-D, where the first version (a thread a
// pixel, every neighbour's softmax recomputed) took 15 and 21.
//
// The sweeps select, never branch: the ring's masks (a slot's pixel there, a pair's two, an
// output) are bits set once an item; a missing slot's 1 / sum is 0, so its p is 0 with no
// selection a class; a W pair's sign is masked where it is computed (the left lane's), so the
// right pair's shuffled sign needs no mask; a 3-D H neighbour is read from this warp's own row
// where there is none; the loss adds |d| as sign(d) d with the masked sign (exact; NaN where d
// is), so that a missing pair adds 0, and drops the halo lanes' sums once, after the last item;
// signs are float whatever acc_t is (exact; float64's shuffled once, in half the registers).
// The sm_90 gate counts the four class loops at float32 99.3 instructions an output element
// in 2-D and 164.3 in 3-D (136.5 and 233.8 before these), 16-bit 127 to 205 (165 to 268),
// float64 313 and 468 (429 and 641), no spills, 16 warps an SM.
//
// Per-block sums of the three axes' terms go to a row of partials, which sum_and_finish adds in
// a fixed order: no atomics, no host sync, the same bits run after run. Every pixel's statistics
// and probabilities are computed by the same code in every thread that needs them, so a pair's
// two sides see the same bits (a tie's sign is 0 on both sides).
#include <torch/library.h>

#include <limits>

#include "cuda_common.cuh"
#include "../op_checks.h"
#include "../seg_loss_math.h"

namespace pylosses::cuda {
namespace {

constexpr int kTvSums = 3;  // sums of |differences| along W, H, D (seg_reduce's order)

// output positions a thread takes along the walked axis, an item: 8, and 4 in float64 (whose
// ring of 8 spilled at 128 registers)
template <typename acc_t>
constexpr int kWalkOf = std::is_same_v<acc_t, double> ? 4 : 8;
constexpr int kCols = kWarp - 2;         // output columns a warp: lanes 1 to 30 (0 and 31 are a halo)
constexpr int kWarps = kThreads / kWarp; // 8
constexpr int kRows = kWarps - 2;        // 3-D: output rows a block, warps 1 to 6 (0 and 7 are a halo)
// Blocks a multiprocessor keeps (16 warps), which __launch_bounds__ makes ptxas fit into (128
// registers a thread at most): the ring of a thread is three arrays of kRing and one of kWalk.
constexpr int kTvBlocksPerSM = 2;

// The maximum of the classes' logits, NaN if either is: float32 in one instruction (max.NaN,
// sm_80 on) where math::pmax (a < b ? b : a) takes a compare and a select. A NaN maximum, or
// math::pmax's (which passes on a NaN only from its first operand), gives the same
// probabilities: NaN for every class of a pixel with a NaN logit (its sum of exponentials is).
template <typename T>
__device__ inline T max_nan(T a, T b) { return math::pmax(a, b); }
#if defined(__CUDA_ARCH__)
template <>
__device__ inline float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
#endif

template <typename input_t>
struct TvArgs {
  using acc_t = acc_type_t<input_t>;
  const input_t* x;              // (B, C, S), contiguous
  saved_grad_t<input_t>* grad;   // of x's shape, or null
  acc_t* partials;               // a row of kTvSums a block
  int64_t S, CS;                 // pixels a plane, C x S
  int64_t W, H;                  // extents along W and H
  int64_t walk_len, walk_stride; // the walked axis: H in 2-D (stride W), D in 3-D (stride H W)
  int64_t col_tiles, row_tiles, walk_tiles, items;  // row_tiles 1 in 2-D
  int C;                         // classes
  acc_t w_col, w_row, w_walk;    // the gradient's factors along W, H (3-D) and the walked axis
};

template <int kDims, typename input_t>
__global__ void __launch_bounds__(kThreads, kTvBlocksPerSM) softmax_tv_kernel(const TvArgs<input_t> a) {
  using acc_t = acc_type_t<input_t>;
  using grad_t = saved_grad_t<input_t>;
  constexpr int kWalk = kWalkOf<acc_t>;
  constexpr int kRing = kWalk + 2;  // with the one before and the one after
  constexpr bool k3D = kDims == 3;
  constexpr int kWalkSum = k3D ? 2 : 1;  // the walked axis's sum: D in 3-D, H in 2-D
  constexpr unsigned kAll = 0xffffffffu;
  constexpr int kPair = kRing, kLeft = 2 * kRing, kOut = 3 * kRing;  // the masks' fields (below)
  constexpr int kMaskWords = (4 * kRing + 31) / 32;  // 32-bit words of the masks (below)
  const int lane = int(threadIdx.x) % kWarp, warp = int(threadIdx.x) / kWarp;
  // 3-D: each warp's probabilities of the class in hand at each ring position, for the H neighbours
  __shared__ acc_t ring_rows[k3D ? kRing : 1][kWarps][kWarp];
  acc_t sums[kTvSums] = {};
  // an item is a warp's in 2-D, the block's in 3-D (whose warps share H neighbours)
  const int64_t first = k3D ? int64_t(blockIdx.x) : int64_t(blockIdx.x) * kWarps + warp;
  const int64_t step = k3D ? int64_t(gridDim.x) : int64_t(gridDim.x) * kWarps;
  for (int64_t item = first; item < a.items; item += step) {
    // item = ((b x walk_tiles + walk tile) x row_tiles + row tile) x col_tiles + column tile
    int64_t rest = item;
    const int64_t col_tile = rest % a.col_tiles;
    rest /= a.col_tiles;
    const int64_t row_tile = rest % a.row_tiles;
    rest /= a.row_tiles;
    const int64_t walk_tile = rest % a.walk_tiles, b = rest / a.walk_tiles;
    const int64_t w = col_tile * kCols + lane - 1;
    const int64_t h = k3D ? row_tile * kRows + warp - 1 : 0;
    const int64_t j0 = walk_tile * kWalk - 1;  // the walked axis's position of ring slot 0
    const bool pixel_ok = w >= 0 && w < a.W && (!k3D || (h >= 0 && h < a.H));
    const bool output = pixel_ok && lane >= 1 && lane <= kCols && (!k3D || (warp >= 1 && warp <= kRows));
    const bool has_left = w > 0;
    // slot k's logit of class 0 at base + k walk_stride (read only where ok)
    const int64_t base = b * a.CS + (k3D ? h * a.W : 0) + w + j0 * a.walk_stride;
    // the ring's masks, once an item as bits (bit k: slot k; a bit test in the sweeps, where 64-bit
    // compares would be redone a class): ok, the pixel there; pair (at kPair), it and slot k - 1
    // (the walk's pair); left (at kLeft), it and its W neighbour w - 1 (the W pair, whose sign is
    // then 0 where masked, so that the next lane's right pair needs no mask of its own); out (at
    // kOut), ok for an output pixel
    unsigned ok = 0;
#pragma unroll
    for (int k = 0; k < kRing; ++k) {
      ok |= unsigned(pixel_ok && j0 + k >= 0 && j0 + k < a.walk_len) << k;
    }
    // the four packed kRing bits apart into 32-bit words (one register in float64, whose ring is
    // at the limit; two in float32), bit(i) a constant word's constant bit
    unsigned long long packed = ok | (unsigned long long)(ok & (ok << 1)) << kPair |
                                (unsigned long long)(has_left ? ok : 0u) << kLeft |
                                (unsigned long long)(output ? ok : 0u) << kOut;
    unsigned masks[kMaskWords];
#pragma unroll
    for (int i = 0; i < kMaskWords; ++i) {
      masks[i] = unsigned(packed >> (32 * i));
    }
    const auto bit = [&](int i) { return ((masks[i / 32] >> (i % 32)) & 1u) != 0u; };
    // a pair's sign, tv_sign(prev, p) = sign(p - prev) (0 for a NaN), in float whatever acc_t
    // is (exact: -1, 0 or 1; a float64 ring's signs in half the registers, shuffled once)
    using sign_t = float;
    const auto sign_of = [](acc_t prev, acc_t p) { return sign_t(p > prev) - sign_t(p < prev); };
    // 3-D: the warps whose probabilities are the H neighbours (this warp's own where there is
    // none, or no pixel here: a difference of 0, as a missing neighbour's; so that the loss's H
    // term of a row past H, whose p are 0, is 0 with no mask)
    const int up_warp = k3D && warp > 0 && h > 0 && h < a.H ? warp - 1 : warp;
    const int down_warp = k3D && warp + 1 < kWarps && h + 1 < a.H ? warp + 1 : warp;
    // class c's logits of the ring, in acc_t (0 where a slot is missing): a pointer a class,
    // stepped along the ring (no 64-bit product a slot)
    const auto load_ring = [&](int c, acc_t (&x)[kRing]) {
      const input_t* ptr = a.x + (base + c * a.S);
#pragma unroll
      for (int k = 0; k < kRing; ++k, ptr += a.walk_stride) {
        x[k] = bit(k) ? static_cast<acc_t>(*ptr) : acc_t(0);
      }
    };

    // each slot's maximum logit, then 1 / its sum of exp(x - max) (two sweeps, each exponential
    // the one the probabilities take)
    acc_t m[kRing], inv[kRing];
    load_ring(0, m);
#pragma unroll 1
    for (int c = 1; c < a.C; ++c) {
      acc_t x[kRing];
      load_ring(c, x);
#pragma unroll
      for (int k = 0; k < kRing; ++k) {
        // (16-bit inputs keep math::pmax: max_nan made their loop longer)
        m[k] = std::is_same_v<input_t, float> ? max_nan(x[k], m[k]) : math::pmax(x[k], m[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kRing; ++k) {
      inv[k] = 0;  // the sum so far
    }
#pragma unroll 1
    for (int c = 0; c < a.C; ++c) {
      acc_t x[kRing];
      load_ring(c, x);
#pragma unroll
      for (int k = 0; k < kRing; ++k) {
        inv[k] += math::pexp_nonpositive_approx(x[k] - m[k]);
      }
    }
    // 0 for a missing slot (whose logits read as 0, m 0 and the sum C): its probabilities
    // exp(0) x 0 = 0, as a missing neighbour's, with no selection a class
#pragma unroll
    for (int k = 0; k < kRing; ++k) {
      inv[k] = bit(k) ? math::preciprocal(inv[k]) : acc_t(0);
    }

    // One sweep of class c: its probabilities along the ring, then each output slot's G_c from
    // its neighbours; kLoss: the loss terms and sum_k G_k p_k added up, else dx_c written.
    // Selections, never branches: the masks' bits pick a term or 0.
    acc_t dot[kWalk] = {};
    const auto sweep = [&](int c, auto loss_tag) {
      constexpr bool kLoss = decltype(loss_tag)::value;
      acc_t p[kRing];
      load_ring(c, p);
#pragma unroll
      for (int k = 0; k < kRing; ++k) {
        p[k] = math::pexp_nonpositive_approx(p[k] - m[k]) * inv[k];
      }
      // the gradient of slot 1, then stepped along the ring as the loads are
      grad_t* grad_ptr = kLoss ? nullptr : a.grad + (base + c * a.S + a.walk_stride);
      // the sign of each pair along the walk, once: walk_sign[k] = tv_sign(p[k - 1], p[k]), 0
      // where either is missing (so slot k's walk term is walk_sign[k] - walk_sign[k + 1])
      sign_t walk_sign[kRing];
#pragma unroll
      for (int k = 1; k < kRing; ++k) {
        walk_sign[k] = bit(kPair + k) ? sign_of(p[k - 1], p[k]) : sign_t(0);
      }
      if constexpr (k3D) {
        __syncthreads();  // the last sweep's readers are done with ring_rows
#pragma unroll
        for (int k = 0; k < kRing; ++k) {
          ring_rows[k][warp][lane] = p[k];
        }
        __syncthreads();
      }
#pragma unroll
      for (int t = 0; t < kWalk; ++t) {
        const int k = t + 1;
        const acc_t cur = p[k];
        // W: the left pair's sign here (0 where w - 1 or this pixel is missing), the right pair's
        // from the next lane (the sign of its left pair: 0 where w + 1 is missing); every lane
        // shuffles (lane 0 gets its own value, lane 31 its own sign: halo lanes, no output)
        const acc_t left = __shfl_up_sync(kAll, cur, 1);
        const sign_t left_sign = bit(kLeft + k) ? sign_of(left, cur) : sign_t(0);
        const sign_t right_sign = __shfl_down_sync(kAll, left_sign, 1);
        acc_t G = a.w_col * acc_t(left_sign - right_sign) + a.w_walk * acc_t(walk_sign[k] - walk_sign[k + 1]);
        acc_t up = cur;
        if constexpr (k3D) {
          up = ring_rows[k][up_warp][lane];
          const acc_t down = ring_rows[k][down_warp][lane];
          G += a.w_row * math::tv_grad(up, cur, down);
        }
        if constexpr (kLoss) {
          // each pair once, at its later element: |d| as sign(d) d (exact, and NaN for a NaN d
          // as |d| is), with the masked sign, so that a missing pair adds 0 (its d is finite: a
          // missing slot's or pixel's p is 0) and no selection is needed; a halo lane's terms
          // (lanes 0 and 31, 3-D warps 0 and 7) are dropped once, after the last item
          sums[0] += acc_t(left_sign) * (cur - left);
          sums[kWalkSum] += acc_t(walk_sign[k]) * (cur - p[k - 1]);
          if constexpr (k3D) {
            sums[1] += math::tv_sign(up, cur) * (cur - up);
          }
          dot[t] += G * cur;  // read only at output slots
        } else {
          if (bit(kOut + k)) {
            *grad_ptr = static_cast<grad_t>(cur * (G - dot[t]));
          }
          grad_ptr += a.walk_stride;
        }
      }
    };
#pragma unroll 1
    for (int c = 0; c < a.C; ++c) {
      sweep(c, std::true_type{});
    }
    if (a.grad) {  // the same for the whole launch: no divergence
#pragma unroll 1
      for (int c = 0; c < a.C; ++c) {
        sweep(c, std::false_type{});
      }
    }
  }
  // the halo lanes' terms: pairs that the neighbouring column (3-D: row) tiles count
  const bool output_lane = lane >= 1 && lane <= kCols && (!k3D || (warp >= 1 && warp <= kRows));
#pragma unroll
  for (int k = 0; k < kTvSums; ++k) {
    sums[k] = output_lane ? sums[k] : acc_t(0);
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
    args.CS = C * args.S;
    args.C = int(C);
    args.W = W;
    args.H = H;
    const bool three_d = spatial_dims == 3;
    args.walk_len = three_d ? D : H;
    args.walk_stride = three_d ? H * W : W;
    args.col_tiles = ceil_div(W, kCols);
    args.row_tiles = three_d ? ceil_div(H, kRows) : 1;
    args.walk_tiles = ceil_div(args.walk_len, kWalkOf<acc_t>);
    args.items = n ? B * args.walk_tiles * args.row_tiles * args.col_tiles : 0;
    args.w_col = acc_t(weights.axis[0]);
    args.w_row = three_d ? acc_t(weights.axis[1]) : acc_t(0);
    args.w_walk = acc_t(weights.axis[three_d ? 2 : 1]);
    const TvFinish<input_t> finish{loss.mutable_data_ptr<input_t>(), double(n), {extent[0], extent[1], extent[2]},
                                   beta, mean};
    dispatch_bool(three_d, [&](auto three_d_tag) {
      constexpr auto kernel = &softmax_tv_kernel<decltype(three_d_tag)::value ? 3 : 2, input_t>;
      // an item a block in 3-D, a warp in 2-D
      const int64_t blocks = n ? grid_size<kernel>(three_d ? args.items : ceil_div(args.items, kWarps)) : 0;
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
