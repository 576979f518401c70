// pybind11 module `lnlatten_fast._C`.
//
// torch-free ABI: tensors are passed as raw data pointers (Python ints, e.g.
// tensor.data_ptr()), sizes and strides as int64 (strides in ELEMENTS), dtype
// as an int code (0 float32, 1 float64, 2 float16, 3 bfloat16). Outputs are
// contiguous caller-allocated buffers; every output element is written.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "cpu_kernels.h"
#include "lnlatten_build_config.h"
#include "validation.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace lnlatten {
#ifdef LNLATTEN_WITH_CUDA
void register_cuda_ops(py::module_& m);  // csrc/cuda_ops.cpp
#endif

namespace {

inline const void* in_ptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* out_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

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

void l1_attention_forward_cpu(int dtype, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                              std::uintptr_t s, std::uintptr_t w, int64_t B, int64_t M, int64_t D,
                              double eps) {
  check_cpu_dtype(dtype);
  check_attention_sizes(B, M, D);
  check_eps(eps);
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  check_ptr(s, "s");
  check_ptr(w, "w");
  py::gil_scoped_release nogil;
  cpu::l1_attention_forward(dtype, in_ptr(q), in_ptr(k), in_ptr(v), out_ptr(s), out_ptr(w), B, M,
                            D, eps);
}

void l1_attention_backward_cpu(int dtype, std::uintptr_t q, std::uintptr_t k, std::uintptr_t v,
                               std::uintptr_t grad_s, std::uintptr_t grad_w,
                               std::uintptr_t grad_q, std::uintptr_t grad_k,
                               std::uintptr_t grad_v, int64_t B, int64_t M, int64_t D,
                               double eps) {
  check_cpu_dtype(dtype);
  check_attention_sizes(B, M, D);
  check_eps(eps);
  check_ptr(q, "q");
  check_ptr(k, "k");
  check_ptr(v, "v");
  check_ptr(grad_q, "grad_q");
  check_ptr(grad_k, "grad_k");
  check_ptr(grad_v, "grad_v");
  // grad_s / grad_w == 0 means "all-zero incoming gradient".
  py::gil_scoped_release nogil;
  cpu::l1_attention_backward(dtype, in_ptr(q), in_ptr(k), in_ptr(v), in_ptr(grad_s),
                             in_ptr(grad_w), out_ptr(grad_q), out_ptr(grad_k), out_ptr(grad_v), B,
                             M, D, eps);
}

py::dict build_info() {
  py::dict d;
  d["cuda"] = py::bool_(LNLATTEN_BUILD_HAVE_CUDA != 0);
  d["openmp"] = py::bool_(LNLATTEN_BUILD_HAVE_OPENMP != 0);
  d["compiler"] = py::str(LNLATTEN_BUILD_COMPILER);
  d["cuda_arch"] = py::str(LNLATTEN_BUILD_CUDA_ARCH);
  return d;
}

}  // namespace
}  // namespace lnlatten

PYBIND11_MODULE(_C, m) {
  using namespace lnlatten;
  m.doc() =
      "lnlatten_fast native kernels (torch-free ABI: raw pointers as ints, int64 sizes and "
      "element strides, dtype codes 0=float32 1=float64 2=float16 3=bfloat16).";

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

  m.def("l1_attention_forward_cpu", &l1_attention_forward_cpu, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("s"), py::arg("w"), py::arg("B"), py::arg("M"),
        py::arg("D"), py::arg("eps"),
        "q,k,v contiguous (B,M,D) -> s (B,M,D), w (B,M):\n"
        "R = normalize(Q K^T, p=1, dim=-1, eps); w = R.mean(dim=1); s = R V.");

  m.def("l1_attention_backward_cpu", &l1_attention_backward_cpu, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("grad_s"), py::arg("grad_w"), py::arg("grad_q"),
        py::arg("grad_k"), py::arg("grad_v"), py::arg("B"), py::arg("M"), py::arg("D"),
        py::arg("eps"),
        "Backward of l1_attention_forward_cpu. grad_s (B,M,D), grad_w (B,M) contiguous;\n"
        "either may be 0 (null) meaning an all-zero gradient. Writes grad_q, grad_k, grad_v.");

  m.def("has_cuda", []() { return LNLATTEN_BUILD_HAVE_CUDA != 0; },
        "True if the module was compiled with the CUDA kernels.");

  m.def("openmp_threads", []() { return cpu::max_threads(); },
        "Number of threads the CPU kernels use (omp_get_max_threads(), or 1 without OpenMP).");

  m.def("set_openmp_threads", [](int n) { cpu::set_num_threads(n); }, py::arg("n"),
        "Set the thread count of the CPU kernels (n <= 0 restores the OpenMP default).");

  m.def("build_info", &build_info,
        "dict(cuda: bool, openmp: bool, compiler: str, cuda_arch: str)");

#ifdef LNLATTEN_WITH_CUDA
  register_cuda_ops(m);
#endif
}
