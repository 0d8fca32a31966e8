//! `distill compare`: evaluates a teacher and its students on held-out problems with the R1
//! protocol and writes `report.md`, `report.json` and PNG charts.
//!
//! Layout: [`model`] checks the model specs, [`cache`] keeps each model's generations (corpus
//! shards written by the teacher crate's `generate` plan, so prompts and seeds are the corpus
//! stage's own), [`run`] drives the models one after another, [`metrics`] computes the numbers,
//! [`report`] and [`charts`] present them, [`memory`] measures peak memory. Only this file
//! prints (progress bars and the closing summary).

pub mod cache;
pub mod charts;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod report;
pub mod run;

use std::path::{Path, PathBuf};

use crate::progress::Progress;
use anyhow::{bail, Context};
use distill_corpus::problems::{load_problems, Preset, ProblemSource};
use distill_teacher::engine::EngineOptions;
use distill_teacher::generate::PromptConfig;
use distill_teacher::{Cancel, SamplingParams};
use serde::{Deserialize, Serialize};

pub use report::Report;
pub use run::{CompareConfig, Event, ModelRun};

/// Defaults, written once for both the command line and pipeline files.
pub mod defaults {
    pub fn samples() -> u32 {
        4
    }
    pub fn batch() -> usize {
        distill_teacher::engine::EngineOptions::default().batch
    }
    pub fn max_new_tokens() -> usize {
        distill_teacher::SamplingParams::default().max_new_tokens
    }
    pub fn prefill() -> String {
        distill_teacher::generate::R1_PREFILL.to_string()
    }
    pub fn temperature() -> f32 {
        distill_teacher::SamplingParams::default().temperature
    }
    pub fn top_p() -> f32 {
        distill_teacher::SamplingParams::default().top_p
    }
    pub fn out() -> std::path::PathBuf {
        "compare".into()
    }
}

/// `distill compare` options (also the `[compare]` table of a pipeline file).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareArgs {
    /// Models to evaluate, the teacher first: checkpoint folders, `.gguf` files, hub models
    /// (`owner/name`), or `openai:MODEL@BASE_URL` for an OpenAI-compatible endpoint.
    #[arg(long, num_args = 1.., required = true, value_name = "MODEL")]
    pub models: Vec<String>,
    /// Held-out problems: a `.jsonl` / `.json` / `.parquet` file or a folder of them, or a hub
    /// dataset's file by name (`HuggingFaceH4/MATH-500`, `openai/gsm8k/main/test`).
    #[arg(long, value_name = "EVAL_FILE")]
    pub problems: PathBuf,
    /// Column layout of the problems (`gsm8k`, `math`); inferred from the columns if absent.
    #[arg(long, value_parser = parse_preset)]
    #[serde(default)]
    pub preset: Option<Preset>,
    /// Use only the first N problems.
    #[arg(long)]
    #[serde(default)]
    pub limit: Option<usize>,
    /// Samples per problem (pass@1 averages over them).
    #[arg(long, default_value_t = defaults::samples())]
    #[serde(default = "defaults::samples")]
    pub samples: u32,
    /// Samples per majority vote for cons@k (default: `--samples`).
    #[arg(long)]
    #[serde(default)]
    pub k: Option<u32>,
    /// Sequences generated at once by a local model.
    #[arg(long, default_value_t = defaults::batch())]
    #[serde(default = "defaults::batch")]
    pub batch: usize,
    /// Most GiB of KV cache for a local model: beyond it the youngest sequences pause and are
    /// recomputed later. 0: 90% of the GPU memory free after loading, less 1 GiB (CPU: 80% of
    /// the host's).
    #[arg(long, default_value_t = 0.0, value_name = "GIB")]
    #[serde(default)]
    pub kv_cache_gib: f64,
    /// Most new tokens per sample; longer samples count as truncated.
    #[arg(long, default_value_t = defaults::max_new_tokens())]
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature (R1 protocol: 0.6).
    #[arg(long, default_value_t = defaults::temperature())]
    #[serde(default = "defaults::temperature")]
    pub temperature: f32,
    /// Nucleus sampling mass (R1 protocol: 0.95).
    #[arg(long, default_value_t = defaults::top_p())]
    #[serde(default = "defaults::top_p")]
    pub top_p: f32,
    /// Run seed; each sample's seed derives from it, the problem id and the sample index.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub seed: u64,
    /// Text the assistant turn starts with (R1 protocol: `<think>\n`, so the answer is read
    /// after `</think>`). `--prefill ""` for instruct models that do not reason in a think
    /// block: prefilled, they answer inside it and nothing is read as their answer.
    #[arg(long, default_value_t = defaults::prefill())]
    #[serde(default = "defaults::prefill")]
    pub prefill: String,
    /// Output folder: report, charts and the generation cache (`generations/<label>/`).
    #[arg(long, default_value = "compare")]
    #[serde(default = "defaults::out")]
    pub out: PathBuf,
    /// Names for the report, `NAME=MODEL` with MODEL as given to `--models` (default: the
    /// file or folder name).
    #[arg(long, num_args = 1.., value_name = "NAME=MODEL")]
    #[serde(default)]
    pub labels: Vec<String>,
    /// Environment variable holding the API key of `openai:` models.
    #[arg(long)]
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// A sentence or paragraph printed under the report's summary: what the models are, where
    /// they came from (the demo says its teacher only stands in for DeepSeek-R1).
    #[arg(long, value_name = "TEXT")]
    #[serde(default)]
    pub note: Option<String>,
    #[command(flatten)]
    #[serde(skip)]
    pub device: crate::device_args::DeviceArgs,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse().map_err(|e: distill_corpus::Error| e.to_string())
}

/// Checks every input (problem file, models, numbers) and resolves the configuration; fails
/// before any model work.
pub fn resolve(args: &CompareArgs) -> anyhow::Result<CompareConfig> {
    if args.samples == 0 {
        bail!("`--samples` must be at least 1");
    }
    let k = args.k.unwrap_or(args.samples);
    if k == 0 || k > args.samples {
        bail!(
            "`--k` must be between 1 and `--samples` ({}), got {k}",
            args.samples
        );
    }
    crate::teacher_cmd::check_kv_cache_gib(args.kv_cache_gib)?;
    if args.batch == 0 || args.max_new_tokens == 0 {
        bail!("`--batch` and `--max-new-tokens` must be at least 1");
    }
    let problem_file = crate::model_arg::resolve_problem_file(&args.problems)?;
    if !problem_file.exists() {
        bail!("problem file `{}` does not exist", args.problems.display());
    }
    let problems = ProblemSource {
        path: problem_file,
        preset: args.preset,
        limit: args.limit,
        ..ProblemSource::default()
    };
    let problem_list = load_problems(&problems)
        .with_context(|| format!("cannot read problems from `{}`", args.problems.display()))?;
    if problem_list.is_empty() {
        bail!("`{}` holds no problems", args.problems.display());
    }
    let models = model::resolve(&args.models, &args.labels)?;
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        logprobs: 0,
        ..SamplingParams::default()
    };
    let engine = args.device.engine(EngineOptions {
        batch: args.batch,
        kv_cache_gib: args.kv_cache_gib,
        ..EngineOptions::default()
    });
    Ok(CompareConfig {
        models,
        problems,
        problem_list,
        samples: args.samples,
        k,
        sampling,
        prompt: PromptConfig {
            prefill: args.prefill.clone(),
            ..PromptConfig::default()
        },
        seed: args.seed,
        engine: EngineOptions {
            step_tokens: engine.step_tokens.max(engine.batch),
            ..engine
        },
        out: args.out.clone(),
        api_key_env: args.api_key_env.clone(),
        note: args
            .note
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string),
    })
}

/// Runs a checked comparison and writes the report and charts into `config.out`.
pub fn evaluate(
    config: &CompareConfig,
    cancel: &Cancel,
    on_event: &mut dyn FnMut(Event<'_>),
) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create `{}`", config.out.display()))?;
    let runs = run::run(config, cancel, on_event)?;
    let report = report::build(config, &runs);
    write_charts(&config.out, &report, &runs)?;
    report::write(&config.out, &report)?;
    Ok(report)
}

fn write_charts(out: &Path, report: &Report, runs: &[ModelRun]) -> anyhow::Result<()> {
    let bars: Vec<charts::AccuracyBar> = report
        .models
        .iter()
        .map(|m| charts::AccuracyBar {
            label: m.label.clone(),
            pass_at_1: m.metrics.pass_at_1,
            se: m.metrics.pass_at_1_se,
            cons_at_k: m.metrics.cons_at_k,
        })
        .collect();
    charts::accuracy(&out.join(&report.charts.accuracy), &bars, report.protocol.k)?;
    let lengths: Vec<(String, Vec<u64>)> = runs
        .iter()
        .map(|r| {
            let values = r.samples.iter().map(|s| s.reasoning_tokens).collect();
            (r.model.label.clone(), values)
        })
        .collect();
    charts::reasoning_lengths(&out.join(&report.charts.reasoning_lengths), &lengths)?;
    let points: Vec<(String, Option<u64>, Option<f64>)> = report
        .models
        .iter()
        .map(|m| (m.label.clone(), m.bytes_on_disk, m.tokens_per_second))
        .collect();
    charts::speed_size(&out.join(&report.charts.speed_size), &points)
}

/// The command: checks everything, shows a progress bar per model, prints the summary.
pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let config = resolve(&args)?;
    let mut bar: Option<Progress> = None;
    let mut started = std::time::Instant::now();
    let cancel = Cancel::new();
    let report = evaluate(&config, &cancel, &mut |event| match event {
        Event::ModelStart {
            label,
            total,
            missing,
            cleared,
        } => {
            if cleared {
                eprintln!("{label}: model or sampling settings changed, cache cleared");
            }
            if missing == 0 {
                eprintln!("{label}: all {total} samples cached");
            } else {
                let b = Progress::new(
                    total,
                    "{prefix:>16} [{bar:30.cyan/blue}] {pos}/{len} samples · {elapsed_precise} · {msg}",
                    "samples",
                    true,
                );
                b.set_prefix(label.to_string());
                b.set_position(total - missing);
                b.set_message("loading model");
                bar = Some(b);
            }
        }
        Event::Loading { .. } => started = std::time::Instant::now(),
        Event::Progress {
            done,
            failed,
            tokens,
            ..
        } => {
            if let Some(b) = &bar {
                b.set_position(done);
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let mut msg = format!("{:.0} tok/s", tokens as f64 / secs);
                if failed > 0 {
                    msg.push_str(&format!(" · {failed} failed"));
                }
                b.set_message(msg);
            }
        }
        Event::ModelDone {
            label,
            generated,
            failed,
            last_failure,
            rerun_may_help,
        } => {
            if let Some(b) = bar.take() {
                b.finish_with_message(format!("{generated} generated"));
            } else {
                tracing::debug!("{label}: nothing to generate");
            }
            // The metrics leave failed samples out, so the models would be scored on different
            // problems: say so, with the reason, where the user looks.
            if failed > 0 {
                let rerun = if rerun_may_help {
                    "a rerun retries them"
                } else {
                    "a rerun would fail them again"
                };
                eprintln!(
                    "Warning: model `{label}`: {failed} sample{} failed (the last, {}); its metrics leave them out ({rerun})",
                    crate::plural(failed),
                    last_failure.as_deref().unwrap_or("no reason recorded")
                );
            }
        }
    })?;
    println!("{}", report::summary(&report));
    println!(
        "wrote {} and {}",
        config.out.join(report::REPORT_MD).display(),
        config.out.join(report::REPORT_JSON).display()
    );
    Ok(())
}
