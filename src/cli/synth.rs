//! `agd synth`.

use super::args::SynthArgs;
use crate::data::synth::{self, SynthConfig};
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

pub fn run(args: &SynthArgs) -> Result<()> {
    let cfg = args.config();
    cfg.validate()?;
    let dir = args.data_root.join(&args.dataset);
    let start = Instant::now();
    let summary = synth::generate(&dir, &cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let preview = dir.join("preview.png");
    crate::io::write_png(&preview, &synth::preview(&cfg, 8, 8))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("{}", summary.table(&args.dataset));
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
