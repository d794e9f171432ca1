// csrc/cuda/region_loss.cu built as C++ for the CPU (see csrc/cuda/emulation.h).
#define PYLOSSES_CUDA_EMULATION
#include "../../csrc/cuda/region_loss.cu"
