// The op schemas of pylosses (csrc/schemas.h), one place for all backends, and the stub module
// init that lets `import pylosses._C` load this library (which registers the ops as it loads).
#include <Python.h>
#include <torch/library.h>

#include "schemas.h"

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// Each schema serves two ops: NAME, implemented by this extension (csrc/cpu, csrc/cuda), and
// triton_NAME, implemented by the Triton kernels (triton_kernels/, registered in pylosses/_ops.py).
#define PYLOSSES_DEF(name, signature) \
  m.def(name signature);              \
  m.def("triton_" name signature);

TORCH_LIBRARY(pylosses, m) { PYLOSSES_SCHEMAS(PYLOSSES_DEF) }
