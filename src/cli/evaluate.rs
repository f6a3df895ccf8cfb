//! `agd evaluate`: flags → [`EvalPlan`]; the stage runs in [`crate::eval::run`], which
//! prints its tables; `--json` prints the rows here.

use super::args::EvaluateArgs;
use super::train::ModelFlags;
use crate::eval::EvalPlan;
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
        }
    }
}

pub fn run(args: &EvaluateArgs) -> Result<()> {
    let plan = args.plan();
    let rows = crate::eval::run(&plan)?;
    if plan.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
