//! `agd evaluate`: flags → [`EvalPlan`]; the stage runs in [`crate::eval::run`], which
//! prints its tables; `--json` prints the rows here.

use super::args::EvaluateArgs;
use super::train::ModelFlags;
use crate::eval::{CheckpointsFailed, EvalPlan};
use anyhow::Result;

impl EvaluateArgs {
    pub fn plan(&self) -> EvalPlan {
        EvalPlan {
            gpu: self.device.gpu.clone(),
            data_root: self.data.data_root.clone(),
            height: self.data.height,
            width: self.data.width,
            datasets: self.dataset.clone(),
            batch_size: self.batch_size,
            ckpt: self.ckpt.clone(),
            recursive: self.recursive,
            model: self.model.choice(),
            output_feature: self.output_feature,
            re_ranking: self.re_ranking,
            one_shot: self.one_shot,
            output: self.output,
            json: self.json,
            save_features: self.save_features.clone(),
            features: self.features.clone(),
            rank_list: self.rank_list.clone(),
            rank_list_n: self.rank_list_n,
            compute: self.compute.choice(),
        }
    }
}

/// Runs the plan; `--json` prints the rows. When some checkpoints of several failed, the
/// JSON still lists the others' rows, plus one `{checkpoint, error}` row per failed one,
/// and the command then fails naming them.
pub fn run(args: &EvaluateArgs) -> Result<()> {
    let plan = args.plan();
    match crate::eval::run(&plan) {
        Ok(rows) => {
            if plan.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            Ok(())
        }
        Err(e) => {
            if let (true, Some(f)) = (plan.json, e.downcast_ref::<CheckpointsFailed>()) {
                let mut rows = serde_json::to_value(&f.rows)?
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for (path, err) in &f.failed {
                    rows.push(serde_json::json!({
                        "checkpoint": path.display().to_string(),
                        "error": super::message(err),
                    }));
                }
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            Err(e)
        }
    }
}
