// Shared pieces of the L1-normalised window attention kernels
// (l1_attention_forward.cu, l1_attention_backward.cu).
//
// One thread block per batch element; M <= 64 windows, so the M x M matrices
// (Rt = Q K^T, R = Rt / d, gR / gRt) live in shared memory (row pitch M+1 to
// avoid bank conflicts). Q/K (and grad_s/V in the backward) are streamed
// through shared memory in tiles of TD columns of the feature dimension D.
//
// Forward (per b):   Rt = Q K^T; L_i = sum_j |Rt_ij|; d_i = max(L_i, eps)
//                    R = Rt / d; w_j = mean_i R_ij; s = R V
// Backward (per b):  gR = grad_s V^T + grad_w / M (broadcast over rows)
//                    c_i = sum_k gR_ik Rt_ik
//                    gRt = gR / d - [L >= eps] sign(Rt) c / d^2
//                    grad_q = gRt K; grad_k = gRt^T Q; grad_v = R^T grad_s
#pragma once

#include <cstddef>
#include <type_traits>

#include "device_utils.cuh"
#include "lnlatten_kernels.cuh"

namespace lnlatten {
namespace cuda {
namespace attention {

using detail::acc_t;

constexpr int kAttnThreads = 256;
constexpr size_t kDefaultSmemLimit = 48 * 1024;

// Feature-dimension tile width: keeps double-precision shared memory in check.
template <typename A>
struct TileD {
  static constexpr int value = std::is_same<A, double>::value ? 8 : 32;
};

template <typename KernelT>
const char* prepare_smem(KernelT kernel, size_t smem) {
  if (smem > kDefaultSmemLimit) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      return cudaGetErrorString(err);
    }
  }
  return nullptr;
}

}  // namespace attention
}  // namespace cuda
}  // namespace lnlatten
