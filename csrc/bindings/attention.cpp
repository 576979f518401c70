// Bindings of the L1-normalised attention: l1_attention_{forward,backward}_{cpu,cuda}.
#include <climits>
#include <cstdint>
#include <string>

#include "bindings/bindings.h"
#include "cpu/attention.h"
#include "validation.h"

#ifdef LNLATTEN_WITH_CUDA
#include "lnlatten_kernels.cuh"
#endif

namespace lnlatten {
namespace {

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

#ifdef LNLATTEN_WITH_CUDA
void check_cuda_attention(int64_t B, int64_t M, int64_t D) {
  check_attention_sizes(B, M, D);
  if (M > cuda::kMaxAttentionM) {
    value_error("argument 'M' must be <= " + std::to_string(cuda::kMaxAttentionM) +
                " for the CUDA attention kernels; got " + std::to_string(M));
  }
  if (B > INT_MAX) value_error("argument 'B' too large for the CUDA attention kernels");
  if (M * D > INT_MAX) value_error("argument 'D' too large for the CUDA attention kernels (M*D must fit in int32)");
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
#endif  // LNLATTEN_WITH_CUDA

}  // namespace

void register_attention_ops(py::module_& m) {
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

#ifdef LNLATTEN_WITH_CUDA
  m.def("l1_attention_forward_cuda", &l1_attention_forward_cuda, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("s"), py::arg("w"), py::arg("B"), py::arg("M"),
        py::arg("D"), py::arg("eps"), py::arg("stream"),
        "CUDA version of l1_attention_forward_cpu (dtype 0-3, M <= 64).");

  m.def("l1_attention_backward_cuda", &l1_attention_backward_cuda, py::arg("dtype"), py::arg("q"),
        py::arg("k"), py::arg("v"), py::arg("grad_s"), py::arg("grad_w"), py::arg("grad_q"),
        py::arg("grad_k"), py::arg("grad_v"), py::arg("B"), py::arg("M"), py::arg("D"),
        py::arg("eps"), py::arg("stream"),
        "CUDA version of l1_attention_backward_cpu (dtype 0-3, M <= 64; grad_s/grad_w may be 0).");

  m.attr("CUDA_MAX_ATTENTION_M") = py::int_(cuda::kMaxAttentionM);
#endif
}

}  // namespace lnlatten
