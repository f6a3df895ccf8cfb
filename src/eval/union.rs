//! Query sets against a union gallery (`--dataset a+b`): every part's query set is scored
//! against the galleries of all parts together, as when one model must serve both old and
//! new cameras. The parts' identity and camera labels are offset into disjoint ranges, so
//! a person of one dataset never matches a same-numbered person of another, and the
//! same-camera filter never removes another dataset's images.

use crate::data::Record;
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

/// (pids, cameras) of records.
pub fn labels(records: &[Record]) -> (Vec<i64>, Vec<i64>) {
    records.iter().map(|r| (r.pid, r.camera)).unzip()
}

/// One split per part, in order: the part's queries against every part's gallery. With
/// one part this is the dataset's own split, labels unchanged.
pub fn union(parts: &[Part]) -> Vec<EvalSplit> {
    let (mut galleries, mut g_pids, mut g_cams) = (Vec::new(), Vec::new(), Vec::new());
    let mut offsets = Vec::new();
    let (mut pid_off, mut cam_off) = (0i64, 0i64);
    for part in parts {
        offsets.push((pid_off, cam_off));
        let (p, c) = labels(part.gallery);
        g_pids.extend(p.iter().map(|x| x + pid_off));
        g_cams.extend(c.iter().map(|x| x + cam_off));
        galleries.push(part.gallery_features.shallow_clone());
        let all_records = part.query.iter().chain(part.gallery);
        pid_off += all_records.clone().map(|r| r.pid).max().unwrap_or(0) + 1;
        cam_off += all_records.map(|r| r.camera).max().unwrap_or(0) + 1;
    }
    let gallery = Tensor::cat(&galleries, 0);
    parts
        .iter()
        .zip(&offsets)
        .map(|(part, &(po, co))| {
            let (p, c) = labels(part.query);
            EvalSplit {
                query: part.query_features.shallow_clone(),
                gallery: gallery.shallow_clone(),
                query_labels: (
                    p.iter().map(|x| x + po).collect(),
                    c.iter().map(|x| x + co).collect(),
                ),
                gallery_labels: (g_pids.clone(), g_cams.clone()),
            }
        })
        .collect()
}
