//! `agd demo`: the method's pipeline on synthetic data, as far as it exists. Today:
//! two visually different synthetic tasks, loaded and batched through the training
//! pipeline, a base model trained on task A and evaluated on both tasks; inversion and
//! incremental learning join as they land.

use super::args::DemoArgs;
use crate::data::synth::{self, Style, SynthConfig};
use crate::data::{ImageStore, LoaderConfig, ReidDataset, TrainLoader, TrainTransform};
use crate::eval::{features::OutputFeature, TestSet};
use crate::logging::Logger;
use crate::model::checkpoint::{Checkpoint, LATEST};
use crate::model::{Depth, ModelConfig, Pooling, ReidModel};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Sizes of a demo run: the default is meaningful, `--quick` is for CI.
struct Sizes {
    ids: usize,
    images_per_id: usize,
    cameras: usize,
    batch_size: usize,
    /// Base-model training epochs.
    epochs: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                ids: 16,
                images_per_id: 8,
                cameras: 4,
                batch_size: 32,
                epochs: 3,
            }
        } else {
            Self {
                ids: 100,
                images_per_id: 12,
                cameras: 6,
                batch_size: 64,
                epochs: 12,
            }
        }
    }
}

/// What the demo measured of one task's data.
#[derive(Serialize)]
struct TaskSummary {
    name: String,
    style: Style,
    train_ids: usize,
    train_images: usize,
    query_images: usize,
    gallery_images: usize,
    cameras: usize,
    batches_per_epoch: usize,
    loader_images_per_second: f64,
}

/// A model's numbers on one task.
#[derive(Serialize)]
struct TaskResult {
    task: String,
    #[serde(rename = "mAP")]
    map: f64,
    rank1: f64,
}

#[derive(Serialize)]
struct DemoSummary {
    tasks: Vec<TaskSummary>,
    /// The base model (trained on task A) on both tasks.
    base: Vec<TaskResult>,
    wall_seconds: f64,
}

/// Generates a task's dataset unless the folder already holds this exact configuration;
/// returns whether it (re)generated it.
fn ensure_synth(data_root: &Path, name: &str, cfg: &SynthConfig, log: &Logger) -> Result<bool> {
    let dir = data_root.join(name);
    let marker = data_root.join(format!("{name}.synth"));
    let key = format!("{cfg:?}");
    if dir.is_dir() && std::fs::read_to_string(&marker).ok().as_deref() == Some(key.as_str()) {
        log.line(format!("  {name}: reusing {}", dir.display()));
        return Ok(false);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("cannot replace stale demo data {}", dir.display()))?;
    }
    let start = Instant::now();
    let s = synth::generate(&dir, cfg)?;
    crate::io::write_atomic(&marker, key.as_bytes())?;
    log.line(format!(
        "  {name}: {} images rendered in {:.2} s",
        s.train_images + s.query_images + s.gallery_images,
        start.elapsed().as_secs_f64()
    ));
    Ok(true)
}

/// Runs an agd subcommand in-process from its command line, printing it first, so the
/// demo shows exactly what a user would type.
fn agd(log: &Logger, args: &[String]) -> Result<()> {
    log.line(format!("  $ agd {}", args.join(" ")));
    let cli = super::try_parse_from(std::iter::once("agd".to_string()).chain(args.iter().cloned()))
        .map_err(|e| anyhow::anyhow!("demo built a bad command line: {e}"))?;
    super::run(cli)
}

/// Loads a task through the data pipeline and times one full training epoch of batches.
fn load_task(
    data_root: &Path,
    name: &str,
    style: Style,
    sizes: &Sizes,
    seed: u64,
) -> Result<TaskSummary> {
    let dataset = ReidDataset::load(data_root, name)?;
    let (h, w) = (128, 64);
    let store = Arc::new(ImageStore::load(&dataset.train, h, w, name)?);
    let cfg = LoaderConfig::new(sizes.batch_size, 1, TrainTransform::default(), seed);
    let loader = TrainLoader::new(Arc::new(dataset.train.clone()), store, cfg, 0)?;
    let start = Instant::now();
    let mut images = 0usize;
    let mut batches = 0usize;
    for batch in loader.epoch(0) {
        images += batch.indices.len();
        batches += 1;
    }
    let rate = images as f64 / start.elapsed().as_secs_f64().max(1e-9);
    Ok(TaskSummary {
        name: name.to_string(),
        style,
        train_ids: dataset.num_train_ids,
        train_images: dataset.train.len(),
        query_images: dataset.query.len(),
        gallery_images: dataset.gallery.len(),
        cameras: dataset.num_cameras(),
        batches_per_epoch: batches,
        loader_images_per_second: rate,
    })
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    let device = crate::device::select(&args.device.gpu)?;
    let log = Logger::open(&args.out, true)?;
    let sizes = Sizes::new(args.quick);
    let data_root = args.out.join("data");
    log.line(format!(
        "agd demo{} → {} (device {})",
        if args.quick { " --quick" } else { "" },
        args.out.display(),
        crate::device::describe(device)
    ));

    log.line("1. synthetic tasks (agd synth)");
    let tasks = [
        ("task-a", Style::Street, args.seed),
        ("task-b", Style::Mall, args.seed + 1),
    ];
    let mut regenerated = false;
    for &(name, style, seed) in &tasks {
        let cfg = SynthConfig {
            ids: sizes.ids,
            test_ids: sizes.ids,
            images_per_id: sizes.images_per_id,
            cameras: sizes.cameras,
            height: 128,
            width: 64,
            seed,
            style,
            distractors: sizes.ids,
            junk: sizes.ids / 2,
        };
        regenerated |= ensure_synth(&data_root, name, &cfg, &log)?;
    }

    log.line("2. data pipeline (decode once, P×K sampler, training transform)");
    let summaries = tasks
        .iter()
        .map(|&(name, style, seed)| load_task(&data_root, name, style, &sizes, seed))
        .collect::<Result<Vec<_>>>()?;
    let table = crate::report::table(
        [
            "task",
            "style",
            "train ids",
            "train imgs",
            "query",
            "gallery",
            "cams",
            "batches/epoch",
            "loader img/s",
        ],
        summaries.iter().map(|s| {
            vec![
                s.name.clone(),
                format!("{:?}", s.style),
                s.train_ids.to_string(),
                s.train_images.to_string(),
                s.query_images.to_string(),
                s.gallery_images.to_string(),
                s.cameras.to_string(),
                s.batches_per_epoch.to_string(),
                format!("{:.0}", s.loader_images_per_second),
            ]
        }),
    );
    log.line(table.to_string());

    log.line("3. base model on task-a (agd train)");
    let base_logs = args.out.join("base");
    if regenerated && base_logs.exists() {
        std::fs::remove_dir_all(&base_logs)
            .with_context(|| format!("cannot replace stale {}", base_logs.display()))?;
    }
    let epochs = sizes.epochs.to_string();
    // From scratch on small synthetic images (no ImageNet weights here): ResNet-34 at
    // 64×32 with Adam learns steadily; the reference's SGD recipe assumes a pretrained
    // backbone.
    let mut train: Vec<String> = [
        "train",
        "--data-root",
        &data_root.display().to_string(),
        "--dataset",
        "task-a",
        "--logs-dir",
        &base_logs.display().to_string(),
        "-s",
        &args.seed.to_string(),
        "--depth",
        "34",
        "--embedding",
        "512",
        "--height",
        "64",
        "--width",
        "32",
        "--last-stride",
        "1",
        "-b",
        &sizes.batch_size.to_string(),
        "--optimizer",
        "Adam",
        "--learning-rate",
        "0.0003",
        "--warmup",
        "1",
        "--epochs-decay",
        &epochs,
        "--epochs",
        &epochs,
        "--evaluate",
        "0",
        "-g",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    train.extend(args.device.gpu.iter().cloned());
    if base_logs.join(LATEST).is_file() {
        train.extend(["--resume".to_string(), base_logs.display().to_string()]);
    }
    agd(&log, &train)?;

    log.line("4. evaluation of the base model on both tasks");
    let ck = Checkpoint::load(&base_logs.join(LATEST))?;
    let classes = ck.classes()?;
    let config = ModelConfig {
        depth: Depth::R34,
        last_stride: 1,
        pooling: Pooling::Avg,
        embedding: 512,
        classes,
    };
    let mut model = ReidModel::new(config, device)?;
    model.load_checkpoint(&ck)?;
    let mut base = Vec::new();
    for &(name, _, _) in &tasks {
        let dataset = ReidDataset::load(&data_root, name)?;
        let m = TestSet::load(&dataset, 64, 32)?.evaluate(&model, 128, OutputFeature::Embedding)?;
        base.push(TaskResult {
            task: name.to_string(),
            map: m.map,
            rank1: m.rank(1),
        });
    }
    let table = crate::report::table(
        [
            "model",
            "task-a mAP",
            "task-a R1",
            "task-b mAP",
            "task-b R1",
        ],
        [std::iter::once("base (trained on task-a)".to_string())
            .chain(base.iter().flat_map(|r| {
                [
                    format!("{:.1}%", 100.0 * r.map),
                    format!("{:.1}%", 100.0 * r.rank1),
                ]
            }))
            .collect::<Vec<_>>()],
    );
    log.line(table.to_string());

    let summary = DemoSummary {
        tasks: summaries,
        base,
        wall_seconds: start.elapsed().as_secs_f64(),
    };
    let json_path = args.out.join("summary.json");
    crate::io::write_atomic(
        &json_path,
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    log.line(format!(
        "5. not yet in the demo: invert (`agd invert`); not yet part of agd: incremental GD/simGD/AGD on task-b (issues #6-#7)\n\
         summary: {}  log: {}  ({:.1} s)",
        json_path.display(),
        log.path().display(),
        summary.wall_seconds
    ));
    Ok(())
}
