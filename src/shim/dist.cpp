// c10d, PyTorch's distributed engine, for agd's data-parallel runs (src/dist/): a store for
// the rendezvous (TCPStore, or FileStore on one machine) and a Gloo process group with the
// collectives agd needs. Every function catches what c10d throws and returns the message
// (malloc'd, freed by agd_dist_free_error): C++ exceptions must not cross `extern "C"`.
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Logging.h>
#include <torch/csrc/autograd/custom_function.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#ifdef AGD_NCCL
c10::intrusive_ptr<c10d::Backend> agd_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                   int rank, int world, int timeout_ms);
#endif

struct AgdGroup {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

namespace {

char* copy(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out != nullptr) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy(e.what());
  } catch (...) {
    return copy("an unknown C++ exception");
  }
}

// c10d logs each failed attempt to reach the store, and its exception with a C++
// backtrace, on stderr; agd reports the failure itself, in one line. Quiet unless the user
// asked for torch's C++ log (TORCH_CPP_LOG_LEVEL).
void quiet() {
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) {
    FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 3);
  }
}

// The process group: Gloo (backend 0) or NCCL (backend 1, when this agd was built with it).
AgdGroup* group(c10::intrusive_ptr<c10d::Store> store, int rank, int world, int timeout_ms,
                int nccl) {
  auto timeout = std::chrono::milliseconds(timeout_ms);
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("agd", store);
  if (nccl != 0) {
#ifdef AGD_NCCL
    return new AgdGroup{store, agd_nccl_backend(prefixed, rank, world, timeout_ms)};
#else
    throw std::runtime_error(
        "this agd was built without NCCL (the CUDA headers c10d's NCCL group needs were not "
        "found when it was built): use --dist-backend gloo");
#endif
  }
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, options);
  return new AgdGroup{store, backend};
}

// Nanoseconds this process has spent in collectives (issuing them and waiting for the
// other ranks), for the share of a step that exchanges take.
std::atomic<int64_t> exchanging_ns{0};

template <typename F>
void timed(F&& f) {
  auto start = std::chrono::steady_clock::now();
  f();
  auto spent = std::chrono::steady_clock::now() - start;
  exchanging_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(spent).count();
}

void allreduce(AgdGroup* g, at::Tensor& t) {
  timed([&] {
    std::vector<at::Tensor> ts{t};
    g->backend->allreduce(ts)->wait();
  });
}

// The sum over ranks as an autograd function: its gradient is the sum over ranks of the
// gradients, which is what synchronised BatchNorm needs. Each rank's loss reaches the
// global statistics only through its own rows, so the whole gradient of a global sum is
// every rank's part of it, summed (what torch's SyncBatchNorm backward all-reduces).
struct SumOverRanks : public torch::autograd::Function<SumOverRanks> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            int64_t group) {
    ctx->saved_data["group"] = group;
    auto y = x.detach().contiguous().clone();
    allreduce(reinterpret_cast<AgdGroup*>(group), y);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto g = reinterpret_cast<AgdGroup*>(ctx->saved_data["group"].toInt());
    auto grad = grads[0].contiguous().clone();
    allreduce(g, grad);
    return {grad, at::Tensor()};
  }
};

}  // namespace

extern "C" {

// A group whose rendezvous is the TCPStore at host:port, hosted by this process when
// `serve` (rank 0, unless an agent hosts it, as torchrun's does).
char* agd_dist_new_tcp(const char* host, int port, int rank, int world, int serve,
                       int timeout_ms, int nccl, AgdGroup** out) {
  quiet();
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = serve != 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = group(store, rank, world, timeout_ms, nccl);
  });
}

// A group whose rendezvous is the file `path` (every rank on one machine).
char* agd_dist_new_file(const char* path, int rank, int world, int timeout_ms, int nccl,
                        AgdGroup** out) {
  quiet();
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::FileStore>(std::string(path), world);
    store->setTimeout(std::chrono::milliseconds(timeout_ms));
    *out = group(store, rank, world, timeout_ms, nccl);
  });
}

// Sums `t` over the ranks, in place.
char* agd_dist_allreduce(AgdGroup* g, at::Tensor* t) {
  return guarded([&] { allreduce(g, *t); });
}

// `*out` becomes a new tensor: the sum of `in` over the ranks, through which gradients
// flow back summed over the ranks (SumOverRanks). The group must outlive the graph.
char* agd_dist_allreduce_differentiable(AgdGroup* g, at::Tensor* in, at::Tensor** out) {
  return guarded([&] {
    *out = new at::Tensor(SumOverRanks::apply(*in, reinterpret_cast<int64_t>(g)));
  });
}

// `out` (world × the size of `in`, along dimension 0) gets every rank's `in`, in rank order.
char* agd_dist_allgather(AgdGroup* g, at::Tensor* out, at::Tensor* in) {
  return guarded([&] { timed([&] { g->backend->_allgather_base(*out, *in)->wait(); }); });
}

// Every rank's `t` becomes rank `root`'s.
char* agd_dist_broadcast(AgdGroup* g, at::Tensor* t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    timed([&] { g->backend->broadcast(ts, opts)->wait(); });
  });
}

// Waits until every rank is here.
char* agd_dist_barrier(AgdGroup* g) {
  return guarded([&] { g->backend->barrier()->wait(); });
}

void agd_dist_free(AgdGroup* g) {
  try {
    delete g;
  } catch (...) {
  }
}

void agd_dist_free_error(char* e) { std::free(e); }

int64_t agd_dist_exchanging_ns() { return exchanging_ns.load(); }
}
