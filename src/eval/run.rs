//! `agd evaluate` as a library stage (docs/method.md §8): checkpoints × datasets → mAP and CMC,
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
use super::union::{self, union, union_records, EvalSplit, Group, Part};
use crate::bad_setting;
use crate::data::{ImageStore, ReidDataset};
use crate::dist;
use crate::error::{AboutExt, Setting};
use crate::model::checkpoint::{resolve, Checkpoint};
use crate::model::ReidModel;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// One line of results.
#[derive(Serialize, Clone, Debug)]
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
    check_finite(&s.query, "query")?;
    check_finite(&s.gallery, "gallery")?;
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

/// Refuses features that are NaN or infinite, naming the first such row and which it
/// holds: the distances would otherwise be NaN ("distance of query 1 to gallery item 0 is
/// NaN"), which says neither where the bad value came from nor what it was.
fn check_finite(features: &Tensor, side: &str) -> Result<()> {
    let rows = features
        .f_isfinite()?
        .f_logical_not()?
        .f_any_dim(1, false)?
        .f_to_kind(Kind::Int64)?
        .f_to_device(tch::Device::Cpu)?;
    let rows = Vec::<i64>::try_from(&rows)?;
    let mut bad = rows
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != 0)
        .map(|(i, _)| i);
    let Some(row) = bad.next() else {
        return Ok(());
    };
    let values = features.f_get(row as i64)?;
    let has = |t: Tensor| -> Result<bool> { Ok(t.f_any()?.f_int64_value(&[])? != 0) };
    let holds = match (has(values.f_isnan()?)?, has(values.f_isinf()?)?) {
        (true, true) => "NaN and infinite values",
        (true, false) => "NaN",
        _ => "an infinite value",
    };
    let others = match bad.count() {
        0 => String::new(),
        n => format!(" ({n} more rows are not finite either)"),
    };
    bail!("{side} feature {row} holds {holds}{others}")
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
    // Each real folder once: a symlink loop (or two links to one folder) would otherwise
    // list its checkpoints at every depth, or never end.
    let mut visited = std::collections::HashSet::new();
    while let Some(dir) = stack.pop() {
        let real = dir
            .canonicalize()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        if !visited.insert(real) {
            continue;
        }
        let mut entries = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
        {
            entries.push(entry?.path());
        }
        // In name order (the first of two links to one folder names its checkpoints), the
        // first folder popped first.
        entries.sort();
        let mut folders = Vec::new();
        for path in entries {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if path.is_dir() {
                folders.push(path);
            } else if name.starts_with("checkpoint")
                && crate::model::checkpoint::CHECKPOINT_EXTENSIONS
                    .iter()
                    .any(|x| name.ends_with(x))
            {
                found.push(path);
            }
        }
        stack.extend(folders.into_iter().rev());
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

/// What [`run`] reports as it goes: each checkpoint's (or feature file's) rows under a
/// title naming it. The caller decides how to show them ([`table`]).
pub type OnRows<'a> = &'a mut dyn FnMut(&str, &[EvalRow]);

/// The rows as a text table under their title: the CLI's and the pipeline logs' form.
pub fn table(title: &str, rows: &[EvalRow]) -> String {
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
    format!("{title}\n{table}")
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

fn run_features_file(args: &EvalPlan, file: &Path, on_rows: OnRows) -> Result<Vec<EvalRow>> {
    let f = FeatureFile::load(file)?;
    let split = EvalSplit {
        query: f.query,
        gallery: f.gallery,
        query_labels: (f.query_pids, f.query_cams),
        gallery_labels: (f.gallery_pids, f.gallery_cams),
    };
    let (m, _) = score(args, &split).about_value(Setting::FeatureFile, file.display())?;
    let name = file
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .to_string();
    let rows = vec![EvalRow::new("", &name, &m, args.re_ranking)];
    on_rows(&format!("features {}", file.display()), &rows);
    Ok(rows)
}

/// Checkpoints of a recursive evaluation that failed, and the results of those that did
/// not: one unreadable file among many must neither hide the others' results nor pass
/// unnoticed. [`run`] returns it as its error whenever a checkpoint of several failed.
#[derive(Debug)]
pub struct CheckpointsFailed {
    /// Rows of the checkpoints that were evaluated.
    pub rows: Vec<EvalRow>,
    /// Each failed checkpoint, with why.
    pub failed: Vec<(PathBuf, anyhow::Error)>,
    /// Checkpoints tried.
    pub total: usize,
}

impl CheckpointsFailed {
    /// The message, each checkpoint's error rendered by `render` (anyhow's `{:#}`, or the
    /// CLI's flag-naming message).
    pub fn describe(&self, render: impl Fn(&anyhow::Error) -> String) -> String {
        let lines: Vec<String> = self
            .failed
            .iter()
            .map(|(path, e)| {
                let (shown, msg) = (path.display().to_string(), render(e));
                if msg.contains(&shown) {
                    format!("  {msg}")
                } else {
                    format!("  {shown}: {msg}")
                }
            })
            .collect();
        format!(
            "{} of {} checkpoints failed (the other {} were evaluated):\n{}",
            self.failed.len(),
            self.total,
            self.total - self.failed.len(),
            lines.join("\n")
        )
    }
}

impl std::fmt::Display for CheckpointsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(|e| format!("{e:#}")))
    }
}

impl std::error::Error for CheckpointsFailed {}

/// `agd evaluate`: every checkpoint on every dataset (or a feature file), each one's rows
/// given to `on_rows` as they come; returns all rows. The plan is checked first
/// ([`EvalPlan::validate`]). With several checkpoints, one that fails does not stop the
/// others: the error is then a [`CheckpointsFailed`] holding their rows.
///
/// In a data-parallel run ([`crate::dist::World`]), every rank extracts its share of the
/// features and rank 0 scores them and writes the outputs; the other ranks return no rows.
pub fn run(args: &EvalPlan, on_rows: OnRows) -> Result<Vec<EvalRow>> {
    args.validate()?;
    crate::alloc::release_freed_memory();
    let world = dist::World::from_env()?;
    match &args.features {
        Some(_) if world.as_ref().is_some_and(|w| w.rank != 0) => Ok(Vec::new()),
        Some(file) => run_features_file(args, file, on_rows),
        None => {
            let ranks = match &world {
                Some(w) => Some(w.join(args.dist.timeout())?),
                None => None,
            };
            let rows = run_checkpoints(args, ranks.as_ref(), on_rows)?;
            if let Some(g) = ranks {
                g.close()?;
            }
            Ok(rows)
        }
    }
}

fn run_checkpoints(
    args: &EvalPlan,
    ranks: Option<&dist::Group>,
    on_rows: OnRows,
) -> Result<Vec<EvalRow>> {
    // Evaluation keeps no log: `--deterministic` needs no note.
    let (device, _) = args.device.select()?;
    let ckpts = checkpoints(args)?;
    let loaded = load_datasets(args)?;
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for ck_path in &ckpts {
        let own = (ckpts.len() > 1).then(|| args.for_one_of_several(ck_path));
        let plan = own.as_ref().unwrap_or(args);
        match evaluate_checkpoint(plan, ck_path, &loaded, device, ranks, &mut *on_rows) {
            Ok(rows) => all.extend(rows),
            Err(e) if ckpts.len() == 1 => return Err(e),
            Err(e) => failed.push((ck_path.clone(), e)),
        }
    }
    if !failed.is_empty() {
        return Err(crate::error::Error::from(CheckpointsFailed {
            rows: all,
            failed,
            total: ckpts.len(),
        })
        .into());
    }
    Ok(all)
}

/// Every dataset the plan names (each part of `a+b`, each member of `aUb`, once), images
/// decoded once for all checkpoints.
fn load_datasets(args: &EvalPlan) -> Result<HashMap<String, Loaded>> {
    let (h, w) = (args.data.size.height, args.data.size.width);
    let mut loaded: HashMap<String, Loaded> = HashMap::new();
    let names = args
        .datasets
        .iter()
        .flat_map(|spec| spec.split('+'))
        .flat_map(|part| union::members(&args.data.data_root, part));
    for part in names {
        if loaded.contains_key(part) {
            continue;
        }
        let dataset = ReidDataset::load(&args.data.data_root, part)?;
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
    Ok(loaded)
}

/// Query and gallery features of every loaded dataset, by name.
fn extract_all<'a>(
    args: &EvalPlan,
    model: &ReidModel,
    loaded: &'a HashMap<String, Loaded>,
    ranks: Option<&dist::Group>,
) -> Result<HashMap<&'a str, (Tensor, Tensor)>> {
    let mut features = HashMap::new();
    // In name order: every rank of a data-parallel run exchanges the same sets in turn.
    let mut names: Vec<&String> = loaded.keys().collect();
    names.sort();
    for name in names {
        let l = &loaded[name];
        let side = |store, what| {
            let what = format!("{name} {what}");
            let feature = args.output_feature;
            extract(model, store, args.batch_size, feature, &what, ranks)
        };
        let q = side(&l.query, "query")?;
        let g = side(&l.gallery, "gallery")?;
        features.insert(name.as_str(), (q, g));
    }
    Ok(features)
}

/// One part of a dataset spec (`a`, or `aUb`: one dataset made of several) with its
/// features.
fn group<'a>(
    args: &EvalPlan,
    part: &str,
    loaded: &'a HashMap<String, Loaded>,
    features: &'a HashMap<&str, (Tensor, Tensor)>,
) -> Group {
    let members: Vec<Part> = union::members(&args.data.data_root, part)
        .into_iter()
        .map(|name| {
            let (l, (q, g)) = (&loaded[name], &features[name]);
            Part {
                query: &l.dataset.query,
                gallery: &l.dataset.gallery,
                query_features: q,
                gallery_features: g,
            }
        })
        .collect();
    Group::of(&members)
}

/// One checkpoint on every dataset: its rows (reported to `on_rows`, and appended to
/// `eval.txt` when asked), its feature files and rank lists.
fn evaluate_checkpoint(
    args: &EvalPlan,
    ck_path: &Path,
    loaded: &HashMap<String, Loaded>,
    device: tch::Device,
    ranks: Option<&dist::Group>,
    on_rows: OnRows,
) -> Result<Vec<EvalRow>> {
    let ck = Checkpoint::load(ck_path)?;
    let mut model = ReidModel::from_checkpoint(&ck, &args.model, device)?;
    model.compute = args.device.compute.on(device);
    let ck_name = ck_path.display().to_string();
    let features = extract_all(args, &model, loaded, ranks)?;
    if ranks.is_some_and(|g| g.rank() != 0) {
        return Ok(Vec::new());
    }
    let mut rows = Vec::new();
    for spec in &args.datasets {
        let parts: Vec<&str> = spec.split('+').collect();
        let groups: Vec<Group> = parts
            .iter()
            .map(|part| group(args, part, loaded, &features))
            .collect();
        let union_parts: Vec<Part> = groups.iter().map(Group::part).collect();
        let (gallery_records, query_records) = union_records(&union_parts);
        let mut part_rows = Vec::new();
        for ((part, split), query_records) in
            parts.iter().zip(union(&union_parts)).zip(&query_records)
        {
            let label = if parts.len() > 1 {
                format!("{part} (in {spec})")
            } else {
                part.to_string()
            };
            let (m, dist) = score(args, &split).with_context(|| format!("{ck_name} on {label}"))?;
            part_rows.push(EvalRow::new(&ck_name, &label, &m, args.re_ranking));
            if let Some(path) = args.feature_path(spec, part) {
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
            if let Some(dir) = args.rank_list_dir(spec, part) {
                ranklist::write(
                    &dir,
                    &dist,
                    query_records,
                    &gallery_records,
                    args.rank_list_n,
                    10,
                )?;
            }
        }
        if parts.len() > 1 {
            let avg = EvalRow::average(&ck_name, &format!("{spec} (average)"), &part_rows);
            part_rows.push(avg);
        }
        rows.extend(part_rows);
    }
    on_rows(&format!("{ck_name} (epoch {})", ck.epoch), &rows);
    if args.output {
        append_eval_txt(&ck, &rows)?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recursive search visits every real folder once (issue 36, item 6): a symlink loop
    /// listed the same checkpoint at every depth, and two loops never ended.
    #[cfg(unix)]
    #[test]
    fn a_recursive_search_visits_each_real_folder_once() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in ["a", "c"] {
            std::fs::create_dir(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("a/checkpoint.safetensors"), b"").unwrap();
        std::fs::write(root.join("c/checkpoint.pdparams"), b"").unwrap();
        symlink(root, root.join("a/loop")).unwrap();
        symlink(root.join("c"), root.join("c/self")).unwrap();
        symlink(root.join("a"), root.join("b")).unwrap();
        let plan = EvalPlan {
            ckpt: root.to_path_buf(),
            recursive: true,
            ..EvalPlan::default()
        };
        assert_eq!(
            checkpoints(&plan).unwrap(),
            [
                root.join("a/checkpoint.safetensors"),
                root.join("c/checkpoint.pdparams")
            ]
        );
    }
}
