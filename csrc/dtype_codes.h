// dtype codes of the torch-free ABI: the one list of them.
//
// Every `int dtype` argument of lnlatten_fast._C and of the CUDA launchers
// (kernels/lnlatten_kernels.cuh) is one of these codes. The C++ CPU kernels,
// the argument validation (validation.h) and the CUDA launchers (kernels/*.cu)
// include this header; Python reads the same table from the module as
// `_C.DTYPE_CODES` ({"float32": 0, ...}, names as in torch.<name>).
//
// Plain C++17 without any include: it is compiled by the host compiler and by
// nvcc alike.
#pragma once

namespace lnlatten {

enum DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct DTypeCode {
  DType code;
  const char* name;
};

// Every code, in code order.
inline constexpr DTypeCode kDTypeCodes[] = {
    {kFloat32, "float32"},
    {kFloat64, "float64"},
    {kFloat16, "float16"},
    {kBFloat16, "bfloat16"},
};

// The codes the C++ CPU kernels take (csrc/cpu/); the CUDA kernels take all of them.
inline constexpr DType kCpuDTypes[] = {kFloat32, kFloat64};

// The name of a code, or nullptr for a value that is not one.
constexpr const char* dtype_name(int code) {
  for (const DTypeCode& d : kDTypeCodes) {
    if (d.code == code) return d.name;
  }
  return nullptr;
}

}  // namespace lnlatten
