// Host-side launcher declarations for the lnlatten CUDA kernels.
//
// This header is deliberately plain C++ (no CUDA types, no torch), so the
// pybind11 wrappers in csrc/ can include it with the host compiler alone.
//
// Conventions (all launchers):
//   * dtype: a code of csrc/dtype_codes.h, kFloat32, kFloat64, kFloat16 or
//     kBFloat16 (accumulation in double for kFloat64, in float otherwise).
//   * sizes/strides are int64 element counts; arguments are pre-validated.
//   * stream: a cudaStream_t passed as void* (nullptr = legacy default stream).
//   * kernels are launched asynchronously on `stream`, on the current device.
//   * return value: nullptr on success, otherwise a static, human-readable
//     error string (from cudaGetErrorString or a fixed message).
#pragma once

#include <cstdint>

#include "dtype_codes.h"  // csrc/: the dtype codes shared with the C++ side

namespace lnlatten {
namespace cuda {

// Largest number of windows M supported by the attention kernels
// (Rt / R / gR live in shared memory, one thread block per batch element).
constexpr int64_t kMaxAttentionM = 64;

const char* launch_extract_patches(int dtype, const void* src, void* dst, int64_t B, int64_t C,
                                   int64_t H, int64_t W, int64_t sB, int64_t sC, int64_t sH,
                                   int64_t sW, int64_t grid, int64_t patch, int64_t stride,
                                   void* stream);

const char* launch_overlap_add(int dtype, const void* src, void* dst, int64_t B, int64_t C,
                               int64_t H, int64_t W, int64_t grid, int64_t patch, int64_t stride,
                               void* stream);

const char* launch_l1_attention_forward(int dtype, const void* q, const void* k, const void* v,
                                        void* s, void* w, int64_t B, int64_t M, int64_t D,
                                        double eps, void* stream);

// grad_s / grad_w may be nullptr, meaning an all-zero incoming gradient.
const char* launch_l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                                         const void* grad_s, const void* grad_w, void* grad_q,
                                         void* grad_k, void* grad_v, int64_t B, int64_t M,
                                         int64_t D, double eps, void* stream);

// Number of visible CUDA devices, or a negative value if the runtime cannot be
// initialised (e.g. driver too old for the CUDA version the module was built with).
int device_count();

// Version of the CUDA runtime linked into the module (e.g. 13000), and of the driver (0 if unknown).
int runtime_version();
int driver_version();

}  // namespace cuda
}  // namespace lnlatten
