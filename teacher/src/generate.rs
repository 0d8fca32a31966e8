//! The `generate` stage: problems in, corpus shards out, resumably.
//!
//! Each `(problem, sample_index)` becomes one request with its own seed
//! ([`sample_seed`]), so the corpus does not depend on batch size or on where a run was resumed.
//! Finished samples stream into crash-safe shards ([`ShardWriter`]: temporary name, then rename,
//! then manifest); `generation.json` beside them holds the resolved config and error counts. A
//! rerun reads the finished shards and skips every sample already there; an output folder written
//! with a different config is refused, naming the keys that differ.
//!
//! `generation.json`: `config` (the corpus identity), `run` (settings that do not change
//! samples), `last_run` (the last finished run's [`GenerateReport`]) and `errors`, summed over
//! every run into the folder (a resume adds to them; `--force` starts over):
//! `errors.total` counts samples that failed for good in a run (the next run retries them),
//! `errors.failed_attempts` counts failed request attempts by kind, retried or not
//! (`http_429`, `http_5xx`, `timeout`, `connection`, `malformed`, `http_4xx`, `auth`; see
//! [`ErrorCounts`]; always zero for the local backend), and `errors.recent` keeps the messages of
//! the last 20 failed samples.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distill_corpus::answer::verify;
use distill_corpus::problems::{load_problems, Problem, ProblemSource};
use distill_corpus::record::{self, Message as RecordMessage, Record};
use distill_corpus::shards::{completed_samples, Manifest, ShardWriter, WriterOptions, MANIFEST};
use distill_corpus::think::split_think;
use distill_models::chat::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::{Backend, Cancel, ErrorCounts, Event, GenOutput, GenRequest, SamplingParams};
use crate::sampling::sample_seed;
use crate::{Error, Result};

/// The file beside the shards that records how they were generated.
pub const GENERATION_FILE: &str = "generation.json";
/// DeepSeek-R1's recommended instruction for math problems; `{problem}` is the problem text.
pub const R1_USER_TEMPLATE: &str =
    "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}.";
/// The R1 convention: the assistant turn starts inside the think block.
pub const R1_PREFILL: &str = "<think>\n";
/// Minutes a shard stays open by default before it is closed with the rows it has: a CPU
/// teacher writing R1-length samples fills 5000 rows in days, all lost to a crash until then.
pub const SHARD_MINUTES: f64 = 10.0;
/// How many failed requests `generation.json` keeps messages for.
const KEPT_ERRORS: usize = 20;

/// How a problem becomes a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// R1 convention: none.
    pub system: Option<String>,
    /// The user message; `{problem}` is replaced by the problem text.
    pub user_template: String,
    /// The start of the assistant turn.
    pub prefill: String,
    /// Extra stop strings (the checkpoint's EOS ids always stop).
    pub stop: Vec<String>,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            system: None,
            user_template: R1_USER_TEMPLATE.into(),
            prefill: R1_PREFILL.into(),
            stop: Vec::new(),
        }
    }
}

impl PromptConfig {
    /// The user message for one problem.
    pub fn user_message(&self, problem: &str) -> String {
        self.user_template.replace("{problem}", problem)
    }

    fn messages(&self, user: &str) -> Vec<Message> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = &self.system {
            messages.push(Message::system(system.clone()));
        }
        messages.push(Message::user(user));
        messages
    }
}

/// Everything `generate` needs besides the backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateConfig {
    pub problems: ProblemSource,
    pub out: PathBuf,
    /// Samples per problem.
    pub samples: u32,
    /// Run seed; each sample's seed derives from it, the problem id and the sample index.
    pub seed: u64,
    pub sampling: SamplingParams,
    pub prompt: PromptConfig,
    /// Rows per shard.
    pub shard_rows: usize,
    /// Minutes a shard stays open before it is closed however few rows it holds (0: by
    /// `shard_rows` alone): bounds what a crash loses when samples come slowly.
    #[serde(default)]
    pub shard_minutes: f64,
    /// Delete an existing corpus in `out` instead of refusing a different config.
    pub force: bool,
}

/// Progress of a run, for a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Samples in the corpus, those of earlier runs included.
    pub done: u64,
    pub total: u64,
    /// Samples that failed in this run.
    pub failed: u64,
    /// Tokens generated in this run (finished or not).
    pub generated_tokens: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateReport {
    pub problems: u64,
    /// Samples asked for (problems × samples).
    pub total: u64,
    /// Already in the corpus when the run started.
    pub skipped: u64,
    /// Written by this run.
    pub written: u64,
    pub failed: u64,
    pub cancelled: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Generated tokens whose top log-probabilities were stored (`--logprobs`).
    #[serde(default)]
    pub logprob_tokens: u64,
    /// Times a sequence was paused for KV cache room and recomputed (local engine).
    #[serde(default)]
    pub preempted: u64,
    /// Finished shards in the folder.
    pub shards: usize,
    /// The last failed sample of this run, `key: reason` (the recent ones are in
    /// `generation.json`), for the command's one-line error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Failed samples whose request is invalid for the model (a prompt that fills its context):
    /// a rerun fails them again.
    #[serde(default)]
    pub failed_invalid: u64,
}

impl GenerateReport {
    /// Whether a rerun may generate some of the failed samples: not when every failure was a
    /// request the model cannot take.
    pub fn rerun_may_help(&self) -> bool {
        self.failed_invalid < self.failed
    }
}

/// A validated run, before any model work: problems read, output folder checked.
pub struct Plan {
    config: GenerateConfig,
    teacher: String,
    problems: Vec<Problem>,
    done: HashSet<(String, i32)>,
    previous_errors: u64,
}

/// The part of `generation.json` that identifies a corpus: a rerun with any of these changed
/// would mix incompatible samples.
fn identity(config: &GenerateConfig, teacher: &str) -> Value {
    let problems =
        fs::canonicalize(&config.problems.path).unwrap_or_else(|_| config.problems.path.clone());
    let mut identity = serde_json::json!({
        "teacher": teacher,
        "problems": problems,
        "preset": config.problems.preset,
        "prompt_col": config.problems.prompt_col,
        "answer_col": config.problems.answer_col,
        "id_col": config.problems.id_col,
        "seed": config.seed,
        "temperature": short_float(config.sampling.temperature),
        "top_p": short_float(config.sampling.top_p),
        "top_k": config.sampling.top_k,
        "max_new_tokens": config.sampling.max_new_tokens,
        "system": config.prompt.system,
        "user_template": config.prompt.user_template,
        "prefill": config.prompt.prefill,
        "stop": config.prompt.stop,
    });
    // Only when asked, so corpora written before the option keep their identity.
    if config.sampling.logprobs > 0 {
        identity["logprobs"] = config.sampling.logprobs.into();
    }
    identity
}

/// An f32 as the f64 its shortest decimal form names (0.6, not 0.6000000238418579).
fn short_float(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// `generation.json`: the identity, the last run's settings and cumulative error counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GenerationFile {
    config: Value,
    /// Settings that do not change samples (samples per problem, limit, shard size).
    run: Value,
    errors: ErrorLog,
    #[serde(default)]
    last_run: Option<GenerateReport>,
}

/// The `errors` object of `generation.json`, accumulated over every run into the folder.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ErrorLog {
    /// Failed requests over every run (a failed sample is retried by the next run).
    total: u64,
    /// Failed attempts by kind over every run, retried or not (all zero for a local backend).
    /// Absent from files written before it existed, which read as zero.
    #[serde(default)]
    failed_attempts: ErrorCounts,
    /// The most recent failures: `{key, message}`.
    recent: Vec<BTreeMap<String, String>>,
}

fn read_generation_file(dir: &Path) -> Result<Option<GenerationFile>> {
    let path = dir.join(GENERATION_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("`{}` is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn write_generation_file(dir: &Path, file: &GenerationFile) -> Result<()> {
    let path = dir.join(GENERATION_FILE);
    let tmp = dir.join(format!("{GENERATION_FILE}.tmp"));
    let text = serde_json::to_string_pretty(file)
        .map_err(|e| Error::Config(format!("cannot serialise `{GENERATION_FILE}`: {e}")))?;
    fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
}

/// Names of the top-level keys whose values differ.
fn differing_keys(old: &Value, new: &Value) -> Vec<String> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return vec!["config".into()];
    };
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// Removes what a previous `generate` wrote in `dir` (and nothing else).
fn clear_corpus(dir: &Path, prefix: &str) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ours = name == MANIFEST
            || name.starts_with(GENERATION_FILE)
            || name.starts_with(&format!("{MANIFEST}."))
            || (name.starts_with(&format!("{prefix}-")) && name.contains(".parquet"));
        if ours && path.is_file() {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

impl Plan {
    /// Reads the problems and checks the output folder; fails before any model work on bad
    /// input. `teacher` is the backend's provenance name (part of the corpus identity).
    pub fn new(config: GenerateConfig, teacher: &str) -> Result<Self> {
        if !(config.shard_minutes >= 0.0 && config.shard_minutes.is_finite()) {
            return Err(Error::Config(format!(
                "`shard_minutes` must be a number of minutes (0: shards close by rows alone), not {}",
                config.shard_minutes
            )));
        }
        if config.samples == 0 || config.shard_rows == 0 {
            return Err(Error::Config(
                "`samples` and `shard_rows` must be at least 1".into(),
            ));
        }
        let sampling = &config.sampling;
        if !(sampling.temperature >= 0.0 && sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "`temperature` must be at least 0 and `top_p` within (0, 1] (got {} and {})",
                sampling.temperature, sampling.top_p
            )));
        }
        if !config.prompt.user_template.contains("{problem}") {
            return Err(Error::Config(
                "the user template has no `{problem}` placeholder".into(),
            ));
        }
        let problems = load_problems(&config.problems)?;
        let dir = &config.out;
        let prefix = WriterOptions::default().shard_prefix;
        if config.force {
            clear_corpus(dir, &prefix)?;
        }
        let id = identity(&config, teacher);
        let manifest = Manifest::read(dir)?;
        let previous = read_generation_file(dir)?;
        let mut previous_errors = 0;
        match (&manifest, &previous) {
            (_, Some(file)) => {
                let keys = differing_keys(&file.config, &id);
                if !keys.is_empty() {
                    return Err(Error::ConfigMismatch {
                        path: dir.clone(),
                        keys: keys
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                previous_errors = file.errors.total;
            }
            (Some(m), None) if !m.shards.is_empty() => {
                return Err(Error::ConfigMismatch {
                    path: dir.clone(),
                    keys: format!("no `{GENERATION_FILE}`: not written by `distill generate`"),
                });
            }
            _ => {}
        }
        let done = completed_samples(dir)?;
        Ok(Self {
            config,
            teacher: teacher.to_string(),
            problems,
            done,
            previous_errors,
        })
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The most positions one of this plan's prompts takes in `engine`'s chat template: what a
    /// sequence's keys and values hold before its first new token. Only the prompts longest in
    /// characters are tokenised (tokens follow characters closely; 200k problems would take
    /// seconds), so this is a close lower bound.
    pub fn longest_prompt_tokens(&self, engine: &crate::engine::Engine) -> usize {
        const TOKENISED: usize = 32;
        let mut by_chars: Vec<&Problem> = self.problems.iter().collect();
        by_chars.sort_unstable_by_key(|p| std::cmp::Reverse(p.prompt.len()));
        let prompt = &self.config.prompt;
        by_chars
            .iter()
            .take(TOKENISED)
            .filter_map(|p| {
                let messages = prompt.messages(&prompt.user_message(&p.prompt));
                engine.prompt_ids(&messages, &prompt.prefill).ok()
            })
            .map(|ids| ids.len())
            .max()
            .unwrap_or(0)
    }

    /// Samples asked for: problems × samples per problem.
    pub fn total(&self) -> u64 {
        self.problems.len() as u64 * u64::from(self.config.samples)
    }

    /// Samples of this plan already in the corpus.
    pub fn already_done(&self) -> u64 {
        let ids: HashSet<&str> = self.problems.iter().map(|p| p.id.as_str()).collect();
        let wanted = |(id, s): &&(String, i32)| {
            *s >= 0 && (*s as u32) < self.config.samples && ids.contains(id.as_str())
        };
        self.done.iter().filter(wanted).count() as u64
    }

    /// The request for one sample.
    pub fn request(&self, problem: &Problem, sample_index: u32) -> GenRequest {
        let user = self.config.prompt.user_message(&problem.prompt);
        GenRequest {
            key: record::record_id(&problem.id, sample_index as i32),
            messages: self.config.prompt.messages(&user),
            prefill: self.config.prompt.prefill.clone(),
            sampling: self.config.sampling.clone(),
            seed: sample_seed(self.config.seed, &problem.id, sample_index),
            stop: self.config.prompt.stop.clone(),
            prompt_ids: None,
        }
    }

    /// The corpus row of a finished sample.
    pub fn record(&self, problem: &Problem, sample_index: u32, output: &GenOutput) -> Record {
        let split = split_think(&output.text);
        let (final_answer, correct) =
            verify(&split.completion, problem.reference_answer.as_deref());
        let user = self.config.prompt.user_message(&problem.prompt);
        let mut messages = Vec::with_capacity(3);
        if let Some(system) = &self.config.prompt.system {
            messages.push(RecordMessage::new("system", system.clone()));
        }
        messages.extend(record::conversation(
            &user,
            &split.reasoning,
            &split.completion,
        ));
        Record {
            id: record::record_id(&problem.id, sample_index as i32),
            problem_id: problem.id.clone(),
            sample_index: sample_index as i32,
            source: problem.source.clone(),
            prompt: user,
            messages,
            reasoning: split.reasoning,
            completion: split.completion,
            final_answer,
            reference_answer: problem.reference_answer.clone(),
            correct,
            finish_reason: output.finish_reason.as_str().to_string(),
            prompt_tokens: output.prompt_tokens as i32,
            completion_tokens: output.completion_tokens as i32,
            teacher: self.teacher.clone(),
            temperature: self.config.sampling.temperature,
            top_p: self.config.sampling.top_p,
            seed: sample_seed(self.config.seed, &problem.id, sample_index),
        }
    }

    fn generation_file(&self, errors: ErrorLog, report: Option<GenerateReport>) -> GenerationFile {
        GenerationFile {
            config: identity(&self.config, &self.teacher),
            run: serde_json::json!({
                "samples": self.config.samples,
                "limit": self.config.problems.limit,
                "shard_rows": self.config.shard_rows,
                "shard_minutes": self.config.shard_minutes,
                "source_name": self.config.problems.source_name,
            }),
            errors,
            last_run: report,
        }
    }

    /// Generates every missing sample with `backend`, streaming rows into shards. On `cancel`,
    /// the rows finished so far are flushed into a final shard and the report says `cancelled`.
    pub fn run(
        self,
        backend: &dyn Backend,
        cancel: &Cancel,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<GenerateReport> {
        let dir = self.config.out.clone();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let prior = read_generation_file(&dir)?;
        let mut errors = prior.map(|f| f.errors).unwrap_or_default();
        errors.total = errors.total.max(self.previous_errors);
        // Written first, so even a run killed at once leaves its identity behind.
        write_generation_file(&dir, &self.generation_file(errors.clone(), None))?;
        let options = WriterOptions {
            rows_per_shard: self.config.shard_rows,
            row_group_rows: self.config.shard_rows.clamp(1, 2048),
            ..WriterOptions::default()
        };
        let logprobs = self.config.sampling.logprobs > 0;
        let schema = if logprobs {
            distill_corpus::logprobs::with_logprobs(&record::schema())
        } else {
            record::schema()
        };
        let mut writer = ShardWriter::create(&dir, schema, options)?;
        if self.config.shard_minutes > 0.0 {
            writer = writer.close_after(Duration::from_secs_f64(self.config.shard_minutes * 60.0));
        }

        let index: HashMap<&str, usize> = self
            .problems
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect();
        let mut report = GenerateReport {
            problems: self.problems.len() as u64,
            total: self.total(),
            skipped: self.already_done(),
            ..GenerateReport::default()
        };
        let mut progress = Progress {
            done: report.skipped,
            total: report.total,
            ..Progress::default()
        };
        on_progress(&progress);

        let samples = self.config.samples;
        let plan = &self;
        let mut requests = self.problems.iter().flat_map(move |p| {
            (0..samples)
                .filter(move |&s| !plan.done.contains(&(p.id.clone(), s as i32)))
                .map(move |s| plan.request(p, s))
        });
        let mut write_error: Option<Error> = None;
        let mut written = HashSet::new();
        let attempts_before = backend.error_counts();
        let stats = backend.generate(&mut requests, cancel, &mut |event| match event {
            Event::Done(output) => {
                if write_error.is_some() {
                    return;
                }
                let Some((problem, sample)) = parse_key(&output.key, &index) else {
                    tracing::error!("backend returned an unknown key `{}`", output.key);
                    return;
                };
                if !written.insert(output.key.clone()) {
                    return;
                }
                let row = self.record(&self.problems[problem], sample, &output);
                let batch = record::records_to_batch(std::slice::from_ref(&row));
                let batch = if logprobs {
                    batch.and_then(|b| {
                        distill_corpus::logprobs::append(&b, &[output.logprobs.as_ref()])
                    })
                } else {
                    batch
                };
                match batch.and_then(|batch| writer.write(&batch)) {
                    Ok(()) => {
                        report.written += 1;
                        if let Some(l) = &output.logprobs {
                            report.logprob_tokens += l.len() as u64;
                        }
                        report.prompt_tokens += u64::from(output.prompt_tokens);
                        report.completion_tokens += u64::from(output.completion_tokens);
                        progress.done += 1;
                        on_progress(&progress);
                    }
                    Err(e) => {
                        write_error = Some(e.into());
                        cancel.cancel();
                    }
                }
            }
            Event::Failed { key, error } => {
                report.failed += 1;
                if matches!(error, Error::Config(_)) {
                    report.failed_invalid += 1;
                }
                progress.failed += 1;
                errors.total += 1;
                if errors.recent.len() >= KEPT_ERRORS {
                    errors.recent.remove(0);
                }
                let message = error_chain(&error);
                report.last_failure = Some(format!("{key}: {message}"));
                errors.recent.push(BTreeMap::from([
                    ("key".to_string(), key),
                    ("message".to_string(), message),
                ]));
                on_progress(&progress);
            }
            Event::Progress { new_tokens } => {
                progress.generated_tokens += new_tokens;
                on_progress(&progress);
            }
        });
        drop(requests);
        errors.failed_attempts = errors
            .failed_attempts
            .plus(&backend.error_counts().since(&attempts_before));
        // Flush what is complete even when the backend failed: those rows are good.
        let finished = writer.finish();
        let failure = match (stats, write_error) {
            (Err(e), _) | (Ok(_), Some(e)) => Err(e),
            (Ok(stats), None) => Ok(stats),
        };
        let stats = match failure {
            Ok(stats) => stats,
            Err(e) => {
                // The errors of a failed run still count (a rejected key, an endpoint gone);
                // the run's own error is the one to report.
                if let Err(w) = write_generation_file(&dir, &self.generation_file(errors, None)) {
                    tracing::warn!("cannot record the errors of the failed run: {w}");
                }
                return Err(e);
            }
        };
        let manifest = finished?;
        report.cancelled = stats.cancelled;
        report.preempted = stats.preempted;
        report.shards = manifest.shards.len();
        write_generation_file(&dir, &self.generation_file(errors, Some(report.clone())))?;
        Ok(report)
    }
}

/// `{problem_id}/{sample_index}` back to (problem index, sample index); ids may contain `/`.
fn parse_key(key: &str, index: &HashMap<&str, usize>) -> Option<(usize, u32)> {
    let (id, sample) = key.rsplit_once('/')?;
    Some((*index.get(id)?, sample.parse().ok()?))
}

fn error_chain(error: &Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
