// CPU kernels for lnlatten_fast._C (OpenMP-parallel, deterministic).
//
// Loops are written in "axpy" form (inner loop over a contiguous row, no
// reductions in the innermost loop) so that the compiler vectorises them at
// plain -O3 without -ffast-math and without -march.
#include "cpu_kernels.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lnlatten {
namespace cpu {

namespace {

// Below this many output elements the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

std::atomic<int> g_num_threads{0};  // 0: OpenMP default

inline int num_threads() {
#ifdef _OPENMP
  const int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

template <typename T>
inline T sgn(T x) {
  return static_cast<T>((x > T(0)) - (x < T(0)));
}

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

// ---------------------------------------------------------------------------
// L1-normalised attention
// ---------------------------------------------------------------------------

// Rt (M x M) = Q K^T, using KT (D x M) scratch so the inner loop is contiguous.
template <typename T>
inline void compute_qkt(const T* Q, const T* K, T* KT, T* Rt, int64_t M, int64_t D) {
  for (int64_t j = 0; j < M; ++j) {
    const T* kj = K + j * D;
    for (int64_t t = 0; t < D; ++t) KT[t * M + j] = kj[t];
  }
  for (int64_t i = 0; i < M; ++i) {
    T* __restrict__ rt = Rt + i * M;
    std::fill(rt, rt + M, T(0));
    const T* qi = Q + i * D;
    for (int64_t t = 0; t < D; ++t) {
      const T a = qi[t];
      const T* __restrict__ kt = KT + t * M;
      for (int64_t j = 0; j < M; ++j) rt[j] += a * kt[j];
    }
  }
}

template <typename T>
inline T row_l1(const T* r, int64_t M) {
  T L = T(0);
  for (int64_t j = 0; j < M; ++j) L += std::abs(r[j]);
  return L;
}

// clamp_min(L, eps), NaN-propagating like torch.
template <typename T>
inline T clamp_eps(T L, T eps) {
  return L < eps ? eps : L;
}

template <typename T>
void l1_attention_forward_impl(const T* q, const T* k, const T* v, T* s, T* w, int64_t B,
                               int64_t M, int64_t D, T eps) {
  const int64_t MD = M * D;
  const int64_t MM = M * M;
  const bool par = B > 1 && B * MM * D >= kParallelGrain;
  const int nthreads = num_threads();
  (void)par;
  (void)nthreads;
  std::atomic<bool> alloc_failed{false};

#pragma omp parallel if (par) num_threads(nthreads)
  {
    std::vector<T> R, KT, colsum;
    bool ok = true;
    try {
      R.resize(static_cast<size_t>(MM));
      KT.resize(static_cast<size_t>(MD));
      colsum.resize(static_cast<size_t>(M));
    } catch (...) {
      ok = false;
      alloc_failed.store(true);
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const T* Q = q + b * MD;
      const T* K = k + b * MD;
      const T* V = v + b * MD;
      T* S = s + b * MD;
      T* Wb = w + b * M;

      compute_qkt(Q, K, KT.data(), R.data(), M, D);

      // Row-wise L1 normalisation (in place: R <- Rt / d).
      for (int64_t i = 0; i < M; ++i) {
        T* r = R.data() + i * M;
        const T d = clamp_eps(row_l1(r, M), eps);
        for (int64_t j = 0; j < M; ++j) r[j] = r[j] / d;
      }

      // w_j = mean_i R_ij
      T* cs = colsum.data();
      std::fill(cs, cs + M, T(0));
      for (int64_t i = 0; i < M; ++i) {
        const T* __restrict__ r = R.data() + i * M;
        for (int64_t j = 0; j < M; ++j) cs[j] += r[j];
      }
      for (int64_t j = 0; j < M; ++j) Wb[j] = cs[j] / static_cast<T>(M);

      // S = R V
      for (int64_t i = 0; i < M; ++i) {
        T* __restrict__ si = S + i * D;
        std::fill(si, si + D, T(0));
        const T* r = R.data() + i * M;
        for (int64_t j = 0; j < M; ++j) {
          const T a = r[j];
          const T* __restrict__ vj = V + j * D;
          for (int64_t t = 0; t < D; ++t) si[t] += a * vj[t];
        }
      }
    }
  }
  if (alloc_failed.load()) throw std::bad_alloc();
}

template <typename T>
void l1_attention_backward_impl(const T* q, const T* k, const T* v, const T* grad_s,
                                const T* grad_w, T* grad_q, T* grad_k, T* grad_v, int64_t B,
                                int64_t M, int64_t D, T eps) {
  const int64_t MD = M * D;
  const int64_t MM = M * M;
  const bool par = B > 1 && B * MM * D >= kParallelGrain;
  const int nthreads = num_threads();
  (void)par;
  (void)nthreads;
  std::atomic<bool> alloc_failed{false};

#pragma omp parallel if (par) num_threads(nthreads)
  {
    std::vector<T> Rt, G, TR, gwm;
    bool ok = true;
    try {
      Rt.resize(static_cast<size_t>(MM));
      G.resize(static_cast<size_t>(MM));
      TR.resize(static_cast<size_t>(MD));
      gwm.resize(static_cast<size_t>(M));
    } catch (...) {
      ok = false;
      alloc_failed.store(true);
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      const T* Q = q + b * MD;
      const T* K = k + b * MD;
      const T* V = v + b * MD;
      const T* GS = grad_s ? grad_s + b * MD : nullptr;
      const T* GW = grad_w ? grad_w + b * M : nullptr;
      T* GQ = grad_q + b * MD;
      T* GK = grad_k + b * MD;
      T* GV = grad_v + b * MD;

      // Rt = Q K^T
      compute_qkt(Q, K, TR.data(), Rt.data(), M, D);

      // gR = grad_s V^T + grad_w / M   (broadcast over rows)
      if (GS) {
        for (int64_t j = 0; j < M; ++j) {
          const T* vj = V + j * D;
          for (int64_t t = 0; t < D; ++t) TR[t * M + j] = vj[t];
        }
        for (int64_t i = 0; i < M; ++i) {
          T* __restrict__ g = G.data() + i * M;
          std::fill(g, g + M, T(0));
          const T* gsi = GS + i * D;
          for (int64_t t = 0; t < D; ++t) {
            const T a = gsi[t];
            const T* __restrict__ vt = TR.data() + t * M;
            for (int64_t j = 0; j < M; ++j) g[j] += a * vt[j];
          }
        }
      } else {
        std::fill(G.begin(), G.end(), T(0));
      }
      if (GW) {
        for (int64_t j = 0; j < M; ++j) gwm[j] = GW[j] / static_cast<T>(M);
        for (int64_t i = 0; i < M; ++i) {
          T* __restrict__ g = G.data() + i * M;
          for (int64_t j = 0; j < M; ++j) g[j] += gwm[j];
        }
      }

      // Per row: d_i, c_i; then R (in place of Rt) and gRt (in place of gR):
      //   gRt_ij = gR_ij / d_i - [L_i >= eps] * sign(Rt_ij) * c_i / d_i^2
      for (int64_t i = 0; i < M; ++i) {
        T* rt = Rt.data() + i * M;
        T* g = G.data() + i * M;
        const T L = row_l1(rt, M);
        const T d = clamp_eps(L, eps);
        T c = T(0);
        for (int64_t j = 0; j < M; ++j) c += g[j] * rt[j];
        const T coef = (L >= eps) ? c / (d * d) : T(0);
        for (int64_t j = 0; j < M; ++j) {
          const T x = rt[j];
          g[j] = g[j] / d - sgn(x) * coef;
          rt[j] = x / d;
        }
      }
      const T* R = Rt.data();

      // grad_v = R^T grad_s
      std::fill(GV, GV + MD, T(0));
      if (GS) {
        for (int64_t i = 0; i < M; ++i) {
          const T* __restrict__ gsi = GS + i * D;
          const T* r = R + i * M;
          for (int64_t j = 0; j < M; ++j) {
            const T a = r[j];
            T* __restrict__ gvj = GV + j * D;
            for (int64_t t = 0; t < D; ++t) gvj[t] += a * gsi[t];
          }
        }
      }

      // grad_q = gRt K
      for (int64_t i = 0; i < M; ++i) {
        T* __restrict__ gqi = GQ + i * D;
        std::fill(gqi, gqi + D, T(0));
        const T* g = G.data() + i * M;
        for (int64_t j = 0; j < M; ++j) {
          const T a = g[j];
          const T* __restrict__ kj = K + j * D;
          for (int64_t t = 0; t < D; ++t) gqi[t] += a * kj[t];
        }
      }

      // grad_k = gRt^T Q
      std::fill(GK, GK + MD, T(0));
      for (int64_t i = 0; i < M; ++i) {
        const T* __restrict__ qi = Q + i * D;
        const T* g = G.data() + i * M;
        for (int64_t j = 0; j < M; ++j) {
          const T a = g[j];
          T* __restrict__ gkj = GK + j * D;
          for (int64_t t = 0; t < D; ++t) gkj[t] += a * qi[t];
        }
      }
    }
  }
  if (alloc_failed.load()) throw std::bad_alloc();
}

}  // namespace

// ---------------------------------------------------------------------------
// dtype dispatch
// ---------------------------------------------------------------------------
void extract_patches(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t /*H*/,
                     int64_t /*W*/, int64_t sB, int64_t sC, int64_t sH, int64_t sW, int64_t grid,
                     int64_t patch, int64_t stride) {
  if (dtype == 1) {
    extract_patches_impl(static_cast<const double*>(src), static_cast<double*>(dst), B, C, sB, sC,
                         sH, sW, grid, patch, stride);
  } else {
    extract_patches_impl(static_cast<const float*>(src), static_cast<float*>(dst), B, C, sB, sC,
                         sH, sW, grid, patch, stride);
  }
}

void overlap_add(int dtype, const void* src, void* dst, int64_t B, int64_t C, int64_t H,
                 int64_t W, int64_t grid, int64_t patch, int64_t stride) {
  if (dtype == 1) {
    overlap_add_impl(static_cast<const double*>(src), static_cast<double*>(dst), B, C, H, W, grid,
                     patch, stride);
  } else {
    overlap_add_impl(static_cast<const float*>(src), static_cast<float*>(dst), B, C, H, W, grid,
                     patch, stride);
  }
}

void l1_attention_forward(int dtype, const void* q, const void* k, const void* v, void* s,
                          void* w, int64_t B, int64_t M, int64_t D, double eps) {
  if (dtype == 1) {
    l1_attention_forward_impl(static_cast<const double*>(q), static_cast<const double*>(k),
                              static_cast<const double*>(v), static_cast<double*>(s),
                              static_cast<double*>(w), B, M, D, eps);
  } else {
    l1_attention_forward_impl(static_cast<const float*>(q), static_cast<const float*>(k),
                              static_cast<const float*>(v), static_cast<float*>(s),
                              static_cast<float*>(w), B, M, D, static_cast<float>(eps));
  }
}

void l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                           const void* grad_s, const void* grad_w, void* grad_q, void* grad_k,
                           void* grad_v, int64_t B, int64_t M, int64_t D, double eps) {
  if (dtype == 1) {
    l1_attention_backward_impl(
        static_cast<const double*>(q), static_cast<const double*>(k),
        static_cast<const double*>(v), static_cast<const double*>(grad_s),
        static_cast<const double*>(grad_w), static_cast<double*>(grad_q),
        static_cast<double*>(grad_k), static_cast<double*>(grad_v), B, M, D, eps);
  } else {
    l1_attention_backward_impl(
        static_cast<const float*>(q), static_cast<const float*>(k), static_cast<const float*>(v),
        static_cast<const float*>(grad_s), static_cast<const float*>(grad_w),
        static_cast<float*>(grad_q), static_cast<float*>(grad_k), static_cast<float*>(grad_v), B,
        M, D, static_cast<float>(eps));
  }
}

int max_threads() { return num_threads(); }

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace lnlatten
