//! Feature files (`--save-features` / `--features`): a safetensors file holding a split's
//! features and labels, so metrics can be recomputed (or compared across tools) without
//! the model.

use crate::bad_setting;
use crate::error::{AboutExt, Setting};
use crate::model::checkpoint::{
    parse_safetensors, write_safetensors, FileKind, CHECKPOINT_FORMAT, FEATURES_FORMAT,
};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// Query and gallery features with their identities and cameras.
pub struct FeatureFile {
    pub query: Tensor,
    pub gallery: Tensor,
    pub query_pids: Vec<i64>,
    pub gallery_pids: Vec<i64>,
    pub query_cams: Vec<i64>,
    pub gallery_cams: Vec<i64>,
}

impl FeatureFile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let ints = |v: &[i64]| Tensor::from_slice(v);
        let tensors = vec![
            (
                "query_features".to_string(),
                self.query.to_kind(Kind::Float),
            ),
            (
                "gallery_features".to_string(),
                self.gallery.to_kind(Kind::Float),
            ),
            ("query_pids".to_string(), ints(&self.query_pids)),
            ("gallery_pids".to_string(), ints(&self.gallery_pids)),
            ("query_cams".to_string(), ints(&self.query_cams)),
            ("gallery_cams".to_string(), ints(&self.gallery_cams)),
        ];
        let meta = BTreeMap::from([("format".to_string(), FEATURES_FORMAT.to_string())]);
        write_safetensors(path, &tensors, &meta)
    }

    /// Reads a feature file, checking every tensor is there with a consistent shape. A
    /// file of another kind (a checkpoint, say) is named for what it is.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read {}", path.display()))
            .about_value(Setting::FeatureFile, path.display())?;
        match FileKind::of(&bytes) {
            FileKind::Safetensors => {}
            FileKind::Empty => {
                bad_setting!(Setting::FeatureFile, path.display(), "empty file (0 bytes)")
            }
            FileKind::TorchSave => bad_setting!(
                Setting::FeatureFile,
                path.display(),
                "a torch.save or paddle.save file (a model checkpoint?), not a feature file"
            ),
            FileKind::Other => bad_setting!(
                Setting::FeatureFile,
                path.display(),
                "neither safetensors, torch.save nor paddle.save, not a feature file"
            ),
        }
        let (tensors, meta) =
            parse_safetensors(path, &bytes).about_value(Setting::FeatureFile, path.display())?;
        if meta.get("format").map(String::as_str) == Some(CHECKPOINT_FORMAT)
            || tensors.contains_key("classifier.W")
        {
            bad_setting!(
                Setting::FeatureFile,
                path.display(),
                "a model checkpoint, not a feature file (evaluate it as the checkpoint)"
            );
        }
        let get = |name: &str, kind: Kind, dims: usize| -> Result<Tensor> {
            let Some(t) = tensors.get(name) else {
                bad_setting!(Setting::FeatureFile, path.display(), "no tensor `{name}`");
            };
            if t.dim() != dims {
                bad_setting!(
                    Setting::FeatureFile,
                    path.display(),
                    "`{name}` has shape {:?}, expected {dims} dimensions",
                    t.size()
                );
            }
            Ok(t.to_kind(kind))
        };
        let labels = |name: &str, n: i64| -> Result<Vec<i64>> {
            let t = get(name, Kind::Int64, 1)?;
            if t.size()[0] != n {
                bad_setting!(
                    Setting::FeatureFile,
                    path.display(),
                    "`{name}` has {} entries for {n} features",
                    t.size()[0]
                );
            }
            Ok(Vec::try_from(&t)?)
        };
        let query = get("query_features", Kind::Float, 2)?;
        let gallery = get("gallery_features", Kind::Float, 2)?;
        if query.size()[1] != gallery.size()[1] {
            bad_setting!(
                Setting::FeatureFile,
                path.display(),
                "query features are {}-d, gallery features {}-d",
                query.size()[1],
                gallery.size()[1]
            );
        }
        let (nq, ng) = (query.size()[0], gallery.size()[0]);
        Ok(Self {
            query_pids: labels("query_pids", nq)?,
            gallery_pids: labels("gallery_pids", ng)?,
            query_cams: labels("query_cams", nq)?,
            gallery_cams: labels("gallery_cams", ng)?,
            query,
            gallery,
        })
    }
}
