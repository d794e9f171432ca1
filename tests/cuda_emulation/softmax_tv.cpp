// csrc/cuda/softmax_tv.cu built as C++ for the CPU (see csrc/cuda/emulation.h).
#define PYLOSSES_CUDA_EMULATION
#include "../../csrc/cuda/softmax_tv.cu"
