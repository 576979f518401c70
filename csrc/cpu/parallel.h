// Helpers shared by the CPU kernels (csrc/cpu/*.cpp): the thread count, the
// size below which a kernel stays serial, and the step from a dtype code to
// the element type.
//
// Every kernel is deterministic: OpenMP loops use a static schedule and no
// cross-thread reductions, so results do not depend on the thread count.
#pragma once

#include <cstdint>

#include "dtype_codes.h"

namespace lnlatten {
namespace cpu {

// Below this many output elements the OpenMP fork/join costs more than it saves.
constexpr int64_t kParallelGrain = 1 << 15;

// Threads the kernels use: the count set by set_num_threads, else
// omp_get_max_threads() (1 without OpenMP). csrc/cpu/parallel.cpp.
int num_threads();
// n <= 0 restores the OpenMP default.
void set_num_threads(int n);

template <class T>
struct TypeTag {
  using type = T;
};

// fn(TypeTag<T>{}) for the element type T of a validated CPU dtype code
// (kCpuDTypes, see validation.h's check_cpu_dtype): double for kFloat64,
// float otherwise. Use as
//   dispatch_cpu_dtype(dtype, [&](auto tag) { using T = typename decltype(tag)::type; ... });
static_assert(sizeof(kCpuDTypes) / sizeof(kCpuDTypes[0]) == 2 && kCpuDTypes[0] == kFloat32 &&
                  kCpuDTypes[1] == kFloat64,
              "dispatch_cpu_dtype maps exactly kCpuDTypes to element types");
template <class Fn>
void dispatch_cpu_dtype(int dtype, Fn&& fn) {
  if (dtype == kFloat64) {
    fn(TypeTag<double>{});
  } else {
    fn(TypeTag<float>{});
  }
}

}  // namespace cpu
}  // namespace lnlatten
