//! Query sets against a union gallery (`--dataset a+b`): every part's query set is scored
//! against the galleries of all parts together, as when one model must serve both old and
//! new cameras. The parts' identity and camera labels are offset into disjoint ranges, so
//! a person of one dataset never matches a same-numbered person of another, and the
//! same-camera filter never removes another dataset's images.
//!
//! `aUb` is the reference's other union (`MixedDataset` mode `U`): one dataset made of a
//! and b, whose query set is all their queries, scored as one set against all their
//! galleries. It can stand alone or be a part of `+` (`aUb+c`).

use crate::data::Record;
use std::path::Path;
use tch::Tensor;

/// Features and labels of one query set against one gallery: what mAP/CMC are scored on.
pub struct EvalSplit {
    pub query: Tensor,
    pub gallery: Tensor,
    /// (pids, cameras) of the query rows.
    pub query_labels: (Vec<i64>, Vec<i64>),
    /// (pids, cameras) of the gallery rows.
    pub gallery_labels: (Vec<i64>, Vec<i64>),
}

/// One dataset's part of a union: its records and their features.
pub struct Part<'a> {
    pub query: &'a [Record],
    pub gallery: &'a [Record],
    pub query_features: &'a Tensor,
    pub gallery_features: &'a Tensor,
}

/// The datasets of one `+` part: `aUb` names the union of a and b. A part that is itself
/// a dataset folder under `data_root` is never split, so a folder named `CUHK03` stays
/// one dataset; nor is a name none of whose pieces is a dataset folder, so a missing
/// `CUHK03` is reported as itself, not as `C`.
pub fn members<'a>(data_root: &Path, part: &'a str) -> Vec<&'a str> {
    let pieces: Vec<&str> = part.split('U').collect();
    let split = pieces.len() > 1
        && !data_root.join(part).is_dir()
        && pieces
            .iter()
            .any(|p| !p.is_empty() && data_root.join(p).is_dir());
    if split {
        pieces
    } else {
        vec![part]
    }
}

/// One `+` part as one dataset, owned: a dataset's own query set and gallery, or (for
/// `aUb`) its members' concatenated, their labels offset apart as in [`union`].
pub struct Group {
    pub query: Vec<Record>,
    pub gallery: Vec<Record>,
    pub query_features: Tensor,
    pub gallery_features: Tensor,
}

impl Group {
    /// The members of `aUb` merged; one member is the dataset as it is, labels unchanged.
    pub fn of(members: &[Part]) -> Group {
        let (gallery, queries) = union_records(members);
        let cat = |tensors: Vec<Tensor>| Tensor::cat(&tensors, 0);
        Group {
            query: queries.concat(),
            gallery,
            query_features: cat(members
                .iter()
                .map(|m| m.query_features.shallow_clone())
                .collect()),
            gallery_features: cat(members
                .iter()
                .map(|m| m.gallery_features.shallow_clone())
                .collect()),
        }
    }

    /// The group as a part of a `+` union.
    pub fn part(&self) -> Part<'_> {
        Part {
            query: &self.query,
            gallery: &self.gallery,
            query_features: &self.query_features,
            gallery_features: &self.gallery_features,
        }
    }
}

/// (pids, cameras) of records.
pub fn labels(records: &[Record]) -> (Vec<i64>, Vec<i64>) {
    records.iter().map(|r| (r.pid, r.camera)).unzip()
}

/// The (pid, camera) offsets of each part: past every label of the parts before it.
fn offsets(parts: &[Part]) -> Vec<(i64, i64)> {
    let (mut pid_off, mut cam_off) = (0i64, 0i64);
    parts
        .iter()
        .map(|part| {
            let here = (pid_off, cam_off);
            let all_records = part.query.iter().chain(part.gallery);
            pid_off += all_records.clone().map(|r| r.pid).max().unwrap_or(0) + 1;
            cam_off += all_records.map(|r| r.camera).max().unwrap_or(0) + 1;
            here
        })
        .collect()
}

fn shifted(records: &[Record], (po, co): (i64, i64)) -> Vec<Record> {
    records
        .iter()
        .map(|r| Record {
            pid: r.pid + po,
            camera: r.camera + co,
            ..r.clone()
        })
        .collect()
}

/// One split per part, in order: the part's queries against every part's gallery. With
/// one part this is the dataset's own split, labels unchanged.
pub fn union(parts: &[Part]) -> Vec<EvalSplit> {
    let offsets = offsets(parts);
    let (gallery_records, _) = union_records(parts);
    let gallery = Tensor::cat(
        &parts
            .iter()
            .map(|p| p.gallery_features.shallow_clone())
            .collect::<Vec<_>>(),
        0,
    );
    let gallery_labels = labels(&gallery_records);
    parts
        .iter()
        .zip(&offsets)
        .map(|(part, &off)| EvalSplit {
            query: part.query_features.shallow_clone(),
            gallery: gallery.shallow_clone(),
            query_labels: labels(&shifted(part.query, off)),
            gallery_labels: gallery_labels.clone(),
        })
        .collect()
}

/// The records behind [`union`]'s splits, labels offset as there: the union gallery, and
/// each part's queries (what rank-list pictures show and frame green or red).
pub fn union_records(parts: &[Part]) -> (Vec<Record>, Vec<Vec<Record>>) {
    let offsets = offsets(parts);
    let gallery = parts
        .iter()
        .zip(&offsets)
        .flat_map(|(p, &off)| shifted(p.gallery, off))
        .collect();
    let queries = parts
        .iter()
        .zip(&offsets)
        .map(|(p, &off)| shifted(p.query, off))
        .collect();
    (gallery, queries)
}
