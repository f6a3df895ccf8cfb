//! `metrics.csv`, a training run's numbers per epoch: `epoch,lr,<losses…>,<set>_mAP,
//! <set>_rank1,…`, one row per epoch, empty cells where an epoch was not evaluated. One
//! type writes it ([`MetricsCsv::record`], after every epoch) and reads it
//! ([`MetricsCsv::read`], for `curves.png` and `agd plot`), so the two cannot drift.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// File name in a logs folder.
pub const FILE: &str = "metrics.csv";

/// The table: column names and, per epoch, one optional value per column.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsCsv {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<f64>>>,
}

impl MetricsCsv {
    /// The columns of a run reporting `losses` and evaluating on `test_sets`.
    pub fn columns<'a>(
        losses: &[&str],
        test_sets: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        let mut columns = vec!["epoch".to_string(), "lr".to_string()];
        columns.extend(losses.iter().map(|l| l.to_string()));
        for t in test_sets {
            columns.push(format!("{t}_mAP"));
            columns.push(format!("{t}_rank1"));
        }
        columns
    }

    /// Reads and checks a file: the header starts `epoch,lr`, every row has a cell per
    /// column, cells are numbers or empty, and epoch and lr always have values. Errors
    /// name the file and line.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (h, header) = lines
            .next()
            .with_context(|| format!("{}: empty, expected a header line", path.display()))?;
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        if columns.len() < 2 || columns[0] != "epoch" || columns[1] != "lr" {
            bail!(
                "{}:{}: expected a header starting with `epoch,lr`, found {header:?}",
                path.display(),
                h + 1
            );
        }
        let mut rows = Vec::new();
        for (i, line) in lines {
            let at = format!("{}:{}", path.display(), i + 1);
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if cells.len() != columns.len() {
                bail!(
                    "{at}: {} cells, but the header has {}",
                    cells.len(),
                    columns.len()
                );
            }
            let row = cells
                .iter()
                .zip(&columns)
                .map(|(cell, name)| match cell.is_empty() {
                    true => Ok(None),
                    false => cell
                        .parse()
                        .map(Some)
                        .map_err(|_| anyhow!("{at}: {name} {cell:?} is not a number")),
                })
                .collect::<Result<Vec<_>>>()?;
            if row[0].is_none() || row[1].is_none() {
                bail!("{at}: epoch and lr must have values");
            }
            rows.push(row);
        }
        Ok(Self { columns, rows })
    }

    /// The epoch of a row (always present in a read or recorded table).
    pub fn epoch(row: &[Option<f64>]) -> f64 {
        row[0].unwrap_or(f64::NAN)
    }

    /// (epoch, value) of column `name` where it has a finite value.
    pub fn series(&self, name: &str) -> Vec<(f64, f64)> {
        let Some(c) = self.columns.iter().position(|n| n == name) else {
            return Vec::new();
        };
        self.rows
            .iter()
            .filter_map(|r| Some((r[0]?, r[c].filter(|v| v.is_finite())?)))
            .collect()
    }

    fn to_text(&self) -> String {
        let mut text = self.columns.join(",");
        text.push('\n');
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|v| v.map(|v| v.to_string()).unwrap_or_default())
                .collect();
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        text
    }

    /// Records epoch `row[0]` in `path`, rewritten atomically: earlier epochs' rows are
    /// kept, rows of this epoch and later ones (left by a run that was killed and is now
    /// resumed) are dropped. When the file has other columns (a run resumed with other
    /// test sets), the table keeps the union of both, so no earlier value is lost.
    pub fn record(path: &Path, columns: &[String], row: Vec<Option<f64>>) -> Result<()> {
        assert_eq!(row.len(), columns.len(), "one value per column");
        let epoch = Self::epoch(&row);
        let old = if path.exists() {
            Self::read(path)?
        } else {
            Self {
                columns: columns.to_vec(),
                rows: Vec::new(),
            }
        };
        let mut merged = columns.to_vec();
        merged.extend(old.columns.iter().filter(|c| !columns.contains(c)).cloned());
        let remap = |from: &[String], row: &[Option<f64>]| -> Vec<Option<f64>> {
            merged
                .iter()
                .map(|c| from.iter().position(|f| f == c).and_then(|i| row[i]))
                .collect()
        };
        let mut rows: Vec<Vec<Option<f64>>> = old
            .rows
            .iter()
            .filter(|r| Self::epoch(r) < epoch)
            .map(|r| remap(&old.columns, r))
            .collect();
        rows.push(remap(columns, &row));
        let table = Self {
            columns: merged.clone(),
            rows,
        };
        crate::io::write_atomic(path, table.to_text().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run resumed with fewer test sets (another `--evaluate` or `--old-dataset`) keeps
    /// one consistent table: every column, empty cells where a value is missing, and the
    /// curves still draw from it.
    #[test]
    fn a_resume_that_evaluates_less_keeps_one_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let both = MetricsCsv::columns(&["ce"], ["market", "msmt17"]);
        MetricsCsv::record(
            &path,
            &both,
            vec![
                Some(1.0),
                Some(0.1),
                Some(2.0),
                Some(0.5),
                Some(0.6),
                Some(0.3),
                Some(0.4),
            ],
        )
        .unwrap();
        let one = MetricsCsv::columns(&["ce"], ["market"]);
        MetricsCsv::record(
            &path,
            &one,
            vec![Some(2.0), Some(0.1), Some(1.5), Some(0.7), Some(0.8)],
        )
        .unwrap();
        let table = MetricsCsv::read(&path).unwrap();
        assert_eq!(table.columns.len(), both.len());
        for c in &both {
            assert!(table.columns.contains(c), "{c} lost");
        }
        let at = |name: &str| table.columns.iter().position(|c| c == name).unwrap();
        assert_eq!(table.rows[0][at("msmt17_mAP")], Some(0.3));
        assert_eq!(table.rows[1][at("msmt17_mAP")], None);
        assert_eq!(table.rows[1][at("market_mAP")], Some(0.7));
        let png = dir.path().join("curves.png");
        crate::plot::training_curves(&path, &png).unwrap();
        assert!(png.exists());
    }
}
