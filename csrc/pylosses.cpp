// The op schemas of pylosses, one place for all backends, and the stub module init that lets
// `import pylosses._C` load this library (which registers the ops as it loads).
//
// Every loss has a forward op that returns the loss and, when asked, its gradients for
// grad_output = 1; the backward of every loss is loss_backward, which applies grad_output.
// reduction follows at::Reduction: 0 none, 1 mean, 2 sum.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// Each schema serves two ops: NAME, implemented by this extension (csrc/cpu, csrc/cuda), and
// triton_NAME, implemented by the Triton kernels (triton_kernels/, registered in pylosses/_ops.py).
#define PYLOSSES_DEF(m, name, signature) \
  m.def(name signature);                 \
  m.def("triton_" name signature)

TORCH_LIBRARY(pylosses, m) {
  PYLOSSES_DEF(m, "mse_loss_fwd", "(Tensor input, Tensor target, int reduction, bool compute_grad) -> (Tensor, Tensor)");
  PYLOSSES_DEF(m, "seg_loss_fwd",
               "(Tensor input, Tensor target, float alpha, float beta, int spatial_dims, bool from_logits, "
               "int reduction, bool compute_grad_input, bool compute_grad_target) -> (Tensor, Tensor, Tensor)");
  PYLOSSES_DEF(m, "loss_backward", "(Tensor grad_output, Tensor saved_grad, float scale, ScalarType dtype) -> Tensor");
}
