// The few switches of ATen's global context that tch does not expose (src/device.rs).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/ops/randn.h>

extern "C" {

// Deterministic algorithms (ops without a deterministic kernel warn once, not fail),
// deterministic cuDNN convolutions, and cuDNN's benchmark search off; or the reverse.
void agd_set_deterministic(int on) {
  auto& ctx = at::globalContext();
  ctx.setDeterministicAlgorithms(on != 0, /*warn_only=*/true);
  ctx.setDeterministicCuDNN(on != 0);
  ctx.setBenchmarkCuDNN(on == 0);
}

int agd_deterministic_algorithms() { return at::globalContext().deterministicAlgorithms(); }
int agd_deterministic_cudnn() { return at::globalContext().deterministicCuDNN(); }
int agd_benchmark_cudnn() { return at::globalContext().benchmarkCuDNN(); }


// A normal tensor (float64, on the CPU) from a generator of its own seeded with `seed`:
// the values `torch.manual_seed(seed); torch.randn(shape, dtype=torch.float64)` gives,
// without touching the global generator that other threads draw from. Null on error.
at::Tensor* agd_randn_seeded(const int64_t* shape, int ndim, uint64_t seed) {
  try {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return new at::Tensor(at::randn(c10::IntArrayRef(shape, ndim), gen, at::TensorOptions().dtype(at::kDouble)));
  } catch (...) {
    return nullptr;
  }
}

}
