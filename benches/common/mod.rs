//! What the step benches share (`train_step`, `incremental_step`, `invert`): the PyTorch reference
//! script run as a child in `--serve` mode, per-phase step timings and their medians, and
//! the comparison table's rows.
//!
//! Each bench alternates its agd step with a step of its script (agd, PyTorch, agd, …), so
//! that load from elsewhere on a shared machine slows both sides alike.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The reference's ResNet-50 ReID model (last stride 2, average pooling, 2048-d
/// embedding) with `classes` classes: every step bench's model.
pub fn resnet50(classes: i64) -> agd::model::ModelConfig {
    agd::model::ModelConfig {
        depth: agd::model::Depth::R50,
        last_stride: 2,
        pooling: agd::model::Pooling::Avg,
        embedding: 2048,
        classes,
    }
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A bench's phases: the table's label of each, and the key of its seconds in the
/// script's JSON. The first is the whole step (`seconds_per_step`).
pub type Phases = [(&'static str, &'static str)];

/// Seconds of one step, aligned with the bench's [`Phases`]: the step, then its phases.
#[derive(Clone, Debug)]
pub struct Timing(pub Vec<f64>);

impl Timing {
    /// Seconds of the whole step.
    pub fn step(&self) -> f64 {
        self.0[0]
    }

    /// Each phase's median over the steps.
    pub fn median(all: &[Timing]) -> Timing {
        let n = all.first().map_or(0, |t| t.0.len());
        Timing(
            (0..n)
                .map(|i| median(all.iter().map(|t| t.0[i]).collect()))
                .collect(),
        )
    }
}

/// The 1-minute load average (Linux), to tell a disturbed run from a clean one.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Prints the load average before the run: the machine may be shared, so say how busy it
/// was, and a disturbed run can be told apart.
pub fn print_load() {
    if let Some(load) = load_average() {
        let hint = if load > 0.5 {
            ": other work is running, expect noise (run again when idle)"
        } else {
            ""
        };
        println!("load average before: {load:.2}{hint}");
    }
}

fn python() -> PathBuf {
    std::env::var_os("VIRTUAL_ENV")
        .map(|v| Path::new(&v).join("bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "python3".into())
}

/// The PyTorch side: a script of `benches/reference/` in `--serve` mode, one step per
/// request. Errors are plain strings: they end up as the "skipped" reason, not as a failure.
pub struct Reference {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The script's torch version.
    pub torch: String,
    /// The threads torch runs on there.
    pub threads: i64,
}

impl Reference {
    /// Starts `benches/reference/<script> --serve --threads <threads> <extra…>` with
    /// `$VIRTUAL_ENV/bin/python` (else `python3`); warns when its torch runs on another
    /// number of threads than agd.
    pub fn start(script: &str, threads: i64, extra: &[String]) -> Result<Self, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/reference")
            .join(script);
        let py = python();
        let mut child = Command::new(&py)
            .arg(&script)
            .args(["--serve", "--threads", &threads.to_string()])
            .args(extra)
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
        if r.threads != threads {
            println!(
                "warning: PyTorch runs on {} threads, agd on {threads}",
                r.threads
            );
        }
        Ok(r)
    }

    /// The script's next JSON line; if it exited instead, the end of its stderr.
    fn reply(&mut self) -> Result<Value, String> {
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

    /// One step: its timing (the keys of `phases`) and the whole JSON reply.
    pub fn step(&mut self, phases: &Phases) -> Result<(Timing, Value), String> {
        writeln!(self.stdin, "step")
            .and_then(|_| self.stdin.flush())
            .map_err(|e| format!("the reference script stopped reading: {e}"))?;
        let v = self.reply()?;
        let seconds = phases
            .iter()
            .map(|(_, key)| {
                v[key]
                    .as_f64()
                    .ok_or_else(|| format!("the script's JSON lacks {key}: {v}"))
            })
            .collect::<Result<_, _>>()?;
        Ok((Timing(seconds), v))
    }
}

impl Drop for Reference {
    /// Any line but `step` ends the script's loop; wait so that no process outlives the bench.
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// Runs `steps` + 1 alternating steps of each side (the first a warm-up: allocations,
/// oneDNN primitives); `reference` becomes the error if the script fails midway.
/// `first` sees the first step's (warm-up's) results of both sides.
pub fn alternate<A>(
    steps: usize,
    phases: &Phases,
    mut agd: impl FnMut() -> anyhow::Result<(Timing, A)>,
    reference: &mut Result<Reference, String>,
    mut first: impl FnMut(&A, Option<&Value>),
) -> anyhow::Result<Runs> {
    let mut runs = Runs::default();
    for i in 0..=steps {
        let (a, agd_out) = agd()?;
        let p = match reference {
            Ok(r) => match r.step(phases) {
                Ok(t) => Some(t),
                Err(why) => {
                    *reference = Err(why);
                    None
                }
            },
            Err(_) => None,
        };
        if i == 0 {
            first(&agd_out, p.as_ref().map(|(_, v)| v));
            runs.agd_warm = a.step();
            runs.reference_warm = p.map(|(t, _)| t.step());
        } else {
            runs.agd.push(a);
            runs.reference.extend(p.map(|(t, _)| t));
        }
    }
    Ok(runs)
}

/// Every step of both sides.
#[derive(Default)]
pub struct Runs {
    pub agd: Vec<Timing>,
    pub reference: Vec<Timing>,
    pub agd_warm: f64,
    pub reference_warm: Option<f64>,
}

impl Runs {
    /// Prints every timed step of both sides, so the spread (noise) is visible, and the
    /// table comparing their medians, phase by phase (a phase agd does not time is NaN and
    /// shown as –), with images/s for `images` per step; returns PyTorch's median step /
    /// agd's, judged against `goal`.
    pub fn report(
        &self,
        title: &str,
        phases: &Phases,
        images: i64,
        reference: &Result<Reference, String>,
        goal: f64,
    ) -> Option<f64> {
        let list = |all: &[Timing]| {
            let v: Vec<String> = all.iter().map(|t| format!("{:.2}", t.step())).collect();
            v.join(" ")
        };
        println!("agd steps (s): {}", list(&self.agd));
        let (torch, theirs) = match reference {
            Ok(r) => {
                println!("PyTorch steps (s): {}", list(&self.reference));
                (
                    format!("PyTorch {}", r.torch),
                    Some(Timing::median(&self.reference)),
                )
            }
            Err(why) => {
                println!("PyTorch reference skipped: {why}");
                ("PyTorch".to_string(), None)
            }
        };
        let ours = Timing::median(&self.agd);

        let s = |x: f64| {
            if x.is_nan() {
                "–".to_string()
            } else {
                format!("{x:.2} s")
            }
        };
        let ratio = |a: f64, p: f64| {
            if a.is_nan() {
                "–".to_string()
            } else {
                format!("{:.2}", p / a)
            }
        };
        let mut rows = Vec::new();
        for (i, (label, _)) in phases.iter().enumerate() {
            let a = ours.0[i];
            let (p, r) = match &theirs {
                Some(t) => (s(t.0[i]), ratio(a, t.0[i])),
                None => ("skipped".into(), "–".into()),
            };
            rows.push(vec![label.to_string(), s(a), p, r]);
        }
        let img = |secs: f64| format!("{:.2} img/s", images as f64 / secs);
        rows.push(vec![
            "images/s".into(),
            img(ours.step()),
            theirs.as_ref().map_or("skipped".into(), |t| img(t.step())),
            "".into(),
        ]);
        // The least disturbed step of each side: on a shared machine, the closest to what
        // the step costs on an idle one.
        let fastest = |all: &[Timing]| all.iter().map(Timing::step).fold(f64::INFINITY, f64::min);
        let (a, p) = (fastest(&self.agd), fastest(&self.reference));
        let (f, fr) = match &theirs {
            Some(_) => (s(p), ratio(a, p)),
            None => ("skipped".into(), "–".into()),
        };
        rows.push(vec!["fastest step".into(), s(a), f, fr]);
        let (w, wr) = match (&theirs, self.reference_warm) {
            (Some(_), Some(w)) => (s(w), ratio(self.agd_warm, w)),
            _ => ("–".into(), "–".into()),
        };
        rows.push(vec!["warm-up step (first)".into(), s(self.agd_warm), w, wr]);
        println!(
            "{}",
            agd::report::table([title, "agd", torch.as_str(), "PyTorch / agd"], rows)
        );
        let x = theirs?.step() / ours.step();
        let verdict = if x >= goal {
            "goal met"
        } else {
            "below the goal"
        };
        println!("ratio PyTorch / agd = {x:.2} ({verdict}: ≥ {goal})");
        Some(x)
    }
}
