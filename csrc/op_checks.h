#pragma once
// The argument checks of every op, one place for the CPU and CUDA kernels. The Python API has
// checked the user's arguments already (pylosses/functional.py); these guard direct calls of
// torch.ops.pylosses.* with messages that name the op and the argument.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace pylosses {

inline void check_same_device(const char* op, const at::Tensor& a, const char* a_name, const at::Tensor& b,
                              const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_name, " and ", b_name, " must be on the same device, got ",
                    a.device(), " and ", b.device());
}

inline void check_reduction(const char* op, int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
                    reduction);
}

inline void check_mse_args(const at::Tensor& input, const at::Tensor& target, int64_t reduction) {
  TORCH_CHECK_VALUE(input.sizes() == target.sizes(), "mse_loss_fwd: input and target must have the same shape, got ",
                    input.sizes(), " and ", target.sizes());
  check_reduction("mse_loss_fwd", reduction);
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()) && at::isFloatingType(target.scalar_type()),
                   "mse_loss_fwd: input and target must be floating point, got ", input.scalar_type(), " and ",
                   target.scalar_type());
  check_same_device("mse_loss_fwd", input, "input", target, "target");
}

inline void check_seg_args(const at::Tensor& input, const at::Tensor& target, int64_t spatial_dims, int64_t reduction,
                           bool compute_grad_target) {
  TORCH_CHECK_VALUE(spatial_dims == 2 || spatial_dims == 3, "seg_loss_fwd: spatial_dims must be 2 or 3, got ",
                    spatial_dims);
  TORCH_CHECK_VALUE(input.dim() > spatial_dims, "seg_loss_fwd: input must have a batch axis and ", spatial_dims,
                    " spatial axes, got shape ", input.sizes());
  TORCH_CHECK_VALUE(input.sizes() == target.sizes(), "seg_loss_fwd: input and target must have the same shape, got ",
                    input.sizes(), " and ", target.sizes());
  check_reduction("seg_loss_fwd", reduction);
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), "seg_loss_fwd: input must be floating point, got ",
                   input.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()) || target.scalar_type() == at::kBool ||
                       target.scalar_type() == at::kByte,
                   "seg_loss_fwd: target must be floating point, bool or uint8, got ", target.scalar_type());
  TORCH_CHECK_TYPE(!compute_grad_target || at::isFloatingType(target.scalar_type()),
                   "seg_loss_fwd: a gradient for a ", target.scalar_type(), " target was asked for");
  check_same_device("seg_loss_fwd", input, "input", target, "target");
}

// softmax_tv_fwd: input (B, C, spatial...) floating, with spatial_dims (2 or 3) spatial axes;
// reduction mean (1) or sum (2) only.
inline void check_softmax_tv_args(const at::Tensor& input, int64_t spatial_dims, int64_t reduction) {
  TORCH_CHECK_VALUE(spatial_dims == 2 || spatial_dims == 3, "softmax_tv_fwd: spatial_dims must be 2 or 3, got ",
                    spatial_dims);
  TORCH_CHECK_VALUE(input.dim() == spatial_dims + 2, "softmax_tv_fwd: input must be (B, C, spatial...) with ",
                    spatial_dims, " spatial axes, got shape ", input.sizes());
  TORCH_CHECK_VALUE(reduction == 1 || reduction == 2, "softmax_tv_fwd: reduction must be 1 (mean) or 2 (sum), got ",
                    reduction);
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), "softmax_tv_fwd: input must be floating point, got ",
                   input.scalar_type());
}

// The mode's bit for DiceBCE's two BCE sums (math::kWithBce), which only the CPU has.
constexpr int64_t kRegionModeWithBce = 4;

// region_sums and region_sums_backward: input (B, C, spatial...), target of its shape, mask
// (bool) of shape (B, 1, spatial...) or the input's, or undefined; mode a math::RegionMode, plus
// kRegionModeWithBce where the backend has the BCE sums (with_bce), for logits (sigmoid) only.
inline void check_region_args(const char* op, const at::Tensor& input, const at::Tensor& target,
                              const c10::optional<at::Tensor>& mask, int64_t mode, bool sigmoid = true,
                              bool with_bce = false) {
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have a batch and a channel axis, (B, C, spatial...), got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.sizes() == target.sizes(), op, ": input and target must have the same shape, got ",
                    input.sizes(), " and ", target.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
                   input.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(target.scalar_type()) || target.scalar_type() == at::kBool ||
                       target.scalar_type() == at::kByte,
                   op, ": target must be floating point, bool or uint8, got ", target.scalar_type());
  const int64_t base_mode = with_bce && mode >= 0 ? mode & ~kRegionModeWithBce : mode;
  TORCH_CHECK_VALUE(base_mode >= 0 && base_mode <= 2, op, ": mode must be 0 (linear), 1 (squared) or 2 (l1)",
                    with_bce ? ", plus 4 for the BCE sums" : "", ", got ", mode);
  TORCH_CHECK_VALUE(base_mode == mode || sigmoid, op, ": the BCE sums (mode ", mode,
                    ") are of logits: they need sigmoid=True");
  check_same_device(op, input, "input", target, "target");
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ", mask->scalar_type());
    bool shape_ok = mask->dim() == input.dim() && mask->size(0) == input.size(0) &&
                    (mask->size(1) == 1 || mask->size(1) == input.size(1));
    for (int64_t d = 2; shape_ok && d < input.dim(); ++d) {
      shape_ok = mask->size(d) == input.size(d);
    }
    TORCH_CHECK_VALUE(shape_ok, op, ": mask must have the shape (B, 1, spatial...) or the input's, ", input.sizes(),
                      ", got ", mask->sizes());
    check_same_device(op, input, "input", *mask, "mask");
  }
}

// region_sums_backward: the region arguments, grad_sums of shape (B, C, 4) (6 with the BCE
// sums), and a target gradient only for a floating target.
inline void check_region_backward_args(const at::Tensor& grad_sums, const at::Tensor& input, const at::Tensor& target,
                                       const c10::optional<at::Tensor>& mask, int64_t mode, bool grad_target,
                                       bool sigmoid = true, bool with_bce = false) {
  constexpr const char* op = "region_sums_backward";
  check_region_args(op, input, target, mask, mode, sigmoid, with_bce);
  // math::kRegionSums, and math::kBceSums more
  const int64_t n_sums = (with_bce && (mode & kRegionModeWithBce)) ? 6 : 4;
  TORCH_CHECK_VALUE(grad_sums.dim() == 3 && grad_sums.size(0) == input.size(0) && grad_sums.size(1) == input.size(1) &&
                        grad_sums.size(2) == n_sums,
                    op, ": grad_sums must have the shape (B, C, ", n_sums, ") = (", input.size(0), ", ", input.size(1),
                    ", ", n_sums, "), got ", grad_sums.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad_sums.scalar_type()), op, ": grad_sums must be floating point, got ",
                   grad_sums.scalar_type());
  TORCH_CHECK_TYPE(!grad_target || at::isFloatingType(target.scalar_type()), op, ": a gradient for a ",
                   target.scalar_type(), " target was asked for");
  check_same_device(op, input, "input", grad_sums, "grad_sums");
}

// A label map for input (B, C, spatial...): class indices (B, spatial...) of int64, int32 or uint8.
inline void check_label_map(const char* op, const at::Tensor& input, const at::Tensor& labels, const char* name) {
  bool shape_ok = labels.dim() == input.dim() - 1 && labels.size(0) == input.size(0);
  for (int64_t d = 2; shape_ok && d < input.dim(); ++d) {
    shape_ok = labels.size(d - 1) == input.size(d);
  }
  TORCH_CHECK_VALUE(shape_ok, op, ": ", name, " must have the input's shape without the class axis (axis 1), input ",
                    input.sizes(), ", got ", name, " ", labels.sizes());
  const auto t = labels.scalar_type();
  TORCH_CHECK_TYPE(t == at::kLong || t == at::kInt || t == at::kByte, op, ": ", name,
                   " must hold class indices as int64, int32 or uint8, got ", t);
  check_same_device(op, input, "input", labels, name);
}

// The cross-entropy's options: weight (C,) floating point on the input's device, or undefined;
// label_smoothing in [0, 1].
inline void check_ce_options(const char* op, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                             double label_smoothing) {
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == input.size(1), op,
                      ": weight must be 1-D with one value a class, (", input.size(1), "), got shape ",
                      weight->sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(weight->scalar_type()), op, ": weight must be floating point, got ",
                     weight->scalar_type());
    check_same_device(op, input, "input", *weight, "weight");
  }
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
                    ": label_smoothing must lie in [0, 1], got ", label_smoothing);
}

// softmax_region_sums and its backward: input (B, C, spatial...) floating point, a label map,
// mask (bool) of shape (B, 1, spatial...) or undefined; mode a math::RegionMode.
inline void check_softmax_region_args(const char* op, const at::Tensor& input, const at::Tensor& labels,
                                      const c10::optional<at::Tensor>& mask, int64_t mode) {
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have a batch and a class axis, (B, C, spatial...), got shape ",
                    input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
                   input.scalar_type());
  check_label_map(op, input, labels, "labels");
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, op, ": mode must be 0 (linear), 1 (squared) or 2 (l1), got ", mode);
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK_TYPE(mask->scalar_type() == at::kBool, op, ": mask must be bool, got ", mask->scalar_type());
    bool shape_ok = mask->dim() == input.dim() && mask->size(0) == input.size(0) && mask->size(1) == 1;
    for (int64_t d = 2; shape_ok && d < input.dim(); ++d) {
      shape_ok = mask->size(d) == input.size(d);
    }
    TORCH_CHECK_VALUE(shape_ok, op, ": mask must have the shape (B, 1, spatial...) for input ", input.sizes(),
                      ", got ", mask->sizes());
    check_same_device(op, input, "input", *mask, "mask");
  }
}

// softmax_region_sums (op), on every device: the arguments above and the cross-entropy's options.
inline void check_softmax_region_call(const char* op, const at::Tensor& input, const at::Tensor& labels,
                                      const c10::optional<at::Tensor>& mask, int64_t mode,
                                      const c10::optional<at::Tensor>& weight, double label_smoothing) {
  check_softmax_region_args(op, input, labels, mask, mode);
  check_ce_options(op, input, weight, label_smoothing);
}

// softmax_region_sums_backward: the forward's arguments, grad_sums (B, C, 4) and grad_ce (3).
inline void check_softmax_region_backward_call(const at::Tensor& grad_sums, const at::Tensor& grad_ce,
                                               const at::Tensor& input, const at::Tensor& labels,
                                               const c10::optional<at::Tensor>& mask, int64_t mode,
                                               const c10::optional<at::Tensor>& weight, double label_smoothing) {
  constexpr const char* op = "softmax_region_sums_backward";
  check_softmax_region_call(op, input, labels, mask, mode, weight, label_smoothing);
  TORCH_CHECK_VALUE(grad_sums.dim() == 3 && grad_sums.size(0) == input.size(0) && grad_sums.size(1) == input.size(1) &&
                        grad_sums.size(2) == 4,
                    op, ": grad_sums must have the shape (B, C, 4), got ", grad_sums.sizes());
  TORCH_CHECK_VALUE(grad_ce.dim() == 1 && grad_ce.size(0) == 3, op, ": grad_ce must have the shape (3), got ",
                    grad_ce.sizes());
}

// cross_entropy_fwd: logits input (B, C, spatial...), class indices target (B, spatial...) of
// int64, int32 or uint8, weight (C,) floating or undefined, label_smoothing in [0, 1].
inline void check_ce_args(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                          double label_smoothing, int64_t reduction) {
  constexpr const char* op = "cross_entropy_fwd";
  TORCH_CHECK_VALUE(input.dim() >= 2, op, ": input must have a batch and a class axis, (B, C, spatial...), got shape ",
                    input.sizes());
  TORCH_CHECK_VALUE(input.size(1) > 0 || target.numel() == 0, op, ": input must have at least one class, got shape ",
                    input.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()), op, ": input must be floating point, got ",
                   input.scalar_type());
  check_label_map(op, input, target, "target");
  check_ce_options(op, input, weight, label_smoothing);
  check_reduction(op, reduction);
}

inline void check_backward_args(const at::Tensor& grad_output, const at::Tensor& saved, at::ScalarType dtype) {
  const int64_t n = saved.numel(), k = grad_output.numel();
  TORCH_CHECK_VALUE((k == 0 && n == 0) || (k > 0 && n % k == 0), "loss_backward: saved_grad has ", n,
                    " elements, not a multiple of grad_output's ", k);
  TORCH_CHECK_TYPE(at::isFloatingType(saved.scalar_type()) && at::isFloatingType(grad_output.scalar_type()),
                   "loss_backward: expected floating dtypes, got ", saved.scalar_type(), " and ",
                   grad_output.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(dtype), "loss_backward: dtype must be floating point, got ", dtype);
  check_same_device("loss_backward", grad_output, "grad_output", saved, "saved_grad");
}

}  // namespace pylosses
