// c10d, PyTorch's distributed engine, for agd's data-parallel runs (src/dist/): a store for
// the rendezvous (TCPStore, or FileStore on one machine) and a Gloo process group with the
// collectives agd needs. Every function catches what c10d throws and returns the message
// (malloc'd, freed by agd_dist_free_error): C++ exceptions must not cross `extern "C"`.
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <c10/util/Logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

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

AgdGroup* group(c10::intrusive_ptr<c10d::Store> store, int rank, int world, int timeout_ms) {
  auto timeout = std::chrono::milliseconds(timeout_ms);
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>("agd", store);
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, options);
  return new AgdGroup{store, backend};
}

}  // namespace

extern "C" {

// A group whose rendezvous is the TCPStore at host:port, hosted by this process when
// `serve` (rank 0, unless an agent hosts it, as torchrun's does).
char* agd_dist_new_tcp(const char* host, int port, int rank, int world, int serve,
                       int timeout_ms, AgdGroup** out) {
  quiet();
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = serve != 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = group(store, rank, world, timeout_ms);
  });
}

// A group whose rendezvous is the file `path` (every rank on one machine).
char* agd_dist_new_file(const char* path, int rank, int world, int timeout_ms, AgdGroup** out) {
  quiet();
  return guarded([&] {
    auto store = c10::make_intrusive<c10d::FileStore>(std::string(path), world);
    store->setTimeout(std::chrono::milliseconds(timeout_ms));
    *out = group(store, rank, world, timeout_ms);
  });
}

// Sums `t` over the ranks, in place.
char* agd_dist_allreduce(AgdGroup* g, at::Tensor* t) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    g->backend->allreduce(ts)->wait();
  });
}

// `out` (world × the size of `in`, along dimension 0) gets every rank's `in`, in rank order.
char* agd_dist_allgather(AgdGroup* g, at::Tensor* out, at::Tensor* in) {
  return guarded([&] { g->backend->_allgather_base(*out, *in)->wait(); });
}

// Every rank's `t` becomes rank `root`'s.
char* agd_dist_broadcast(AgdGroup* g, at::Tensor* t, int root) {
  return guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    g->backend->broadcast(ts, opts)->wait();
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
}
