//! From corpus shards to training rows: read the conversations (the `messages` column, or
//! `prompt` + `reasoning` + `completion` in the teacher's `<think>` format), render them with
//! the student's chat template, tokenize with labels on the last assistant turn and its
//! end-of-turn token (see [`render`]), apply `max_seq_len`, split off a held-out set, and pack.
//! Every dropped row is counted under its reason, so an empty result can say why.

pub mod render;
pub mod teacher_targets;
pub mod token_cache;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch};
use distill_corpus::logprobs::{self, TokenLogprobs};
use distill_corpus::record::{self, col, Columns};
use distill_corpus::shards::{BatchStream, ShardReader};
use distill_models::chat::Message;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::batch::{PackedRow, TeacherTargets};
use crate::pack::{self, Document};
use crate::{Error, Result};

pub use render::{DropReason, Overlong, Rendered, Renderer};

/// How the corpus becomes training rows. Every default is written once, here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Tokens per training row (and the longest document kept).
    pub max_seq_len: usize,
    /// Pack several documents per row (best-fit decreasing); off: one document per row.
    pub packing: bool,
    /// Documents over `max_seq_len`: `drop` them or `truncate` them.
    pub overlong: Overlong,
    /// Fraction of problems held out for the evaluation loss (chosen by a hash of the problem id,
    /// so every sample of a held-out problem is held out).
    pub eval_fraction: f64,
    /// Chat template: `auto` (the checkpoint's own, else ChatML), a built-in name (`chatml`,
    /// `llama3`, `deepseek-r1`) or a path to a Jinja file.
    pub chat_template: String,
    /// Keep rows the teacher cut off at its token limit (`finish_reason` `length`).
    pub keep_truncated: bool,
    /// Folder of the token cache (the corpus tokenised once, memory-mapped while training):
    /// default `OUT/token-cache`; point runs over the same corpus at one folder to share it.
    pub token_cache: Option<PathBuf>,
    /// Read the teacher's stored log-probabilities and align them with each document's tokens
    /// (logit distillation from the corpus; set from `train.kd.from_corpus`, not a setting).
    #[serde(skip)]
    pub teacher_logprobs: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            max_seq_len: 2048,
            packing: true,
            overlong: Overlong::Drop,
            eval_fraction: 0.02,
            chat_template: "auto".into(),
            keep_truncated: false,
            token_cache: None,
            teacher_logprobs: false,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1 << 20).contains(&self.max_seq_len) {
            return Err(Error::Config(format!(
                "`data.max_seq_len` must be between 1 and 1048576, got `{}`",
                self.max_seq_len
            )));
        }
        if !(0.0..0.5).contains(&self.eval_fraction) {
            return Err(Error::Config(format!(
                "`data.eval_fraction` must be in [0, 0.5), got `{}`",
                self.eval_fraction
            )));
        }
        Ok(())
    }
}

/// One corpus row as the student sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub id: String,
    /// The corpus' `problem_id`, when it has that column.
    pub problem_id: Option<String>,
    pub messages: Vec<Message>,
    /// The teacher's `finish_reason`, when the corpus has that column.
    pub finish_reason: Option<String>,
    /// The problem's reference answer, when the corpus has that column.
    pub reference_answer: Option<String>,
    /// The teacher's stored log-probabilities (`generate --logprobs`), when they were asked
    /// for ([`DataConfig::teacher_logprobs`]) and the row has them.
    pub teacher_logprobs: Option<TokenLogprobs>,
}

/// Reads every conversation of the corpus at `inputs` (folders or parquet files).
pub fn read_corpus(inputs: &[PathBuf]) -> Result<Vec<Conversation>> {
    let mut out = Vec::new();
    for batch in stream_corpus(inputs)? {
        out.extend(batch?);
    }
    Ok(out)
}

/// The corpus at `inputs`, one record batch of conversations at a time (what the token cache
/// tokenises from, holding one batch in memory).
pub struct CorpusStream {
    batches: BatchStream,
    use_messages: bool,
    teacher_logprobs: bool,
    files: Vec<PathBuf>,
    rows: u64,
    /// Rows read so far (row ids of corpora without an `id` column count from here).
    seen: usize,
}

/// Opens the corpus at `inputs` for streaming: fails now when a file or a required column is
/// missing.
pub fn stream_corpus(inputs: &[PathBuf]) -> Result<CorpusStream> {
    stream_corpus_with(inputs, false)
}

/// [`stream_corpus`], also reading the teacher's stored log-probabilities when
/// `teacher_logprobs` (the corpus must have them).
pub fn stream_corpus_with(inputs: &[PathBuf], teacher_logprobs: bool) -> Result<CorpusStream> {
    let reader = ShardReader::open(inputs)?;
    let schema = reader.schema().clone();
    let has = |name: &str| schema.field_with_name(name).is_ok();
    let use_messages = has(col::MESSAGES);
    let mut columns: Vec<&str> = Vec::new();
    if use_messages {
        reader.require(&[col::MESSAGES])?;
        columns.push(col::MESSAGES);
    } else {
        // Without `messages`, the three text columns rebuild the R1 conversation.
        reader.require(&[col::PROMPT, col::REASONING, col::COMPLETION])?;
        columns.extend([col::PROMPT, col::REASONING, col::COMPLETION]);
    }
    for optional in [
        col::ID,
        col::PROBLEM_ID,
        col::FINISH_REASON,
        col::REFERENCE_ANSWER,
        col::PROMPT,
        col::REASONING,
        col::COMPLETION,
    ] {
        if has(optional) && !columns.contains(&optional) {
            columns.push(optional);
        }
    }
    if teacher_logprobs {
        if !logprobs::present(&schema) {
            return Err(Error::NoData(format!(
                "the corpus `{}` has no teacher log-probabilities (columns `{}`, …): generate it with `distill generate --logprobs K`",
                inputs
                    .first()
                    .map_or_else(String::new, |p| p.display().to_string()),
                logprobs::col::TOP_IDS
            )));
        }
        columns.extend([
            logprobs::col::TOKEN_IDS,
            logprobs::col::TOKEN_LOGPROBS,
            logprobs::col::TOP_IDS,
            logprobs::col::TOP_LOGPROBS,
        ]);
    }
    let (files, rows) = (reader.files().to_vec(), reader.num_rows());
    Ok(CorpusStream {
        batches: reader.with_columns(&columns).batches(),
        use_messages,
        teacher_logprobs,
        files,
        rows,
        seen: 0,
    })
}

impl CorpusStream {
    /// The parquet files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Rows in all files (from their footers).
    pub fn rows(&self) -> u64 {
        self.rows
    }
}

impl Iterator for CorpusStream {
    type Item = Result<Vec<Conversation>>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = match self.batches.next()? {
            Ok(batch) => batch,
            Err(e) => return Some(Err(e.into())),
        };
        let origin = self.files.first().cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(batch.num_rows());
        let mut result = read_batch(&batch, self.use_messages, &origin, self.seen, &mut out);
        if result.is_ok() && self.teacher_logprobs {
            result = logprobs::read(&batch)
                .map(|rows| {
                    for (conv, lp) in out.iter_mut().zip(rows) {
                        conv.teacher_logprobs = lp;
                    }
                })
                .map_err(Error::from);
        }
        self.seen += batch.num_rows();
        Some(result.map(|()| out))
    }
}

fn read_batch<'a>(
    batch: &'a RecordBatch,
    use_messages: bool,
    origin: &Path,
    first_row: usize,
    out: &mut Vec<Conversation>,
) -> Result<()> {
    let c = Columns::new(batch);
    let optional_str = |name: &str| batch.column_by_name(name).and_then(|_| c.str(name).ok());
    let ids = optional_str(col::ID);
    let problem_ids = optional_str(col::PROBLEM_ID);
    let finish = optional_str(col::FINISH_REASON);
    let reference = optional_str(col::REFERENCE_ANSWER);
    let (prompt, reasoning, completion) = (
        optional_str(col::PROMPT),
        optional_str(col::REASONING),
        optional_str(col::COMPLETION),
    );
    let messages = if use_messages {
        Some(c.list(col::MESSAGES)?)
    } else {
        None
    };
    for row in 0..batch.num_rows() {
        let text = |a: Option<&'a arrow_array::StringArray>| -> Option<&'a str> {
            a.filter(|a| !a.is_null(row)).map(|a| a.value(row))
        };
        let from_fields = || match (text(prompt), text(reasoning), text(completion)) {
            (Some(p), Some(r), Some(c)) => record::conversation(p, r, c),
            _ => Vec::new(),
        };
        let mut conversation = match messages {
            Some(list) => record::messages_at(list, row)?,
            None => from_fields(),
        };
        // A row whose `messages` is empty but whose text columns are filled still trains.
        if conversation.is_empty() {
            conversation = from_fields();
        }
        let id = text(ids).map_or_else(
            || format!("{}#{}", origin.display(), first_row + row),
            str::to_string,
        );
        out.push(Conversation {
            id,
            problem_id: text(problem_ids).map(str::to_string),
            messages: chat_messages(&conversation),
            finish_reason: text(finish).map(str::to_string),
            reference_answer: text(reference).map(str::to_string),
            teacher_logprobs: None,
        });
    }
    Ok(())
}

/// A corpus conversation as chat-template messages.
pub fn chat_messages(messages: &[record::Message]) -> Vec<Message> {
    messages
        .iter()
        .map(|m| Message::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Counts of what happened to the corpus rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataReport {
    pub rows: usize,
    pub train_documents: usize,
    pub eval_documents: usize,
    pub dropped: BTreeMap<String, usize>,
    pub truncated: usize,
    /// Conversations whose prompt boundary came from character offsets.
    pub offset_fallbacks: usize,
    /// Conversations that got EOS appended after the template's closing markup.
    pub appended_eos: usize,
    pub train_rows: usize,
    pub eval_rows: usize,
    pub train_tokens: usize,
    pub train_label_tokens: usize,
    /// Real tokens over `rows × max_seq_len` of the training rows.
    pub fill_ratio: f64,
    /// Documents whose stored teacher tokens were found in their tokens (logit distillation
    /// from the corpus), and those whose were not (they train on the cross-entropy only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher_aligned: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher_unaligned: usize,
    /// Tokens the teacher generated in kept documents, and how many of them got their stored
    /// distribution at a position.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher_tokens: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher_targets: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl DataReport {
    /// "`3` too long, `1` no assistant turn" for messages.
    pub fn drop_summary(&self) -> String {
        self.dropped
            .iter()
            .map(|(reason, n)| format!("`{n}` {}", reason.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Training and held-out rows with the report of how they were made.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub train: Vec<PackedRow>,
    pub eval: Vec<PackedRow>,
    pub report: DataReport,
}

/// Seed of the held-out hash: not `corpus split`'s default, so training on the train side of a
/// `corpus split` still holds out a `fraction` of its problems.
const EVAL_SPLIT_SEED: u64 = 0x5eed;

impl Conversation {
    /// The problem this sample answers: the `problem_id` column, else the id's part before its
    /// `/sample_index` (the corpus' `{problem_id}/{sample_index}` convention), else the id.
    pub fn problem_key(&self) -> &str {
        if let Some(problem) = &self.problem_id {
            return problem;
        }
        match self.id.rsplit_once('/') {
            Some((problem, index))
                if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) =>
            {
                problem
            }
            _ => &self.id,
        }
    }
}

/// Whether a problem falls in the held-out fraction: a stable hash of the problem (the one
/// `corpus split` uses), so every sample of a problem lands on the same side and the split does
/// not depend on shard order or batch size. Splitting by sample would put other samples of a
/// held-out problem in training and make the eval loss optimistic.
pub fn is_eval(problem: &str, fraction: f64) -> bool {
    let config = distill_corpus::split::SplitConfig {
        eval_fraction: fraction,
        split_seed: EVAL_SPLIT_SEED,
    };
    fraction > 0.0 && distill_corpus::split::is_eval(problem, &config)
}

/// One conversation made ready to train on: its tokens and first trained index with
/// `max_seq_len` applied, and how it got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub input_ids: Vec<u32>,
    pub boundary: usize,
    pub truncated: bool,
    pub offset_fallback: bool,
    pub appended_eos: bool,
    /// The teacher's stored distributions at this document's positions, when asked for and
    /// found ([`teacher_targets::align`]); `Some` but empty when the row had them and they did
    /// not align.
    pub teacher: Option<TeacherTargets>,
    /// Tokens the teacher generated for this row (0 without stored distributions).
    pub teacher_tokens: usize,
}

/// Renders, tokenizes and length-checks every conversation of `batch` (in parallel): the one
/// path from a corpus row to a training document, shared by [`build`] and the token cache.
pub fn prepare(
    batch: &[Conversation],
    renderer: &Renderer,
    config: &DataConfig,
) -> Vec<std::result::Result<Prepared, DropReason>> {
    batch
        .par_iter()
        .map(|conv| {
            if !config.keep_truncated && conv.finish_reason.as_deref() == Some("length") {
                return Err(DropReason::TeacherTruncated);
            }
            let rendered = renderer.render(&conv.messages)?;
            let (offset_fallback, appended_eos) = (rendered.offset_fallback, rendered.appended_eos);
            let (input_ids, boundary, truncated) =
                rendered.fit_length(config.max_seq_len, config.overlong)?;
            let teacher = conv.teacher_logprobs.as_ref().map(|lp| {
                teacher_targets::align(&input_ids, boundary, lp, renderer.stop_ids())
                    .unwrap_or_default()
            });
            Ok(Prepared {
                input_ids,
                boundary,
                truncated,
                offset_fallback,
                appended_eos,
                teacher,
                teacher_tokens: conv.teacher_logprobs.as_ref().map_or(0, |lp| lp.len()),
            })
        })
        .collect()
}

impl DataReport {
    /// Counts one conversation's outcome; the document when it is kept.
    pub fn tally(
        &mut self,
        outcome: std::result::Result<Prepared, DropReason>,
    ) -> Option<Prepared> {
        self.rows += 1;
        match outcome {
            Err(reason) => {
                *self.dropped.entry(reason.name().to_string()).or_default() += 1;
                None
            }
            Ok(doc) => {
                self.truncated += usize::from(doc.truncated);
                self.offset_fallbacks += usize::from(doc.offset_fallback);
                self.appended_eos += usize::from(doc.appended_eos);
                match &doc.teacher {
                    Some(t) if t.is_empty() => self.teacher_unaligned += 1,
                    Some(_) => self.teacher_aligned += 1,
                    None => {}
                }
                self.teacher_tokens += doc.teacher_tokens;
                self.teacher_targets += doc.teacher.as_ref().map_or(0, |t| t.len());
                Some(doc)
            }
        }
    }
}

/// Where a corpus comes from: the training corpus and an optional separate held-out corpus.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub corpus: &'a [PathBuf],
    pub eval_corpus: Option<&'a [PathBuf]>,
}

impl Sources<'_> {
    /// The held-out fraction the training corpus is split with: none when a separate eval
    /// corpus gives the held-out rows.
    pub fn eval_fraction(&self, config: &DataConfig) -> f64 {
        if self.eval_corpus.is_some() {
            0.0
        } else {
            config.eval_fraction
        }
    }
}

/// What [`walk`] hands its documents to.
pub trait DocumentSink {
    /// A kept document of `conv`; `held_out`: it belongs to the held-out set.
    fn document(&mut self, conv: &Conversation, doc: Prepared, held_out: bool) -> Result<()>;

    /// A record batch is done: `rows` of `total` corpus rows read so far.
    fn batch_done(&mut self, rows: u64, total: u64) -> Result<()>;
}

/// The reports of a [`walk`]: the training corpus's and the eval corpus's rows.
#[derive(Debug, Clone, Default)]
pub struct Walked {
    pub report: DataReport,
    pub eval_report: DataReport,
}

/// Streams `sources` one record batch at a time through [`prepare`], counts every row in the
/// report of its corpus, and hands each kept document to `sink` with its side: an eval corpus's
/// rows are held out; the training corpus's by problem ([`is_eval`]) when there is no eval
/// corpus. The one walk behind the token cache and the TRL dataset export, so both keep and hold
/// out exactly what the in-memory [`build`] does.
pub fn walk(
    sources: Sources<'_>,
    renderer: &Renderer,
    config: &DataConfig,
    sink: &mut dyn DocumentSink,
) -> Result<Walked> {
    let train_stream = stream_corpus_with(sources.corpus, config.teacher_logprobs)?;
    let eval_stream = sources
        .eval_corpus
        .map(|inputs| stream_corpus_with(inputs, config.teacher_logprobs))
        .transpose()?;
    let fraction = sources.eval_fraction(config);
    let total = train_stream.rows() + eval_stream.as_ref().map_or(0, |s| s.rows());
    let mut walked = Walked::default();
    let mut done = 0u64;
    sink.batch_done(done, total)?;
    let streams = std::iter::once((train_stream, false)).chain(eval_stream.map(|s| (s, true)));
    for (stream, held_out_corpus) in streams {
        for batch in stream {
            let batch = batch?;
            let outcomes = prepare(&batch, renderer, config);
            for (conv, outcome) in batch.iter().zip(outcomes) {
                let counted = if held_out_corpus {
                    &mut walked.eval_report
                } else {
                    &mut walked.report
                };
                if let Some(doc) = counted.tally(outcome) {
                    let held_out = held_out_corpus || is_eval(conv.problem_key(), fraction);
                    sink.document(conv, doc, held_out)?;
                }
            }
            done += batch.len() as u64;
            sink.batch_done(done, total)?;
        }
    }
    Ok(walked)
}

/// Renders, tokenizes, filters, splits and packs `conversations`, in memory (`distill train`
/// streams through the token cache instead; both give the same rows).
pub fn build(
    conversations: &[Conversation],
    renderer: &Renderer,
    config: &DataConfig,
) -> Result<Dataset> {
    config.validate()?;
    let mut report = DataReport::default();
    let (mut train_docs, mut eval_docs) = (Vec::new(), Vec::new());
    for (conv, outcome) in conversations
        .iter()
        .zip(prepare(conversations, renderer, config))
    {
        if let Some(doc) = report.tally(outcome) {
            let teacher = doc.teacher.filter(|t| !t.is_empty());
            let doc = Document {
                teacher,
                ..Document::from_boundary(doc.input_ids, doc.boundary)
            };
            if is_eval(conv.problem_key(), config.eval_fraction) {
                eval_docs.push(doc);
            } else {
                train_docs.push(doc);
            }
        }
    }
    if train_docs.is_empty() && !eval_docs.is_empty() {
        // A tiny corpus whose every row hashed into the held-out set still trains.
        std::mem::swap(&mut train_docs, &mut eval_docs);
    }
    if train_docs.is_empty() {
        return Err(Error::NoData(no_rows_reason(&report, config)));
    }
    report.train_documents = train_docs.len();
    report.eval_documents = eval_docs.len();
    let train = pack::pack(&train_docs, config.max_seq_len, config.packing)?;
    let eval = pack::pack(&eval_docs, config.max_seq_len, config.packing)?;
    report.train_rows = train.len();
    report.eval_rows = eval.len();
    report.train_tokens = train.iter().map(PackedRow::len).sum();
    report.train_label_tokens = train.iter().map(PackedRow::label_count).sum();
    report.fill_ratio = pack::fill_ratio(&train, config.max_seq_len);
    Ok(Dataset {
        train,
        eval,
        report,
    })
}

/// Why no row survived, in one line.
pub(crate) fn no_rows_reason(report: &DataReport, config: &DataConfig) -> String {
    if report.rows == 0 {
        return "the corpus has no rows".into();
    }
    let all = |reason: DropReason| report.dropped.get(reason.name()) == Some(&report.rows);
    let hint = if all(DropReason::TooLong) {
        format!(
            " (raise `data.max_seq_len` above `{}` or set `data.overlong = \"truncate\"`)",
            config.max_seq_len
        )
    } else if all(DropReason::TeacherTruncated) {
        " (set `data.keep_truncated = true` to train on them anyway)".into()
    } else {
        String::new()
    };
    let reasons: Vec<String> = [
        DropReason::NoAssistantTurn,
        DropReason::TeacherTruncated,
        DropReason::TooLong,
        DropReason::PromptTooLong,
        DropReason::TemplateError,
    ]
    .into_iter()
    .filter_map(|r| {
        let n = *report.dropped.get(r.name())?;
        Some(format!("`{n}` {}", r.describe()))
    })
    .collect();
    format!(
        "all `{}` corpus rows were dropped: {}{hint}",
        report.rows,
        reasons.join(", ")
    )
}

/// The text a from-scratch tokenizer learns from: every message of every conversation.
pub fn texts(conversations: &[Conversation]) -> impl Iterator<Item = &str> {
    conversations
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.content.as_str()))
}
