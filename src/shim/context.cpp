// The few switches of ATen's global context that tch does not expose (src/device.rs).
#include <ATen/Context.h>

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

}
