// L1-normalised window attention on CUDA: backward.
// See l1_attention_common.cuh for the algorithm and the shared-memory layout.
#include "l1_attention_common.cuh"

namespace lnlatten {
namespace cuda {
namespace {

using attention::kAttnThreads;
using attention::prepare_smem;
using attention::TileD;
using detail::acc_t;

template <typename T, int TD>
__global__ void __launch_bounds__(kAttnThreads)
    l1_attention_backward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                 const T* __restrict__ v, const T* __restrict__ grad_s,
                                 const T* __restrict__ grad_w, T* __restrict__ grad_q,
                                 T* __restrict__ grad_k, T* __restrict__ grad_v, int M, int D,
                                 acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int TL = TD + 1;
  const int LD = M + 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* Rt = reinterpret_cast<A*>(smem_raw);  // M x LD  (Rt, later R)
  A* G = Rt + M * LD;                      // M x LD  (gR, later gRt)
  A* Qs = G + M * LD;                      // M x TL
  A* Ks = Qs + M * TL;                     // M x TL
  A* Gs = Ks + M * TL;                     // M x TL
  A* Vs = Gs + M * TL;                     // M x TL
  A* dv = Vs + M * TL;                     // M
  A* coef = dv + M;                        // M

  const int64_t b = blockIdx.x;
  const int64_t base = b * static_cast<int64_t>(M) * D;
  const T* Q = q + base;
  const T* K = k + base;
  const T* V = v + base;
  const T* GS = grad_s != nullptr ? grad_s + base : nullptr;
  const T* GW = grad_w != nullptr ? grad_w + b * M : nullptr;
  T* GQ = grad_q + base;
  T* GK = grad_k + base;
  T* GV = grad_v + base;
  const bool has_gs = GS != nullptr;

  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int MM = M * M;

  for (int e = tid; e < MM; e += nt) {
    const int o = (e / M) * LD + (e % M);
    Rt[o] = A(0);
    G[o] = A(0);
  }

  // Rt = Q K^T and gR = grad_s V^T, tiled over D.
  for (int d0 = 0; d0 < D; d0 += TD) {
    __syncthreads();
    for (int e = tid; e < M * TD; e += nt) {
      const int r = e / TD;
      const int t = e - r * TD;
      const int dd = d0 + t;
      A qv = A(0), kv = A(0), gv = A(0), vv = A(0);
      if (dd < D) {
        const int64_t o = static_cast<int64_t>(r) * D + dd;
        qv = detail::to_acc(Q[o]);
        kv = detail::to_acc(K[o]);
        if (has_gs) {
          gv = detail::to_acc(GS[o]);
          vv = detail::to_acc(V[o]);
        }
      }
      Qs[r * TL + t] = qv;
      Ks[r * TL + t] = kv;
      Gs[r * TL + t] = gv;
      Vs[r * TL + t] = vv;
    }
    __syncthreads();
    for (int e = tid; e < MM; e += nt) {
      const int i = e / M;
      const int j = e - i * M;
      const int o = i * LD + j;
      const A* qi = Qs + i * TL;
      const A* kj = Ks + j * TL;
      A a = Rt[o];
#pragma unroll
      for (int t = 0; t < TD; ++t) a += qi[t] * kj[t];
      Rt[o] = a;
      if (has_gs) {
        const A* gi = Gs + i * TL;
        const A* vj = Vs + j * TL;
        A g = G[o];
#pragma unroll
        for (int t = 0; t < TD; ++t) g += gi[t] * vj[t];
        G[o] = g;
      }
    }
  }
  __syncthreads();

  // Per row: add grad_w / M, then L_i, d_i, c_i.
  for (int i = tid; i < M; i += nt) {
    A* rt = Rt + i * LD;
    A* g = G + i * LD;
    A L = A(0), c = A(0);
    for (int j = 0; j < M; ++j) {
      const A x = rt[j];
      A gij = g[j];
      if (GW != nullptr) gij += detail::to_acc(GW[j]) / static_cast<A>(M);
      g[j] = gij;
      L += detail::abs_acc(x);
      c += gij * x;
    }
    const A d = detail::clamp_eps(L, eps);
    dv[i] = d;
    // (c / d) / d, not c / (d * d): d * d overflows once d passes ~1.8e19 in float32.
    coef[i] = (L >= eps) ? (c / d) / d : A(0);
  }
  __syncthreads();

  // gRt = gR / d - sign(Rt) * coef ; R = Rt / d   (both in place)
  for (int e = tid; e < MM; e += nt) {
    const int i = e / M;
    const int j = e - i * M;
    const int o = i * LD + j;
    const A x = Rt[o];
    const A d = dv[i];
    G[o] = G[o] / d - detail::sign_acc(x) * coef[i];
    Rt[o] = x / d;
  }
  __syncthreads();

  // grad_q[r] = sum_x gRt[r, x] K[x];  grad_k[r] = sum_x gRt[x, r] Q[x];
  // grad_v[r] = sum_x R[x, r] grad_s[x]
  const int MD = M * D;
  for (int e = tid; e < MD; e += nt) {
    const int r = e / D;
    const int t = e - r * D;
    A gq = A(0), gk = A(0), gv = A(0);
    for (int x = 0; x < M; ++x) {
      const int64_t o = static_cast<int64_t>(x) * D + t;
      gq += G[r * LD + x] * detail::to_acc(K[o]);
      gk += G[x * LD + r] * detail::to_acc(Q[o]);
      if (has_gs) gv += Rt[x * LD + r] * detail::to_acc(GS[o]);
    }
    GQ[e] = detail::from_acc<T>(gq);
    GK[e] = detail::from_acc<T>(gk);
    GV[e] = detail::from_acc<T>(gv);
  }
}

template <typename T>
const char* backward_typed(const void* q, const void* k, const void* v, const void* grad_s,
                           const void* grad_w, void* grad_q, void* grad_k, void* grad_v,
                           int64_t B, int64_t M, int64_t D, double eps, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TD = TileD<A>::value;
  const size_t smem = (2 * static_cast<size_t>(M) * (M + 1) +
                       4 * static_cast<size_t>(M) * (TD + 1) + 2 * static_cast<size_t>(M)) *
                      sizeof(A);
  auto kernel = l1_attention_backward_kernel<T, TD>;
  if (const char* err = prepare_smem(kernel, smem)) return err;
  kernel<<<static_cast<unsigned>(B), kAttnThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<const T*>(grad_s), static_cast<const T*>(grad_w), static_cast<T*>(grad_q),
      static_cast<T*>(grad_k), static_cast<T*>(grad_v), static_cast<int>(M), static_cast<int>(D),
      static_cast<A>(eps));
  return detail::check_launch();
}

}  // namespace

const char* launch_l1_attention_backward(int dtype, const void* q, const void* k, const void* v,
                                         const void* grad_s, const void* grad_w, void* grad_q,
                                         void* grad_k, void* grad_v, int64_t B, int64_t M,
                                         int64_t D, double eps, void* stream) {
  if (M > kMaxAttentionM) return "M exceeds the CUDA attention kernel limit (64)";
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return backward_typed<float>(q, k, v, grad_s, grad_w, grad_q, grad_k, grad_v, B, M, D, eps,
                                   st);
    case kFloat64:
      return backward_typed<double>(q, k, v, grad_s, grad_w, grad_q, grad_k, grad_v, B, M, D, eps,
                                    st);
    case kFloat16:
      return backward_typed<__half>(q, k, v, grad_s, grad_w, grad_q, grad_k, grad_v, B, M, D, eps,
                                    st);
    case kBFloat16:
      return backward_typed<__nv_bfloat16>(q, k, v, grad_s, grad_w, grad_q, grad_k, grad_v, B, M,
                                           D, eps, st);
    default:
      return "unsupported dtype code";
  }
}

}  // namespace cuda
}  // namespace lnlatten
