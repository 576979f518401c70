// Bindings of the patch ops: extract_patches_{cpu,cuda}, overlap_add_{cpu,cuda}.
#include <cstdint>

#include "bindings/bindings.h"
#include "cpu/patches.h"
#include "validation.h"

#ifdef LNLATTEN_WITH_CUDA
#include "lnlatten_kernels.cuh"
#endif

namespace lnlatten {
namespace {

void extract_patches_cpu(int dtype, std::uintptr_t src, std::uintptr_t dst, int64_t B, int64_t C,
                         int64_t H, int64_t W, int64_t sB, int64_t sC, int64_t sH, int64_t sW,
                         int64_t grid, int64_t patch, int64_t stride) {
  check_cpu_dtype(dtype);
  check_patch_geometry(B, C, H, W, grid, patch, stride);
  check_ptr(src, "src");
  check_ptr(dst, "dst");
  py::gil_scoped_release nogil;
  cpu::extract_patches(dtype, in_ptr(src), out_ptr(dst), B, C, H, W, sB, sC, sH, sW, grid, patch,
                       stride);
}

void overlap_add_cpu(int dtype, std::uintptr_t src, std::uintptr_t dst, int64_t B, int64_t C,
                     int64_t H, int64_t W, int64_t grid, int64_t patch, int64_t stride) {
  check_cpu_dtype(dtype);
  check_patch_geometry(B, C, H, W, grid, patch, stride);
  check_ptr(src, "src");
  check_ptr(dst, "dst");
  py::gil_scoped_release nogil;
  cpu::overlap_add(dtype, in_ptr(src), out_ptr(dst), B, C, H, W, grid, patch, stride);
}

#ifdef LNLATTEN_WITH_CUDA
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
#endif  // LNLATTEN_WITH_CUDA

}  // namespace

void register_patch_ops(py::module_& m) {
  m.def("extract_patches_cpu", &extract_patches_cpu, py::arg("dtype"), py::arg("src"),
        py::arg("dst"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("sB"),
        py::arg("sC"), py::arg("sH"), py::arg("sW"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"),
        "dst[b, gy*grid+gx, c, y, x] = src[b, c, gy*stride+y, gx*stride+x].\n"
        "src: (B,C,H,W) with element strides (sB,sC,sH,sW); dst: contiguous (B,M,C,P,P).");

  m.def("overlap_add_cpu", &overlap_add_cpu, py::arg("dtype"), py::arg("src"), py::arg("dst"),
        py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"),
        "Adjoint of extract_patches: src contiguous (B,M,C,P,P) -> dst contiguous (B,C,H,W);\n"
        "each output pixel sums all windows covering it (deterministic gather).");

#ifdef LNLATTEN_WITH_CUDA
  m.def("extract_patches_cuda", &extract_patches_cuda, py::arg("dtype"), py::arg("src"),
        py::arg("dst"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("sB"),
        py::arg("sC"), py::arg("sH"), py::arg("sW"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"), py::arg("stream"),
        "CUDA version of extract_patches_cpu (dtype 0-3), launched async on `stream`.");

  m.def("overlap_add_cuda", &overlap_add_cuda, py::arg("dtype"), py::arg("src"), py::arg("dst"),
        py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("grid"), py::arg("patch"),
        py::arg("stride"), py::arg("stream"),
        "CUDA version of overlap_add_cpu (dtype 0-3, deterministic gather).");
#endif
}

}  // namespace lnlatten
