//! `import`: reasoning corpora made by other tools (open-r1's OpenR1-Math and
//! Mixture-of-Thoughts, OpenThoughts, Bespoke-Stratos, s1K, TRL `messages` datasets, ShareGPT
//! files, distill's own `corpus export`) as corpus shards, so that verify, filter, dedup,
//! decontaminate, split, stats and train take them as they take a teacher's output.
//!
//! Three layouts cover them ([`Layout`]); `auto` picks by the columns present. Each row's last
//! assistant turn becomes one sample (a list of responses, OpenR1-Math's `generations`, one
//! sample each); its reasoning is split from the answer whichever way the dataset marks it and
//! the conversation is rewritten in R1's layout, as `generate` writes it. Problem ids come from
//! an id column or a hash of the turns before the answer, so that samples of one problem share
//! one id (what `split` and `filter --max-per-problem` group by). Rows (or responses) that give
//! no sample are counted by reason in `summary.json`; the input files are never changed.

pub(crate) mod read;
mod sample;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::pass::{par_rows, write_json, Sink, Staging, CONFIG_FILE, SUMMARY_FILE};
use crate::record::{self, Record};
use crate::shards::WriterOptions;
use crate::{Error, Result};

pub use sample::skip;

/// How a dataset stores its conversations.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `messages` if present, else `conversations`, else `columns`.
    #[default]
    Auto,
    /// A `messages` list of `{role, content}` (TRL, open-r1, Mixture-of-Thoughts).
    Messages,
    /// ShareGPT's `conversations` list of `{from, value}`, with an optional `system` column
    /// (OpenThoughts, Bespoke-Stratos).
    Conversations,
    /// A prompt column and a response column; the response may be a list of responses
    /// (OpenR1-Math's `problem` and `generations`) and the reasoning a column of its own (s1K).
    Columns,
}

/// What to do with a conversation's system prompt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum SystemPrompt {
    /// Keep it, unless it asks for Sky-T1's tags and the answer's were turned into `<think>`.
    #[default]
    Auto,
    /// Keep it in `messages` (the student trains with it in its context).
    Keep,
    /// Drop it (R1's convention: no system prompt).
    Drop,
}

/// How a sample's reasoning was marked in the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkFormat {
    /// `<think>…</think>` (R1, QwQ, Qwen3, open-r1).
    R1,
    /// `<|begin_of_thought|>…<|end_of_thought|>` (Sky-T1, Bespoke-Stratos, OpenThoughts).
    SkyT1,
    /// A field or column of its own (`reasoning_content`, `--reasoning-column`).
    Field,
    /// No reasoning marked: the whole turn is the completion.
    None,
}

/// Options of `import`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default)]
pub struct ImportConfig {
    /// How the files store conversations (`auto`: `messages`, else `conversations`, else a
    /// prompt and a response column).
    #[arg(long, value_enum, default_value_t = Layout::Auto)]
    pub layout: Layout,
    /// `columns` layout: the prompt column (a text, or a list of messages) [default: the first
    /// of `problem`, `question`, `prompt`, `instruction`, `input`].
    #[arg(long)]
    pub prompt_column: Option<String>,
    /// `columns` layout: the response column (a text, a list of texts, or a list of messages)
    /// [default: the first of `generations`, `response`, `completion`, `output`].
    #[arg(long)]
    pub response_column: Option<String>,
    /// `columns` layout: a column holding the reasoning apart from the response (s1K's
    /// `deepseek_thinking_trajectory`).
    #[arg(long)]
    pub reasoning_column: Option<String>,
    /// The reference answer `verify` judges against (a `#### N` GSM8K answer gives N, a worked
    /// solution its last `\boxed{}`)
    /// [default: `reference_answer` or `answer` when present].
    #[arg(long)]
    pub answer_column: Option<String>,
    /// Problem ids [default: a hash of each conversation's turns before the answer].
    #[arg(long)]
    pub id_column: Option<String>,
    /// The `source` of every row [default: the `source` column when present, else the input's
    /// file or folder name].
    #[arg(long)]
    pub source: Option<String>,
    /// The `teacher` column: the model that wrote the dataset (e.g. `deepseek-ai/DeepSeek-R1`).
    #[arg(long, default_value = "unknown")]
    pub teacher: String,
    /// Keep or drop system prompts.
    #[arg(long, value_enum, default_value_t = SystemPrompt::Auto)]
    pub system: SystemPrompt,
    /// Read at most this many rows (all files together).
    #[arg(long)]
    pub limit: Option<u64>,
}

impl Default for ImportConfig {
    fn default() -> Self {
        crate::config::defaults()
    }
}

/// Inputs and output of `import`.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct ImportIo {
    /// Files to import (`.jsonl`, `.json`, also gzipped, `.parquet`, `.arrow`), or folders searched for them
    /// (a downloaded Hugging Face dataset, a `Dataset.save_to_disk` folder), or hub datasets by
    /// name (`owner/name[/PATH][@revision]`).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder (corpus shards); built in a temporary sibling and renamed when complete.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub overwrite: bool,
    /// Rows decoded and converted at a time.
    #[arg(long, default_value_t = 256)]
    pub batch_rows: usize,
    #[command(flatten)]
    #[serde(default)]
    pub writer: WriterOptions,
    /// The name an input goes by where its rows name no source (a hub dataset's `owner/name`,
    /// set by the caller that fetched it); otherwise the input's file or folder name.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<PathBuf, String>,
}

impl ImportIo {
    pub fn new(inputs: Vec<PathBuf>, output: impl Into<PathBuf>) -> Self {
        ImportIo {
            inputs,
            output: output.into(),
            overwrite: false,
            batch_rows: 256,
            writer: WriterOptions::default(),
            names: BTreeMap::new(),
        }
    }
}

/// Which column plays which part (resolved from the options and the first file's columns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mapping {
    pub layout: Layout,
    /// `messages` or `conversations`.
    pub conversation: Option<String>,
    /// ShareGPT's separate `system` column.
    pub system: Option<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
    pub reasoning: Option<String>,
    pub answer: Option<String>,
    pub id: Option<String>,
    pub source: Option<String>,
    /// `finish_reason` or `finish_reasons` (one per response).
    pub finish: Option<String>,
}

impl Mapping {
    /// Resolves `cfg` against `columns` (those of `path`, the first input file).
    pub fn resolve(cfg: &ImportConfig, columns: &[String], path: &std::path::Path) -> Result<Self> {
        let has = |c: &str| columns.iter().any(|x| x == c);
        let first = |names: &[&str]| names.iter().find(|n| has(n)).map(|n| n.to_string());
        let present = || record::listed_columns(columns);
        let explicit = |name: &Option<String>| -> Result<Option<String>> {
            match name {
                Some(c) if !has(c) => Err(Error::MissingColumn {
                    path: path.to_path_buf(),
                    column: c.clone(),
                    present: present(),
                }),
                other => Ok(other.clone()),
            }
        };
        let layout = match cfg.layout {
            Layout::Auto if has("messages") => Layout::Messages,
            Layout::Auto if has("conversations") => Layout::Conversations,
            Layout::Auto => Layout::Columns,
            given => given,
        };
        let mut m = Mapping {
            layout,
            answer: explicit(&cfg.answer_column)?
                .or_else(|| first(&["reference_answer", "answer"])),
            id: explicit(&cfg.id_column)?,
            source: first(&["source"]),
            finish: first(&["finish_reason", "finish_reasons"]),
            ..Mapping::default()
        };
        let need = |column: Option<String>, what: &str, flag: &str| {
            column.ok_or_else(|| {
                Error::Invalid(format!(
                    "`{}` has no {what} column: name it with `{flag}` (columns present: {})",
                    path.display(),
                    present()
                ))
            })
        };
        match layout {
            Layout::Messages | Layout::Conversations => {
                let name = if layout == Layout::Messages {
                    "messages"
                } else {
                    "conversations"
                };
                if !has(name) {
                    return Err(Error::MissingColumn {
                        path: path.to_path_buf(),
                        column: name.into(),
                        present: present(),
                    });
                }
                for (flag, given) in [
                    ("--prompt-column", &cfg.prompt_column),
                    ("--response-column", &cfg.response_column),
                    ("--reasoning-column", &cfg.reasoning_column),
                ] {
                    if given.is_some() {
                        return Err(Error::Invalid(format!(
                            "`{flag}` applies to `--layout columns`; `{}` is read as `{name}` (`--layout columns` reads its columns instead)",
                            path.display()
                        )));
                    }
                }
                m.conversation = Some(name.into());
                m.system = (layout == Layout::Conversations && has("system"))
                    .then(|| "system".to_string());
            }
            Layout::Columns => {
                m.prompt = Some(need(
                    explicit(&cfg.prompt_column)?.or_else(|| {
                        first(&["problem", "question", "prompt", "instruction", "input"])
                    }),
                    "prompt",
                    "--prompt-column",
                )?);
                m.response = Some(need(
                    explicit(&cfg.response_column)?
                        .or_else(|| first(&["generations", "response", "completion", "output"])),
                    "response",
                    "--response-column",
                )?);
                m.reasoning = explicit(&cfg.reasoning_column)?;
            }
            Layout::Auto => unreachable!("resolved above"),
        }
        Ok(m)
    }

    /// The columns a file must have (the conversation, prompt and response columns, and any
    /// named by an option); the others may be missing from some files.
    fn required(&self, cfg: &ImportConfig) -> Vec<&str> {
        let mut out: Vec<&str> = [&self.conversation, &self.prompt, &self.response]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        for (given, column) in [
            (&cfg.reasoning_column, &self.reasoning),
            (&cfg.answer_column, &self.answer),
            (&cfg.id_column, &self.id),
        ] {
            if let (Some(_), Some(c)) = (given, column) {
                out.push(c);
            }
        }
        out
    }

    /// Every column the import reads.
    fn wanted(&self) -> Vec<String> {
        [
            &self.conversation,
            &self.system,
            &self.prompt,
            &self.response,
            &self.reasoning,
            &self.answer,
            &self.id,
            &self.source,
            &self.finish,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// How many samples had their reasoning marked which way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThinkCounts {
    pub r1: u64,
    pub sky_t1: u64,
    pub field: u64,
    pub none: u64,
    /// Samples whose think block was never closed (`finish_reason` `length` unless the dataset
    /// says otherwise; `filter` drops them).
    pub unclosed: u64,
}

/// What `import` read and wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub files: Vec<PathBuf>,
    pub mapping: Mapping,
    pub rows_read: u64,
    pub samples: u64,
    pub problems: u64,
    /// Rows, or responses of a row, that gave no sample, per reason ([`skip`]).
    pub skipped: BTreeMap<String, u64>,
    /// The first row skipped for each reason (`file: line 12`), to look at.
    pub first_skipped: BTreeMap<String, String>,
    pub think: ThinkCounts,
    /// Samples with a reference answer (what `verify` can judge).
    pub with_reference: u64,
    /// Whether `prompt_tokens` and `completion_tokens` were counted (a tokenizer was given);
    /// otherwise they are 0.
    pub token_counts: bool,
    pub output: PathBuf,
    pub seconds: f64,
}

impl ImportSummary {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// Counts a sample's reasoning format and reference.
    fn note(&mut self, d: &sample::Draft) {
        let t = &mut self.think;
        *match d.format {
            ThinkFormat::R1 => &mut t.r1,
            ThinkFormat::SkyT1 => &mut t.sky_t1,
            ThinkFormat::Field => &mut t.field,
            ThinkFormat::None => &mut t.none,
        } += 1;
        t.unclosed += u64::from(!d.closed);
        self.with_reference += u64::from(d.reference.is_some());
    }

    /// Counts a response that gave no sample, remembering where the first of its kind was.
    fn skip(&mut self, reason: &str, place: impl FnOnce() -> String) {
        *self.skipped.entry(reason.to_string()).or_default() += 1;
        self.first_skipped
            .entry(reason.to_string())
            .or_insert_with(place);
    }
}

/// A draft as a corpus row: what the dataset does not record is left for `verify` (`correct`,
/// `final_answer`) or marked unknown (sampling settings NaN).
fn record(
    d: sample::Draft,
    source: String,
    problem_id: String,
    sample_index: i32,
    teacher: &str,
) -> Record {
    Record {
        id: record::record_id(&problem_id, sample_index),
        problem_id,
        sample_index,
        source,
        prompt: d.prompt,
        messages: d.messages,
        reasoning: d.reasoning,
        completion: d.completion,
        final_answer: None,
        reference_answer: d.reference,
        correct: None,
        finish_reason: d.finish.as_str().to_string(),
        prompt_tokens: 0,
        completion_tokens: 0,
        teacher: teacher.to_string(),
        temperature: f32::NAN,
        top_p: f32::NAN,
        seed: 0,
    }
}

/// Counts a text's tokens (the student's or the teacher's tokenizer, from the caller).
pub type TokenCounter<'a> = dyn Fn(&str) -> usize + Sync + 'a;

/// How far an import is, after each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportProgress {
    pub rows_read: u64,
    pub samples: u64,
    /// Rows in all files, when every file says (parquet footers); capped by `--limit`.
    pub total_rows: Option<u64>,
}

/// Imports `io.inputs` into `io.output`. `count_tokens` fills `prompt_tokens` (the prompt's
/// text) and `completion_tokens` (the assistant turn as written, think block included);
/// `on_progress` hears after each batch (tokenising a 200k-row corpus takes minutes).
pub fn run(
    io: &ImportIo,
    cfg: &ImportConfig,
    count_tokens: Option<&TokenCounter<'_>>,
    on_progress: &mut dyn FnMut(ImportProgress),
) -> Result<ImportSummary> {
    let started = std::time::Instant::now();
    let files = read::input_files(&io.inputs, &io.names)?;
    let Some(first) = files.first().map(|f| &f.path) else {
        return Err(Error::Invalid("`import` needs at least one input".into()));
    };
    // Every file's header is read before anything is written: a folder with one odd file
    // fails now, and the row counts size the progress.
    let headers = files
        .iter()
        .map(|f| read::header(&f.path))
        .collect::<Result<Vec<_>>>()?;
    let mapping = Mapping::resolve(cfg, &headers[0].columns, first)?;
    let required = mapping.required(cfg);
    for (file, head) in files.iter().zip(&headers).skip(1) {
        if let Some(missing) = required
            .iter()
            .find(|c| !head.columns.iter().any(|x| x == *c))
        {
            return Err(Error::MissingColumn {
                path: file.path.clone(),
                column: missing.to_string(),
                present: record::listed_columns(&head.columns),
            });
        }
    }
    let staging = Staging::new(&io.output, io.overwrite, &io.inputs)?;
    let mut sink = Sink::spawn(staging.dir(), record::schema(), io.writer.clone())?;
    let mut s = ImportSummary {
        files: files.iter().map(|f| f.path.clone()).collect(),
        mapping: mapping.clone(),
        token_counts: count_tokens.is_some(),
        ..ImportSummary::default()
    };
    let mut samples_of: HashMap<String, i32> = HashMap::new();
    let wanted = mapping.wanted();
    let total_rows = headers
        .iter()
        .map(|h| h.rows)
        .sum::<Option<u64>>()
        .map(|n| cfg.limit.map_or(n, |l| n.min(l)));
    'files: for file in &files {
        for rows in read::Rows::open(&file.path, &wanted, io.batch_rows)? {
            let mut rows = rows?;
            if let Some(limit) = cfg.limit {
                rows.truncate(limit.saturating_sub(s.rows_read) as usize);
            }
            s.rows_read += rows.len() as u64;
            let drafts = par_rows(rows.len(), |i| {
                sample::drafts(&rows[i].value, &mapping, cfg.system)
            });
            let mut records = Vec::new();
            for (row, attempts) in rows.iter().zip(drafts) {
                for attempt in attempts {
                    match attempt {
                        Ok(d) => {
                            s.note(&d);
                            let source = cfg
                                .source
                                .clone()
                                .or(d.source.clone())
                                .unwrap_or_else(|| file.default_source.clone());
                            let problem_id = d.problem.clone().unwrap_or_else(|| {
                                let hash =
                                    twox_hash::XxHash3_64::oneshot(d.problem_text.as_bytes());
                                format!("{source}-{hash:016x}")
                            });
                            let index = samples_of.entry(problem_id.clone()).or_default();
                            records.push(record(d, source, problem_id, *index, &cfg.teacher));
                            *index += 1;
                        }
                        Err(reason) => {
                            s.skip(reason, || format!("{}: {}", file.path.display(), row.place))
                        }
                    }
                }
            }
            if let Some(count) = count_tokens {
                let counts = par_rows(records.len(), |i| {
                    let r = &records[i];
                    let answer = r.messages.last().map_or("", |m| m.content.as_str());
                    (count(&r.prompt), count(answer))
                });
                for (r, (p, c)) in records.iter_mut().zip(counts) {
                    r.prompt_tokens = i32::try_from(p).unwrap_or(i32::MAX);
                    r.completion_tokens = i32::try_from(c).unwrap_or(i32::MAX);
                }
            }
            s.samples += records.len() as u64;
            sink.send(record::records_to_batch(&records)?)?;
            on_progress(ImportProgress {
                rows_read: s.rows_read,
                samples: s.samples,
                total_rows,
            });
            if cfg.limit.is_some_and(|l| s.rows_read >= l) {
                break 'files;
            }
        }
    }
    sink.finish()?;
    s.problems = samples_of.len() as u64;
    s.output = staging.output().to_path_buf();
    s.seconds = started.elapsed().as_secs_f64();
    write_json(&staging.dir().join(SUMMARY_FILE), &s)?;
    write_json(
        &staging.dir().join(CONFIG_FILE),
        &serde_json::json!({ "io": io, "import": cfg }),
    )?;
    staging.commit()?;
    Ok(s)
}
