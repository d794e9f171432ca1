// csrc/cuda/softmax_region.cu built as C++ for the CPU (see csrc/cuda/emulation.h).
#define PYLOSSES_CUDA_EMULATION
#include "../../csrc/cuda/softmax_region.cu"
