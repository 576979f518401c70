// L1-normalised window attention on CUDA: forward.
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
    l1_attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                const T* __restrict__ v, T* __restrict__ s, T* __restrict__ w,
                                int M, int D, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int TL = TD + 1;
  const int LD = M + 1;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* Rt = reinterpret_cast<A*>(smem_raw);  // M x LD
  A* Qs = Rt + M * LD;                     // M x TL
  A* Ks = Qs + M * TL;                     // M x TL
  A* dv = Ks + M * TL;                     // M

  const int64_t b = blockIdx.x;
  const int64_t base = b * static_cast<int64_t>(M) * D;
  const T* Q = q + base;
  const T* K = k + base;
  const T* V = v + base;
  T* S = s + base;
  T* Wb = w + b * M;

  const int tid = threadIdx.x;
  const int nt = blockDim.x;
  const int MM = M * M;

  for (int e = tid; e < MM; e += nt) Rt[(e / M) * LD + (e % M)] = A(0);

  // Rt = Q K^T, tiled over D. Each (i, j) entry is owned by one thread.
  for (int d0 = 0; d0 < D; d0 += TD) {
    __syncthreads();  // previous tile fully consumed
    for (int e = tid; e < M * TD; e += nt) {
      const int r = e / TD;
      const int t = e - r * TD;
      const int dd = d0 + t;
      A qv = A(0), kv = A(0);
      if (dd < D) {
        qv = detail::to_acc(Q[static_cast<int64_t>(r) * D + dd]);
        kv = detail::to_acc(K[static_cast<int64_t>(r) * D + dd]);
      }
      Qs[r * TL + t] = qv;
      Ks[r * TL + t] = kv;
    }
    __syncthreads();
    for (int e = tid; e < MM; e += nt) {
      const int i = e / M;
      const int j = e - i * M;
      const A* qi = Qs + i * TL;
      const A* kj = Ks + j * TL;
      A a = Rt[i * LD + j];
#pragma unroll
      for (int t = 0; t < TD; ++t) a += qi[t] * kj[t];
      Rt[i * LD + j] = a;
    }
  }
  __syncthreads();

  // d_i = max(sum_j |Rt_ij|, eps)
  for (int i = tid; i < M; i += nt) {
    const A* r = Rt + i * LD;
    A L = A(0);
    for (int j = 0; j < M; ++j) L += detail::abs_acc(r[j]);
    dv[i] = detail::clamp_eps(L, eps);
  }
  __syncthreads();

  // R = Rt / d (in place)
  for (int e = tid; e < MM; e += nt) {
    const int i = e / M;
    const int j = e - i * M;
    Rt[i * LD + j] = Rt[i * LD + j] / dv[i];
  }
  __syncthreads();

  // w_j = (1/M) sum_i R_ij
  for (int j = tid; j < M; j += nt) {
    A c = A(0);
    for (int i = 0; i < M; ++i) c += Rt[i * LD + j];
    Wb[j] = detail::from_acc<T>(c / static_cast<A>(M));
  }

  // s = R V
  const int MD = M * D;
  for (int e = tid; e < MD; e += nt) {
    const int i = e / D;
    const int t = e - i * D;
    const A* r = Rt + i * LD;
    A a = A(0);
    for (int j = 0; j < M; ++j) a += r[j] * detail::to_acc(V[static_cast<int64_t>(j) * D + t]);
    S[e] = detail::from_acc<T>(a);
  }
}

template <typename T>
const char* forward_typed(const void* q, const void* k, const void* v, void* s, void* w,
                          int64_t B, int64_t M, int64_t D, double eps, cudaStream_t stream) {
  using A = acc_t<T>;
  constexpr int TD = TileD<A>::value;
  const size_t smem =
      (static_cast<size_t>(M) * (M + 1) + 2 * static_cast<size_t>(M) * (TD + 1) + M) * sizeof(A);
  auto kernel = l1_attention_forward_kernel<T, TD>;
  if (const char* err = prepare_smem(kernel, smem)) return err;
  kernel<<<static_cast<unsigned>(B), kAttnThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v),
      static_cast<T*>(s), static_cast<T*>(w), static_cast<int>(M), static_cast<int>(D),
      static_cast<A>(eps));
  return detail::check_launch();
}

}  // namespace

const char* launch_l1_attention_forward(int dtype, const void* q, const void* k, const void* v,
                                        void* s, void* w, int64_t B, int64_t M, int64_t D,
                                        double eps, void* stream) {
  if (M > kMaxAttentionM) return "M exceeds the CUDA attention kernel limit (64)";
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return forward_typed<float>(q, k, v, s, w, B, M, D, eps, st);
    case kFloat64:
      return forward_typed<double>(q, k, v, s, w, B, M, D, eps, st);
    case kFloat16:
      return forward_typed<__half>(q, k, v, s, w, B, M, D, eps, st);
    case kBFloat16:
      return forward_typed<__nv_bfloat16>(q, k, v, s, w, B, M, D, eps, st);
    default:
      return "unsupported dtype code";
  }
}

}  // namespace cuda
}  // namespace lnlatten
