//! The results of a lifelong sequence: the matrix of each step's model on each dataset,
//! the average over the datasets seen so far (the lifelong-ReID summary), and forgetting,
//! written as `results.json` (for programs), `results.md` (for people) and `results.png`
//! (a heat map).

use super::Method;
use anyhow::Result;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::path::Path;

/// One step's model on every dataset it was evaluated on. Values are fractions in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    /// 1-based; step 1 is the base model.
    pub step: usize,
    pub trained_on: String,
    /// (dataset, mAP, rank-1): the datasets seen so far in their order, then the unseen.
    pub scores: Vec<(String, f64, f64)>,
    /// Mean mAP over the datasets learnt up to this step.
    pub seen_map: f64,
}

impl StepResult {
    /// `seen`: the datasets learnt up to this step, whose mean mAP is `seen_map`.
    pub fn new(
        step: usize,
        trained_on: &str,
        seen: &[String],
        scores: Vec<(String, f64, f64)>,
    ) -> Self {
        let maps: Vec<f64> = scores
            .iter()
            .filter(|(d, ..)| seen.contains(d))
            .map(|s| s.1)
            .collect();
        let seen_map = maps.iter().sum::<f64>() / maps.len().max(1) as f64;
        Self {
            step,
            trained_on: trained_on.into(),
            scores,
            seen_map,
        }
    }

    pub fn map(&self, dataset: &str) -> Option<f64> {
        self.scores.iter().find(|s| s.0 == dataset).map(|s| s.1)
    }

    pub fn rank1(&self, dataset: &str) -> Option<f64> {
        self.scores.iter().find(|s| s.0 == dataset).map(|s| s.2)
    }
}

/// Forgetting of each dataset learnt before the last step: its best mAP after any earlier
/// step minus its mAP after the last one (negative: the later steps helped it). The last
/// dataset has no earlier value, and unseen ones were never learnt, so neither is listed.
pub fn forgetting(steps: &[StepResult], datasets: &[String]) -> Vec<(String, f64)> {
    let Some((last, earlier)) = steps.split_last() else {
        return Vec::new();
    };
    datasets
        .iter()
        .filter_map(|d| {
            let best = earlier.iter().filter_map(|s| s.map(d)).reduce(f64::max)?;
            Some((d.clone(), best - last.map(d)?))
        })
        .collect()
}

/// `{dataset: value}` in the sequence's order (a JSON object keeps the order written).
struct Ordered(Vec<(String, f64)>);

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct StepJson<'a> {
    step: usize,
    trained_on: &'a str,
    #[serde(rename = "mAP")]
    map: Ordered,
    rank1: Ordered,
    #[serde(rename = "seen_mAP")]
    seen_map: f64,
}

#[derive(Serialize)]
struct ResultsJson<'a> {
    datasets: &'a [String],
    unseen: &'a [String],
    method: &'a str,
    steps: Vec<StepJson<'a>>,
    forgetting: Ordered,
    wall_seconds: f64,
}

/// The results file of a sequence's folder.
pub const RESULTS_JSON: &str = "results.json";

/// A finished sequence, ready to be written.
pub struct Summary<'a> {
    pub datasets: &'a [String],
    pub unseen: &'a [String],
    pub method: &'a Method,
    pub steps: &'a [StepResult],
    pub wall_seconds: f64,
}

fn percent(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

impl Summary<'_> {
    /// Columns of the matrix: the learnt datasets, then the unseen ones.
    fn columns(&self) -> Vec<(&str, bool)> {
        let learnt = self.datasets.iter().map(|d| (d.as_str(), false));
        learnt
            .chain(self.unseen.iter().map(|d| (d.as_str(), true)))
            .collect()
    }

    fn header(&self) -> Vec<String> {
        let mut h = vec!["step".to_string(), "trained on".to_string()];
        h.extend(self.columns().into_iter().map(|(d, unseen)| match unseen {
            true => format!("{d} (unseen)"),
            false => d.to_string(),
        }));
        h.push("seen mAP".into());
        h
    }

    /// Rows of cells `mAP / rank-1` in %, `–` where a step did not evaluate a dataset
    /// (one not learnt yet).
    fn rows(&self) -> Vec<Vec<String>> {
        self.steps
            .iter()
            .map(|s| {
                let mut row = vec![
                    if s.step == 1 {
                        "1 (base)".to_string()
                    } else {
                        s.step.to_string()
                    },
                    s.trained_on.clone(),
                ];
                row.extend(
                    self.columns()
                        .into_iter()
                        .map(|(d, _)| match (s.map(d), s.rank1(d)) {
                            (Some(m), Some(r)) => format!("{} / {}", percent(m), percent(r)),
                            _ => "–".into(),
                        }),
                );
                row.push(percent(s.seen_map));
                row
            })
            .collect()
    }

    fn forgetting(&self) -> Vec<(String, f64)> {
        forgetting(self.steps, self.datasets)
    }

    /// The matrix as a terminal table.
    pub fn table(&self) -> comfy_table::Table {
        crate::report::table(self.header(), self.rows())
    }

    fn markdown(&self) -> String {
        let header = self.header();
        let mut md = format!(
            "# agd sequence: lifelong ReID over {}\n\n\
             Method: {}. Each cell is mAP / rank-1 (%) of the model after that step; `–`: \
             a dataset not learnt yet. \"seen mAP\" averages the mAP over the datasets \
             learnt so far (the lifelong-ReID summary).\n\n| {} |\n|---:|---|{}\n",
            self.datasets.join(" → "),
            self.method.label,
            header.join(" | "),
            "---:|".repeat(header.len() - 2)
        );
        for row in self.rows() {
            md.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        let forgetting = self.forgetting();
        if let Some(last) = self.steps.last() {
            md.push_str(
                "\n## Forgetting\n\nBest mAP after an earlier step minus mAP after the last \
                 step, in points (negative: the later steps helped).\n\n\
                 | dataset | best earlier mAP | final mAP | forgetting |\n|---|---:|---:|---:|\n",
            );
            for (d, f) in &forgetting {
                let fin = last.map(d).unwrap_or(f64::NAN);
                md.push_str(&format!(
                    "| {d} | {} | {} | {} |\n",
                    percent(fin + f),
                    percent(fin),
                    percent(*f)
                ));
            }
        }
        md.push_str(&format!(
            "\nWall time of the run that wrote this (stages reused from earlier runs take \
             seconds): {:.1} min.\n",
            self.wall_seconds / 60.0
        ));
        md
    }

    fn json(&self) -> Result<String> {
        let steps = self
            .steps
            .iter()
            .map(|s| StepJson {
                step: s.step,
                trained_on: &s.trained_on,
                map: Ordered(s.scores.iter().map(|(d, m, _)| (d.clone(), *m)).collect()),
                rank1: Ordered(s.scores.iter().map(|(d, _, r)| (d.clone(), *r)).collect()),
                seen_map: s.seen_map,
            })
            .collect();
        let results = ResultsJson {
            datasets: self.datasets,
            unseen: self.unseen,
            method: &self.method.name,
            steps,
            forgetting: Ordered(self.forgetting()),
            wall_seconds: self.wall_seconds,
        };
        Ok(serde_json::to_string_pretty(&results)?)
    }

    /// The wall time of the results: a rerun that found them all made already (the
    /// `results.json` in `dir` says the same but for the time) keeps the time of the run
    /// that made them, not its own few seconds of reading them back.
    fn recorded_seconds(&self, dir: &Path) -> Result<f64> {
        let without_time = |text: &str| {
            let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
            let seconds = v.as_object_mut()?.remove("wall_seconds")?.as_f64()?;
            Some((v, seconds))
        };
        let earlier = std::fs::read_to_string(dir.join(RESULTS_JSON))
            .ok()
            .and_then(|t| without_time(&t));
        let now = without_time(&self.json()?);
        Ok(match (earlier, now) {
            (Some((earlier, seconds)), Some((now, _))) if earlier == now => seconds,
            _ => self.wall_seconds,
        })
    }

    /// `results.json`, `results.md` and `results.png` (the mAP heat map) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let summary = Summary {
            wall_seconds: self.recorded_seconds(dir)?,
            ..*self
        };
        summary.write_as_is(dir)
    }

    fn write_as_is(&self, dir: &Path) -> Result<()> {
        crate::io::write_atomic(&dir.join(RESULTS_JSON), self.json()?.as_bytes())?;
        crate::io::write_atomic(&dir.join("results.md"), self.markdown().as_bytes())?;
        let rows: Vec<String> = self
            .steps
            .iter()
            .map(|s| format!("{}. {}", s.step, s.trained_on))
            .collect();
        let mut columns: Vec<String> = self.header()[2..].to_vec();
        *columns.last_mut().expect("the seen column") = "seen avg".into();
        let values: Vec<Vec<Option<f64>>> = self
            .steps
            .iter()
            .map(|s| {
                let mut v: Vec<Option<f64>> =
                    self.columns().into_iter().map(|(d, _)| s.map(d)).collect();
                v.push(Some(s.seen_map));
                v
            })
            .collect();
        crate::plot::heat_map(
            &format!("mAP (%) after each step — {}", self.method.label),
            &rows,
            &columns,
            &values,
            &dir.join("results.png"),
        )
    }
}
