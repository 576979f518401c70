// Device-side helpers shared by the lnlatten kernels (CUDA translation units only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

namespace lnlatten {
namespace cuda {
namespace detail {

// Accumulation type: double for double, float for everything else.
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <>
__device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float abs_acc(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_acc(double x) { return fabs(x); }

template <typename A>
__device__ __forceinline__ A sign_acc(A x) {
  return static_cast<A>((x > A(0)) - (x < A(0)));
}

template <typename I>
__device__ __forceinline__ I imin(I a, I b) {
  return a < b ? a : b;
}

// clamp_min(L, eps) that propagates NaN like torch.
template <typename A>
__device__ __forceinline__ A clamp_eps(A L, A eps) {
  return L < eps ? eps : L;
}

constexpr int kElementwiseThreads = 256;
constexpr int64_t kMaxElementwiseBlocks = 65536;

inline int64_t elementwise_blocks(int64_t n) {
  int64_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  if (blocks > kMaxElementwiseBlocks) blocks = kMaxElementwiseBlocks;
  if (blocks < 1) blocks = 1;
  return blocks;
}

// True if grid-stride loops over [0, n) can use 32-bit indices without the
// loop increment overflowing.
inline bool fits_int32(int64_t n, int64_t blocks) {
  return n + blocks * kElementwiseThreads < static_cast<int64_t>(INT_MAX);
}

inline const char* check_launch() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

}  // namespace detail
}  // namespace cuda
}  // namespace lnlatten
