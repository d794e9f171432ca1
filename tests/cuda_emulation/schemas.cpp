// The ops of pylosses again, as pylosses_cuda_emulated::*, for the CUDA kernels built for the
// CPU (see csrc/cuda/emulation.h); their schemas are pylosses' own (csrc/schemas.h).
#include <torch/library.h>

#include "../../csrc/schemas.h"

#define PYLOSSES_EMULATED_DEF(name, signature) m.def(name signature);

TORCH_LIBRARY(pylosses_cuda_emulated, m) { PYLOSSES_SCHEMAS(PYLOSSES_EMULATED_DEF) }
