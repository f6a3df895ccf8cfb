//! `agd synth`.

use super::args::SynthArgs;
use crate::data::synth::{self, SynthConfig, SynthSummary};
use anyhow::Result;
use std::time::Instant;

impl SynthArgs {
    pub fn config(&self) -> SynthConfig {
        SynthConfig {
            ids: self.ids,
            test_ids: self.test_ids.unwrap_or(self.ids),
            images_per_id: self.images_per_id,
            cameras: self.cameras,
            height: self.height,
            width: self.width,
            seed: self.seed,
            style: self.style,
            distractors: self.distractors,
            junk: self.junk,
        }
    }
}

/// The summary as a table: what was written where.
pub fn summary_table(name: &str, s: &SynthSummary) -> comfy_table::Table {
    crate::report::table(
        ["dataset", "split", "ids", "images"],
        [
            [
                name.to_string(),
                "train".into(),
                s.train_ids.to_string(),
                s.train_images.to_string(),
            ],
            [
                name.to_string(),
                "query".into(),
                s.test_ids.to_string(),
                s.query_images.to_string(),
            ],
            [
                name.to_string(),
                "gallery".into(),
                format!("{} + distractors", s.test_ids),
                format!("{} (+{} junk)", s.gallery_images, s.junk),
            ],
        ],
    )
}

/// Encodes an image as PNG and writes it atomically.
pub fn write_png(path: &std::path::Path, img: &image::RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    crate::io::write_atomic(path, &bytes)
}

pub fn run(args: &SynthArgs) -> Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let dir = args.data_root.join(&args.dataset);
    let start = Instant::now();
    let summary = synth::generate(&dir, &cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let preview = dir.join("preview.png");
    write_png(&preview, &synth::preview(&cfg, 8, 8))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary_table(&args.dataset, &summary));
        let total = summary.train_images + summary.query_images + summary.gallery_images;
        println!(
            "wrote {total} images ({}x{}, {} cameras, style {:?}) to {} in {seconds:.2} s; preview: {}",
            cfg.height,
            cfg.width,
            summary.cameras,
            cfg.style,
            dir.display(),
            preview.display()
        );
    }
    Ok(())
}
