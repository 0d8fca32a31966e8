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
//!
//! `data/export.json`, written last, records what the export was made from (the token cache's
//! key: corpus files, tokenizer, template, filters) and what it holds; a later run of the same
//! job (`--resume`, a dry run then the run) whose key is the same reuses the files instead of
//! rendering the corpus again.

use std::path::{Path, PathBuf};

use anyhow::Context;
use distill_corpus::export::MessagesWriter;
use distill_corpus::record::Message as RecordMessage;
use distill_student::data::token_cache::{self, CacheKey};
use distill_student::data::{self, DataConfig, DataReport, Renderer};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;

pub const DATA_DIR: &str = "data";
pub const TRAIN_FILE: &str = "train.parquet";
pub const EVAL_FILE: &str = "eval.parquet";
pub const LENGTHS_FILE: &str = "lengths.json";
pub const EXPORT_FILE: &str = "export.json";

/// Token lengths of the training documents (template, prompt, answer and end-of-turn token).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Exported {
    pub train: PathBuf,
    /// `None` when nothing is held out.
    pub eval: Option<PathBuf>,
    pub train_rows: u64,
    pub eval_rows: u64,
    pub lengths: LengthStats,
    /// The same counts distill's trainer reports (`data_report.json`).
    pub report: DataReport,
    /// The files were an earlier export's, made from the same inputs.
    #[serde(skip)]
    pub reused: bool,
}

/// `data/export.json`: the inputs' key and what the export holds.
#[derive(Serialize, Deserialize)]
struct ExportRecord {
    key: CacheKey,
    exported: Exported,
}

/// The earlier export in `dir` when it was made from `key` and its files are there.
fn earlier_export(dir: &Path, key: &CacheKey) -> Option<Exported> {
    let text = std::fs::read_to_string(dir.join(EXPORT_FILE)).ok()?;
    let record: ExportRecord = serde_json::from_str(&text).ok()?;
    if &record.key != key {
        return None;
    }
    let mut exported = record.exported;
    // The job folder may have moved since: the files are where they are now.
    exported.train = dir.join(TRAIN_FILE);
    exported.eval = exported.eval.map(|_| dir.join(EVAL_FILE));
    let files = [Some(&exported.train), exported.eval.as_ref()];
    if !files.into_iter().flatten().all(|f| f.is_file()) || !dir.join(LENGTHS_FILE).is_file() {
        return None;
    }
    exported.reused = true;
    Some(exported)
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
    let corpus_inputs = [corpus.to_path_buf()];
    let eval_inputs: Option<Vec<PathBuf>> = eval_corpus.map(|p| vec![p.to_path_buf()]);
    let sources = data::Sources {
        corpus: &corpus_inputs,
        eval_corpus: eval_inputs.as_deref(),
    };
    let key = token_cache::key(sources, renderer, config)
        .with_context(|| format!("cannot read the corpus `{}`", corpus.display()))?;
    if let Some(exported) = earlier_export(&dir, &key) {
        return Ok(exported);
    }
    // Gone before the files change, so a half-written export is never taken for a whole one.
    let record_path = dir.join(EXPORT_FILE);
    if record_path.exists() {
        std::fs::remove_file(&record_path)
            .with_context(|| format!("cannot remove `{}`", record_path.display()))?;
    }
    let bar = Progress::new(
        0,
        "{spinner} dataset [{bar:30}] {pos}/{len} rows  elapsed {elapsed}  ETA {eta}",
        "rows",
        progress,
    );
    bar.set_prefix("dataset");
    let mut sink = Sink {
        train: MessagesWriter::create(&train_path, true)?,
        eval: MessagesWriter::create(&eval_path, true)?,
        to_train: Vec::new(),
        to_eval: Vec::new(),
        train_lengths: Vec::new(),
        eval_lengths: Vec::new(),
        bar: &bar,
    };
    let walked =
        data::walk(sources, renderer, config, &mut sink).with_context(|| match eval_corpus {
            Some(eval) => format!(
                "cannot read the corpus `{}` or the eval corpus `{}`",
                corpus.display(),
                eval.display()
            ),
            None => format!("cannot read the corpus `{}`", corpus.display()),
        })?;
    let Sink {
        train,
        eval,
        mut train_lengths,
        mut eval_lengths,
        ..
    } = sink;
    let (mut report, eval_report) = (walked.report, walked.eval_report);
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
    let exported = Exported {
        train: train_path,
        eval: (eval_rows > 0).then_some(eval_path),
        train_rows,
        eval_rows,
        lengths,
        report,
        reused: false,
    };
    let record = ExportRecord { key, exported };
    std::fs::write(&record_path, serde_json::to_string_pretty(&record)? + "\n")
        .with_context(|| format!("cannot write `{}`", record_path.display()))?;
    Ok(record.exported)
}

/// The TRL export's side of [`data::walk`]: each kept conversation (up to its trained turn) into
/// the train or eval parquet file, written once per record batch.
struct Sink<'a> {
    train: MessagesWriter,
    eval: MessagesWriter,
    to_train: Vec<Vec<RecordMessage>>,
    to_eval: Vec<Vec<RecordMessage>>,
    train_lengths: Vec<u32>,
    eval_lengths: Vec<u32>,
    bar: &'a Progress,
}

impl data::DocumentSink for Sink<'_> {
    fn document(
        &mut self,
        conv: &data::Conversation,
        doc: data::Prepared,
        held_out: bool,
    ) -> distill_student::Result<()> {
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
        if held_out {
            self.to_eval.push(messages);
            self.eval_lengths.push(length);
        } else {
            self.to_train.push(messages);
            self.train_lengths.push(length);
        }
        Ok(())
    }

    fn batch_done(&mut self, rows: u64, total: u64) -> distill_student::Result<()> {
        self.train.write(self.to_train.iter().map(Vec::as_slice))?;
        self.eval.write(self.to_eval.iter().map(Vec::as_slice))?;
        self.to_train.clear();
        self.to_eval.clear();
        self.bar.set_length(total);
        self.bar.set_position(rows);
        Ok(())
    }
}
