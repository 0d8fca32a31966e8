//! `split`: train/eval split by a hash of `problem_id`, so every sample of a problem lands on
//! the same side and the split is the same on every run and machine (xxh3 is specified).

use std::collections::HashSet;

use arrow_array::{BooleanArray, RecordBatch};
use arrow_select::filter::filter_record_batch;
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use crate::pass::{write_json, PassIo, Sink, Staging, CONFIG_FILE, SUMMARY_FILE};
use crate::record::{col, Columns};
use crate::{Error, Result};

/// Sub-folders of the output.
pub const TRAIN_DIR: &str = "train";
pub const EVAL_DIR: &str = "eval";

/// Options of `split`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct SplitConfig {
    /// Fraction of problems (not rows) sent to the eval side.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Seed of the hash; another seed gives another, equally deterministic split.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// Rows and problems on each side.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub rows_in: u64,
    pub train_rows: u64,
    pub eval_rows: u64,
    pub train_problems: u64,
    pub eval_problems: u64,
    pub output: std::path::PathBuf,
    pub seconds: f64,
}

/// Whether `problem_id` belongs to the eval side.
pub fn is_eval(problem_id: &str, cfg: &SplitConfig) -> bool {
    let h = XxHash3_64::oneshot_with_seed(cfg.split_seed, problem_id.as_bytes());
    // The top 53 bits as a uniform number in [0, 1).
    ((h >> 11) as f64 / (1u64 << 53) as f64) < cfg.eval_fraction
}

/// Runs `split` over `io.inputs` into `io.output/{train,eval}`.
pub fn run(io: &PassIo, cfg: &SplitConfig) -> Result<SplitSummary> {
    if !(0.0..=1.0).contains(&cfg.eval_fraction) {
        return Err(Error::Invalid(format!(
            "`eval_fraction` {} is not in [0, 1]",
            cfg.eval_fraction
        )));
    }
    let started = std::time::Instant::now();
    let reader = io.reader()?;
    reader.require(&[col::PROBLEM_ID])?;
    let staging = Staging::new(&io.output, io.overwrite, &io.inputs)?;
    let mut train = Sink::spawn(
        &staging.dir().join(TRAIN_DIR),
        reader.schema().clone(),
        io.writer.clone(),
    )?;
    let mut eval = Sink::spawn(
        &staging.dir().join(EVAL_DIR),
        reader.schema().clone(),
        io.writer.clone(),
    )?;
    let mut summary = SplitSummary::default();
    let (mut train_problems, mut eval_problems) = (HashSet::new(), HashSet::new());
    for batch in reader.batches() {
        let batch: RecordBatch = batch?;
        let ids = Columns::new(&batch).str(col::PROBLEM_ID)?;
        let mask: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let id = ids.value(i);
                let to_eval = is_eval(id, cfg);
                let key = XxHash3_64::oneshot(id.as_bytes());
                if to_eval {
                    eval_problems.insert(key);
                } else {
                    train_problems.insert(key);
                }
                Some(to_eval)
            })
            .collect();
        let n_eval = mask.true_count();
        summary.rows_in += batch.num_rows() as u64;
        summary.eval_rows += n_eval as u64;
        summary.train_rows += (batch.num_rows() - n_eval) as u64;
        let train_mask: BooleanArray = mask.iter().map(|v| v.map(|b| !b)).collect();
        eval.send(filter_record_batch(&batch, &mask)?)?;
        train.send(filter_record_batch(&batch, &train_mask)?)?;
    }
    train.finish()?;
    eval.finish()?;
    summary.train_problems = train_problems.len() as u64;
    summary.eval_problems = eval_problems.len() as u64;
    summary.output = staging.output().to_path_buf();
    summary.seconds = started.elapsed().as_secs_f64();
    write_json(&staging.dir().join(SUMMARY_FILE), &summary)?;
    write_json(&staging.dir().join(CONFIG_FILE), cfg)?;
    staging.commit()?;
    Ok(summary)
}
