// CPU L1-normalised attention, forward and backward (declared in attention.h).
//
// Per batch the op is two kinds of small-by-tall product on row-major (M x D)
// operands, M small (16 at the paper shape) and D long (512):
//   dot:  C (M x M) = X Y^T            Rt = Q K^T,  gR = grad_s V^T
//   mm:   O (M x D) = A X, A (M x M)   s = R V,  grad_v = R^T grad_s,
//                                      grad_q = gRt K,  grad_k = gRt^T Q
// Written as plain loops these are bound by loads/stores (an M = 16 row of
// the accumulator is re-read and re-written for every FMA), not by
// arithmetic. So both are register-blocked micro-kernels: a block of outputs
// stays in vector registers for its whole reduction and is stored once, and
// the transposed operands (K^T, V^T, R^T, gRt^T) are never materialised:
// `dot` reduces along D directly, `mm` reads A through strides.
//
// The kernels are templates over the vector type V: GCC/Clang vector
// extensions, 16 bytes (SSE2 / NEON) in the portable build, 32 bytes in an
// AVX2+FMA copy chosen at run time on x86-64 (the build has no -march). All
// helpers are always_inline into one out-of-line dot and one mm function per
// instruction set (PortableKernels / Avx2Kernels), so each of those is
// compiled as a whole for its target; in the AVX2 copy GCC contracts
// `acc += x * y` into FMAs. Results do not depend on the thread count, but
// the two copies round differently (last bits).
#include "cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "cpu/parallel.h"

namespace lnlatten {
namespace cpu {

namespace {

#if defined(__GNUC__) || defined(__clang__)
#define LNL_INLINE inline __attribute__((always_inline))
// Fully unroll the loops over a register block. Without it GCC keeps the
// accumulator array on the stack and copies it out through memory.
#if defined(__clang__)
#define LNL_UNROLL _Pragma("unroll")
#else
#define LNL_UNROLL _Pragma("GCC unroll 16")
// 32-byte vector values passed between the (always inlined) helpers trigger
// "AVX vector return without AVX enabled changes the ABI" warnings; no such
// value ever crosses a real call boundary.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#define LNL_HAVE_VECTOR_EXT 1
#else
#define LNL_INLINE inline
#define LNL_UNROLL
#define LNL_HAVE_VECTOR_EXT 0
#endif

#if LNL_HAVE_VECTOR_EXT && (defined(__x86_64__) || defined(__i386__)) && !defined(__AVX2__)
#define LNL_AVX2_DISPATCH 1
#else
#define LNL_AVX2_DISPATCH 0
#endif

#if LNL_HAVE_VECTOR_EXT
template <class T, int Bytes>
struct VecOf {
  typedef T type __attribute__((vector_size(Bytes)));
};
// What the compile-time target offers: SSE2 on plain x86-64, NEON on aarch64,
// AVX2 when the compiler was told it may use it (then there is no dispatch).
#if defined(__AVX2__) && defined(__FMA__)
constexpr int kPortableVecBytes = 32;
#else
constexpr int kPortableVecBytes = 16;
#endif
template <class T>
using PortableVec = typename VecOf<T, kPortableVecBytes>::type;
#else
// No vector extensions: a plain array of 16 bytes worth of lanes with
// element-wise operators, which the auto-vectoriser can map onto registers.
template <class T, int N>
struct SoftVec {
  T v[N];
  SoftVec& operator+=(const SoftVec& o) {
    for (int l = 0; l < N; ++l) v[l] += o.v[l];
    return *this;
  }
  friend SoftVec operator*(const SoftVec& a, const SoftVec& b) {
    SoftVec r;
    for (int l = 0; l < N; ++l) r.v[l] = a.v[l] * b.v[l];
    return r;
  }
  friend SoftVec operator*(const SoftVec& a, T b) {
    SoftVec r;
    for (int l = 0; l < N; ++l) r.v[l] = a.v[l] * b;
    return r;
  }
};
template <class T>
using PortableVec = SoftVec<T, 16 / sizeof(T)>;
#endif

// The helpers accept V = T (plain scalar) too; the column tails use that.
template <class V, class T>
LNL_INLINE V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));  // unaligned load
  return v;
}

template <class V, class T>
LNL_INLINE void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <class T, class V>
LNL_INLINE T hsum(const V& v) {
  constexpr int L = sizeof(V) / sizeof(T);
  T lane[L];
  std::memcpy(lane, &v, sizeof(V));
  T s = lane[0];
  for (int l = 1; l < L; ++l) s += lane[l];
  return s;
}

// Register blocks. 16 vector registers on x86-64 (SSE2 and AVX2 alike):
//   dot: RI x RJ = 4 x 3 accumulators + 3 row chunks of Y + 1 of X = 16;
//   mm:  RI x CW = 4 x 3 accumulators + 3 row chunks of X + 1 broadcast = 16.
// Twelve independent FMA chains also cover the FMA latency (4-5 cycles at
// 2 per cycle).
constexpr int kDotRows = 4;
constexpr int kDotCols = 3;
constexpr int kMmRows = 4;
constexpr int kMmVecs = 3;

// C[i*ldc + j] = sum_t X[i*ld + t] * Y[j*ld + t]   (i < RI, j < RJ, t < D).
// Each output is one dot product over D, accumulated lane-wise in a vector
// and reduced once at the end; the last D % L terms are added in scalar.
template <class T, class V, int RI, int RJ>
LNL_INLINE void dot_block(const T* X, const T* Y, int64_t ld, int64_t D, T* C, int64_t ldc) {
  constexpr int L = sizeof(V) / sizeof(T);
  V acc[RI][RJ];
  LNL_UNROLL for (int i = 0; i < RI; ++i) {
    LNL_UNROLL for (int j = 0; j < RJ; ++j) acc[i][j] = V{};
  }
  int64_t t = 0;
  for (; t + L <= D; t += L) {
    V y[RJ];
    LNL_UNROLL for (int j = 0; j < RJ; ++j) y[j] = loadu<V>(Y + j * ld + t);
    LNL_UNROLL for (int i = 0; i < RI; ++i) {
      const V x = loadu<V>(X + i * ld + t);
      LNL_UNROLL for (int j = 0; j < RJ; ++j) acc[i][j] += x * y[j];
    }
  }
  LNL_UNROLL for (int i = 0; i < RI; ++i) {
    LNL_UNROLL for (int j = 0; j < RJ; ++j) {
      T s = hsum<T>(acc[i][j]);
      for (int64_t u = t; u < D; ++u) s += X[i * ld + u] * Y[j * ld + u];
      C[i * ldc + j] = s;
    }
  }
}

// Rows [0, RI) of X against rows [0, n) of Y; a remainder n % RJ is done by
// the next narrower block (the recursion is over template arguments only).
template <class T, class V, int RI, int RJ>
LNL_INLINE void dot_rows(const T* X, const T* Y, int64_t n, int64_t ld, int64_t D, T* C,
                         int64_t ldc) {
  int64_t j = 0;
  for (; j + RJ <= n; j += RJ) dot_block<T, V, RI, RJ>(X, Y + j * ld, ld, D, C + j, ldc);
  if constexpr (RJ > 1) {
    if (j < n) dot_rows<T, V, RI, RJ - 1>(X, Y + j * ld, n - j, ld, D, C + j, ldc);
  }
}

// C (m x n, leading dimension ldc) = X (m x D) Y (n x D)^T, rows ld apart.
template <class T, class V, int RI = kDotRows, int RJ = kDotCols>
LNL_INLINE void dot_nt(const T* X, const T* Y, int64_t m, int64_t n, int64_t ld, int64_t D, T* C,
                       int64_t ldc) {
  int64_t i = 0;
  for (; i + RI <= m; i += RI) dot_rows<T, V, RI, RJ>(X + i * ld, Y, n, ld, D, C + i * ldc, ldc);
  if constexpr (RI > 1) {
    if (i < m) dot_nt<T, V, RI - 1, RJ>(X + i * ld, Y, m - i, n, ld, D, C + i * ldc, ldc);
  }
}

// O[i*ld + c*L + l] = sum_j A(i, j) * X[j*ld + c*L + l]   (i < RI, c < CW, j < n),
// A(i, j) = A[i*ai + j*aj], so a transposed A costs nothing. The RI x CW
// outputs are accumulated in registers over all j and stored once.
template <class T, class V, int RI, int CW>
LNL_INLINE void mm_block(const T* A, int64_t ai, int64_t aj, const T* X, int64_t n, int64_t ld,
                         T* O) {
  constexpr int L = sizeof(V) / sizeof(T);
  V acc[RI][CW];
  LNL_UNROLL for (int i = 0; i < RI; ++i) {
    LNL_UNROLL for (int c = 0; c < CW; ++c) acc[i][c] = V{};
  }
  for (int64_t j = 0; j < n; ++j) {
    V x[CW];
    LNL_UNROLL for (int c = 0; c < CW; ++c) x[c] = loadu<V>(X + j * ld + c * L);
    LNL_UNROLL for (int i = 0; i < RI; ++i) {
      // vector * scalar: GCC emits one broadcast load for it. (An explicit
      // splat is built lane by lane with inserts when, as here, the helper is
      // a template instantiated outside the AVX2 function it is inlined into.)
      const T a = A[i * ai + j * aj];
      LNL_UNROLL for (int c = 0; c < CW; ++c) acc[i][c] += x[c] * a;
    }
  }
  LNL_UNROLL for (int i = 0; i < RI; ++i) {
    LNL_UNROLL for (int c = 0; c < CW; ++c) storeu(O + i * ld + c * L, acc[i][c]);
  }
}

// All m output rows of one column panel of width CW * L.
template <class T, class V, int RI, int CW>
LNL_INLINE void mm_panel(const T* A, int64_t ai, int64_t aj, const T* X, int64_t m, int64_t n,
                         int64_t ld, T* O) {
  int64_t i = 0;
  for (; i + RI <= m; i += RI) mm_block<T, V, RI, CW>(A + i * ai, ai, aj, X, n, ld, O + i * ld);
  if constexpr (RI > 1) {
    if (i < m) mm_panel<T, V, RI - 1, CW>(A + i * ai, ai, aj, X, m - i, n, ld, O + i * ld);
  }
}

// O (m x width, rows ld apart) = A (m x n, via strides) X (n x width).
// Column panels outermost: one panel of X (n rows x CW vectors) stays in L1
// while every row block of O is computed from it. The columns left over after
// the full panels go to narrower panels, and the last width % L to scalar
// code.
template <class T, class V, int RI = kMmRows, int CW = kMmVecs>
LNL_INLINE void mm_cols(const T* A, int64_t ai, int64_t aj, const T* X, int64_t m, int64_t n,
                   int64_t ld, int64_t width, T* O) {
  constexpr int64_t W = CW * static_cast<int64_t>(sizeof(V) / sizeof(T));
  int64_t t = 0;
  for (; t + W <= width; t += W) mm_panel<T, V, RI, CW>(A, ai, aj, X + t, m, n, ld, O + t);
  if (t == width) return;
  if constexpr (CW > 1) {
    mm_cols<T, V, RI, CW - 1>(A, ai, aj, X + t, m, n, ld, width - t, O + t);
  } else if constexpr (!std::is_same_v<V, T>) {
    mm_cols<T, T, RI, 1>(A, ai, aj, X + t, m, n, ld, width - t, O + t);
  }
}

template <class T>
inline T sgn(T x) {
  return static_cast<T>((x > T(0)) - (x < T(0)));
}

template <class T>
inline T row_l1(const T* r, int64_t M) {
  T L = T(0);
  for (int64_t j = 0; j < M; ++j) L += std::abs(r[j]);
  return L;
}

// clamp_min(L, eps), NaN-propagating like torch.
template <class T>
inline T clamp_eps(T L, T eps) {
  return L < eps ? eps : L;
}

// One batch of the forward. R: M*M scratch. Kern: the dot/mm kernels of one
// instruction set (PortableKernels / Avx2Kernels below).
template <class T, class Kern>
void forward_batch(const T* Q, const T* K, const T* Vm, T* S, T* W, int64_t M, int64_t D, T eps,
                   T* R) {
  Kern::dot(Q, K, M, D, R);  // Rt = Q K^T

  // Row-wise L1 normalisation (in place: R <- Rt / d), then w_j = mean_i R_ij.
  for (int64_t i = 0; i < M; ++i) {
    T* r = R + i * M;
    const T d = clamp_eps(row_l1(r, M), eps);
    for (int64_t j = 0; j < M; ++j) r[j] = r[j] / d;
  }
  for (int64_t j = 0; j < M; ++j) W[j] = T(0);
  for (int64_t i = 0; i < M; ++i) {
    const T* r = R + i * M;
    for (int64_t j = 0; j < M; ++j) W[j] += r[j];
  }
  for (int64_t j = 0; j < M; ++j) W[j] = W[j] / static_cast<T>(M);

  Kern::mm(R, M, 1, Vm, M, D, S);  // S = R V
}

// One batch of the backward. Rt, G: M*M scratch each.
template <class T, class Kern>
void backward_batch(const T* Q, const T* K, const T* Vm, const T* GS, const T* GW, T* GQ, T* GK,
                    T* GV, int64_t M, int64_t D, T eps, T* Rt, T* G) {
  const int64_t MD = M * D;
  Kern::dot(Q, K, M, D, Rt);  // Rt = Q K^T

  // gR = grad_s V^T + grad_w / M   (broadcast over rows)
  if (GS) {
    Kern::dot(GS, Vm, M, D, G);
  } else {
    std::fill(G, G + M * M, T(0));
  }
  if (GW) {
    for (int64_t i = 0; i < M; ++i) {
      T* g = G + i * M;
      for (int64_t j = 0; j < M; ++j) g[j] += GW[j] / static_cast<T>(M);
    }
  }

  // Per row: d_i, c_i; then R (in place of Rt) and gRt (in place of gR):
  //   gRt_ij = gR_ij / d_i - [L_i >= eps] * sign(Rt_ij) * c_i / d_i^2
  for (int64_t i = 0; i < M; ++i) {
    T* rt = Rt + i * M;
    T* g = G + i * M;
    const T L = row_l1(rt, M);
    const T d = clamp_eps(L, eps);
    T c = T(0);
    for (int64_t j = 0; j < M; ++j) c += g[j] * rt[j];
    // (c / d) / d, not c / (d * d): d * d overflows once d passes ~1.8e19 in float32.
    const T coef = (L >= eps) ? (c / d) / d : T(0);
    for (int64_t j = 0; j < M; ++j) {
      const T x = rt[j];
      g[j] = g[j] / d - sgn(x) * coef;
      rt[j] = x / d;
    }
  }
  const T* R = Rt;

  if (GS) {
    Kern::mm(R, 1, M, GS, M, D, GV);  // grad_v = R^T grad_s
  } else {
    std::fill(GV, GV + MD, T(0));
  }
  Kern::mm(G, M, 1, K, M, D, GQ);  // grad_q = gRt K
  Kern::mm(G, 1, M, Q, M, D, GK);  // grad_k = gRt^T Q
}

// The kernels of one instruction set, for (M x D) operands:
//   dot: C (M x M) = X Y^T;   mm: O (M x D) = A X, A(i, j) = A[i*ai + j*aj].
// Each is one out-of-line function holding all its register-block variants,
// compiled for its target; the M x M glue around them is baseline code.
template <class T>
struct PortableKernels {
  static void dot(const T* X, const T* Y, int64_t M, int64_t D, T* C) {
    dot_nt<T, PortableVec<T>>(X, Y, M, M, D, D, C, M);
  }
  static void mm(const T* A, int64_t ai, int64_t aj, const T* X, int64_t M, int64_t D, T* O) {
    mm_cols<T, PortableVec<T>>(A, ai, aj, X, M, M, D, D, O);
  }
};

#if LNL_AVX2_DISPATCH
template <class T>
struct Avx2Kernels {
  using V = typename VecOf<T, 32>::type;
  __attribute__((target("avx2,fma"))) static void dot(const T* X, const T* Y, int64_t M,
                                                       int64_t D, T* C) {
    dot_nt<T, V>(X, Y, M, M, D, D, C, M);
  }
  __attribute__((target("avx2,fma"))) static void mm(const T* A, int64_t ai, int64_t aj,
                                                      const T* X, int64_t M, int64_t D, T* O) {
    mm_cols<T, V>(A, ai, aj, X, M, M, D, D, O);
  }
};

// AVX2 and FMA present (and LNLATTEN_CPU_NO_AVX2 unset or "0": a switch to
// test the portable kernels on an AVX2 machine). Checked once.
inline bool use_avx2() {
  static const bool ok = [] {
    __builtin_cpu_init();
    const char* off = std::getenv("LNLATTEN_CPU_NO_AVX2");
    if (off && *off && std::strcmp(off, "0") != 0) return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

template <class T>
using ForwardBatchFn = void (*)(const T*, const T*, const T*, T*, T*, int64_t, int64_t, T, T*);
template <class T>
using BackwardBatchFn = void (*)(const T*, const T*, const T*, const T*, const T*, T*, T*, T*,
                                 int64_t, int64_t, T, T*, T*);

template <class T>
ForwardBatchFn<T> pick_forward_batch() {
#if LNL_AVX2_DISPATCH
  if (use_avx2()) return &forward_batch<T, Avx2Kernels<T>>;
#endif
  return &forward_batch<T, PortableKernels<T>>;
}

template <class T>
BackwardBatchFn<T> pick_backward_batch() {
#if LNL_AVX2_DISPATCH
  if (use_avx2()) return &backward_batch<T, Avx2Kernels<T>>;
#endif
  return &backward_batch<T, PortableKernels<T>>;
}

// Batches are independent: one OpenMP loop over b, static schedule, so the
// result does not depend on the thread count. Each thread allocates its M x M
// scratch once per call.
inline bool attention_parallel(int64_t B, int64_t M, int64_t D) {
  return B > 1 && B * M * M * D >= kParallelGrain;
}

// Runs fn(b, scratch) for every batch element, in parallel over the batch, each thread with
// `scratch_elems` elements of scratch allocated once. An allocation failure in any thread is
// rethrown as std::bad_alloc after the parallel region (exceptions must not leave it).
template <typename T, typename Fn>
void for_each_batch_with_scratch(int64_t B, int64_t M, int64_t D, size_t scratch_elems, Fn&& fn) {
  const bool par = attention_parallel(B, M, D);
  const int nthreads = num_threads();
  (void)par;
  (void)nthreads;
  std::atomic<bool> alloc_failed{false};

#pragma omp parallel if (par) num_threads(nthreads)
  {
    std::vector<T> scratch;
    bool ok = true;
    try {
      scratch.resize(scratch_elems);
    } catch (...) {
      ok = false;
      alloc_failed.store(true);
    }

#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      if (!ok) continue;
      fn(b, scratch.data());
    }
  }
  if (alloc_failed.load()) throw std::bad_alloc();
}

template <typename T>
void l1_attention_forward_impl(const T* q, const T* k, const T* v, T* s, T* w, int64_t B,
                               int64_t M, int64_t D, T eps) {
  const int64_t MD = M * D;
  const ForwardBatchFn<T> batch_fn = pick_forward_batch<T>();
  for_each_batch_with_scratch<T>(B, M, D, static_cast<size_t>(M * M), [&](int64_t b, T* R) {
    batch_fn(q + b * MD, k + b * MD, v + b * MD, s + b * MD, w + b * M, M, D, eps, R);
  });
}

template <typename T>
void l1_attention_backward_impl(const T* q, const T* k, const T* v, const T* grad_s,
                                const T* grad_w, T* grad_q, T* grad_k, T* grad_v, int64_t B,
                                int64_t M, int64_t D, T eps) {
  const int64_t MD = M * D;
  const BackwardBatchFn<T> batch_fn = pick_backward_batch<T>();
  for_each_batch_with_scratch<T>(B, M, D, static_cast<size_t>(2 * M * M), [&](int64_t b, T* scratch) {
    batch_fn(q + b * MD, k + b * MD, v + b * MD, grad_s ? grad_s + b * MD : nullptr,
             grad_w ? grad_w + b * M : nullptr, grad_q + b * MD, grad_k + b * MD,
             grad_v + b * MD, M, D, eps, scratch, scratch + M * M);
  });
}

}  // namespace

void l1_attention_forward(int dtype, const void* q, const void* k, const void* v, void* s,
                          void* w, int64_t B, int64_t M, int64_t D, double eps) {
  dispatch_cpu_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    l1_attention_forward_impl(static_cast<const T*>(q), static_cast<const T*>(k),
                              static_cast<const T*>(v), static_cast<T*>(s), static_cast<T*>(w), B,
                              M, D, static_cast<T>(eps));
  });
}

void l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                           const void* grad_s, const void* grad_w, void* grad_q, void* grad_k,
                           void* grad_v, int64_t B, int64_t M, int64_t D, double eps) {
  dispatch_cpu_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    l1_attention_backward_impl(static_cast<const T*>(q), static_cast<const T*>(k),
                               static_cast<const T*>(v), static_cast<const T*>(grad_s),
                               static_cast<const T*>(grad_w), static_cast<T*>(grad_q),
                               static_cast<T*>(grad_k), static_cast<T*>(grad_v), B, M, D,
                               static_cast<T>(eps));
  });
}

const char* attention_kernels() {
#if LNL_AVX2_DISPATCH
  if (use_avx2()) return "avx2+fma";
#endif
#if !LNL_HAVE_VECTOR_EXT
  return "portable (scalar)";
#elif defined(__AVX2__) && defined(__FMA__)
  return "portable (32-byte vectors)";
#else
  return "portable (16-byte vectors)";
#endif
}

}  // namespace cpu
}  // namespace lnlatten
