#pragma once
// The ATen the host code of every kernel file calls (tensors, their factories, the reduction
// codes), one per-op header each: <ATen/ATen.h> declares every op torch has and made each file's
// compile (nvcc's three passes over it especially) several times slower. A new at:: call needs
// its <ATen/ops/NAME.h> here.
#include <ATen/core/Reduction.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/promote_types.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
