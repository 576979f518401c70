// CPU patch kernels: extraction and overlap-add (declared in patches.h).
//
// The loops are written in "axpy" form (inner loop over a contiguous row, no
// reductions in the innermost loop) so that the compiler vectorises them at
// plain -O3 without -ffast-math and without -march.
#include "cpu/patches.h"

#include <algorithm>
#include <cstring>

#include "cpu/parallel.h"

namespace lnlatten {
namespace cpu {

namespace {

// ---------------------------------------------------------------------------
// Patch extraction
// ---------------------------------------------------------------------------
template <typename T>
void extract_patches_impl(const T* src, T* dst, int64_t B, int64_t C, int64_t sB, int64_t sC,
                          int64_t sH, int64_t sW, int64_t grid, int64_t P, int64_t stride) {
  const int64_t M = grid * grid;
  const int64_t PP = P * P;
  const int64_t total = B * M * C * PP;
  const bool par = total >= kParallelGrain;
  const int nthreads = num_threads();
  (void)par;
  (void)nthreads;

  const int64_t asC = sC < 0 ? -sC : sC;
  const int64_t asW = sW < 0 ? -sW : sW;
  const bool channels_last = C > 1 && asC < asW;

  if (!channels_last) {
    // One (b, m, c) window per iteration; contiguous writes of P*P elements.
    const int64_t n_blocks = B * M * C;
#pragma omp parallel for schedule(static) if (par) num_threads(nthreads)
    for (int64_t n = 0; n < n_blocks; ++n) {
      const int64_t c = n % C;
      const int64_t bm = n / C;
      const int64_t m = bm % M;
      const int64_t b = bm / M;
      const int64_t gy = m / grid;
      const int64_t gx = m - gy * grid;
      const T* s = src + b * sB + c * sC + gy * stride * sH + gx * stride * sW;
      T* d = dst + n * PP;
      if (sW == 1) {
        for (int64_t y = 0; y < P; ++y) {
          std::memcpy(d + y * P, s + y * sH, static_cast<size_t>(P) * sizeof(T));
        }
      } else {
        for (int64_t y = 0; y < P; ++y) {
          const T* sy = s + y * sH;
          T* dy = d + y * P;
          for (int64_t x = 0; x < P; ++x) dy[x] = sy[x * sW];
        }
      }
    }
  } else {
    // Channels-last style source: one (b, m, y) window row per iteration,
    // reading C contiguous channels per pixel.
    const int64_t n_rows = B * M * P;
#pragma omp parallel for schedule(static) if (par) num_threads(nthreads)
    for (int64_t n = 0; n < n_rows; ++n) {
      const int64_t y = n % P;
      const int64_t bm = n / P;
      const int64_t m = bm % M;
      const int64_t b = bm / M;
      const int64_t gy = m / grid;
      const int64_t gx = m - gy * grid;
      const T* s = src + b * sB + (gy * stride + y) * sH + gx * stride * sW;
      T* d = dst + bm * C * PP + y * P;
      for (int64_t x = 0; x < P; ++x) {
        const T* sx = s + x * sW;
        T* dx = d + x;
        for (int64_t c = 0; c < C; ++c) dx[c * PP] = sx[c * sC];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Overlap-add (adjoint of extraction), gather formulation
// ---------------------------------------------------------------------------
template <typename T>
void overlap_add_impl(const T* src, T* dst, int64_t B, int64_t C, int64_t H, int64_t W,
                      int64_t grid, int64_t P, int64_t stride) {
  const int64_t M = grid * grid;
  const int64_t PP = P * P;
  const int64_t n_rows = B * C * H;
  const bool par = n_rows * W >= kParallelGrain;
  const int nthreads = num_threads();
  (void)par;
  (void)nthreads;

  // One output row (b, c, h) per iteration. Every pixel of the row receives
  // the contributions of the windows covering it in (gy, gx) ascending order,
  // exactly like a per-pixel gather, but the inner loop is a contiguous add.
#pragma omp parallel for schedule(static) if (par) num_threads(nthreads)
  for (int64_t n = 0; n < n_rows; ++n) {
    const int64_t h = n % H;
    const int64_t bc = n / H;
    const int64_t c = bc % C;
    const int64_t b = bc / C;
    T* __restrict__ out = dst + n * W;
    std::fill(out, out + W, T(0));

    // Windows gy with gy*stride <= h < gy*stride + P.
    const int64_t gy_lo = h >= P ? (h - P) / stride + 1 : 0;
    const int64_t gy_hi = std::min<int64_t>(h / stride, grid - 1);
    for (int64_t gy = gy_lo; gy <= gy_hi; ++gy) {
      const int64_t wy = h - gy * stride;
      const T* row0 = src + (((b * M + gy * grid) * C + c) * P + wy) * P;
      for (int64_t gx = 0; gx < grid; ++gx) {
        const T* __restrict__ sr = row0 + gx * C * PP;
        T* __restrict__ o = out + gx * stride;
        for (int64_t x = 0; x < P; ++x) o[x] += sr[x];
      }
    }
  }
}

}  // namespace

void extract_patches(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t /*H*/,
                     int64_t /*W*/, int64_t sB, int64_t sC, int64_t sH, int64_t sW, int64_t grid,
                     int64_t patch, int64_t stride) {
  dispatch_cpu_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    extract_patches_impl(static_cast<const T*>(src), static_cast<T*>(dst), B, C, sB, sC, sH, sW,
                         grid, patch, stride);
  });
}

void overlap_add(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t H,
                 int64_t W, int64_t grid, int64_t patch, int64_t stride) {
  dispatch_cpu_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    overlap_add_impl(static_cast<const T*>(src), static_cast<T*>(dst), B, C, H, W, grid, patch,
                     stride);
  });
}

}  // namespace cpu
}  // namespace lnlatten
