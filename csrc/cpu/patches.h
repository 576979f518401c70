// CPU patch kernels: extraction of the overlapping windows and its adjoint,
// overlap-add (OpenMP, deterministic). Plain C++: no Python, no torch.
//
// All arguments are assumed validated by the caller (see validation.h).
// `dtype` is one of kCpuDTypes (dtype_codes.h: float32 or float64). Sizes and
// strides are in elements.
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

}  // namespace cpu
}  // namespace lnlatten
