//! Data-parallel runs on c10d, PyTorch's own distributed engine (what `torch.distributed`,
//! DDP and `torchrun` sit on): ranks meet through a store (a `TCPStore`, which works across
//! machines, or a `FileStore` on one) and exchange tensors through a Gloo process group.
//! The collectives are C++ (src/shim/dist.cpp, against the libtorch's own c10d headers and
//! gloo's, vendored in vendor/gloo); this module is their safe face.
//!
//! Every collective returns c10d's error as an error rather than throwing, and takes the
//! group's timeout: a rank that died or hangs ends the others' wait with an error.

mod launch;
mod shard;

pub use launch::{reports, spawn_workers, BackendKind, DistOptions, World};
pub use shard::{gather_rows, Shard};

use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::time::Duration;
use tch::Tensor;

#[repr(C)]
struct AgdGroup {
    _private: [u8; 0],
}

extern "C" {
    fn agd_dist_new_tcp(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        serve: c_int,
        timeout_ms: c_int,
        nccl: c_int,
        out: *mut *mut AgdGroup,
    ) -> *mut c_char;
    fn agd_dist_new_file(
        path: *const c_char,
        rank: c_int,
        world: c_int,
        timeout_ms: c_int,
        nccl: c_int,
        out: *mut *mut AgdGroup,
    ) -> *mut c_char;
    fn agd_dist_allreduce(g: *mut AgdGroup, t: *mut torch_sys::C_tensor) -> *mut c_char;
    fn agd_dist_allreduce_differentiable(
        g: *mut AgdGroup,
        input: *mut torch_sys::C_tensor,
        out: *mut *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn agd_dist_allgather(
        g: *mut AgdGroup,
        out: *mut torch_sys::C_tensor,
        input: *mut torch_sys::C_tensor,
    ) -> *mut c_char;
    fn agd_dist_broadcast(
        g: *mut AgdGroup,
        t: *mut torch_sys::C_tensor,
        root: c_int,
    ) -> *mut c_char;
    fn agd_dist_barrier(g: *mut AgdGroup) -> *mut c_char;
    fn agd_dist_free(g: *mut AgdGroup);
    fn agd_dist_free_error(e: *mut c_char);
    fn agd_dist_exchanging_ns() -> i64;
}

/// Seconds this process has spent in collectives so far (issuing them and waiting for the
/// other ranks): the exchanges' share of a data-parallel run's time.
pub fn exchanging_seconds() -> f64 {
    // SAFETY: reads an atomic counter.
    unsafe { agd_dist_exchanging_ns() as f64 * 1e-9 }
}

/// The message of a shim call (`None` when it succeeded), its memory freed.
fn taken(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: the shim returns a NUL-terminated string it malloc'd, ours to free once.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .trim()
        .to_string();
    unsafe { agd_dist_free_error(error) };
    Some(message)
}

/// How the ranks of a run find each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rendezvous {
    /// The `TCPStore` at `host:port` (PyTorch's `MASTER_ADDR`/`MASTER_PORT`), hosted by
    /// the rank that `serves` it (rank 0, unless torchrun's agent hosts it).
    Tcp {
        host: String,
        port: u16,
        serves: bool,
    },
    /// A file every rank on one machine can reach.
    File(PathBuf),
}

/// The c10d process group of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: exchanges host memory (tensors elsewhere go through the host).
    Gloo,
    /// NCCL on this process's GPU (`cuda:i`): exchanges that GPU's memory.
    Nccl(usize),
}

impl Backend {
    /// Where the tensors of its exchanges live.
    fn device(self) -> tch::Device {
        match self {
            Backend::Gloo => tch::Device::Cpu,
            Backend::Nccl(i) => tch::Device::Cuda(i),
        }
    }
}

/// This process's place in a data-parallel run: its rank among `world` processes, and the
/// process group they share.
pub struct Group {
    raw: NonNull<AgdGroup>,
    rank: usize,
    world: usize,
    /// Where the group's exchanges take their tensors ([`Backend::device`]).
    device: tch::Device,
}

// SAFETY: a group may move between threads, and c10d's Gloo backend queues the work of
// every thread under its own lock; agd calls collectives from one thread per rank (the
// training loop, and the autograd engine's backward, which runs CPU work on the caller's
// thread), so every rank issues them in the same order.
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

impl Group {
    /// Joins the run as rank `rank` of `world`, meeting the others at `rendezvous`; waits
    /// at most `timeout` for them, and for every collective afterwards.
    pub fn join(
        rendezvous: &Rendezvous,
        rank: usize,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Self::join_with(rendezvous, rank, world, timeout, Backend::Gloo)
    }

    /// [`Group::join`] on `backend`.
    pub fn join_with(
        rendezvous: &Rendezvous,
        rank: usize,
        world: usize,
        timeout: Duration,
        backend: Backend,
    ) -> Result<Self> {
        if world == 0 || rank >= world {
            bail!("rank {rank} of {world}: a rank is 0 to the world size - 1");
        }
        let ms = c_int::try_from(timeout.as_millis())
            .unwrap_or(c_int::MAX)
            .max(1);
        let (r, w) = (rank as c_int, world as c_int);
        let nccl = matches!(backend, Backend::Nccl(_)) as c_int;
        let failed = |message: String| {
            anyhow!(
                "rank {rank} of {world} could not join the run ({rendezvous}): {message} \
                 (are all {world} ranks started, meeting at the same store? --dist-timeout \
                 sets how long each waits)"
            )
        };
        let names = match rendezvous {
            Rendezvous::Tcp { host, .. } => CString::new(host.as_str())
                .map_err(|_| anyhow!("the master address holds a NUL byte"))?,
            Rendezvous::File(path) => CString::new(path.to_string_lossy().as_bytes())
                .map_err(|_| anyhow!("{}: a path with a NUL byte", path.display()))?,
        };
        let tcp = match rendezvous {
            Rendezvous::Tcp { port, serves, .. } => Some((*port as c_int, *serves as c_int)),
            Rendezvous::File(_) => None,
        };
        // c10d bounds its own waits by the timeout, but for one: a store client whose
        // address answers TCP without being a store (another service on the port) waits
        // for its handshake forever. The join runs on a thread the caller stops waiting
        // for after the timeout (and a margin); the process then ends with the error.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut raw: *mut AgdGroup = std::ptr::null_mut();
            // SAFETY: valid C string and out-pointer; the shim catches every exception.
            let error = unsafe {
                match tcp {
                    Some((port, serve)) => {
                        agd_dist_new_tcp(names.as_ptr(), port, r, w, serve, ms, nccl, &mut raw)
                    }
                    None => agd_dist_new_file(names.as_ptr(), r, w, ms, nccl, &mut raw),
                }
            };
            let _ = tx.send((taken(error), raw as usize));
        });
        let margin = Duration::from_secs(10);
        let (error, raw) = rx.recv_timeout(timeout + margin).map_err(|_| {
            failed(format!(
                "no answer within {} s: is that address the run's store?",
                (timeout + margin).as_secs()
            ))
        })?;
        if let Some(message) = error {
            return Err(failed(message));
        }
        let raw = raw as *mut AgdGroup;
        let raw = NonNull::new(raw).ok_or_else(|| anyhow!("c10d returned no process group"))?;
        Ok(Self {
            raw,
            rank,
            world,
            device: backend.device(),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// A tensor an exchange can take: contiguous, on the group's device.
    fn contiguous(&self, t: &Tensor, what: &str) -> Result<()> {
        if t.device() != self.device {
            bail!(
                "{what} of a {:?} tensor in a group on {:?}",
                t.device(),
                self.device
            );
        }
        if !t.is_contiguous() {
            bail!("{what} of a non-contiguous tensor");
        }
        Ok(())
    }

    fn check(&self, what: &str, error: *mut c_char) -> Result<()> {
        match taken(error) {
            None => Ok(()),
            Some(message) => bail!(
                "rank {} of {}: {what} failed: {message}",
                self.rank,
                self.world
            ),
        }
    }

    /// Sums `t` (contiguous) over the ranks, in place.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        if t.device() != self.device {
            return in_place_via(self.device, t, |on| self.all_reduce_sum(on));
        }
        self.contiguous(t, "all-reduce")?;
        // SAFETY: the group is alive, and `t` a live tensor that outlives the call.
        let error = unsafe { agd_dist_allreduce(self.raw.as_ptr(), t.as_mut_ptr()) };
        self.check("all-reduce", error)
    }

    /// The sum of `t` over the ranks, as a new tensor through which gradients flow back
    /// summed over the ranks: a global statistic (synchronised BatchNorm's) whose every
    /// rank's rows get the gradient that one process over the whole batch would give
    /// them. An error in the backward pass ends that `backward` with c10d's message.
    pub fn sum_with_gradient(&self, t: &Tensor) -> Result<Tensor> {
        if t.device() != self.device {
            return via(self.device, t, |on| self.sum_with_gradient(on)); // gradients included
        }
        let mut input = t.contiguous();
        self.contiguous(&input, "all-reduce")?;
        let mut out: *mut torch_sys::C_tensor = std::ptr::null_mut();
        // SAFETY: the group outlives every graph of the run that holds it (it is dropped
        // after training); `input` is a live tensor; `out` receives a tensor we own.
        let error = unsafe {
            agd_dist_allreduce_differentiable(self.raw.as_ptr(), input.as_mut_ptr(), &mut out)
        };
        self.check("all-reduce", error)?;
        if out.is_null() {
            bail!("c10d returned no tensor");
        }
        // SAFETY: `out` is a fresh `at::Tensor*` whose ownership the shim hands over.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    /// Checks that every rank holds the same `value` (a hash of `what`), so that ranks
    /// started with other flags or another agd stop at once with one error.
    pub fn agree(&self, what: &str, value: u64) -> Result<()> {
        let all = self.all_gather(&Tensor::from_slice(&[value as i64]))?;
        let all = Vec::<i64>::try_from(&all)?;
        if let Some(other) = all.iter().position(|&v| v != all[0]) {
            bail!(
                "rank {other} runs with another {what} than rank 0: start every rank with \
                 the same agd and the same flags"
            );
        }
        Ok(())
    }

    /// Whether every rank got here without error: each passes its own outcome and gets an
    /// error naming a rank that failed (its own error first), so no rank goes on to wait
    /// for one that has given up.
    pub fn all_ok<T>(&self, outcome: Result<T>) -> Result<T> {
        let flags = self.all_gather(&Tensor::from_slice(&[outcome.is_err() as i64]));
        let value = outcome?;
        let flags = Vec::<i64>::try_from(&flags?)?;
        if let Some(failed) = flags.iter().position(|&f| f != 0) {
            bail!(
                "rank {failed} of {} failed (its error is in its log); this rank stops too",
                self.world
            );
        }
        Ok(value)
    }

    /// Every rank's `t`, stacked along dimension 0 in rank order (world × `t`'s rows).
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        if t.device() != self.device {
            return via(self.device, t, |on| self.all_gather(on));
        }
        let mut input = t.contiguous();
        self.contiguous(&input, "all-gather")?;
        let mut size = input.size();
        if size.is_empty() {
            size.push(1);
            input = input.reshape([1]);
        }
        size[0] *= self.world as i64;
        let mut out = Tensor::empty(&size, (input.kind(), input.device()));
        // SAFETY: as in all_reduce_sum.
        let error =
            unsafe { agd_dist_allgather(self.raw.as_ptr(), out.as_mut_ptr(), input.as_mut_ptr()) };
        self.check("all-gather", error)?;
        Ok(out)
    }

    /// `t` becomes rank `root`'s on every rank.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        if t.device() != self.device {
            return in_place_via(self.device, t, |on| self.broadcast(on, root));
        }
        self.contiguous(t, "broadcast")?;
        // SAFETY: as in all_reduce_sum.
        let error = unsafe { agd_dist_broadcast(self.raw.as_ptr(), t.as_mut_ptr(), root as c_int) };
        self.check("broadcast", error)
    }

    /// Waits until every rank is here.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is alive.
        let error = unsafe { agd_dist_barrier(self.raw.as_ptr()) };
        self.check("barrier", error)
    }

    /// Leaves the run once every rank is done with it: rank 0 hosts the TCP store, which
    /// must outlive the others' last collective.
    pub fn close(&self) -> Result<()> {
        self.barrier()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the pointer came from the shim and is freed once.
        unsafe { agd_dist_free(self.raw.as_ptr()) };
    }
}

/// `f` of `t` copied to `device`, its result copied back to `t`'s: a group exchanges the
/// memory of its backend's device (Gloo the host's, NCCL its GPU's); the copies are
/// differentiable.
fn via(
    device: tch::Device,
    t: &Tensor,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    Ok(f(&t.to_device(device))?.to_device(t.device()))
}

/// [`via`] for an exchange in place.
fn in_place_via(
    device: tch::Device,
    t: &mut Tensor,
    f: impl FnOnce(&mut Tensor) -> Result<()>,
) -> Result<()> {
    let mut on = t.to_device(device);
    f(&mut on)?;
    t.copy_(&on);
    Ok(())
}

impl std::fmt::Display for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rendezvous::Tcp { host, port, .. } => write!(f, "TCP store at {host}:{port}"),
            Rendezvous::File(p) => write!(f, "file store {}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Runs `body` as every rank of a `world`-rank group in its own thread.
    fn ranks<T: Send + 'static>(
        world: usize,
        rendezvous: impl Fn(usize) -> Rendezvous,
        body: impl Fn(Group) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<T> {
        let threads: Vec<_> = (0..world)
            .map(|rank| {
                let (body, rdv) = (body.clone(), rendezvous(rank));
                std::thread::spawn(move || {
                    let g = Group::join(&rdv, rank, world, Duration::from_secs(60)).unwrap();
                    body(g)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn collectives(g: Group) -> (Vec<f32>, Vec<f32>, Vec<f32>, String) {
        let r = g.rank() as f32;
        let opts = (Kind::Float, Device::Cpu);
        let mut sum = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
        g.all_reduce_sum(&mut sum).unwrap();
        let gathered = g.all_gather(&Tensor::full([2], r as f64, opts)).unwrap();
        let mut shared = Tensor::full([3], r as f64 + 5.0, opts);
        g.broadcast(&mut shared, 1).unwrap();
        // A root that is no rank is c10d's error, and the group stays usable.
        let error = match g.broadcast(&mut Tensor::zeros([1], opts), 7) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        g.barrier().unwrap();
        let mut again = Tensor::ones([1], opts);
        g.all_reduce_sum(&mut again).unwrap();
        assert_eq!(values(&again), [g.world() as f32]);
        g.close().unwrap();
        (values(&sum), values(&gathered), values(&shared), error)
    }

    #[test]
    fn collectives_give_known_values_over_a_file_store_and_a_tcp_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("store");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stores: [Box<dyn Fn(usize) -> Rendezvous>; 2] = [
            Box::new(move |_| Rendezvous::File(file.clone())),
            Box::new(move |rank| Rendezvous::Tcp {
                host: "127.0.0.1".into(),
                port,
                serves: rank == 0,
            }),
        ];
        for store in stores {
            let results = ranks(2, store, collectives);
            for (sum, gathered, shared, error) in results {
                assert_eq!(sum, [3.0, 30.0]);
                assert_eq!(gathered, [0.0, 0.0, 1.0, 1.0]);
                assert_eq!(shared, [6.0, 6.0, 6.0]);
                assert!(
                    error.contains("broadcast failed") && error.contains("root"),
                    "{error}"
                );
            }
        }
    }

    /// Without a GPU, an NCCL group is one error that says so (from c10d when agd is built
    /// with NCCL, from agd when it is not), and the process goes on.
    #[test]
    fn an_nccl_group_without_a_gpu_is_an_error() {
        if tch::Cuda::is_available() {
            return; // this machine can run NCCL: nothing to refuse
        }
        let dir = tempfile::tempdir().unwrap();
        let rdv = Rendezvous::File(dir.path().join("store"));
        let nccl = Group::join_with(&rdv, 0, 1, Duration::from_secs(5), Backend::Nccl(0));
        let e = nccl.err().expect("no GPU, no NCCL group").to_string();
        assert!(e.contains("could not join") && e.contains("NCCL"), "{e}");
        let built = cfg!(agd_nccl);
        assert_eq!(e.contains("built without NCCL"), !built, "{e}");
    }
}
