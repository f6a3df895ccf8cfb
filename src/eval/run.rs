//! `agd evaluate` as a library stage (SPEC §8): checkpoints × datasets → mAP and CMC,
//! optionally re-ranked; `a+b` evaluates each query set against the union gallery
//! ([`super::union`]); results as tables, and appended to `eval.txt` beside each
//! checkpoint.

use super::features::extract;
use super::features_file::FeatureFile;
use super::metrics::{
    distance_matrix, evaluate, evaluate_features, Distance, Labels, Metrics, DEFAULT_TOPK,
};
use super::plan::EvalPlan;
use super::ranklist;
use super::rerank::{rerank, rerank_chunked, RerankParams, REFERENCE_CHUNK};
use super::union::{union, EvalSplit, Part};
use crate::bad_setting;
use crate::data::{ImageStore, ReidDataset};
use crate::error::Setting;
use crate::model::checkpoint::{resolve, Checkpoint};
use crate::model::ReidModel;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::Tensor;

/// One line of results.
#[derive(Serialize, Clone)]
pub struct EvalRow {
    pub checkpoint: String,
    pub dataset: String,
    #[serde(rename = "mAP")]
    pub map: f64,
    pub rank1: f64,
    pub rank5: f64,
    pub rank10: f64,
    pub rank20: f64,
    pub re_ranked: bool,
    pub valid_queries: usize,
}

impl EvalRow {
    fn new(checkpoint: &str, dataset: &str, m: &Metrics, re_ranked: bool) -> Self {
        Self {
            checkpoint: checkpoint.to_string(),
            dataset: dataset.to_string(),
            map: m.map,
            rank1: m.rank(1),
            rank5: m.rank(5),
            rank10: m.rank(10),
            rank20: m.rank(20),
            re_ranked,
            valid_queries: m.valid_queries,
        }
    }

    /// The mean of several rows (the `a+b` average).
    fn average(checkpoint: &str, dataset: &str, rows: &[EvalRow]) -> Self {
        let n = rows.len() as f64;
        let mean = |f: fn(&EvalRow) -> f64| rows.iter().map(f).sum::<f64>() / n;
        Self {
            checkpoint: checkpoint.to_string(),
            dataset: dataset.to_string(),
            map: mean(|r| r.map),
            rank1: mean(|r| r.rank1),
            rank5: mean(|r| r.rank5),
            rank10: mean(|r| r.rank10),
            rank20: mean(|r| r.rank20),
            re_ranked: rows.iter().all(|r| r.re_ranked),
            valid_queries: rows.iter().map(|r| r.valid_queries).sum(),
        }
    }
}

/// Metrics of one split, and the distance rows of its first `--rank-list-n` queries for
/// the rank-list pictures (none without `--rank-list`). Plain evaluation never holds the
/// whole Q×G matrix; re-ranking computes it anyway.
fn score(args: &EvalPlan, s: &EvalSplit) -> Result<(Metrics, Vec<f32>)> {
    let query = Labels::new(&s.query_labels.0, &s.query_labels.1);
    let gallery = Labels::new(&s.gallery_labels.0, &s.gallery_labels.1);
    if args.re_ranking {
        let p = RerankParams::default();
        let dist = if args.one_shot {
            rerank(&s.query, &s.gallery, p)?
        } else {
            rerank_chunked(&s.query, &s.gallery, p, REFERENCE_CHUNK)?
        };
        return Ok((evaluate(&dist, query, gallery, DEFAULT_TOPK)?, dist));
    }
    let m = evaluate_features(
        &s.query,
        &s.gallery,
        Distance::Cosine,
        query,
        gallery,
        DEFAULT_TOPK,
    )?;
    let shown = match args.rank_list {
        Some(_) => args.rank_list_n.min(query.pids.len()) as i64,
        None => 0,
    };
    let rows = distance_matrix(
        &s.query.f_narrow(0, 0, shown)?,
        &s.gallery,
        Distance::Cosine,
    )?;
    Ok((m, rows))
}

/// The checkpoints `ckpt` names: one file or folder, or with `recursive` every
/// `checkpoint*` file under the folder.
fn checkpoints(args: &EvalPlan) -> Result<Vec<PathBuf>> {
    if !args.recursive {
        return Ok(vec![resolve(&args.ckpt, Setting::Checkpoint)?]);
    }
    if !args.ckpt.is_dir() {
        bad_setting!(
            Setting::Checkpoint,
            args.ckpt.display(),
            "a recursive search needs a folder"
        );
    }
    let mut found = Vec::new();
    let mut stack = vec![args.ckpt.clone()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            let path = entry?.path();
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                stack.push(path);
            } else if name.starts_with("checkpoint")
                && [".safetensors", ".pth.tar", ".pdparams"]
                    .iter()
                    .any(|x| name.ends_with(x))
            {
                found.push(path);
            }
        }
    }
    if found.is_empty() {
        bad_setting!(
            Setting::Checkpoint,
            args.ckpt.display(),
            "no checkpoint*.safetensors, checkpoint*.pth.tar or checkpoint*.pdparams below it"
        );
    }
    found.sort();
    Ok(found)
}

/// A dataset's images, decoded once for all checkpoints.
struct Loaded {
    dataset: ReidDataset,
    query: Arc<ImageStore>,
    gallery: Arc<ImageStore>,
}

fn feature_path(base: &Path, dataset: &str, several: bool) -> PathBuf {
    if !several {
        return base.to_path_buf();
    }
    let stem = base.file_stem().unwrap_or_default().to_string_lossy();
    let ext = base
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    base.with_file_name(format!("{stem}-{dataset}{ext}"))
}

fn print_rows(args: &EvalPlan, title: &str, rows: &[EvalRow]) {
    if args.json {
        return;
    }
    println!("{title}");
    let table = crate::report::table(
        [
            "dataset", "mAP", "rank-1", "rank-5", "rank-10", "rank-20", "queries",
        ],
        rows.iter().map(|r| {
            vec![
                format!(
                    "{}{}",
                    r.dataset,
                    if r.re_ranked { " (re-ranked)" } else { "" }
                ),
                format!("{:.1}%", 100.0 * r.map),
                format!("{:.1}%", 100.0 * r.rank1),
                format!("{:.1}%", 100.0 * r.rank5),
                format!("{:.1}%", 100.0 * r.rank10),
                format!("{:.1}%", 100.0 * r.rank20),
                r.valid_queries.to_string(),
            ]
        }),
    );
    println!("{table}");
}

/// Appends the results to `eval.txt` beside the checkpoint (rewritten atomically).
fn append_eval_txt(ck: &Checkpoint, rows: &[EvalRow]) -> Result<()> {
    let path = ck.path.parent().unwrap_or(Path::new(".")).join("eval.txt");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!("{}\nEpoch: {}\n", ck.path.display(), ck.epoch));
    for r in rows {
        text.push_str(&format!(
            "{}{}:\n    mAP: {:.1}%\n",
            r.dataset,
            if r.re_ranked { " (re-ranked)" } else { "" },
            100.0 * r.map
        ));
        for (k, v) in [(1, r.rank1), (5, r.rank5), (10, r.rank10), (20, r.rank20)] {
            text.push_str(&format!("    CMC-{k:<3}: {:.1}%\n", 100.0 * v));
        }
        text.push('\n');
    }
    crate::io::write_atomic(&path, text.as_bytes())
}

fn run_features_file(args: &EvalPlan, file: &Path) -> Result<Vec<EvalRow>> {
    let f = FeatureFile::load(file)?;
    let split = EvalSplit {
        query: f.query,
        gallery: f.gallery,
        query_labels: (f.query_pids, f.query_cams),
        gallery_labels: (f.gallery_pids, f.gallery_cams),
    };
    let (m, _) = score(args, &split)?;
    let name = file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let rows = vec![EvalRow::new("", &name, &m, args.re_ranking)];
    print_rows(args, &format!("features {}", file.display()), &rows);
    Ok(rows)
}

/// `agd evaluate`: every checkpoint on every dataset (or a feature file), printed as
/// tables as it goes (unless `json`); returns the rows.
pub fn run(args: &EvalPlan) -> Result<Vec<EvalRow>> {
    crate::alloc::release_freed_memory();
    match &args.features {
        Some(file) => run_features_file(args, file),
        None => run_checkpoints(args),
    }
}

fn run_checkpoints(args: &EvalPlan) -> Result<Vec<EvalRow>> {
    let device = crate::device::select(&args.gpu)?;
    let ckpts = checkpoints(args)?;
    let (h, w) = (args.height, args.width);
    let mut loaded: HashMap<String, Loaded> = HashMap::new();
    for spec in &args.datasets {
        for part in spec.split('+') {
            if part.is_empty() {
                bad_setting!(
                    Setting::DatasetPart,
                    spec,
                    "empty name in a `+` combination"
                );
            }
            if !loaded.contains_key(part) {
                let dataset = ReidDataset::load(&args.data_root, part)?;
                let query = Arc::new(ImageStore::load(
                    &dataset.query,
                    h,
                    w,
                    &format!("{part} query"),
                )?);
                let gallery = Arc::new(ImageStore::load(
                    &dataset.gallery,
                    h,
                    w,
                    &format!("{part} gallery"),
                )?);
                loaded.insert(
                    part.to_string(),
                    Loaded {
                        dataset,
                        query,
                        gallery,
                    },
                );
            }
        }
    }
    let mut all = Vec::new();
    for ck_path in &ckpts {
        let ck = Checkpoint::load(ck_path)?;
        let model = ReidModel::from_checkpoint(&ck, &args.model, device)?;
        let ck_name = ck_path.display().to_string();
        let feature = args.output_feature;
        let mut features: HashMap<&str, (Tensor, Tensor)> = HashMap::new();
        for (name, l) in &loaded {
            let q = extract(
                &model,
                &l.query,
                args.batch_size,
                feature,
                &format!("{name} query"),
            )?;
            let g = extract(
                &model,
                &l.gallery,
                args.batch_size,
                feature,
                &format!("{name} gallery"),
            )?;
            features.insert(name.as_str(), (q, g));
        }
        let mut rows = Vec::new();
        for spec in &args.datasets {
            let parts: Vec<&str> = spec.split('+').collect();
            let union_parts: Vec<Part> = parts
                .iter()
                .map(|part| {
                    let (l, (q, g)) = (&loaded[*part], &features[part]);
                    Part {
                        query: &l.dataset.query,
                        gallery: &l.dataset.gallery,
                        query_features: q,
                        gallery_features: g,
                    }
                })
                .collect();
            let mut part_rows = Vec::new();
            for (part, split) in parts.iter().zip(union(&union_parts)) {
                let l = &loaded[*part];
                let (m, dist) = score(args, &split)?;
                let label = if parts.len() > 1 {
                    format!("{part} (in {spec})")
                } else {
                    part.to_string()
                };
                part_rows.push(EvalRow::new(&ck_name, &label, &m, args.re_ranking));
                if parts.len() == 1 {
                    if let Some(base) = &args.save_features {
                        let path = feature_path(base, part, args.datasets.len() > 1);
                        FeatureFile {
                            query: split.query.shallow_clone(),
                            gallery: split.gallery.shallow_clone(),
                            query_pids: split.query_labels.0.clone(),
                            gallery_pids: split.gallery_labels.0.clone(),
                            query_cams: split.query_labels.1.clone(),
                            gallery_cams: split.gallery_labels.1.clone(),
                        }
                        .save(&path)?;
                    }
                    if let Some(dir) = &args.rank_list {
                        ranklist::write(
                            &dir.join(part),
                            &dist,
                            &l.dataset.query,
                            &l.dataset.gallery,
                            args.rank_list_n,
                            10,
                        )?;
                    }
                }
            }
            if parts.len() > 1 {
                let avg = EvalRow::average(&ck_name, &format!("{spec} (average)"), &part_rows);
                part_rows.push(avg);
            }
            rows.extend(part_rows);
        }
        print_rows(args, &format!("{ck_name} (epoch {})", ck.epoch), &rows);
        if args.output {
            append_eval_txt(&ck, &rows)?;
        }
        all.extend(rows);
    }
    Ok(all)
}
