//! How a process learns its place in a data-parallel run, and how one command starts a
//! run's processes on one machine.
//!
//! The place comes from PyTorch's environment, as `torchrun` or a cluster script sets it:
//! `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` (and
//! `TORCHELASTIC_USE_AGENT_STORE`, when torchrun's agent hosts the store). `agd …
//! --nproc-per-node N` sets the same for N copies of itself, as `torchrun --standalone`
//! would, and waits on them: a worker that fails ends the others, and the run's error names
//! it.

use super::{Group, Rendezvous};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The options of a data-parallel run, shared by the stages that run one.
#[derive(clap::Args, Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DistOptions {
    /// Start N worker processes on this machine and run data-parallel over them, as
    /// `torchrun --nproc-per-node N` does (each on the GPU of its local rank, or on the
    /// CPU). Under torchrun or a cluster script, agd reads RANK, WORLD_SIZE, LOCAL_RANK,
    /// MASTER_ADDR and MASTER_PORT instead.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Seconds a rank waits for the others (to meet, and in every exchange) before the
    /// run ends with an error naming it: a dead or hung rank never makes the others wait
    /// forever.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub dist_timeout: u64,
    /// The exchanges' engine in a data-parallel training run: `nccl` (GPUs, the default
    /// there when agd is built with it) or `gloo` (the CPU's; on GPUs it goes through the
    /// host).
    #[arg(long, value_enum)]
    pub dist_backend: Option<BackendKind>,
}

/// c10d's process groups that agd builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Nccl,
    Gloo,
}

crate::named_values!(BackendKind { Nccl => "nccl", Gloo => "gloo" });

crate::default_from_flags!(DistOptions);

impl DistOptions {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.dist_timeout.max(1))
    }

    /// The process group for ranks on `device`: the one asked for, else NCCL on a GPU when
    /// this agd has it, else Gloo. NCCL asked for on the CPU is an error.
    pub fn backend(&self, device: tch::Device) -> Result<super::Backend> {
        use super::Backend;
        match (self.dist_backend, device) {
            (Some(BackendKind::Nccl), tch::Device::Cuda(i)) => Ok(Backend::Nccl(i)),
            (Some(BackendKind::Nccl), _) => crate::bad_setting!(
                crate::error::Setting::DistBackend,
                "nccl",
                "NCCL exchanges GPU memory, and this run is on the CPU: use gloo"
            ),
            (None, tch::Device::Cuda(i)) if cfg!(agd_nccl) => Ok(Backend::Nccl(i)),
            _ => Ok(Backend::Gloo),
        }
    }
}

/// This process's place in a run of several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    /// Its rank among the processes of its machine: the GPU it uses.
    pub local_rank: usize,
    pub rendezvous: Rendezvous,
}

/// An environment variable parsed, with an error naming it and what it holds.
fn var<T: std::str::FromStr>(
    name: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<T>> {
    match env(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}={v:?}: expected a whole number")),
    }
}

impl World {
    /// This process's place, from the environment (`None` outside a run of several).
    pub fn from_env() -> Result<Option<World>> {
        Self::from(&|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] over any environment.
    pub fn from(env: &impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let size: usize = var("WORLD_SIZE", env)?.unwrap_or(1);
        if size <= 1 {
            return Ok(None);
        }
        let rank: usize =
            var("RANK", env)?.with_context(|| format!("WORLD_SIZE={size} but RANK is not set"))?;
        if rank >= size {
            bail!(
                "RANK={rank} with WORLD_SIZE={size}: a rank is 0 to {}",
                size - 1
            );
        }
        let local_rank = var("LOCAL_RANK", env)?.unwrap_or(rank);
        let host = env("MASTER_ADDR")
            .filter(|h| !h.trim().is_empty())
            .with_context(|| format!("WORLD_SIZE={size} but MASTER_ADDR is not set"))?;
        let port: u16 = var("MASTER_PORT", env)?
            .with_context(|| format!("WORLD_SIZE={size} but MASTER_PORT is not set"))?;
        let agent = env("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(World {
            rank,
            size,
            local_rank,
            rendezvous: Rendezvous::Tcp {
                host: host.trim().to_string(),
                port,
                serves: rank == 0 && !agent,
            },
        }))
    }

    /// Joins the run's process group (Gloo).
    pub fn join(&self, timeout: Duration) -> Result<Group> {
        self.join_with(timeout, super::Backend::Gloo)
    }

    /// Joins the run's process group on `backend`.
    pub fn join_with(&self, timeout: Duration, backend: super::Backend) -> Result<Group> {
        Group::join_with(&self.rendezvous, self.rank, self.size, timeout, backend)
    }
}

/// Whether this process reports a run's results: the only process, or rank 0 (an
/// environment that does not parse is reported by the stage, which reads it again).
pub fn reports() -> bool {
    !matches!(World::from_env(), Ok(Some(w)) if w.rank != 0)
}

/// A free TCP port on this machine for the store of a local run.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free port for the run's store")?;
    Ok(listener.local_addr()?.port())
}

/// Runs this command as `nproc` worker processes on this machine (ranks 0..nproc, store
/// on 127.0.0.1) and waits for them. Rank 0 keeps the terminal; the others' output is
/// dropped, but for their last error line, which the run's error quotes when one fails.
/// A failed worker ends the others (SIGTERM) at once.
pub fn spawn_workers(nproc: usize) -> Result<()> {
    let port = free_port()?;
    let exe = std::env::current_exe().context("cannot find agd's own executable")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    // As torchrun does: one thread per worker's share of the cores, unless set.
    let threads = std::env::var("OMP_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / nproc).max(1).to_string()
    });
    let mut workers = Vec::new();
    for rank in 0..nproc {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads);
        if rank > 0 {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        ends_with_launcher(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start worker {rank} ({})", exe.display()))?;
        let last_error = child.stderr.take().map(|err| {
            std::thread::spawn(move || {
                BufReader::new(err)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.starts_with("error: "))
                    .last()
            })
        });
        workers.push((rank, child, last_error));
    }
    wait(workers, nproc)
}

/// Makes the worker get SIGTERM when the launcher ends, however it ends (a SIGKILL, a
/// closed terminal): orphaned workers would otherwise train on, holding the run's folder.
#[cfg(target_os = "linux")]
fn ends_with_launcher(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe, as code between fork and exec must be.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn ends_with_launcher(_cmd: &mut Command) {}

type Worker = (
    usize,
    Child,
    Option<std::thread::JoinHandle<Option<String>>>,
);

/// Waits for every worker; the first to fail ends the others, and its error is the run's.
fn wait(mut workers: Vec<Worker>, nproc: usize) -> Result<()> {
    loop {
        let mut failed = None;
        workers.retain_mut(|(rank, child, _)| match child.try_wait() {
            Ok(Some(status)) if status.success() => false,
            Ok(Some(status)) => {
                failed.get_or_insert((*rank, status.to_string()));
                true
            }
            Ok(None) => true,
            Err(e) => {
                failed.get_or_insert((*rank, e.to_string()));
                true
            }
        });
        if let Some((rank, status)) = failed {
            let mut quoted = None;
            for (r, child, reader) in &mut workers {
                if *r != rank && matches!(child.try_wait(), Ok(None)) {
                    let _ = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
                let _ = child.wait();
                if *r == rank {
                    quoted = reader.take().and_then(|h| h.join().ok()).flatten();
                }
            }
            let said = match (rank, quoted) {
                (0, _) => " (its error is above)".to_string(),
                (_, Some(line)) => format!(": {}", line.trim_start_matches("error: ")),
                (_, None) => String::new(),
            };
            bail!("worker {rank} of {nproc} ended with {status}{said}; the other workers were stopped");
        }
        if workers.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn the_place_in_a_run_comes_from_pytorchs_environment() {
        assert_eq!(World::from(&env(&[])).unwrap(), None);
        assert_eq!(
            World::from(&env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            None
        );
        let torchrun = [
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ];
        let w = World::from(&env(&torchrun)).unwrap().unwrap();
        assert_eq!((w.rank, w.size, w.local_rank), (5, 8, 1));
        assert_eq!(
            w.rendezvous,
            Rendezvous::Tcp {
                host: "node0".into(),
                port: 29500,
                serves: false
            }
        );
        let mut rank0 = torchrun;
        rank0[1] = ("RANK", "0");
        let w = World::from(&env(&rank0)).unwrap().unwrap();
        assert!(matches!(w.rendezvous, Rendezvous::Tcp { serves: true, .. }));
        let mut agent = rank0.to_vec();
        agent.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        let w = World::from(&env(&agent)).unwrap().unwrap();
        assert!(matches!(
            w.rendezvous,
            Rendezvous::Tcp { serves: false, .. }
        ));
        for (pairs, says) in [
            (&[("WORLD_SIZE", "2")][..], "RANK is not set"),
            (
                &[("WORLD_SIZE", "two")][..],
                "WORLD_SIZE=\"two\": expected a whole number",
            ),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "2")][..],
                "RANK=2 with WORLD_SIZE=2",
            ),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "1")][..],
                "MASTER_ADDR is not set",
            ),
            (
                &[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h")][..],
                "MASTER_PORT is not set",
            ),
        ] {
            let e = World::from(&env(pairs)).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
