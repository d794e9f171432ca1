// The stub module init that lets `import pylosses._C` load this library, which registers the
// CPU and CUDA kernels of pylosses' ops as it loads (TORCH_LIBRARY_IMPL in csrc/cpu, csrc/cuda).
// The ops' schemas are defined in Python (pylosses/_ops.py), before this library loads, so the
// Triton backend needs no compiled code. The module says how it was built (python -m pylosses).
#include <Python.h>
#include "build_info.h"  // written by setup.py into the build folder

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddStringConstant(module, "cpu_capability", PYLOSSES_CPU_CAPABILITY) < 0 ||
      PyModule_AddStringConstant(module, "cuda_archs", PYLOSSES_CUDA_ARCHS) < 0 ||
      PyModule_AddStringConstant(module, "cuda_version", PYLOSSES_CUDA_VERSION) < 0 ||
      PyModule_AddStringConstant(module, "torch_version", PYLOSSES_TORCH_VERSION) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
