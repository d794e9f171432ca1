// The CPU's own float32 log, exp and reciprocal (cpu_common.h) over a caller's buffer, for
// tests/test_cpu_math.py, which checks their error over every float32 of a range. Not an op:
// pylosses._C._vec_math (csrc/pylosses.cpp) is the only caller.
#include <cstring>

#include "cpu_common.h"

namespace pylosses::cpu {

// Applies `name` ("log", "exp", "reciprocal") to data[0, n) in place, a vector at a time (the
// tail too, as the kernels take it: its lanes past n are 0). Returns false for another name.
bool vec_math(const char* name, float* data, int64_t n) {
  const auto apply = [&](auto fn) {
    for_each_vector<float>(n, [&](auto tail, int64_t i, int64_t lanes) {
      constexpr bool kTail = decltype(tail)::value;
      store<kTail>(fn(load<kTail>(data + i, lanes)), data + i, lanes);
    });
  };
  if (std::strcmp(name, "log") == 0) {
    apply([](const Vec<float>& v) { return math::plog(v); });
  } else if (std::strcmp(name, "exp") == 0) {
    apply([](const Vec<float>& v) { return math::pexp(v); });
  } else if (std::strcmp(name, "reciprocal") == 0) {
    apply([](const Vec<float>& v) { return math::preciprocal(v); });
  } else {
    return false;
  }
  return true;
}

}  // namespace pylosses::cpu
