// CPU L1-normalised window attention, forward and backward (OpenMP over the
// batch, deterministic). Plain C++: no Python, no torch.
//
// All arguments are assumed validated by the caller (see validation.h).
// `dtype` is one of kCpuDTypes (dtype_codes.h: float32 or float64).
#pragma once

#include <cstdint>

namespace lnlatten {
namespace cpu {

// q, k, v (B, M, D) contiguous -> s (B, M, D), w (B, M).
void l1_attention_forward(int dtype, const void* q, const void* k, const void* v, void* s,
                          void* w, int64_t B, int64_t M, int64_t D, double eps);

// grad_s (B, M, D) / grad_w (B, M) contiguous; either may be nullptr (= zeros).
void l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                           const void* grad_s, const void* grad_w, void* grad_q, void* grad_k,
                           void* grad_v, int64_t B, int64_t M, int64_t D, double eps);

// Which copy of the attention micro-kernels runs in this process, for build
// reports: "avx2+fma" (chosen at run time on x86-64) or "portable (N-byte
// vectors)" / "portable (scalar)".
const char* attention_kernels();

}  // namespace cpu
}  // namespace lnlatten
