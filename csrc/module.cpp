// pybind11 module `lnlatten_fast._C`.
//
// torch-free ABI: tensors are passed as raw data pointers (Python ints, e.g.
// tensor.data_ptr()), sizes and strides as int64 (strides in ELEMENTS), dtype
// as an int code (dtype_codes.h, exported as DTYPE_CODES). Outputs are
// contiguous caller-allocated buffers; every output element is written.
//
// This file defines the module and what describes the build; each op family
// registers its functions from its own file (csrc/bindings/).
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/bindings.h"
#include "cpu/attention.h"
#include "cpu/parallel.h"
#include "dtype_codes.h"
#include "lnlatten_build_config.h"

#ifdef LNLATTEN_WITH_CUDA
#include "lnlatten_kernels.cuh"
#endif

namespace lnlatten {
namespace {

py::dict build_info() {
  py::dict d;
  d["cuda"] = py::bool_(LNLATTEN_BUILD_HAVE_CUDA != 0);
  d["openmp"] = py::bool_(LNLATTEN_BUILD_HAVE_OPENMP != 0);
  d["compiler"] = py::str(LNLATTEN_BUILD_COMPILER);
  d["cuda_arch"] = py::str(LNLATTEN_BUILD_CUDA_ARCH);
  d["cpu_attention_kernels"] = py::str(cpu::attention_kernels());
  return d;
}

// {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3}
py::dict dtype_codes() {
  py::dict d;
  for (const DTypeCode& c : kDTypeCodes) d[py::str(c.name)] = py::int_(static_cast<int>(c.code));
  return d;
}

// ("float32", "float64")
py::tuple cpu_dtypes() {
  py::tuple t(sizeof(kCpuDTypes) / sizeof(kCpuDTypes[0]));
  size_t i = 0;
  for (const DType c : kCpuDTypes) t[i++] = py::str(dtype_name(c));
  return t;
}

// "0=float32 1=float64 2=float16 3=bfloat16"
std::string dtype_codes_text() {
  std::string s;
  for (const DTypeCode& c : kDTypeCodes) {
    if (!s.empty()) s += " ";
    s += std::to_string(c.code) + "=" + c.name;
  }
  return s;
}

}  // namespace
}  // namespace lnlatten

PYBIND11_MODULE(_C, m) {
  using namespace lnlatten;
  m.doc() =
      "lnlatten_fast native kernels (torch-free ABI: raw pointers as ints, int64 sizes and "
      "element strides, dtype codes " + dtype_codes_text() + ").\n\n"
      "DTYPE_CODES maps torch dtype names to those codes; CPU_DTYPES names the dtypes the\n"
      "*_cpu functions take (the *_cuda functions take all of them).";

  m.attr("DTYPE_CODES") = dtype_codes();
  m.attr("CPU_DTYPES") = cpu_dtypes();

  register_patch_ops(m);
  register_attention_ops(m);

  m.def("has_cuda", []() { return LNLATTEN_BUILD_HAVE_CUDA != 0; },
        "True if the module was compiled with the CUDA kernels.");

  m.def("openmp_threads", []() { return cpu::num_threads(); },
        "Number of threads the CPU kernels use (omp_get_max_threads(), or 1 without OpenMP).");

  m.def("set_openmp_threads", [](int n) { cpu::set_num_threads(n); }, py::arg("n"),
        "Set the thread count of the CPU kernels (n <= 0 restores the OpenMP default).");

  m.def("build_info", &build_info,
        "dict(cuda: bool, openmp: bool, compiler: str, cuda_arch: str,\n"
        "     cpu_attention_kernels: str (the CPU attention micro-kernels this process runs:\n"
        "     'avx2+fma', chosen at run time, or 'portable (...)'))");

#ifdef LNLATTEN_WITH_CUDA
  m.def("cuda_device_count", []() { return cuda::device_count(); },
        "Devices visible to the module's (static) CUDA runtime; negative = -cudaError_t when the\n"
        "runtime cannot initialise (e.g. driver older than the CUDA version the module was built with).");

  m.def("cuda_runtime_version", []() { return cuda::runtime_version(); },
        "CUDA runtime version linked into the module (e.g. 13000).");

  m.def("cuda_driver_version", []() { return cuda::driver_version(); },
        "CUDA driver version (e.g. 13000), 0 if unknown.");
#endif
}
