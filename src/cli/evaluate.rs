//! `agd evaluate`: the stage runs in [`crate::eval::run`]; its tables, or with `--json`
//! its rows, are printed here.

use super::args::EvaluateArgs;
use crate::error::Error;
use crate::eval::EvalRow;
use anyhow::Result;

/// Runs the plan, printing each checkpoint's table as it comes, or with `--json` all rows
/// at the end. When some checkpoints of several failed, the JSON still lists the others'
/// rows, plus one `{checkpoint, error}` row per failed one, and the command then fails
/// naming them.
///
/// In a data-parallel run, rank 0 prints; the other ranks only extract features.
pub fn run(args: &EvaluateArgs) -> Result<()> {
    let reports = crate::dist::reports();
    let mut print = |title: &str, rows: &[EvalRow]| {
        if !args.json {
            println!("{}", crate::eval::table(title, rows));
        }
    };
    match crate::eval::run(&args.plan, &mut print) {
        Ok(rows) => {
            if args.json && reports {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            Ok(())
        }
        Err(e) => {
            if let (true, Some(Error::CheckpointsFailed(f))) = (args.json, e.downcast_ref()) {
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
