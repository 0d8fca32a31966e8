//! `stats`: counts, per-source pass rates, finish reasons, length distributions (with PNG
//! histograms) and the reason of every dropped row found in the side folders of earlier passes.
//!
//! Reads only the columns it needs (never `messages` or `prompt`); memory is three 8-byte
//! lengths per row for the percentiles.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use arrow_array::Array;
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use crate::chart;
use crate::pass::{par_rows, write_json, PassIo, Staging, CONFIG_FILE, DROPPED_DIR};
use crate::record::{col, Columns};
use crate::shards::ShardReader;
use crate::{Error, Result};

/// The statistics file inside the output folder.
pub const STATS_FILE: &str = "stats.json";

/// Options of `stats`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct StatsConfig {
    /// Dropped rows to account for: a pass's output folder (its `dropped/` is read) or a
    /// folder of dropped shards; repeat for several passes.
    #[arg(long = "dropped", value_name = "PATH")]
    pub dropped: Vec<PathBuf>,
    /// Bins of the length histograms.
    #[arg(long, default_value_t = 40)]
    pub bins: usize,
    /// Skip the PNG charts.
    #[arg(long)]
    pub no_charts: bool,
}

impl Default for StatsConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// Rows and verdicts of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub rows: u64,
    /// Rows with a verdict (`correct` not null).
    pub verified: u64,
    pub correct: u64,
    /// `correct / verified`, `None` without verified rows.
    pub pass_rate: Option<f64>,
}

/// Distribution of one length.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min: u64,
    pub mean: f64,
    pub median: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl LengthStats {
    /// Nearest-rank percentiles; sorts `values`.
    pub fn of(values: &mut [u64]) -> Self {
        if values.is_empty() {
            return LengthStats::default();
        }
        values.sort_unstable();
        let rank =
            |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        LengthStats {
            min: values[0],
            mean: values.iter().sum::<u64>() as f64 / values.len() as f64,
            median: rank(0.5),
            p90: rank(0.9),
            p99: rank(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// Everything `stats` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSummary {
    pub rows: u64,
    pub problems: u64,
    pub correct: u64,
    pub incorrect: u64,
    pub unverified: u64,
    pub sources: BTreeMap<String, SourceStats>,
    pub finish_reasons: BTreeMap<String, u64>,
    pub reasoning_chars: LengthStats,
    pub completion_chars: LengthStats,
    pub completion_tokens: LengthStats,
    /// Dropped rows per reason, over every `dropped` input.
    pub dropped: BTreeMap<String, u64>,
    pub charts: Vec<PathBuf>,
    pub output: PathBuf,
    pub seconds: f64,
}

impl StatsSummary {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

/// Columns `stats` reads.
pub const REQUIRED: [&str; 7] = [
    col::PROBLEM_ID,
    col::SOURCE,
    col::REASONING,
    col::COMPLETION,
    col::CORRECT,
    col::FINISH_REASON,
    col::COMPLETION_TOKENS,
];

/// Runs `stats` over `io.inputs`, writing `stats.json` and charts into `io.output`.
pub fn run(io: &PassIo, cfg: &StatsConfig) -> Result<StatsSummary> {
    let started = std::time::Instant::now();
    let reader = io.reader()?;
    reader.require(&REQUIRED)?;
    let dropped_readers = cfg
        .dropped
        .iter()
        .map(|p| dropped_reader(p))
        .collect::<Result<Vec<_>>>()?;
    let staging = Staging::new(&io.output, io.overwrite, &io.inputs)?;
    let mut s = StatsSummary::default();
    let mut problems = HashSet::new();
    let (mut reasoning_len, mut completion_len, mut tokens_len) =
        (Vec::new(), Vec::new(), Vec::new());
    for batch in reader.with_columns(&REQUIRED).batches() {
        let batch = batch?;
        let c = Columns::new(&batch);
        let (ids, sources, correct, finish, tokens) = (
            c.str(col::PROBLEM_ID)?,
            c.str(col::SOURCE)?,
            c.bool(col::CORRECT)?,
            c.str(col::FINISH_REASON)?,
            c.i32(col::COMPLETION_TOKENS)?,
        );
        let (reasoning, completion) = (c.str(col::REASONING)?, c.str(col::COMPLETION)?);
        let lengths = par_rows(batch.num_rows(), |i| {
            (
                reasoning.value(i).chars().count() as u64,
                completion.value(i).chars().count() as u64,
            )
        });
        for (i, (r, comp)) in lengths.into_iter().enumerate() {
            s.rows += 1;
            problems.insert(XxHash3_64::oneshot(ids.value(i).as_bytes()));
            reasoning_len.push(r);
            completion_len.push(comp);
            tokens_len.push(tokens.value(i).max(0) as u64);
            *s.finish_reasons
                .entry(finish.value(i).to_string())
                .or_default() += 1;
            let source = s.sources.entry(sources.value(i).to_string()).or_default();
            source.rows += 1;
            if correct.is_null(i) {
                s.unverified += 1;
            } else {
                source.verified += 1;
                if correct.value(i) {
                    source.correct += 1;
                    s.correct += 1;
                } else {
                    s.incorrect += 1;
                }
            }
        }
    }
    for source in s.sources.values_mut() {
        source.pass_rate =
            (source.verified > 0).then(|| source.correct as f64 / source.verified as f64);
    }
    s.problems = problems.len() as u64;
    for reader in dropped_readers {
        for batch in reader.with_columns(&[col::DROP_REASON]).batches() {
            let batch = batch?;
            let reasons = Columns::new(&batch).str(col::DROP_REASON)?;
            for i in 0..batch.num_rows() {
                *s.dropped.entry(reasons.value(i).to_string()).or_default() += 1;
            }
        }
    }
    if !cfg.no_charts {
        let dir = staging.dir();
        let mut draw = |name: &str, title: &str, x: &str, values: &[u64]| -> Result<()> {
            chart::histogram(&dir.join(name), title, x, values, cfg.bins)?;
            s.charts.push(staging.output().join(name));
            Ok(())
        };
        draw(
            "reasoning_chars.png",
            "Reasoning length",
            "characters",
            &reasoning_len,
        )?;
        draw(
            "completion_tokens.png",
            "Completion tokens",
            "tokens",
            &tokens_len,
        )?;
        if !s.dropped.is_empty() {
            let mut items: Vec<(String, u64)> =
                s.dropped.iter().map(|(k, v)| (k.clone(), *v)).collect();
            items.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            chart::bars(
                &dir.join("drop_reasons.png"),
                "Dropped rows by reason",
                "rows",
                &items,
            )?;
            s.charts.push(staging.output().join("drop_reasons.png"));
        }
    }
    s.reasoning_chars = LengthStats::of(&mut reasoning_len);
    s.completion_chars = LengthStats::of(&mut completion_len);
    s.completion_tokens = LengthStats::of(&mut tokens_len);
    s.output = staging.output().to_path_buf();
    s.seconds = started.elapsed().as_secs_f64();
    write_json(&staging.dir().join(STATS_FILE), &s)?;
    write_json(&staging.dir().join(CONFIG_FILE), cfg)?;
    staging.commit()?;
    Ok(s)
}

/// A reader over dropped rows: `path/dropped` when `path` is a pass output, else `path`.
fn dropped_reader(path: &Path) -> Result<ShardReader> {
    let side = path.join(DROPPED_DIR);
    let target = if side.is_dir() {
        side
    } else {
        path.to_path_buf()
    };
    let reader = ShardReader::open(&[target])?;
    if reader.schema().field_with_name(col::DROP_REASON).is_err() {
        return Err(Error::MissingColumn {
            path: reader
                .files()
                .first()
                .cloned()
                .unwrap_or_else(|| path.to_path_buf()),
            column: col::DROP_REASON.into(),
            present: reader
                .schema()
                .fields()
                .iter()
                .map(|f| format!("`{}`", f.name()))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(reader)
}
