// c10d's NCCL process group for agd's data-parallel runs on GPUs (src/dist/): built only
// where the libtorch has CUDA and the CUDA headers NCCL's c10d header needs are installed
// (build.rs, scripts/with-libtorch). src/shim/dist.cpp asks for it by --dist-backend nccl.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include <chrono>

c10::intrusive_ptr<c10d::Backend> agd_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                   int rank, int world, int timeout_ms) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = std::chrono::milliseconds(timeout_ms);
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
}
