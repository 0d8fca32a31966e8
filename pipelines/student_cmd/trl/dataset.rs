//! The training set handed to TRL: the conversations distill's own trainer would train on (the
//! same corpus, the same rows dropped, the same held-out problems) as parquet files with one
//! `messages` column (TRL's conversational layout), and the token lengths of those documents
//! under the base model's tokenizer and chat template, from which the recipe's `max_length`
//! is chosen.
//!
//! Each corpus batch goes through [`data::prepare`], the path the token cache takes, so a row
//! is kept here exactly when distill would train on it; its messages up to the trained (last)
//! assistant turn are written to `train.parquet` or, when its problem is held out
//! ([`data::is_eval`]) or it comes from the eval corpus, to `eval.parquet`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use distill_corpus::export::MessagesWriter;
use distill_corpus::record::Message as RecordMessage;
use distill_student::data::{self, DataConfig, DataReport, Renderer};
use serde::Serialize;

use crate::progress::Progress;

pub const DATA_DIR: &str = "data";
pub const TRAIN_FILE: &str = "train.parquet";
pub const EVAL_FILE: &str = "eval.parquet";
pub const LENGTHS_FILE: &str = "lengths.json";

/// Token lengths of the training documents (template, prompt, answer and end-of-turn token).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LengthStats {
    pub documents: usize,
    pub tokens: u64,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

impl LengthStats {
    /// Statistics of `lengths` (sorted in place); `None` when empty.
    pub fn of(lengths: &mut [u32]) -> Option<Self> {
        if lengths.is_empty() {
            return None;
        }
        lengths.sort_unstable();
        let n = lengths.len();
        // Nearest-rank percentile: the smallest length with at least `q` of the documents at or
        // below it.
        let at = |q: f64| lengths[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as usize;
        let tokens: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        Some(Self {
            documents: n,
            tokens,
            mean: tokens as f64 / n as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: lengths[n - 1] as usize,
        })
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub train: PathBuf,
    /// `None` when nothing is held out.
    pub eval: Option<PathBuf>,
    pub train_rows: u64,
    pub eval_rows: u64,
    pub lengths: LengthStats,
    /// The same counts distill's trainer reports (`data_report.json`).
    pub report: DataReport,
}

/// Writes `out/data/{train,eval}.parquet` and `out/data/lengths.json` from `corpus` (and a
/// separate `eval_corpus`, which then replaces the held-out fraction).
pub fn export(
    corpus: &Path,
    eval_corpus: Option<&Path>,
    out: &Path,
    renderer: &Renderer,
    config: &DataConfig,
    progress: bool,
) -> anyhow::Result<Exported> {
    let dir = out.join(DATA_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let (train_path, eval_path) = (dir.join(TRAIN_FILE), dir.join(EVAL_FILE));
    let mut train = MessagesWriter::create(&train_path, true)?;
    let mut eval = MessagesWriter::create(&eval_path, true)?;
    let (mut train_lengths, mut eval_lengths) = (Vec::new(), Vec::new());
    let mut report = DataReport::default();
    let mut eval_report = DataReport::default();

    let corpus_inputs = [corpus.to_path_buf()];
    let stream = data::stream_corpus(&corpus_inputs)
        .with_context(|| format!("cannot read the corpus `{}`", corpus.display()))?;
    let eval_inputs: Option<Vec<PathBuf>> = eval_corpus.map(|p| vec![p.to_path_buf()]);
    let eval_stream = eval_inputs
        .as_deref()
        .map(data::stream_corpus)
        .transpose()
        .with_context(|| {
            format!(
                "cannot read the eval corpus `{}`",
                eval_corpus.unwrap_or(Path::new("")).display()
            )
        })?;
    let fraction = if eval_corpus.is_some() {
        0.0
    } else {
        config.eval_fraction
    };
    let total = stream.rows() + eval_stream.as_ref().map_or(0, |s| s.rows());
    let bar = Progress::new(
        total,
        "{spinner} dataset [{bar:30}] {pos}/{len} rows  elapsed {elapsed}  ETA {eta}",
        "rows",
        progress,
    );
    bar.set_prefix("dataset");
    let mut done = 0u64;
    let streams = std::iter::once((stream, false)).chain(eval_stream.map(|s| (s, true)));
    for (stream, held_out_corpus) in streams {
        for batch in stream {
            let batch = batch?;
            let outcomes = data::prepare(&batch, renderer, config);
            let (mut to_train, mut to_eval) = (Vec::new(), Vec::new());
            for (conv, outcome) in batch.iter().zip(outcomes) {
                let counted = if held_out_corpus {
                    &mut eval_report
                } else {
                    &mut report
                };
                let Some(doc) = counted.tally(outcome) else {
                    continue;
                };
                // Up to the trained turn: later messages are never trained on.
                let last = conv
                    .messages
                    .iter()
                    .rposition(|m| m.role == "assistant" && !m.content.is_empty())
                    .unwrap_or(conv.messages.len().saturating_sub(1));
                let messages: Vec<RecordMessage> = conv.messages[..=last]
                    .iter()
                    .map(|m| RecordMessage::new(m.role.clone(), m.content.clone()))
                    .collect();
                let length = doc.input_ids.len() as u32;
                if held_out_corpus || data::is_eval(conv.problem_key(), fraction) {
                    to_eval.push(messages);
                    eval_lengths.push(length);
                } else {
                    to_train.push(messages);
                    train_lengths.push(length);
                }
            }
            train.write(to_train.iter().map(Vec::as_slice))?;
            eval.write(to_eval.iter().map(Vec::as_slice))?;
            done += batch.len() as u64;
            bar.set_position(done);
        }
    }
    bar.finish_and_clear();
    if let (Some(path), 0) = (eval_corpus, eval.rows()) {
        anyhow::bail!(
            "the eval corpus `{}` is unusable: every row was dropped ({})",
            path.display(),
            eval_report.drop_summary()
        );
    }
    let (mut train_rows, mut eval_rows) = (train.finish()?, eval.finish()?);
    if train_rows == 0 && eval_corpus.is_none() && eval_rows > 0 {
        // A tiny corpus whose every row hashed into the held-out set still trains (as distill's
        // trainer does).
        std::fs::rename(&eval_path, &train_path)
            .with_context(|| format!("cannot write `{}`", train_path.display()))?;
        std::mem::swap(&mut train_lengths, &mut eval_lengths);
        (train_rows, eval_rows) = (eval_rows, 0);
    }
    if eval_rows == 0 && eval_path.exists() {
        std::fs::remove_file(&eval_path)
            .with_context(|| format!("cannot remove `{}`", eval_path.display()))?;
    }
    let Some(lengths) = LengthStats::of(&mut train_lengths) else {
        anyhow::bail!(
            "nothing to train on in `{}`: {}",
            corpus.display(),
            if report.rows == 0 {
                "the corpus has no rows".to_string()
            } else {
                format!(
                    "all `{}` rows were dropped ({})",
                    report.rows,
                    report.drop_summary()
                )
            }
        );
    };
    report.train_documents = train_rows as usize;
    report.eval_documents = eval_rows as usize;
    report.train_tokens = lengths.tokens as usize;
    let lengths_path = dir.join(LENGTHS_FILE);
    std::fs::write(
        &lengths_path,
        serde_json::to_string_pretty(&serde_json::json!({
            "train": lengths,
            "eval": LengthStats::of(&mut eval_lengths),
        }))? + "\n",
    )
    .with_context(|| format!("cannot write `{}`", lengths_path.display()))?;
    Ok(Exported {
        train: train_path,
        eval: (eval_rows > 0).then_some(eval_path),
        train_rows,
        eval_rows,
        lengths,
        report,
    })
}
