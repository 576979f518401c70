// pybind11 wrappers for the CUDA launchers (compiled only with LNLATTEN_WITH_CUDA).
//
// Host compiler only: includes neither torch nor CUDA headers; the launchers
// (kernels/lnlatten_kernels.cuh) take the stream as void*.
#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "lnlatten_kernels.cuh"
#include "validation.h"

namespace py = pybind11;

namespace lnlatten {
namespace {

inline const void* in_ptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* out_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
inline void* stream_ptr(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

inline void raise_if_error(const char* err, const char* fn) {
  if (err != nullptr) {
    throw std::runtime_error(std::string(fn) + ": CUDA error: " + err);
  }
}

void check_cuda_attention(int64_t B, int64_t M, int64_t D) {
  check_attention_sizes(B, M, D);
  if (M > cuda::kMaxAttentionM) {
    value_error("argument 'M' must be <= " + std::to_string(cuda::kMaxAttentionM) +
                " for the CUDA attention kernels; got " + std::to_string(M));
  }
  if (B > INT_MAX) value_error("argument 'B' too large for the CUDA attention kernels");
  if (M * D > INT_MAX) value_error("argument 'D' too large for the CUDA attention kernels (M*D must fit in int32)");
}

void extract_patches_cuda(int dtype, std::uintptr_t src, std::uintptr_t dst, int64_t B,
                          int64_t C, int64_t H, int64_t W, int64_t sB, int64_t sC, int64_t sH,
                          int64_t sW, int64_t grid, int64_t patch, int64_t stride,
                          std::uintptr_t stream) {
  check_cuda_dtype(dtype);
  check_patch_geometry(B, C, H, W, grid, patch, stride);
  check_ptr(src, "src");
  check_ptr(dst, "dst");
  const char* err;
  {
    py::gil_scoped_release nogil;
    err = cuda::launch_extract_patches(dtype, in_ptr(src), out_ptr(dst), B, C, H, W, sB, sC, sH,
                                       sW, grid, patch, stride, stream_ptr(stream));
  }
  raise_if_error(err, "extract_patches_cuda");
}

void overlap_add_cuda(int dtype, std::uintptr_t src, std::uintptr_t dst, int64_t B, int64_t C,
                      int64_t H, int64_t W, int64_t grid, int64_t patch, int64_t stride,
                      std::uintptr_t stream) {
  check_cuda_dtype(dtype);
  check_patch_geometry(B, C, H, W, grid, patch, stride);
  check_ptr(src, "src");
  check_ptr(dst, "dst");
  const char* err;
  {
    py::gil_scoped_release nogil;
    err = cuda::launch_overlap_add(dtype, in_ptr(src), out_ptr(dst), B, C, H, W, grid, patch,
                                   stride, stream_ptr(stream));
  }
  raise_if_error(err, "overlap_add_cuda");
}

void l1_attention_forward_cuda(int dtype, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                               std::uintptr_t s, std::uintptr_t w, int64_t B, int64_t M,
                               int64_t D, double eps, std::uintptr_t stream) {
  check_cuda_dtype(dtype);
  check_cuda_attention(B, M, D);
  check_eps(eps);
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  check_ptr(s, "s");
  check_ptr(w, "w");
  const char* err;
  {
    py::gil_scoped_release nogil;
    err = cuda::launch_l1_attention_forward(dtype, in_ptr(q), in_ptr(k), in_ptr(v), out_ptr(s),
                                            out_ptr(w), B, M, D, eps, stream_ptr(stream));
  }
  raise_if_error(err, "l1_attention_forward_cuda");
}

void l1_attention_backward_cuda(int dtype, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                                std::uintptr_t grad_s, std::uintptr_t grad_w,
                                std::uintptr_t grad_q, std::uintptr_t grad_k,
                                std::uintptr_t grad_v, int64_t B, int64_t M, int64_t D,
                                double eps, std::uintptr_t stream) {
  check_cuda_dtype(dtype);
  check_cuda_attention(B, M, D);
  check_eps(eps);
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  check_ptr(grad_q, "grad_q");
  check_ptr(grad_k, "grad_k");
  check_ptr(grad_v, "grad_v");
  const char* err;
  {
    py::gil_scoped_release nogil;
    err = cuda::launch_l1_attention_backward(dtype, in_ptr(q), in_ptr(k), in_ptr(v),
                                             in_ptr(grad_s), in_ptr(grad_w), out_ptr(grad_q),
                                             out_ptr(grad_k), out_ptr(grad_v), B, M, D, eps,
                                             stream_ptr(stream));
  }
  raise_if_error(err, "l1_attention_backward_cuda");
}

}  // namespace

void register_cuda_ops(py::module_& m) {
  m.def("extract_patches_cuda", &extract_patches_cuda, py::arg("dtype"), py::arg("src"),
        py::arg("dst"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("sB"),
        py::arg("sC"), py::arg("sH"), py::arg("sW"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"), py::arg("stream"),
        "CUDA version of extract_patches_cpu (dtype 0-3), launched async on `stream`.");

  m.def("overlap_add_cuda", &overlap_add_cuda, py::arg("dtype"), py::arg("src"), py::arg("dst"),
        py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"), py::arg("stream"),
        "CUDA version of overlap_add_cpu (dtype 0-3, deterministic gather).");

  m.def("l1_attention_forward_cuda", &l1_attention_forward_cuda, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("s"), py::arg("w"), py::arg("B"), py::arg("M"),
        py::arg("D"), py::arg("eps"), py::arg("stream"),
        "CUDA version of l1_attention_forward_cpu (dtype 0-3, M <= 64).");

  m.def("l1_attention_backward_cuda", &l1_attention_backward_cuda, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("grad_s"), py::arg("grad_w"), py::arg("grad_q"),
        py::arg("grad_k"), py::arg("grad_v"), py::arg("B"), py::arg("M"), py::arg("D"),
        py::arg("eps"), py::arg("stream"),
        "CUDA version of l1_attention_backward_cpu (dtype 0-3, M <= 64; grad_s/grad_w may be 0).");

  m.def("cuda_device_count", []() { return cuda::device_count(); },
        "Devices visible to the module's (static) CUDA runtime; negative = -cudaError_t when the\n"
        "runtime cannot initialise (e.g. driver older than the CUDA version the module was built with).");

  m.def("cuda_runtime_version", []() { return cuda::runtime_version(); },
        "CUDA runtime version linked into the module (e.g. 13000).");

  m.def("cuda_driver_version", []() { return cuda::driver_version(); },
        "CUDA driver version (e.g. 13000), 0 if unknown.");

  m.attr("CUDA_MAX_ATTENTION_M") = py::int_(cuda::kMaxAttentionM);
}

}  // namespace lnlatten
