//! `agd evaluate`: the stage runs in [`crate::eval::run`], which
//! prints its tables; `--json` prints the rows here.

use crate::eval::{CheckpointsFailed, EvalPlan};
use anyhow::Result;

/// Runs the plan; `--json` prints the rows. When some checkpoints of several failed, the
/// JSON still lists the others' rows, plus one `{checkpoint, error}` row per failed one,
/// and the command then fails naming them.
pub fn run(plan: &EvalPlan) -> Result<()> {
    match crate::eval::run(plan) {
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
