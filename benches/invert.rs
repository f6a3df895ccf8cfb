//! DeepInversion iteration benchmark (`cargo bench --bench invert`): one full-size
//! iteration of `agd invert` — ResNet-50 teacher at 256×128, eval mode, forward with the
//! BatchNorm statistics, loss, backward into the images, Adam step, clamp, best-loss copy —
//! against the reference's iteration restated in PyTorch (`benches/reference/invert.py`:
//! forward hooks, weights requiring gradients as in the reference), on the same CPU threads.
//! Goal: agd ≥ 1.3× faster.
//!
//! The two sides' iterations alternate (agd, PyTorch, agd, …) so that load from elsewhere
//! on a shared machine slows both alike. The PyTorch side runs with `$VIRTUAL_ENV/bin/python`
//! (else `python3`); without an importable torch it is skipped and agd's side still reported.
//!
//! `AGD_BENCH_STEPS`: timed iterations per side (default 3; the median is reported), after
//! one warm-up iteration each. `AGD_BENCH_BATCH`: images per batch (default 16; the
//! reference's 64 needs about four times as long and ~4 GB per side).

use agd::inversion::{optim::stage_lr, Coefficients, DreamBatch, Inverter, Stage};
use agd::model::{Depth, ModelConfig, Pooling, ReidModel};
use anyhow::Result;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// MSMT17's training identities: the teacher the reference inverts.
const CLASSES: i64 = 1041;
const HEIGHT: i64 = 256;
const WIDTH: i64 = 128;
/// Length of the full-size stage, for the lr schedule (the reference's 1000).
const STAGE_ITERS: usize = 1000;

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

/// agd's iteration through the library, exactly as `agd invert` runs it.
struct AgdSide {
    teacher: ReidModel,
    batch: DreamBatch,
    it: usize,
}

impl AgdSide {
    fn new(batch: i64) -> Result<Self> {
        tch::manual_seed(0);
        let cfg = ModelConfig {
            depth: Depth::R50,
            last_stride: 2,
            pooling: Pooling::Avg,
            embedding: 2048,
            classes: CLASSES,
        };
        let teacher = ReidModel::new(cfg, Device::Cpu)?;
        let targets: Vec<i64> = (0..batch).map(|i| (i * 16) % CLASSES).collect();
        let images = Tensor::randn([batch, 3, HEIGHT, WIDTH], (Kind::Float, Device::Cpu));
        Ok(Self {
            teacher,
            batch: DreamBatch::from_images(images, Tensor::from_slice(&targets)),
            it: 0,
        })
    }

    /// Seconds of one iteration (flip on every other one, as the PyTorch side).
    fn step(&mut self) -> f64 {
        let inverter = Inverter::new(&self.teacher, Coefficients::default());
        let t0 = Instant::now();
        let lr = stage_lr(0.2, self.it, STAGE_ITERS);
        inverter.step(&mut self.batch, Stage::FullRes, lr, self.it % 2 == 1);
        self.it += 1;
        t0.elapsed().as_secs_f64()
    }
}

/// PyTorch's phases of one iteration, as the script reports them.
#[derive(Clone, Copy)]
struct Phases {
    step: f64,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

fn python() -> PathBuf {
    std::env::var_os("VIRTUAL_ENV")
        .map(|v| Path::new(&v).join("bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "python3".into())
}

/// The reference iteration in `--serve` mode. Errors are strings: they become the
/// "skipped" reason, not a failure.
struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    torch: String,
    threads: i64,
}

impl Reference {
    fn start(threads: i64, batch: i64) -> Result<Self, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference/invert.py");
        let py = python();
        let mut child = Command::new(&py)
            .arg(&script)
            .args(["--serve", "--threads", &threads.to_string()])
            .args(["--batch", &batch.to_string()])
            .args(["--classes", &CLASSES.to_string()])
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

    fn step(&mut self) -> Result<Phases, String> {
        writeln!(self.stdin, "step")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("the reference script stopped reading: {e}"))?;
        let v = self.reply()?;
        let f = |k: &str| {
            v[k].as_f64()
                .ok_or_else(|| format!("the script's JSON lacks {k}: {v}"))
        };
        Ok(Phases {
            step: f("seconds_per_step")?,
            forward: f("forward")?,
            backward: f("backward")?,
            optimizer: f("optimizer")?,
        })
    }
}

impl Drop for Reference {
    /// Any line but `step` ends the script's loop; wait so no process outlives the bench.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() -> Result<()> {
    // The same allocator setting `agd` makes at start-up, so this measures its iteration.
    agd::alloc::retain_freed_memory();
    let steps = env_usize("AGD_BENCH_STEPS", 3).max(1);
    let batch = env_usize("AGD_BENCH_BATCH", 16).max(1) as i64;
    let threads = tch::get_num_threads() as i64;
    println!(
        "DeepInversion iteration, ResNet-50 teacher ({CLASSES} classes), batch {batch} at \
         {HEIGHT}×{WIDTH}, CPU, {threads} threads: 1 warm-up + {steps} timed iterations per \
         side, alternating"
    );
    if let Some(load) = load_average() {
        let hint = if load > 0.5 {
            ": other work is running, expect noise (run again when idle)"
        } else {
            ""
        };
        println!("load average before: {load:.2}{hint}");
    }

    let mut agd = AgdSide::new(batch)?;
    let mut reference = Reference::start(threads, batch);
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
            (agd_warm, ref_warm) = (a, p.map(|t| t.step));
        } else {
            agd_all.push(a);
            ref_all.extend(p);
        }
    }
    drop(agd);
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("agd iterations (s): {}", list(&agd_all));
    let agd_t = median(agd_all);
    let s = |x: f64| format!("{x:.2} s");
    let reference = match reference {
        Ok(r) => {
            println!(
                "PyTorch iterations (s): {}",
                list(&ref_all.iter().map(|p| p.step).collect::<Vec<_>>())
            );
            let m = |f: fn(&Phases) -> f64| median(ref_all.iter().map(f).collect());
            Ok((
                r.torch.clone(),
                Phases {
                    step: m(|p| p.step),
                    forward: m(|p| p.forward),
                    backward: m(|p| p.backward),
                    optimizer: m(|p| p.optimizer),
                },
            ))
        }
        Err(why) => {
            println!("PyTorch reference skipped: {why}");
            Err(())
        }
    };
    let mut rows = vec![vec!["iteration (median)".to_string(), s(agd_t)]];
    let img = |secs: f64| format!("{:.2} img·it/s", batch as f64 / secs);
    rows.push(vec!["images × iterations / s".into(), img(agd_t)]);
    rows.push(vec!["warm-up iteration (first)".into(), s(agd_warm)]);
    let mut header = vec!["ResNet-50 inversion".to_string(), "agd".to_string()];
    if let Ok((torch, p)) = &reference {
        header.push(format!("PyTorch {torch}"));
        header.push("PyTorch / agd".into());
        rows[0].extend([s(p.step), format!("{:.2}", p.step / agd_t)]);
        rows[1].extend([img(p.step), String::new()]);
        rows[2].extend([
            ref_warm.map_or("–".into(), s),
            ref_warm.map_or("–".into(), |w| format!("{:.2}", w / agd_warm)),
        ]);
        for (name, v) in [
            ("  PyTorch forward + loss", p.forward),
            ("  PyTorch backward", p.backward),
            ("  PyTorch Adam + clip + best copy", p.optimizer),
        ] {
            rows.push(vec![name.into(), String::new(), s(v), String::new()]);
        }
    }
    println!("{}", agd::report::table(header, rows));
    if let Ok((_, p)) = &reference {
        let x = p.step / agd_t;
        let verdict = if x >= 1.3 {
            "goal met"
        } else {
            "below the goal"
        };
        println!("ratio PyTorch / agd = {x:.2} at batch {batch} ({verdict}: ≥ 1.3)");
    }
    Ok(())
}
