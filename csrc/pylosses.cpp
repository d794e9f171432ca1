// The stub module init that lets `import pylosses._C` load this library, which registers the
// CPU and CUDA kernels of pylosses' ops as it loads (TORCH_LIBRARY_IMPL in csrc/cpu, csrc/cuda).
// The ops' schemas are defined in Python (pylosses/_ops.py), before this library loads, so the
// Triton backend needs no compiled code. The module says how it was built (python -m pylosses),
// and lends the tests the CPU's vector math (_vec_math).
#include <Python.h>

#include <cstdint>

#include "build_info.h"  // written by setup.py into the build folder

namespace pylosses::cpu {
bool vec_math(const char* name, float* data, int64_t n);  // csrc/cpu/vec_math_check.cpp
}

namespace {

// _vec_math(name, buffer): the CPU kernels' float32 `name` ("log", "exp", "reciprocal") over a
// writable buffer of float32 (a numpy array, array.array("f")), in place.
PyObject* vec_math(PyObject*, PyObject* args) {
  const char* name = nullptr;
  Py_buffer view;
  if (!PyArg_ParseTuple(args, "sw*", &name, &view)) return nullptr;
  PyObject* result = nullptr;
  if (view.itemsize != 4 || !PyBuffer_IsContiguous(&view, 'C')) {
    PyErr_SetString(PyExc_TypeError, "_vec_math: buffer must be contiguous float32");
  } else if (!pylosses::cpu::vec_math(name, static_cast<float*>(view.buf), view.len / 4)) {
    PyErr_Format(PyExc_ValueError, "_vec_math: name must be log, exp or reciprocal, not %s", name);
  } else {
    result = Py_NewRef(Py_None);
  }
  PyBuffer_Release(&view);
  return result;
}

PyMethodDef methods[] = {{"_vec_math", vec_math, METH_VARARGS, "the CPU kernels' float32 vector math, for tests"},
                         {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
