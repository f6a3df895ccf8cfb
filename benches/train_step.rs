//! Training-step benchmark (`cargo bench --bench train_step`): one ResNet-50 training step
//! at 256×128, batch 32 (P×K = 8×4), on the CPU, in agd and in PyTorch on the same machine
//! with the same threads, and the ratio. Goal: agd at least as fast (ratio ≥ 1). Also the
//! startup of `agd train` to its first step on a tiny synthetic dataset (goal: < 5 s).
//!
//! The PyTorch side is `benches/reference/train_step.py --serve`, run with
//! `$VIRTUAL_ENV/bin/python` (else `python3`); without an importable torch it is skipped,
//! and agd's side still reported. The two sides' steps alternate (agd, PyTorch, agd, …):
//! on a shared machine, load from elsewhere then slows both alike instead of whichever
//! side happened to run during it. Each side also times its phases (forward + loss,
//! backward, optimiser), which locates a gap when there is one.
//!
//! `AGD_BENCH_STEPS`: timed steps per side (default 3; the median is reported), after one
//! warm-up step each.

use agd::loss::BaseLoss;
use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use agd::train::optimizer::{Optimizer, OptimizerKind};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const BATCH: i64 = 32;
const IDS: i64 = 8;
const CLASSES: i64 = 751;
const HEIGHT: i64 = 256;
const WIDTH: i64 = 128;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Seconds of one step: total and its phases, as both sides report them.
#[derive(Clone, Copy)]
struct Timing {
    step: f64,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl Timing {
    /// The table's rows: the step, then its phases.
    fn phases(&self) -> [(&'static str, f64); 4] {
        [
            ("train step (median)", self.step),
            ("  forward + loss", self.forward),
            ("  backward", self.backward),
            ("  optimiser (zero_grad + SGD)", self.optimizer),
        ]
    }

    fn median(all: &[Timing]) -> Timing {
        let m = |f: fn(&Timing) -> f64| median(all.iter().map(f).collect());
        Timing {
            step: m(|t| t.step),
            forward: m(|t| t.forward),
            backward: m(|t| t.backward),
            optimizer: m(|t| t.optimizer),
        }
    }
}

/// 8 identities × 4 samples, shuffled: the triplet loss needs positives in the batch.
fn pk_pids() -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let ids = rand::seq::index::sample(&mut rng, CLASSES as usize, IDS as usize);
    let mut pids: Vec<i64> = ids
        .iter()
        .flat_map(|id| std::iter::repeat_n(id as i64, (BATCH / IDS) as usize))
        .collect();
    pids.shuffle(&mut rng);
    Tensor::from_slice(&pids)
}

/// agd's step through the library: model, losses and optimiser as `agd train` uses them.
struct AgdStep {
    model: ReidModel,
    opt: Optimizer,
    x: Tensor,
    pids: Tensor,
}

impl AgdStep {
    fn new() -> Result<Self> {
        tch::manual_seed(0);
        let cfg = ModelConfig {
            depth: Depth::R50,
            last_stride: 2,
            pooling: Pooling::Avg,
            embedding: 2048,
            classes: CLASSES,
        };
        let model = ReidModel::new(cfg, Device::Cpu)?;
        let mut opt = Optimizer::new(&model, OptimizerKind::Sgd);
        opt.set_lr(0.01);
        Ok(Self {
            model,
            opt,
            x: Tensor::randn([BATCH, 3, HEIGHT, WIDTH], (Kind::Float, Device::Cpu)),
            pids: pk_pids(),
        })
    }

    fn step(&mut self) -> Timing {
        let t0 = Instant::now();
        self.opt.zero_grad();
        let ta = Instant::now();
        let out = self.model.forward(&self.x, true);
        let loss = BaseLoss::new(&out.logits, &out.global, &self.pids).total();
        let t1 = Instant::now();
        loss.backward();
        let t2 = Instant::now();
        self.opt.step();
        let t3 = Instant::now();
        Timing {
            step: (t3 - t0).as_secs_f64(),
            forward: (t1 - ta).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: ((ta - t0) + (t3 - t2)).as_secs_f64(),
        }
    }
}

fn python() -> PathBuf {
    std::env::var_os("VIRTUAL_ENV")
        .map(|v| Path::new(&v).join("bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "python3".into())
}

/// The PyTorch side: the reference script in `--serve` mode, one step per request.
/// Errors are plain strings: they end up as the "skipped" reason, not as a failure.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    torch: String,
    threads: i64,
}

impl Reference {
    fn start(threads: i64) -> Result<Self, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/train_step.py");
        let py = python();
        let mut child = Command::new(&py)
            .arg(&script)
            .args(["--serve", "--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut r = Self {
            child,
            stdin,
            stdout,
            torch: String::new(),
            threads: -1,
        };
        let ready = r.reply()?;
        if let Some(why) = ready["skipped"].as_str() {
            return Err(why.to_string());
        }
        r.torch = ready["torch"].as_str().unwrap_or("?").to_string();
        r.threads = ready["threads"].as_i64().unwrap_or(-1);
        Ok(r)
    }

    /// The script's next JSON line; if it exited instead, the end of its stderr.
    fn reply(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| format!("reading the script's output: {e}"))?;
            if n == 0 {
                let status = self.child.wait().map_err(|e| e.to_string())?;
                let mut stderr = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "the reference script exited ({status}): {}",
                    tail.join(" | ")
                ));
            }
            if line.starts_with('{') {
                return serde_json::from_str(&line)
                    .map_err(|e| format!("bad JSON from the script ({e}): {line}"));
            }
        }
    }

    fn step(&mut self) -> Result<Timing, String> {
        writeln!(self.stdin, "step")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("the reference script stopped reading: {e}"))?;
        let v = self.reply()?;
        let f = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| format!("the script's JSON lacks {k}: {v}"))
        };
        Ok(Timing {
            step: f("seconds_per_step")?,
            forward: f("forward")?,
            backward: f("backward")?,
            optimizer: f("optimizer")?,
        })
    }
}

impl Drop for Reference {
    /// Any line but `step` ends the script's loop; wait so that no process outlives the bench.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// `agd train` end to end on 32 synthetic images of 8 ids (batch 32: exactly one step).
struct Startup {
    /// Process start to exit.
    total: f64,
    /// The epoch's seconds as `log.txt` reports them (loading batches and the one step).
    epoch: f64,
}

fn startup(bin: &Path) -> Result<Startup> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_str().context("temporary path is not UTF-8")?;
    let logs = tmp.path().join("logs");
    // The commands as one would type them, with the temporary folder as data root.
    let synth = Command::new(bin)
        .args(["synth", "--data-root", root])
        .args(
            "--dataset s --ids 8 --images-per-id 4 --cameras 2 --distractors 2 --junk 0".split(' '),
        )
        .output()?;
    if !synth.status.success() {
        bail!(
            "agd synth failed: {}",
            String::from_utf8_lossy(&synth.stderr)
        );
    }
    let start = Instant::now();
    let train = Command::new(bin)
        .args(["train", "--data-root", root, "--logs-dir"])
        .arg(&logs)
        .args(
            "-g cpu -s 1 --dataset s --depth 50 --height 256 --width 128 -b 32 --epochs 1 \
             --evaluate 0 --warmup 0 --epochs-decay 100"
                .split_whitespace(),
        )
        .output()?;
    let total = start.elapsed().as_secs_f64();
    if !train.status.success() {
        bail!(
            "agd train failed: {}",
            String::from_utf8_lossy(&train.stderr)
        );
    }
    // The epoch line: "epoch 1/1: … (1 steps, 1.6 img/s, 20.4 s)".
    let log = std::fs::read_to_string(logs.join("log.txt"))?;
    let re = regex::Regex::new(r"epoch 1/1: .*\((\d+) steps, [\d.]+ img/s, ([\d.]+) s\)")?;
    let caps = re
        .captures(&log)
        .with_context(|| format!("no epoch line in log.txt:\n{log}"))?;
    if &caps[1] != "1" {
        bail!(
            "agd train ran {} steps, expected exactly 1:\n{log}",
            &caps[1]
        );
    }
    Ok(Startup {
        total,
        epoch: caps[2].parse()?,
    })
}

/// The 1-minute load average (Linux), to tell a disturbed run from a clean one.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> Result<()> {
    // The same allocator setting `agd` makes at start-up, so this measures its step.
    agd::alloc::retain_freed_memory();
    let steps = env_usize("AGD_BENCH_STEPS", 3).max(1);
    let threads = tch::get_num_threads() as i64;
    println!(
        "ResNet-50 training step, batch {BATCH} at {HEIGHT}×{WIDTH}, CPU, {threads} threads: \
         1 warm-up + {steps} timed steps per side, alternating"
    );
    // The machine may be shared: say how busy it was, so a disturbed run can be told apart.
    if let Some(load) = load_average() {
        let hint = if load > 0.5 {
            ": other work is running, expect noise (run again when idle)"
        } else {
            ""
        };
        println!("load average before: {load:.2}{hint}");
    }

    let mut agd = AgdStep::new()?;
    let mut reference = Reference::start(threads);
    if let Ok(r) = &reference {
        if r.threads != threads {
            println!(
                "warning: PyTorch runs on {} threads, agd on {threads}",
                r.threads
            );
        }
    }
    let (mut agd_all, mut ref_all) = (Vec::new(), Vec::new());
    let (mut agd_warm, mut ref_warm) = (0.0, None);
    for i in 0..=steps {
        let a = agd.step();
        let p = match &mut reference {
            Ok(r) => match r.step() {
                Ok(t) => Some(t),
                Err(why) => {
                    reference = Err(why);
                    None
                }
            },
            Err(_) => None,
        };
        if i == 0 {
            // Warm-up: allocations, oneDNN primitives.
            (agd_warm, ref_warm) = (a.step, p.map(|t| t.step));
        } else {
            agd_all.push(a);
            ref_all.extend(p);
        }
    }
    drop(agd);
    // Every timed step, so the spread (noise on a shared machine) is visible.
    let list = |all: &[Timing]| {
        let v: Vec<String> = all.iter().map(|t| format!("{:.2}", t.step)).collect();
        v.join(" ")
    };
    println!("agd steps (s): {}", list(&agd_all));
    if reference.is_ok() {
        println!("PyTorch steps (s): {}", list(&ref_all));
    }
    let (torch, reference) = match reference {
        Ok(r) => (format!("PyTorch {}", r.torch), Ok(Timing::median(&ref_all))),
        Err(why) => {
            println!("PyTorch reference skipped: {why}");
            ("PyTorch".to_string(), Err(()))
        }
    };
    let agd_t = Timing::median(&agd_all);

    let s = |x: f64| format!("{x:.2} s");
    let ratio = |a: f64, p: f64| format!("{:.2}", p / a);
    let mut rows = Vec::new();
    let reference_phases = reference.as_ref().ok().map(Timing::phases);
    for (i, (name, a)) in agd_t.phases().into_iter().enumerate() {
        let (p, r) = match &reference_phases {
            Some(ph) => (s(ph[i].1), ratio(a, ph[i].1)),
            None => ("skipped".into(), "–".into()),
        };
        rows.push(vec![name.to_string(), s(a), p, r]);
    }
    let img = |secs: f64| format!("{:.2} img/s", BATCH as f64 / secs);
    rows.push(vec![
        "images/s".into(),
        img(agd_t.step),
        reference.as_ref().map_or("skipped".into(), |r| img(r.step)),
        "".into(),
    ]);
    let (w, wr) = match (reference.is_ok(), ref_warm) {
        (true, Some(w)) => (s(w), ratio(agd_warm, w)),
        _ => ("–".into(), "–".into()),
    };
    rows.push(vec!["warm-up step (first)".into(), s(agd_warm), w, wr]);
    println!(
        "{}",
        agd::report::table(
            ["ResNet-50 step", "agd", torch.as_str(), "PyTorch / agd"],
            rows
        )
    );
    if let Ok(r) = &reference {
        let x = r.step / agd_t.step;
        let verdict = if x >= 1.0 {
            "agd is at least as fast"
        } else {
            "agd is slower"
        };
        println!("ratio PyTorch / agd = {x:.2} ({verdict}; goal ≥ 1)");
    }

    // Cargo builds the binary targets for benches too (and sets this path), so the
    // startup is always measured on the binary of the sources being benchmarked.
    let bin = Path::new(env!("CARGO_BIN_EXE_agd"));
    if !bin.exists() {
        println!(
            "startup not measured: {} is missing; run `make build` first",
            bin.display()
        );
        return Ok(());
    }
    let st = startup(bin)?;
    println!(
        "{}",
        agd::report::table(
            ["agd train, 32 synthetic images of 8 ids, batch 32", "time"],
            [
                vec!["process start → exit (1 step)".to_string(), s(st.total)],
                vec!["  the epoch (log.txt: 1 step)".into(), s(st.epoch)],
                vec![
                    "  startup to first step, + checkpoint and exit".into(),
                    s(st.total - st.epoch),
                ],
            ]
        )
    );
    println!(
        "startup to first step ≤ {:.2} s (goal < 5 s)",
        st.total - st.epoch
    );
    Ok(())
}
