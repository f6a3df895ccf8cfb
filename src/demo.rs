//! `agd demo`: the whole method on synthetic data, a miniature of the paper's experiment.
//!
//! Two visually different synthetic tasks; a base model trained on task A; images of A's
//! identities dreamed back out of it; task B learnt four ways (fine-tuning, GD, simGD,
//! AGD); every model evaluated on both tasks: a lifelong sequence of length two, learnt
//! four ways. The stages are built from the demo's templates and run by the engine
//! `agd sequence` uses ([`crate::sequence::Engine`]), which prints each plan's command
//! line first, so a user can rerun any stage by pasting it, and resumes every stage: a
//! second run reuses what is finished.

use crate::data::synth::{self, Style, SynthConfig};
use crate::error::Setting;
use crate::eval::{EvalPlan, EvalRow};
use crate::inversion::fidelity::{self, HistogramReport};
use crate::inversion::plan::Dreaming;
use crate::inversion::prior::PriorWeights;
use crate::inversion::store::DreamFormat;
use crate::inversion::{Coefficients, InvertPlan, Stages};
use crate::logging::{Claim, Logger};
use crate::model::checkpoint::Pretrained;
use crate::model::{Depth, ModelChoice};
use crate::options::{AugmentOptions, DataOptions, DeviceOptions, ImageSize, Setup};
use crate::plot::ResultRow;
use crate::record::Recipe;
use crate::sequence::{Engine, Method, Templates, PRESETS};
use crate::stage::StagePlan;
use crate::train::optimizer::OptimizerKind;
use crate::train::plan::{BasePlan, LoopPlan};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sizes of a demo run: the default is meaningful in minutes, `quick` is for CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sizes {
    pub ids: usize,
    pub images_per_id: usize,
    pub cameras: usize,
    pub batch_size: usize,
    pub base_epochs: usize,
    pub epochs: usize,
    pub shots: usize,
    pub low_res_iters: usize,
    pub full_res_iters: usize,
    /// Each inversion stage's warm-up ([`Stages::warmup_iters`]).
    pub warmup_iters: usize,
    /// `agd invert --coarse` ([`Stages::coarse`]); 0 is the reference's 2×2-pooled stage.
    pub coarse: usize,
    /// `agd invert --jitter` ([`Stages::jitter`]); 0 is the reference's.
    pub jitter: usize,
}

impl Sizes {
    /// The default demo (a few minutes on a laptop CPU).
    pub const DEFAULT: Sizes = Sizes {
        ids: 40,
        images_per_id: 10,
        cameras: 5,
        batch_size: 32,
        base_epochs: 12,
        epochs: 6,
        shots: 6,
        // The reference's stages at this budget (30 pooled + 100 full-size iterations,
        // warm-up 100) dream noise the teacher classifies but a person cannot see and GD
        // barely learns from (README: dreams top-1 2%, margins +3 to +6 on seed 1). Two
        // hundred iterations on 4×4 blocks, one short warm-up, and one full-size step
        // dream each identity's colours (top-1 15%).
        low_res_iters: 200,
        full_res_iters: 1,
        warmup_iters: 10,
        coarse: 4,
        // Not in the reference (DeepInversion's own code): each iteration the teacher sees
        // the blocks rolled by up to 4 pixels, so no colour can satisfy it at one place
        // only, and the dreams become layouts, a garment's colour above the trousers'
        // (seed 1, one batch: identity histogram top-1 15% without, 22.5% with 2, 25% with
        // 4 pixels; 30% with the first-BN weight of [`templates`]).
        jitter: 4,
    };

    /// `--quick`: every stage in seconds, for CI.
    pub const QUICK: Sizes = Sizes {
        ids: 8,
        images_per_id: 6,
        cameras: 3,
        batch_size: 16,
        base_epochs: 2,
        epochs: 1,
        shots: 4,
        low_res_iters: 4,
        full_res_iters: 4,
        warmup_iters: 100,
        coarse: 0,
        jitter: 0,
    };
}

/// What `agd demo` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoPlan {
    /// Run folder (data, logs, results).
    pub out: PathBuf,
    pub quick: bool,
    pub sizes: Sizes,
    pub seed: u64,
    /// Where every stage runs, and how its models compute.
    pub device: DeviceOptions,
    /// Random-erasing probability of every training stage (`--re`: the demo's default is
    /// 0, the reference's 0.5).
    pub re: f64,
}

/// A demo's results, as `results.json` holds them.
#[derive(Clone, Debug, Serialize)]
pub struct DemoResults {
    /// The base model and the four methods, on both tasks.
    pub rows: Vec<ResultRow>,
    /// Whether the dreams carry task A's identities ([`fidelity`]).
    pub dreams: HistogramReport,
    pub wall_seconds: f64,
    pub quick: bool,
}

impl DemoResults {
    /// Task A mAP of `method` (a fraction).
    pub fn old_map(&self, method: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.method == method)
            .map(|r| r.old_map)
    }

    /// Task A mAP of `method` minus fine-tuning's, in points.
    pub fn margin(&self, method: &str) -> Option<f64> {
        Some(100.0 * (self.old_map(method)? - self.old_map("finetune")?))
    }
}

/// The run's folders and what every stage shares.
struct Run<'a> {
    plan: &'a DemoPlan,
    log: &'a Logger,
    data_root: PathBuf,
}

const TASK_A: &str = "task-a";
const TASK_B: &str = "task-b";
/// Input size of every stage: small enough for a laptop CPU, and (without ImageNet weights
/// here) a size that learns from scratch in a few epochs.
const HEIGHT: usize = 64;
const WIDTH: usize = 32;

/// ResNet-34 with last stride 1. Only the base model is given it; every later stage reads
/// it from the checkpoint.
fn model() -> ModelChoice {
    ModelChoice {
        depth: Some(Depth::R34),
        last_stride: Some(1),
        pooling: None,
        embedding: None,
    }
}

/// The demo's stage templates, run by the [`Engine`] that `agd sequence` uses.
///
/// Long because it is the demo's whole recipe in one place: every value that differs from
/// the reference's stages is set here, each with the measurement that chose it.
fn templates(plan: &DemoPlan, data_root: &Path) -> Templates {
    let s = &plan.sizes;
    let data = || DataOptions {
        data_root: data_root.to_path_buf(),
        size: ImageSize {
            height: HEIGHT,
            width: WIDTH,
        },
    };
    // The training recipe of the base and incremental runs: Adam at 3e-4 (from scratch on
    // small synthetic images the reference's SGD recipe, made for an ImageNet-pretrained
    // backbone, overshoots), evaluation left to the last stage.
    let loop_plan = |defaults: LoopPlan, epochs: usize| {
        // lr × 0.1 for the last epoch (none in a one-epoch run).
        let decay = if epochs >= 2 { epochs } else { epochs + 1 };
        LoopPlan {
            setup: Setup {
                device: plan.device.clone(),
                seed: Some(plan.seed),
                data: data(),
            },
            batch_size: s.batch_size,
            epochs,
            epochs_decay: vec![decay],
            optimizer: OptimizerKind::Adam,
            learning_rate: 0.0003,
            evaluate: 0,
            augment: AugmentOptions {
                re: plan.re,
                ..AugmentOptions::default()
            },
            ..defaults
        }
    };
    let base = BasePlan {
        run: LoopPlan {
            warmup: 1,
            model: model(),
            ..loop_plan(LoopPlan::default(), s.base_epochs)
        },
        // No ImageNet weights can be downloaded here; the demo's small models learn from
        // scratch.
        pretrained: Pretrained::Random,
    };
    let defaults = Dreaming::default();
    let dreaming = Dreaming {
        // One image of every identity per batch: `invert` draws distinct identities when
        // there are enough, so `shots` batches fill every bag with no image dreamed and
        // then dropped.
        bs: s.ids,
        shots: s.shots,
        iters: 1000,
        coefficients: Coefficients {
            // The reference's 1e-4 is tuned for 3,000 iterations; in a few hundred its
            // images stay close to the starting noise. A stronger smoothness prior gives
            // dreams whose distillation carries over to A (+5 mAP points over fine-tuning
            // for GD, against +1 with 1e-4).
            prior: PriorWeights {
                tv_l2: 0.003,
                ..defaults.coefficients.prior
            },
            // The first BatchNorm, weighted like every other (the reference's 10): its
            // input statistics are those of whole street scenes, sky and pavement around
            // the person, and a tenfold pull towards them washes the identity's clothing
            // colours out (one batch of seed 1's dreams, with --jitter 4: identity
            // histogram top-1 25% with 10, 30% with 1).
            first_bn_multiplier: 1.0,
            ..defaults.coefficients
        },
        stages: Stages {
            low_res_iters: s.low_res_iters,
            full_res_iters: s.full_res_iters,
            warmup_iters: s.warmup_iters,
            coarse: s.coarse,
            jitter: s.jitter,
            ..defaults.stages
        },
        // Not the reference's JPEG: after 130 iterations the dreams are fine colour noise
        // that the teacher reads as its identities, read back from PNG files at 98.8%
        // top-1 and from 4:2:0 JPEGs at 5% (seed 1). Distilled on lossless dreams, every
        // method keeps more of A on average (README: mean margins over fine-tuning of +1.2
        // to +1.8 become +2.2 to +3.6).
        dream_format: DreamFormat::Png,
    };
    let invert = InvertPlan {
        device: plan.device.clone(),
        seed: Some(plan.seed),
        dreaming,
        size: data().size,
        ..InvertPlan::default()
    };
    let eval = EvalPlan {
        device: plan.device.clone(),
        data: data(),
        rank_list_n: 4,
        ..EvalPlan::default()
    };
    Templates {
        base,
        // AGD's 2 views (incremental-x's default); the other methods see one.
        incremental: loop_plan(LoopPlan::incremental_defaults(true), s.epochs),
        exemplars: s.shots,
        invert,
        eval,
    }
}

impl Run<'_> {
    fn synth(&self, name: &str, style: Style, seed: u64) -> Result<()> {
        let s = &self.plan.sizes;
        let cfg = SynthConfig {
            ids: s.ids,
            test_ids: s.ids,
            images_per_id: s.images_per_id,
            cameras: s.cameras,
            height: 128,
            width: 64,
            seed,
            style,
            distractors: s.ids,
            junk: s.ids / 2,
        };
        let dir = self.data_root.join(name);
        let marker = self.data_root.join(format!("{name}.synth"));
        let key = format!("{cfg:?}");
        if dir.is_dir() && std::fs::read_to_string(&marker).ok().as_deref() == Some(key.as_str()) {
            self.log
                .line(format!("  {name}: reusing {}", dir.display()));
            return Ok(());
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot replace stale demo data {}", dir.display()))?;
        }
        let summary = synth::generate(&dir, &cfg)?;
        crate::io::write_atomic(&marker, key.as_bytes())?;
        self.log.line(summary.table(name).to_string());
        Ok(())
    }
}

/// The demo's picture of the dreams beside the real images of their identities
/// ([`fidelity::beside_real_sheet`]).
pub const BESIDE_REAL: &str = "dreams-beside-real.png";

/// The recipe of a demo folder ([`Recipe`]): a second run reuses every finished stage of
/// its folder, which is only right when the stages were made with the same recipe (sizes,
/// random erasing, seed, and the dreaming knobs the demo fixes, so that a folder dreamed
/// by an agd with other fixed knobs is another recipe too). Another recipe's folder is
/// refused with the flags that differ, rather than mixing its stages into this run's table.
fn recipe(plan: &DemoPlan, invert: &InvertPlan) -> Recipe {
    let mut recipe = Recipe::new("demo")
        .with("--quick", plan.quick)
        .with("--seed", plan.seed)
        .with("--re", plan.re);
    for (field, leaf) in crate::options::leaves(&plan.sizes) {
        if let crate::options::Leaf::Values(v) = leaf {
            recipe = recipe.with(format!("--{}", field.replace('_', "-")), v.join(" "));
        }
    }
    let mut dreaming = Recipe::new("invert");
    let command = invert.command();
    dreaming.add_flags(&command, &invert.dreaming.stages, None);
    dreaming.add_flags(&command, &invert.dreaming.coefficients, None);
    for (flag, value) in dreaming.flags {
        recipe = recipe.with(format!("agd invert {flag}"), value);
    }
    recipe
}

/// Opens the demo's log in `plan.out`, claiming the folder for `recipe`.
fn open_log(plan: &DemoPlan, recipe: &Recipe) -> Result<Logger> {
    let claim = Claim {
        recipe,
        folder: Setting::Out,
        adopt: false,
    };
    Logger::open(&plan.out, &claim, true)
}

/// A model on both tasks; rank lists of a few queries when asked, so forgetting can be
/// seen.
fn evaluate(
    engine: &Engine,
    out: &Path,
    method: &str,
    logs: &Path,
    rank_lists: bool,
) -> Result<ResultRow> {
    let plan = engine.eval_plan(
        logs,
        &[TASK_A.into(), TASK_B.into()],
        rank_lists.then(|| out.join("rank-lists").join(method)),
    );
    let rows = engine.evaluate(&plan)?;
    let on = |task: &str| -> Result<&EvalRow> {
        rows.iter()
            .find(|r| r.dataset == task)
            .with_context(|| format!("agd evaluate reported no {task}"))
    };
    let (a, b) = (on(TASK_A)?, on(TASK_B)?);
    Ok(ResultRow {
        method: method.into(),
        old_map: a.map,
        old_rank1: a.rank1,
        new_map: b.map,
        new_rank1: b.rank1,
    })
}

/// The four ways of learning task B, as the paper's table lists them.
fn methods() -> Vec<Method> {
    PRESETS
        .iter()
        .map(|name| Method::preset(name).expect("a preset"))
        .collect()
}

fn percent(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

fn label(method: &str) -> String {
    Method::preset(method).map_or("base (task A only)".into(), |m| m.label)
}

/// The paper-shaped table: old task (A) and new task (B), mAP and rank-1 per method.
fn markdown(results: &DemoResults, sizes: &Sizes) -> String {
    let (rows, dreams, seconds) = (&results.rows, &results.dreams, results.wall_seconds);
    let mut md = String::from(
        "# agd demo: data-free incremental ReID on synthetic data\n\n\
         | method | A (old) mAP | A (old) R1 | B (new) mAP | B (new) R1 |\n\
         |---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            label(&r.method),
            percent(r.old_map),
            percent(r.old_rank1),
            percent(r.new_map),
            percent(r.new_rank1)
        ));
    }
    md.push_str(&format!(
        "\n{} identities per task, {} images each; base {} epochs; {} dreamed images per \
         identity; task B {} epochs. Wall time {:.1} min.\n",
        sizes.ids,
        sizes.images_per_id,
        sizes.base_epochs,
        sizes.shots,
        sizes.epochs,
        seconds / 60.0
    ));
    md.push_str(&format!("\n{}\n", dreams_line(dreams)));
    md
}

/// The dreams' identity-histogram match beside its ceiling and chance.
fn dreams_line(d: &HistogramReport) -> String {
    format!(
        "dreams: the nearest identity colour histogram is the dreamed identity's for {}% of \
         the {} dreamed images (real training images: {}%; chance {}%)",
        percent(d.dreamed.top1),
        d.dreamed.images,
        percent(d.real.top1),
        percent(d.chance)
    )
}

/// Runs the demo: synthetic tasks, base model, dreams, four ways to learn task B, and the
/// evaluation of every model on both tasks, into `plan.out`.
pub fn run(plan: &DemoPlan) -> Result<DemoResults> {
    let start = Instant::now();
    let sizes = plan.sizes;
    if sizes.ids < 2 || sizes.epochs == 0 || sizes.base_epochs == 0 || sizes.shots == 0 {
        bail!(
            "demo sizes {sizes:?}: the identities must be at least 2, and the epochs, base epochs and shots at least 1"
        );
    }
    let data_root = plan.out.join("data");
    let templates = templates(plan, &data_root);
    let log = open_log(plan, &recipe(plan, &templates.invert))?;
    let (device, determinism) = plan.device.select()?;
    if let Some(note) = determinism {
        log.line(note);
    }
    log.line(format!(
        "agd demo{} → {} (device {}; {sizes:?})",
        if plan.quick { " --quick" } else { "" },
        plan.out.display(),
        crate::device::describe(device),
    ));
    let run = Run {
        plan,
        log: &log,
        data_root,
    };

    // A mistyped inversion size (`--coarse 1`) fails now, not after the base model.
    templates.invert.validate()?;

    log.line("1. two synthetic tasks: A (street scenes) and B (shopping mall)");
    run.synth(TASK_A, Style::Street, plan.seed)?;
    run.synth(TASK_B, Style::Mall, plan.seed + 1)?;

    // A sequence of length two (task A, then task B), learnt four ways from one base
    // model and one set of dreams.
    let engine = Engine::new(templates, &log, plan.out.join("configs"));
    log.line("2. the base model on task A");
    let base = plan.out.join("base");
    engine.train_base(TASK_A, &base)?;

    log.line("3. dreaming task A's identities back out of the base model (DeepInversion)");
    let dreamed = plan.out.join("dreamed");
    engine.invert(&base, &dreamed)?;
    let dreams = run.judge_dreams(&dreamed)?;

    log.line("4. task B, four ways: fine-tuning, GD, simGD, AGD");
    let mut learnt = Vec::new();
    for m in methods() {
        log.line(format!("  {}", m.label));
        let logs = plan.out.join(&m.name);
        let old_images = m.distills().then_some(dreamed.as_path());
        engine.learn(&m, TASK_B, &base, old_images, &logs)?;
        learnt.push((m.name, logs));
    }

    log.line("5. every model on both tasks");
    let mut rows = vec![evaluate(&engine, &plan.out, "base", &base, true)?];
    for (name, logs) in &learnt {
        let rank_lists = matches!(name.as_str(), "finetune" | "agd");
        rows.push(evaluate(&engine, &plan.out, name, logs, rank_lists)?);
    }
    let results = DemoResults {
        rows,
        dreams,
        wall_seconds: start.elapsed().as_secs_f64(),
        quick: plan.quick,
    };
    run.report(&results)?;
    log.succeeded();
    Ok(results)
}

impl Run<'_> {
    /// How far the dreams carry task A's identities ([`fidelity::measure`]), and the
    /// picture of the first identities' real images beside their dreams.
    fn judge_dreams(&self, dreamed: &Path) -> Result<HistogramReport> {
        let dreams = fidelity::measure(&self.data_root, TASK_A, dreamed, HEIGHT, WIDTH)?;
        self.log.line(dreams_line(&dreams));
        let sheet = fidelity::beside_real_sheet(
            &self.data_root,
            TASK_A,
            dreamed,
            8,
            3,
            (2 * HEIGHT as u32, 2 * WIDTH as u32),
        )?;
        let beside_real = self.plan.out.join(BESIDE_REAL);
        crate::io::write_png(&beside_real, &sheet)?;
        self.log.line(format!(
            "  the first 8 identities, 3 real images then their dreams: {}",
            beside_real.display()
        ));
        Ok(dreams)
    }

    /// The results: the table and each distillation's margin over fine-tuning in the log,
    /// and `results.{json,md,png}` in the demo folder.
    fn report(&self, results: &DemoResults) -> Result<()> {
        let (out, log) = (&self.plan.out, self.log);
        let table = crate::report::table(
            [
                "method",
                "A (old) mAP",
                "A (old) R1",
                "B (new) mAP",
                "B (new) R1",
            ],
            results.rows.iter().map(|r| {
                vec![
                    label(&r.method).to_string(),
                    percent(r.old_map),
                    percent(r.old_rank1),
                    percent(r.new_map),
                    percent(r.new_rank1),
                ]
            }),
        );
        log.line(table.to_string());
        for m in DISTILLATIONS {
            if let Some(margin) = results.margin(m) {
                log.line(format!(
                    "  {}: task A mAP {margin:+.1} points against fine-tuning",
                    label(m)
                ));
            }
        }
        let seconds = results.wall_seconds;
        crate::io::write_atomic(
            &out.join("results.json"),
            serde_json::to_string_pretty(results)?.as_bytes(),
        )?;
        crate::io::write_atomic(
            &out.join("results.md"),
            markdown(results, &self.plan.sizes).as_bytes(),
        )?;
        crate::plot::results_chart(
            &results.rows,
            "A (old)",
            "B (new)",
            &out.join("results.png"),
        )?;
        log.line(format!(
            "results: {0}/results.md, {0}/results.png, {0}/results.json; rank lists in \
             {0}/rank-lists; dreamed images in {0}/dreamed/{1}, beside the real ones in \
             {0}/{BESIDE_REAL}; curves.png in every run's folder ({seconds:.0} s)",
            out.display(),
            crate::inversion::store::CONTACT_SHEET
        ));
        Ok(())
    }
}

/// The distillations whose margins over fine-tuning the seeds' table reports.
const DISTILLATIONS: [&str; 3] = ["gd", "simgd", "agd"];

/// One seed's line of [`SeedsSummary`].
#[derive(Clone, Debug, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Fine-tuning's task A mAP (a fraction).
    pub finetune_old_map: f64,
    /// Task A mAP minus fine-tuning's, in points, per distillation (gd, simgd, agd).
    pub margins: BTreeMap<String, f64>,
    /// The dreams' identity-histogram top-1 (a fraction).
    pub dreams_top1: f64,
    pub wall_seconds: f64,
}

/// `seeds.json`: each seed's margins, and per distillation their mean and the seeds on
/// which it beat fine-tuning.
#[derive(Clone, Debug, Serialize)]
pub struct SeedsSummary {
    pub seeds: Vec<SeedResult>,
    pub mean_margins: BTreeMap<String, f64>,
    /// Seeds on which the distillation kept more of task A than fine-tuning.
    pub above_finetune: BTreeMap<String, usize>,
    pub wall_seconds: f64,
}

impl SeedsSummary {
    fn new(seeds: Vec<SeedResult>, wall_seconds: f64) -> Self {
        let margins = |m: &'static str| seeds.iter().map(move |s| s.margins[m]);
        let n = seeds.len().max(1) as f64;
        let mean_margins = DISTILLATIONS
            .iter()
            .map(|m| (m.to_string(), margins(m).sum::<f64>() / n))
            .collect();
        let above_finetune = DISTILLATIONS
            .iter()
            .map(|m| (m.to_string(), margins(m).filter(|v| *v > 0.0).count()))
            .collect();
        Self {
            seeds,
            mean_margins,
            above_finetune,
            wall_seconds,
        }
    }

    fn rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["seed".to_string(), "fine-tuning A mAP".into()];
        header.extend(DISTILLATIONS.iter().map(|m| format!("{} − FT", label(m))));
        header.extend(["dreams top-1".into(), "minutes".into()]);
        let mut rows: Vec<Vec<String>> = self
            .seeds
            .iter()
            .map(|s| {
                let mut row = vec![s.seed.to_string(), percent(s.finetune_old_map)];
                row.extend(
                    DISTILLATIONS
                        .iter()
                        .map(|m| format!("{:+.1}", s.margins[*m])),
                );
                row.extend([
                    percent(s.dreams_top1),
                    format!("{:.1}", s.wall_seconds / 60.0),
                ]);
                row
            })
            .collect();
        let n = self.seeds.len();
        let mut mean = vec!["mean".to_string(), String::new()];
        mean.extend(
            DISTILLATIONS
                .iter()
                .map(|m| format!("{:+.1}", self.mean_margins[*m])),
        );
        mean.extend([String::new(), format!("{:.1}", self.wall_seconds / 60.0)]);
        let mut above = vec!["above FT".to_string(), String::new()];
        above.extend(
            DISTILLATIONS
                .iter()
                .map(|m| format!("{} of {n}", self.above_finetune[*m])),
        );
        above.extend([String::new(), String::new()]);
        rows.extend([mean, above]);
        (header, rows)
    }

    fn markdown(&self) -> String {
        let (header, rows) = self.rows();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut md =
            String::from("# agd demo over seeds: task A mAP kept above fine-tuning, in points\n\n");
        md.push_str(&line(&header));
        md.push_str(&format!("|{}\n", "---|".repeat(header.len())));
        for r in &rows {
            md.push_str(&line(r));
        }
        md.push_str(&format!(
            "\nEach seed is a whole `agd demo` in `seed-<k>/` (its own synthetic tasks, base \
             model and dreams). Wall time {:.1} min.\n",
            self.wall_seconds / 60.0
        ));
        md
    }
}

/// `agd demo --seeds`: the whole demo once per seed, into `plan.out/seed-<k>` (each
/// resumable as a single demo is), then `seeds.{md,json}` in `plan.out`: the margins over
/// fine-tuning on task A per seed, their mean and the seeds on which each distillation
/// beat fine-tuning — what says the method works, where one seed can mislead.
pub fn run_seeds(plan: &DemoPlan, seeds: &[u64]) -> Result<SeedsSummary> {
    if seeds.is_empty() {
        bail!("--seeds: no seed given");
    }
    let mut unique = seeds.to_vec();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != seeds.len() {
        bail!("--seeds {seeds:?}: a seed is repeated");
    }
    let start = Instant::now();
    let seeds_list = seeds.iter().map(u64::to_string).collect::<Vec<_>>();
    let recipe = recipe(plan, &templates(plan, &plan.out.join("data")).invert)
        .with("--seeds", seeds_list.join(","));
    let log = open_log(plan, &recipe)?;
    log.line(format!(
        "agd demo over seeds {seeds:?} → {}",
        plan.out.display()
    ));
    let mut results = Vec::new();
    for &seed in seeds {
        log.line(format!("seed {seed}"));
        let one = DemoPlan {
            out: plan.out.join(format!("seed-{seed}")),
            seed,
            ..plan.clone()
        };
        let r = run(&one).with_context(|| format!("the demo of seed {seed}"))?;
        let missing = || format!("the demo of seed {seed} reported no fine-tuning row");
        let margins = DISTILLATIONS
            .iter()
            .map(|m| Ok((m.to_string(), r.margin(m).with_context(missing)?)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        results.push(SeedResult {
            seed,
            finetune_old_map: r.old_map("finetune").with_context(missing)?,
            margins,
            dreams_top1: r.dreams.dreamed.top1,
            wall_seconds: r.wall_seconds,
        });
    }
    let summary = SeedsSummary::new(results, start.elapsed().as_secs_f64());
    let (header, rows) = summary.rows();
    log.line(crate::report::table(header, rows).to_string());
    crate::io::write_atomic(
        &plan.out.join("seeds.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    crate::io::write_atomic(&plan.out.join("seeds.md"), summary.markdown().as_bytes())?;
    log.line(format!(
        "results: {0}/seeds.md, {0}/seeds.json; every seed's own results in {0}/seed-<k>",
        plan.out.display()
    ));
    log.succeeded();
    Ok(summary)
}
