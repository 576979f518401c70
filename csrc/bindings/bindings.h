// Shared by the pybind11 binding files: csrc/module.cpp defines the module and
// calls one register_* function per op family, each in its own file under
// csrc/bindings/, which defines that op's CPU functions (and, in a CUDA build,
// its CUDA functions).
//
// torch-free ABI: tensors are passed as raw data pointers (Python ints, e.g.
// tensor.data_ptr()), sizes and strides as int64 (strides in ELEMENTS), dtype
// as an int code (dtype_codes.h). Outputs are contiguous caller-allocated
// buffers; every output element is written.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace lnlatten {

namespace py = pybind11;

inline const void* in_ptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
inline void* out_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

#ifdef LNLATTEN_WITH_CUDA
// The CUDA launchers (kernels/lnlatten_kernels.cuh) take the stream as void*
// and return nullptr or an error string.
inline void* stream_ptr(std::uintptr_t s) { return reinterpret_cast<void*>(s); }

inline void raise_if_error(const char* err, const char* fn) {
  if (err != nullptr) {
    throw std::runtime_error(std::string(fn) + ": CUDA error: " + err);
  }
}
#endif

void register_patch_ops(py::module_& m);      // csrc/bindings/patches.cpp
void register_attention_ops(py::module_& m);  // csrc/bindings/attention.cpp

}  // namespace lnlatten
