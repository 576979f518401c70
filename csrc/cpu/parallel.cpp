// The thread count of the CPU kernels (see parallel.h).
#include "cpu/parallel.h"

#include <atomic>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace lnlatten {
namespace cpu {

namespace {
std::atomic<int> g_num_threads{0};  // 0: OpenMP default
}  // namespace

int num_threads() {
#ifdef _OPENMP
  const int n = g_num_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }

}  // namespace cpu
}  // namespace lnlatten
