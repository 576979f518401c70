// CPU reference/fast kernels (OpenMP). Plain C++: no Python, no torch.
//
// All arguments are assumed validated by the caller (see validation.h).
// `dtype` is 0 (float32) or 1 (float64). Sizes and strides are in elements.
#pragma once

#include <cstdint>

namespace lnlatten {
namespace cpu {

// dst (B, M, C, P, P) contiguous, M = grid*grid:
//   dst[b, gy*grid+gx, c, y, x] = src[b, c, gy*stride + y, gx*stride + x]
// src addressed through arbitrary element strides (sB, sC, sH, sW).
void extract_patches(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t H,
                     int64_t W, int64_t sB, int64_t sC, int64_t sH, int64_t sW, int64_t grid,
                     int64_t patch, int64_t stride);

// Adjoint of extract_patches. src (B, M, C, P, P) contiguous, dst (B, C, H, W)
// contiguous. Deterministic: every output pixel sums the windows covering it in
// (gy, gx) ascending order.
void overlap_add(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t H,
                 int64_t W, int64_t grid, int64_t patch, int64_t stride);

// q, k, v (B, M, D) contiguous -> s (B, M, D), w (B, M).
void l1_attention_forward(int dtype, const void* q, const void* k, const void* v, void* s,
                          void* w, int64_t B, int64_t M, int64_t D, double eps);

// grad_s (B, M, D) / grad_w (B, M) contiguous; either may be nullptr (= zeros).
void l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                           const void* grad_s, const void* grad_w, void* grad_q, void* grad_k,
                           void* grad_v, int64_t B, int64_t M, int64_t D, double eps);

int max_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace lnlatten
