// Patch extraction and its adjoint (overlap-add) on CUDA.
//
// Both kernels use one thread per OUTPUT element with a grid-stride loop:
//   * extraction is a pure gather-copy, so it is dispatched on element SIZE
//     (bit-exact for every dtype);
//   * overlap-add gathers the (<= ceil(P/stride)^2) windows covering each
//     output pixel in (gy, gx) ascending order -- deterministic, no atomics,
//     same summation order as the CPU kernel.
#include "device_utils.cuh"
#include "lnlatten_kernels.cuh"

namespace lnlatten {
namespace cuda {
namespace {

using detail::acc_t;

template <typename E, typename index_t>
__global__ void extract_patches_kernel(const E* __restrict__ src, E* __restrict__ dst,
                                       index_t total, index_t C, index_t grid, index_t P,
                                       index_t stride, int64_t sB, int64_t sC, int64_t sH,
                                       int64_t sW) {
  const index_t M = grid * grid;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t n = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < total;
       n += step) {
    // dst layout (B, M, C, P, P)
    index_t t = n;
    const index_t x = t % P;
    t /= P;
    const index_t y = t % P;
    t /= P;
    const index_t c = t % C;
    t /= C;
    const index_t m = t % M;
    const index_t b = t / M;
    const index_t gy = m / grid;
    const index_t gx = m - gy * grid;
    const int64_t h = static_cast<int64_t>(gy) * stride + y;
    const int64_t w = static_cast<int64_t>(gx) * stride + x;
    const int64_t off = static_cast<int64_t>(b) * sB + static_cast<int64_t>(c) * sC + h * sH +
                        w * sW;
    dst[n] = src[off];
  }
}

template <typename T, typename index_t>
__global__ void overlap_add_kernel(const T* __restrict__ src, T* __restrict__ dst, index_t total,
                                   index_t C, index_t H, index_t W, index_t grid, index_t P,
                                   index_t stride) {
  using A = acc_t<T>;
  const index_t M = grid * grid;
  const index_t step = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t n = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; n < total;
       n += step) {
    // dst layout (B, C, H, W)
    index_t t = n;
    const index_t w = t % W;
    t /= W;
    const index_t h = t % H;
    t /= H;
    const index_t c = t % C;
    const index_t b = t / C;

    // Covering windows per axis: g*stride <= p < g*stride + P.
    const index_t gy_lo = h >= P ? (h - P) / stride + 1 : 0;
    const index_t gy_hi = detail::imin<index_t>(h / stride, grid - 1);
    const index_t gx_lo = w >= P ? (w - P) / stride + 1 : 0;
    const index_t gx_hi = detail::imin<index_t>(w / stride, grid - 1);

    A acc = A(0);
    for (index_t gy = gy_lo; gy <= gy_hi; ++gy) {
      const index_t wy = h - gy * stride;
      for (index_t gx = gx_lo; gx <= gx_hi; ++gx) {
        const index_t wx = w - gx * stride;
        const index_t m = gy * grid + gx;
        const index_t idx = (((b * M + m) * C + c) * P + wy) * P + wx;
        acc += detail::to_acc(src[idx]);
      }
    }
    dst[n] = detail::from_acc<T>(acc);
  }
}

template <typename E>
const char* extract_typed(const void* src, void* dst, int64_t B, int64_t C, int64_t sB,
                          int64_t sC, int64_t sH, int64_t sW, int64_t grid, int64_t P,
                          int64_t stride, cudaStream_t stream) {
  const int64_t total = B * grid * grid * C * P * P;
  const int64_t blocks = detail::elementwise_blocks(total);
  const auto* s = static_cast<const E*>(src);
  auto* d = static_cast<E*>(dst);
  if (detail::fits_int32(total, blocks)) {
    extract_patches_kernel<E, int32_t>
        <<<static_cast<unsigned>(blocks), detail::kElementwiseThreads, 0, stream>>>(
            s, d, static_cast<int32_t>(total), static_cast<int32_t>(C),
            static_cast<int32_t>(grid), static_cast<int32_t>(P), static_cast<int32_t>(stride), sB,
            sC, sH, sW);
  } else {
    extract_patches_kernel<E, int64_t>
        <<<static_cast<unsigned>(blocks), detail::kElementwiseThreads, 0, stream>>>(
            s, d, total, C, grid, P, stride, sB, sC, sH, sW);
  }
  return detail::check_launch();
}

template <typename T>
const char* overlap_add_typed(const void* src, void* dst, int64_t B, int64_t C, int64_t H,
                              int64_t W, int64_t grid, int64_t P, int64_t stride,
                              cudaStream_t stream) {
  const int64_t total = B * C * H * W;
  const int64_t src_total = B * grid * grid * C * P * P;
  const int64_t blocks = detail::elementwise_blocks(total);
  const auto* s = static_cast<const T*>(src);
  auto* d = static_cast<T*>(dst);
  if (detail::fits_int32(total, blocks) && detail::fits_int32(src_total, 0)) {
    overlap_add_kernel<T, int32_t>
        <<<static_cast<unsigned>(blocks), detail::kElementwiseThreads, 0, stream>>>(
            s, d, static_cast<int32_t>(total), static_cast<int32_t>(C), static_cast<int32_t>(H),
            static_cast<int32_t>(W), static_cast<int32_t>(grid), static_cast<int32_t>(P),
            static_cast<int32_t>(stride));
  } else {
    overlap_add_kernel<T, int64_t>
        <<<static_cast<unsigned>(blocks), detail::kElementwiseThreads, 0, stream>>>(
            s, d, total, C, H, W, grid, P, stride);
  }
  return detail::check_launch();
}

}  // namespace

const char* launch_extract_patches(int dtype, const void* src, void* dst, int64_t B, int64_t C,
                                   int64_t /*H*/, int64_t /*W*/, int64_t sB, int64_t sC,
                                   int64_t sH, int64_t sW, int64_t grid, int64_t patch,
                                   int64_t stride, void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return extract_typed<uint32_t>(src, dst, B, C, sB, sC, sH, sW, grid, patch, stride, st);
    case kFloat64:
      return extract_typed<uint64_t>(src, dst, B, C, sB, sC, sH, sW, grid, patch, stride, st);
    case kFloat16:
    case kBFloat16:
      return extract_typed<uint16_t>(src, dst, B, C, sB, sC, sH, sW, grid, patch, stride, st);
    default:
      return "unsupported dtype code";
  }
}

const char* launch_overlap_add(int dtype, const void* src, void* dst, int64_t B, int64_t C,
                               int64_t H, int64_t W, int64_t grid, int64_t patch, int64_t stride,
                               void* stream) {
  auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kFloat32:
      return overlap_add_typed<float>(src, dst, B, C, H, W, grid, patch, stride, st);
    case kFloat64:
      return overlap_add_typed<double>(src, dst, B, C, H, W, grid, patch, stride, st);
    case kFloat16:
      return overlap_add_typed<__half>(src, dst, B, C, H, W, grid, patch, stride, st);
    case kBFloat16:
      return overlap_add_typed<__nv_bfloat16>(src, dst, B, C, H, W, grid, patch, stride, st);
    default:
      return "unsupported dtype code";
  }
}

int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error
    return -static_cast<int>(err);
  }
  return n;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace cuda
}  // namespace lnlatten
