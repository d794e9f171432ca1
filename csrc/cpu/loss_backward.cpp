// The backward of every loss: grad = saved_grad * grad_output * scale, where the forward saved
// the gradient for grad_output = 1, grad_output has one value per group of
// saved_grad.numel() / grad_output.numel() consecutive elements (one group for mean and sum,
// a sample for the segmentation loss's "none", an element for MSE's "none") and scale is 1, or
// -1 for MSE's target.
#include <torch/library.h>

#include "cpu_common.h"
#include "../op_checks.h"

namespace pylosses::cpu {
namespace {

constexpr int64_t kBlock = 1 << 14;

template <typename saved_t, typename go_t, typename out_t>
void loss_backward_kernel(const saved_t* saved, const go_t* grad_output, int64_t n, int64_t group, double scale,
                          out_t* out) {
  using acc_t = acc_type_t<saved_t, go_t, out_t>;
  using V = Vec<acc_t>;
  struct Scratch {
    std::vector<acc_t> s = std::vector<acc_t>(kBlock), g = s, o = s;
  };
  for_each_chunk<Scratch>(at::divup(n, kBlock), [&](int64_t block, Scratch& buf) {
    const int64_t begin = block * kBlock, len = std::min(kBlock, n - begin);
    const acc_t* s = load_row(saved + begin, buf.s.data(), len);
    acc_t* o = out_row(out + begin, buf.o.data());
    if (group == 1) {  // one grad_output value an element
      const acc_t* g = load_row(grad_output + begin, buf.g.data(), len);
      for_each_vector<acc_t>(len, [&](auto tail, int64_t i, int64_t lanes) {
        constexpr bool kTail = decltype(tail)::value;
        store<kTail>(load<kTail>(s + i, lanes) * load<kTail>(g + i, lanes) * V(acc_t(scale)), o + i, lanes);
      });
    } else {  // one value a group: walk the groups that meet this block
      for (int64_t i = 0; i < len;) {
        const int64_t k = (begin + i) / group;
        const int64_t seg_end = std::min(len, (k + 1) * group - begin);
        const V factor(static_cast<acc_t>(grad_output[k]) * acc_t(scale));
        for_each_vector<acc_t>(seg_end - i, [&](auto tail, int64_t j, int64_t lanes) {
          constexpr bool kTail = decltype(tail)::value;
          store<kTail>(load<kTail>(s + i + j, lanes) * factor, o + i + j, lanes);
        });
        i = seg_end;
      }
    }
    store_row(o, out + begin, len);
  });
}

// out = saved * grad_output * scale
void apply_grad_output(const at::Tensor& saved, const at::Tensor& grad_output_, double scale, at::Tensor& out) {
  const int64_t n = saved.numel();
  if (n == 0) {
    return;
  }
  const at::Tensor grad_output = grad_output_.contiguous();
  dispatch_float(saved.scalar_type(), [&](auto saved_tag) {
    dispatch_float(grad_output.scalar_type(), [&](auto go_tag) {
      dispatch_float(out.scalar_type(), [&](auto out_tag) {
        loss_backward_kernel(saved.const_data_ptr<decltype(saved_tag)>(), grad_output.const_data_ptr<decltype(go_tag)>(),
                             n, n / grad_output.numel(), scale, out.mutable_data_ptr<decltype(out_tag)>());
      });
    });
  });
}

at::Tensor loss_backward_cpu(const at::Tensor& grad_output, const at::Tensor& saved, double scale,
                             at::ScalarType dtype) {
  check_backward_args(grad_output, saved, dtype);
  at::Tensor out = empty_gradient(saved.sizes(), saved.options().dtype(dtype));
  apply_grad_output(saved.contiguous(), grad_output, scale, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(pylosses, CPU, m) { m.impl("loss_backward", &loss_backward_cpu); }

}  // namespace pylosses::cpu
