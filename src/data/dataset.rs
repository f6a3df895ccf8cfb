//! Dataset layouts (docs/method.md §2): Market-style folders, MSMT17's own list files, folders of
//! dreamed images, and real exemplars of an old task. Parsing only builds lists of records;
//! pixels are read by [`super::ImageStore`].

use super::rng::{stream, tag};
use crate::bad_setting;
use crate::error::{AboutExt, Setting};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One image: where it is, whose it is, which camera took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub path: PathBuf,
    /// Training: relabelled 0..N−1. Query/gallery: the raw id. Dreamed: the old class index.
    pub pid: i64,
    /// As in the file name (1-based for Market); −1 for dreamed images.
    pub camera: i64,
}

/// How a dataset lies on disk; detected from its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `bounding_box_train/`, `bounding_box_test/`, `query/`.
    Market,
    /// MSMT17 as downloaded: `train/`, `test/`, `list_{train,val,query,gallery}.txt`.
    Msmt17Lists,
}

/// A ReID dataset: training set with relabelled ids, query and gallery with raw ids.
#[derive(Clone, Debug)]
pub struct ReidDataset {
    pub name: String,
    pub root: PathBuf,
    pub layout: Layout,
    pub train: Vec<Record>,
    pub query: Vec<Record>,
    pub gallery: Vec<Record>,
    /// Number of training identities (classes of the classifier).
    pub num_train_ids: usize,
}

const MARKET_DIRS: [&str; 3] = ["bounding_box_train", "query", "bounding_box_test"];
const MSMT_LISTS: [&str; 4] = [
    "list_train.txt",
    "list_val.txt",
    "list_query.txt",
    "list_gallery.txt",
];

fn pid_cam_pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"([-\d]+)_c([-\d]+)").expect("static regex"))
}

/// Person id and camera from a Market-style file name: the first match of
/// `([-\d]+)_c([-\d]+)` (`0002_c1s1_000451_03.jpg` → (2, 1)).
pub fn parse_market_name(path: &Path) -> Result<(i64, i64)> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let caps = pid_cam_pattern().captures(&name).with_context(|| {
        format!(
            "{}: file name does not hold `<pid>_c<camera>` (expected e.g. 0002_c1s1_000451_03.jpg)",
            path.display()
        )
    })?;
    let number = |i: usize, what: &str| -> Result<i64> {
        caps[i]
            .parse()
            .with_context(|| format!("{}: {what} `{}` is not a number", path.display(), &caps[i]))
    };
    Ok((number(1, "person id")?, number(2, "camera")?))
}

/// A `.jpg`, `.jpeg` or `.png` file name (any case).
pub fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("jpg" | "jpeg" | "png")
    )
}

/// The image files directly in `dir`, in no particular order (any name: the callers
/// judge the names).
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.is_file() && is_image(&path) {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The images of a folder, in sorted path order; a missing or empty folder is an error.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: folder not found", dir.display());
    }
    let mut paths = images_in(dir)?;
    if paths.is_empty() {
        bail!("{}: no .jpg or .png images in this folder", dir.display());
    }
    paths.sort();
    Ok(paths)
}

/// Turns (path, raw pid, camera) triples into records: junk (pid −1) is skipped and, when
/// `relabel`, ids become 0..N−1 in order of first appearance. Returns the records and the
/// number of distinct ids.
fn to_records(
    items: impl IntoIterator<Item = (PathBuf, i64, i64)>,
    relabel: bool,
) -> (Vec<Record>, usize) {
    let mut ids: HashMap<i64, i64> = HashMap::new();
    let mut records = Vec::new();
    for (path, pid, camera) in items {
        if pid == -1 {
            continue;
        }
        let next = ids.len() as i64;
        let label = *ids.entry(pid).or_insert(if relabel { next } else { pid });
        records.push(Record {
            path,
            pid: label,
            camera,
        });
    }
    (records, ids.len())
}

fn market_split(dir: &Path, relabel: bool) -> Result<(Vec<Record>, usize)> {
    let items = list_images(dir)?
        .into_iter()
        .map(|p| parse_market_name(&p).map(|(pid, cam)| (p, pid, cam)))
        .collect::<Result<Vec<_>>>()?;
    let (records, ids) = to_records(items, relabel);
    if records.is_empty() {
        bail!("{}: every image is junk (pid -1)", dir.display());
    }
    Ok((records, ids))
}

/// Camera of an MSMT17 file: the third `_`-separated field of its name
/// (`0000_000_01_0303morning_0015_0.jpg` → 1).
fn msmt_camera(path: &Path) -> Result<i64> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.split('_')
        .nth(2)
        .and_then(|f| f.parse().ok())
        .with_context(|| {
            format!(
                "{}: MSMT17 file name has no camera in its third `_` field (expected e.g. 0000_000_01_0303morning_0015_0.jpg)",
                path.display()
            )
        })
}

/// One MSMT17 list file: lines `<path relative to images_dir> <pid>`.
fn msmt_list(list: &Path, images_dir: &Path) -> Result<Vec<(PathBuf, i64, i64)>> {
    let text =
        std::fs::read_to_string(list).with_context(|| format!("cannot read {}", list.display()))?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(rel), Some(pid), None) = (fields.next(), fields.next(), fields.next()) else {
            bail!(
                "{}:{}: expected `<relative path> <pid>`, found `{line}`",
                list.display(),
                n + 1
            );
        };
        let pid: i64 = pid.parse().with_context(|| {
            format!(
                "{}:{}: person id `{pid}` is not a number",
                list.display(),
                n + 1
            )
        })?;
        let path = images_dir.join(rel);
        if !path.is_file() {
            bail!(
                "{}:{}: image {} does not exist",
                list.display(),
                n + 1,
                path.display()
            );
        }
        let camera = msmt_camera(&path)?;
        items.push((path, pid, camera));
    }
    if items.is_empty() {
        bail!("{}: list is empty", list.display());
    }
    Ok(items)
}

impl ReidDataset {
    /// Loads `<data_root>/<name>`, detecting its layout.
    pub fn load(data_root: &Path, name: &str) -> Result<Self> {
        Self::load_as(data_root, name, Setting::Dataset)
    }

    /// [`Self::load`] for a dataset that `setting` names: a missing folder is that
    /// setting's error (the CLI then names its flag, not `--dataset`).
    pub fn load_as(data_root: &Path, name: &str, setting: Setting) -> Result<Self> {
        if !data_root.is_dir() {
            bad_setting!(
                Setting::DataRoot,
                data_root.display(),
                "folder not found (expected one folder per dataset inside it)"
            );
        }
        let root = data_root.join(name);
        if !root.is_dir() {
            bad_setting!(
                setting,
                name,
                "{} not found (expected a Market-style folder with {} or MSMT17's {})",
                root.display(),
                MARKET_DIRS.join(", "),
                MSMT_LISTS.join(", ")
            );
        }
        let layout = if root.join("list_train.txt").is_file() {
            Layout::Msmt17Lists
        } else {
            Layout::Market
        };
        let (train, num_train_ids, query, gallery) = match layout {
            Layout::Market => {
                let (train, n) = market_split(&root.join(MARKET_DIRS[0]), true)?;
                let (query, _) = market_split(&root.join(MARKET_DIRS[1]), false)?;
                let (gallery, _) = market_split(&root.join(MARKET_DIRS[2]), false)?;
                (train, n, query, gallery)
            }
            Layout::Msmt17Lists => {
                for list in MSMT_LISTS {
                    if !root.join(list).is_file() {
                        bail!(
                            "{}: MSMT17 layout (list_train.txt found) but {list} is missing",
                            root.display()
                        );
                    }
                }
                let (train_dir, test_dir) = (root.join("train"), root.join("test"));
                let mut train_items = msmt_list(&root.join(MSMT_LISTS[0]), &train_dir)?;
                train_items.extend(msmt_list(&root.join(MSMT_LISTS[1]), &train_dir)?);
                let (train, n) = to_records(train_items, true);
                let (query, _) =
                    to_records(msmt_list(&root.join(MSMT_LISTS[2]), &test_dir)?, false);
                let (gallery, _) =
                    to_records(msmt_list(&root.join(MSMT_LISTS[3]), &test_dir)?, false);
                (train, n, query, gallery)
            }
        };
        Ok(Self {
            name: name.to_string(),
            root,
            layout,
            train,
            query,
            gallery,
            num_train_ids,
        })
    }

    /// Distinct cameras over all three splits.
    pub fn num_cameras(&self) -> usize {
        let mut cams: Vec<i64> = self
            .train
            .iter()
            .chain(&self.query)
            .chain(&self.gallery)
            .map(|r| r.camera)
            .collect();
        cams.sort_unstable();
        cams.dedup();
        cams.len()
    }
}

/// Dreamed images (`--inversion-dir`): `<pid>_<anything>.jpg|png`, at most `exemplars`
/// per pid in sorted path order, camera −1. The pid is the old model's class index.
#[derive(Clone, Debug)]
pub struct Dreamed {
    pub dir: PathBuf,
    pub records: Vec<Record>,
    pub num_ids: usize,
}

/// The pid of a dreamed image's file name: digits before the first `_`.
pub fn parse_dreamed_name(path: &Path) -> Result<i64> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.split_once('_')
        .and_then(|(pid, _)| {
            let ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| pid.parse().ok()).flatten()
        })
        .with_context(|| {
            format!(
                "{}: dreamed image name must be `<pid>_<anything>.jpg|png` with a non-negative integer pid",
                path.display()
            )
        })
}

impl Dreamed {
    pub fn load(dir: &Path, exemplars: usize) -> Result<Self> {
        if exemplars == 0 {
            bad_setting!(
                Setting::Exemplars,
                0,
                "at least one dreamed image per identity is needed"
            );
        }
        let paths = list_images(dir)
            .context("no dreamed images")
            .about_value(Setting::InversionDir, dir.display())?;
        let mut by_pid: BTreeMap<i64, usize> = BTreeMap::new();
        let mut records = Vec::new();
        for path in paths {
            let pid = parse_dreamed_name(&path)?;
            let taken = by_pid.entry(pid).or_insert(0);
            if *taken < exemplars {
                *taken += 1;
                records.push(Record {
                    path,
                    pid,
                    camera: -1,
                });
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            num_ids: by_pid.len(),
            records,
        })
    }
}

/// Real exemplars of an old task (`--exemplar-dataset`): `per_id` training images of every
/// identity, in place of dreamed ones — the upper bound a data-free method is compared
/// with (the reference's `Dataset(root, old, exemplars=N)`).
#[derive(Clone, Debug)]
pub struct Exemplars {
    pub dataset: String,
    /// Labelled as `agd train --dataset <dataset>` labelled them (training pids relabelled
    /// 0..N−1 in order of first appearance), so pid k is the old model's class k; cameras
    /// as in the file names. In the dataset's order.
    pub records: Vec<Record>,
    /// Identities of the dataset's training split (the classes of a model trained on it).
    pub num_ids: usize,
}

impl Exemplars {
    /// `per_id` training images of every identity of `<data_root>/<name>`, drawn without
    /// replacement by a stream of `seed` and the identity (so a seed always picks the same
    /// images, and another seed other ones); an identity with at most `per_id` images gives
    /// them all. The dataset is read by [`ReidDataset::load`], the loader `agd train` uses,
    /// so the labels are the ones the old model learnt.
    pub fn load(data_root: &Path, name: &str, per_id: usize, seed: u64) -> Result<Self> {
        if per_id == 0 {
            bad_setting!(
                Setting::Exemplars,
                0,
                "at least one image per old identity is needed"
            );
        }
        let dataset = ReidDataset::load_as(data_root, name, Setting::ExemplarDataset)?;
        let mut by_pid: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, r) in dataset.train.iter().enumerate() {
            by_pid.entry(r.pid).or_default().push(i);
        }
        let mut chosen = Vec::new();
        for (pid, mut indices) in by_pid {
            if indices.len() > per_id {
                let mut rng = stream(seed, &[tag::EXEMPLARS, pid as u64]);
                indices.shuffle(&mut rng);
                indices.truncate(per_id);
            }
            chosen.extend(indices);
        }
        chosen.sort_unstable();
        Ok(Self {
            dataset: name.to_string(),
            records: chosen
                .into_iter()
                .map(|i| dataset.train[i].clone())
                .collect(),
            num_ids: dataset.num_train_ids,
        })
    }
}
