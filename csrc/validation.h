// Argument validation shared by the CPU and CUDA bindings.
// Everything here throws pybind11::value_error (-> Python ValueError) and must
// be called while holding the GIL, i.e. before py::gil_scoped_release.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "dtype_codes.h"

namespace lnlatten {

namespace py = pybind11;

[[noreturn]] inline void value_error(const std::string& msg) { throw py::value_error(msg); }

inline bool is_cpu_dtype(int dtype) {
  for (const DType d : kCpuDTypes) {
    if (d == dtype) return true;
  }
  return false;
}

inline void check_cpu_dtype(int dtype) {
  if (!is_cpu_dtype(dtype)) {
    std::string names;  // "float32/float64"
    for (const DType d : kCpuDTypes) {
      if (!names.empty()) names += "/";
      names += dtype_name(d);
    }
    value_error("CPU kernels support " + names + "; got dtype code " + std::to_string(dtype));
  }
}

inline void check_cuda_dtype(int dtype) {
  if (dtype_name(dtype) == nullptr) {
    std::string codes;  // "0 (float32), 1 (float64), ..."
    for (const DTypeCode& d : kDTypeCodes) {
      if (!codes.empty()) codes += ", ";
      codes += std::to_string(d.code) + " (" + d.name + ")";
    }
    value_error("CUDA kernels support dtype codes " + codes + "; got dtype code " +
                std::to_string(dtype));
  }
}

inline void check_positive(int64_t v, const char* name) {
  if (v <= 0) {
    value_error(std::string("argument '") + name + "' must be positive; got " + std::to_string(v));
  }
}

inline void check_ptr(std::uintptr_t p, const char* name) {
  if (p == 0) value_error(std::string("argument '") + name + "' is a null pointer");
}

// a*b with overflow detection (operands are already known to be positive).
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    value_error(std::string("size overflow computing ") + what);
  }
  return r;
}

inline void check_eps(double eps) {
  if (!(eps >= 0.0) || !std::isfinite(eps)) {
    value_error("argument 'eps' must be a finite non-negative number; got " + std::to_string(eps));
  }
}

// Square windows on a grid x grid lattice covering an H x W (H == W) image.
inline void check_patch_geometry(int64_t B, int64_t C, int64_t H, int64_t W, int64_t grid,
                                 int64_t patch, int64_t stride) {
  check_positive(B, "B");
  check_positive(C, "C");
  check_positive(H, "H");
  check_positive(W, "W");
  check_positive(grid, "grid");
  check_positive(patch, "patch");
  check_positive(stride, "stride");
  if (H != W) {
    value_error("arguments 'H' and 'W' must be equal (square image); got H=" + std::to_string(H) +
                ", W=" + std::to_string(W));
  }
  if (stride > patch) {
    value_error("argument 'stride' must be <= 'patch' (windows must overlap/cover); got stride=" +
                std::to_string(stride) + ", patch=" + std::to_string(patch));
  }
  const int64_t span = checked_mul(grid - 1, stride, "(grid-1)*stride") + patch;
  if (span != H) {
    value_error("arguments 'grid', 'patch', 'stride' inconsistent with 'H': (grid-1)*stride+patch = " +
                std::to_string(span) + " but H = " + std::to_string(H) +
                " (grid=" + std::to_string(grid) + ", patch=" + std::to_string(patch) +
                ", stride=" + std::to_string(stride) + ")");
  }
  // Total sizes of both layouts must fit in int64.
  int64_t n = checked_mul(B, checked_mul(grid, grid, "grid*grid"), "B*M");
  n = checked_mul(n, C, "B*M*C");
  n = checked_mul(n, checked_mul(patch, patch, "patch*patch"), "B*M*C*patch*patch");
  int64_t m = checked_mul(checked_mul(B, C, "B*C"), checked_mul(H, W, "H*W"), "B*C*H*W");
  (void)n;
  (void)m;
}

inline void check_attention_sizes(int64_t B, int64_t M, int64_t D) {
  check_positive(B, "B");
  check_positive(M, "M");
  check_positive(D, "D");
  int64_t n = checked_mul(checked_mul(B, M, "B*M"), D, "B*M*D");
  n = checked_mul(checked_mul(M, M, "M*M"), B, "B*M*M");
  (void)n;
}

}  // namespace lnlatten
