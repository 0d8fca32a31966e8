//! `distill generate` and `distill serve`: command-line front end of the teacher crate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use distill_corpus::problems::{Preset, ProblemSource};
use distill_teacher::backend::{Backend, Cancel, SamplingParams};
use distill_teacher::engine::{Engine, EngineOptions};
use distill_teacher::generate::{
    GenerateConfig, Plan, Progress, PromptConfig, R1_PREFILL, R1_USER_TEMPLATE,
};
use distill_teacher::local::LocalBackend;
use distill_teacher::openai::{OpenAiBackend, OpenAiConfig, PrefillMode};
use distill_teacher::server::{self, Server, ServerConfig};

use crate::progress;

use crate::device_args::DeviceArgs;

/// Where samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A checkpoint folder or GGUF file run in-process (`--model`).
    Local,
    /// An OpenAI-compatible `/v1/chat/completions` endpoint.
    Openai,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Problems: a `.jsonl`/`.json`/`.parquet` file or a folder of them, or a hub dataset's
    /// file by name (`openai/gsm8k/main/train`).
    #[arg(long)]
    pub problems: PathBuf,
    /// Known dataset layout (`gsm8k`, `math`): column names and answer extraction.
    #[arg(long)]
    pub preset: Option<Preset>,
    /// Column holding the problem text (default: the preset's, else `problem`/`question`/`prompt`).
    #[arg(long)]
    pub prompt_col: Option<String>,
    /// Column holding the reference answer.
    #[arg(long)]
    pub answer_col: Option<String>,
    /// Column holding a unique problem id (default: the row number).
    #[arg(long)]
    pub id_col: Option<String>,
    /// Use only the first N problems.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output folder for the corpus shards.
    #[arg(long)]
    pub out: PathBuf,
    /// Delete a corpus already in `--out` (instead of refusing a different config).
    #[arg(long)]
    pub force: bool,

    /// Which backend generates the samples.
    #[arg(long, value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// The teacher for `--backend local`: a checkpoint folder, a `.gguf` file, or a hub model
    /// (`owner/name[@revision]`, `owner/name/FILE.gguf`, `owner/name:QUANT`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Sequences decoded together (local backend).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Most GiB of KV cache: beyond it the youngest sequences pause and are recomputed later.
    /// 0: 90% of the GPU memory free after loading, less 1 GiB (CPU: 80% of the host's).
    #[arg(long, default_value_t = 0.0, value_name = "GIB")]
    pub kv_cache_gib: f64,

    /// Samples per problem.
    #[arg(long, default_value_t = 1)]
    pub samples: u32,
    /// Run seed; each sample's seed derives from it, the problem id and the sample index.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature (0 is greedy).
    #[arg(long, default_value_t = SamplingParams::default().temperature)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = SamplingParams::default().top_p)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0 disables).
    #[arg(long, default_value_t = SamplingParams::default().top_k)]
    pub top_k: usize,
    /// Most tokens generated per sample (longer samples end with `finish_reason = length`).
    #[arg(long, default_value_t = SamplingParams::default().max_new_tokens)]
    pub max_new_tokens: usize,
    /// Store the teacher's K most likely tokens and their log-probabilities at every generated
    /// token (columns `teacher_token_ids`, `teacher_top_ids`, …; ~6 + 6K bytes per token before
    /// compression), for logit distillation from the corpus. 0 stores none.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub logprobs: usize,
    /// System prompt (R1 convention: none).
    #[arg(long)]
    pub system: Option<String>,
    /// User message template; `{problem}` is replaced by the problem text.
    #[arg(long, default_value = R1_USER_TEMPLATE)]
    pub user_template: String,
    /// Text the assistant turn starts with.
    #[arg(long, default_value = R1_PREFILL)]
    pub prefill: String,
    /// Extra stop string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Rows per parquet shard (a crash loses at most the unfinished shard).
    #[arg(long, default_value_t = 5000)]
    pub shard_rows: usize,
    /// Minutes a shard stays open before it is closed with however many rows it holds, so a
    /// crash or kill loses at most about this much work (0: shards close by `--shard-rows`
    /// alone).
    #[arg(long, default_value_t = distill_teacher::generate::SHARD_MINUTES)]
    pub shard_minutes: f64,

    #[command(flatten)]
    pub openai: OpenAiArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Settings of `--backend openai`.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenAiArgs {
    /// Base URL of an OpenAI-compatible endpoint, with or without `/v1` (repeatable: requests go
    /// round-robin over them).
    #[arg(long = "base-url")]
    pub base_urls: Vec<String>,
    /// The `model` field sent with each request (e.g. `deepseek-reasoner`).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Name of the environment variable holding the API key (the key itself is never printed).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = OpenAiConfig::default().concurrency)]
    pub concurrency: usize,
    /// Time-out of one request, in seconds.
    #[arg(long, default_value_t = OpenAiConfig::default().timeout.as_secs())]
    pub timeout: u64,
    /// Retries of one request on connection errors, time-outs, 429, 5xx and malformed answers.
    #[arg(long, default_value_t = OpenAiConfig::default().max_retries)]
    pub max_retries: u32,
    /// Send `--prefill` as a final assistant message with vLLM's `continue_final_message`. By
    /// default it is not sent: R1 endpoints generally don't support an assistant prefill (their
    /// chat template opens `<think>` itself).
    #[arg(long)]
    pub continue_final_message: bool,
    /// Ask for streamed answers from the first request (servers that only stream). Without it,
    /// a server that refuses non-streaming requests is streamed from once it says so.
    #[arg(long)]
    pub stream: bool,
}

impl OpenAiArgs {
    pub fn config(&self) -> anyhow::Result<OpenAiConfig> {
        anyhow::ensure!(
            !self.base_urls.is_empty(),
            "`--backend openai` needs `--base-url URL` (repeatable)"
        );
        let model = self
            .model_name
            .clone()
            .context("`--backend openai` needs `--model-name NAME` (the endpoint's model)")?;
        anyhow::ensure!(self.timeout > 0, "`--timeout` must be at least 1 second");
        Ok(OpenAiConfig {
            base_urls: self.base_urls.clone(),
            model,
            api_key_env: self.api_key_env.clone(),
            concurrency: self.concurrency,
            timeout: Duration::from_secs(self.timeout),
            max_retries: self.max_retries,
            prefill: if self.continue_final_message {
                PrefillMode::ContinueFinalMessage
            } else {
                PrefillMode::None
            },
            stream: self.stream,
            ..OpenAiConfig::default()
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The model: a checkpoint folder, a `.gguf` file, or a hub model (`owner/name`).
    pub model: PathBuf,
    /// Address to listen on; the default serves this machine only.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Sequences decoded together; concurrent requests share the batch.
    #[arg(long, default_value_t = EngineOptions::default().batch)]
    pub batch: usize,
    /// Most GiB of KV cache: beyond it the youngest sequences pause and are recomputed later.
    /// 0: 90% of the GPU memory free after loading, less 1 GiB (CPU: 80% of the host's).
    #[arg(long, default_value_t = 0.0, value_name = "GIB")]
    pub kv_cache_gib: f64,
    /// The model's name in `/v1/models` and requests (default: the file or folder name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Most tokens generated when a request sets no `max_tokens`.
    #[arg(long, default_value_t = ServerConfig::new("").defaults.max_new_tokens)]
    pub max_tokens: usize,
    /// Return `reasoning_content` apart from `content` when a reply closes a `<think>` block.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub reasoning_parser: bool,
    /// Name of an environment variable holding the key every request must send as
    /// `Authorization: Bearer KEY` (`/health` and `/metrics` stay open); without it the server
    /// is open to whoever reaches the port.
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl GenerateArgs {
    fn config(&self) -> GenerateConfig {
        GenerateConfig {
            problems: ProblemSource {
                path: self.problems.clone(),
                preset: self.preset,
                prompt_col: self.prompt_col.clone(),
                answer_col: self.answer_col.clone(),
                id_col: self.id_col.clone(),
                limit: self.limit,
                ..ProblemSource::default()
            },
            out: self.out.clone(),
            samples: self.samples,
            seed: self.seed,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                max_new_tokens: self.max_new_tokens,
                logprobs: self.logprobs,
            },
            prompt: PromptConfig {
                system: self.system.clone(),
                user_template: self.user_template.clone(),
                prefill: self.prefill.clone(),
                stop: self.stop.clone(),
            },
            shard_rows: self.shard_rows,
            shard_minutes: self.shard_minutes,
            force: self.force,
        }
    }
}

/// Sets `cancel` on the first Ctrl-C; a second one exits at once.
fn cancel_on_ctrl_c(cancel: &Cancel) {
    let cancel = cancel.clone();
    crate::interrupt::on_interrupt(move || {
        eprintln!("\nInterrupted: finishing the shard in progress (Ctrl-C again to quit now)");
        cancel.cancel();
    });
}

pub fn generate(mut args: GenerateArgs) -> anyhow::Result<()> {
    args.problems = crate::model_arg::resolve_problem_file(&args.problems)?;
    let config = args.config();
    // Every input is checked before the (slow) model load.
    // The remote backend is cheap to build, so a missing API key fails before anything else.
    let mut remote: Option<OpenAiBackend> = None;
    let (teacher, model_path) = match args.backend {
        BackendKind::Local => {
            let arg = args.model.as_ref().context(
                "`--backend local` needs `--model MODEL` (a checkpoint folder, a GGUF file or a \
                 hub model `owner/name`)",
            )?;
            let model = crate::model_arg::resolve_existing(arg, "model")?;
            (model.name, model.path)
        }
        BackendKind::Openai => {
            let config = args.openai.config()?;
            let urls = config.base_urls.join("`, `");
            let backend = remote.insert(OpenAiBackend::new(config)?);
            (backend.name(), PathBuf::from(urls))
        }
    };
    anyhow::ensure!(args.batch > 0, "`--batch` must be at least 1");
    check_kv_cache_gib(args.kv_cache_gib)?;
    let plan = Plan::new(config, &teacher)?;
    let total = plan.total();
    let already = plan.already_done();
    if already == total {
        eprintln!(
            "All {total} samples are already in `{}`",
            args.out.display()
        );
        return Ok(());
    }
    eprintln!(
        "{} problems × {} sample{} = {total} ({already} already done); loading `{}`",
        plan.problems().len(),
        args.samples,
        crate::plural(args.samples as u64),
        model_path.display()
    );
    let options = args.device.engine(EngineOptions {
        batch: args.batch,
        kv_cache_gib: args.kv_cache_gib,
        ..EngineOptions::default()
    });
    let local;
    let backend: &dyn Backend = match &remote {
        Some(remote) => remote,
        None => {
            local = LocalBackend::open(&model_path, options)
                .with_context(|| format!("cannot load `{}`", model_path.display()))?;
            eprintln!("Teacher on {}", local.engine().device_description());
            let remaining = (total - already) as usize;
            let positions = plan.longest_prompt_tokens(local.engine()) + args.max_new_tokens;
            if let Some(w) = local.engine().kv_budget_warning(remaining, positions) {
                eprintln!(
                    "warning: {w}; lower `--batch` or `--max-new-tokens`, or raise `--kv-cache-gib`"
                );
            }
            &local
        }
    };

    let cancel = Cancel::new();
    cancel_on_ctrl_c(&cancel);
    let bar = progress::Progress::new(
        total,
        "{bar:30} {pos}/{len} samples · {msg} · {elapsed_precise} (ETA {eta})",
        "samples",
        true,
    );
    bar.set_prefix("generate");
    bar.set_position(already);
    bar.reset_eta();
    let start = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let report = plan.run(backend, &cancel, &mut |p: &Progress| {
        bar.set_position(p.done);
        // At most 5 redraws a second, and the last one always (the line left on screen).
        let last = p.done + p.failed >= total;
        if last || last_draw.elapsed() >= Duration::from_millis(200) {
            last_draw = Instant::now();
            let rate = p.generated_tokens as f64 / start.elapsed().as_secs_f64().max(1e-3);
            let failed = if p.failed > 0 {
                format!(" · {} failed", p.failed)
            } else {
                String::new()
            };
            bar.set_message(format!("{rate:.1} tok/s{failed}"));
        }
    });
    bar.finish_and_clear();
    if let Some(remote) = &remote {
        let errors = remote.error_counts();
        if errors.total() > 0 {
            eprintln!(
                "Endpoint errors (retried or not): {}",
                serde_json::to_string(&errors)?
            );
        }
    }
    let report = report?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "Wrote {} sample{} ({} already there, {} failed) into {} shards in `{}`: {} tokens in \
         {secs:.1}s ({:.1} tok/s)",
        report.written,
        crate::plural(report.written),
        report.skipped,
        report.failed,
        report.shards,
        args.out.display(),
        report.completion_tokens,
        report.completion_tokens as f64 / secs.max(1e-3),
    );
    if report.preempted > 0 {
        eprintln!(
            "The KV cache was full {} times: those sequences were paused and recomputed \
             (`--kv-cache-gib` raises the limit; a smaller `--batch` avoids it)",
            report.preempted
        );
    }
    if report.cancelled {
        anyhow::bail!(
            "Interrupted after {} of {total} samples; rerun the same command to continue",
            report.skipped + report.written
        );
    }
    if report.failed > 0 {
        let advice = if report.rerun_may_help() {
            "rerun the same command to retry them"
        } else {
            "a rerun would fail them again: drop those problems or change the settings"
        };
        anyhow::bail!(
            "{} sample{} failed (the last, {}; all in `generation.json`); {advice}",
            report.failed,
            crate::plural(report.failed),
            report
                .last_failure
                .as_deref()
                .unwrap_or("no reason recorded")
        );
    }
    Ok(())
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "`--batch` must be at least 1");
    check_kv_cache_gib(args.kv_cache_gib)?;
    anyhow::ensure!(args.max_tokens > 0, "`--max-tokens` must be at least 1");
    // Before the model loads: a missing key must not cost the load.
    let api_key = args
        .api_key_env
        .as_deref()
        .map(distill_teacher::openai::ApiKey::from_env)
        .transpose()?;
    let model = crate::model_arg::resolve_existing(&args.model, "model")?;
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| model.name.clone());
    eprintln!("Loading `{}`", model.path.display());
    let checkpoint = distill_models::Checkpoint::open(&model.path)
        .with_context(|| format!("cannot open `{}`", model.path.display()))?;
    let options = args.device.engine(EngineOptions {
        batch: args.batch,
        kv_cache_gib: args.kv_cache_gib,
        ..EngineOptions::default()
    });
    // The engine ends every request at the checkpoint's context (vLLM's `max_model_len`): a
    // prompt that fills it is a 400, a long `max_tokens` ends there.
    let engine = Engine::load(&checkpoint, options)
        .with_context(|| format!("cannot load `{}`", model.path.display()))?;
    eprintln!("Model on {}", engine.device_description());
    // A request may run to the end of the context.
    if let Some(w) = engine.kv_budget_warning(usize::MAX, usize::MAX) {
        eprintln!("warning: {w}; lower `--batch` or raise `--kv-cache-gib`");
    }
    let mut config = ServerConfig::new(name.clone());
    config.defaults.max_new_tokens = args.max_tokens;
    config.reasoning_parser = args.reasoning_parser;
    let open = api_key.is_none();
    config.api_key = api_key;
    let server = Server::new(Arc::new(engine), config)?;
    // IPv6 literals need brackets in a socket address.
    let addr = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    server::run_until_ctrl_c(server, &addr, |bound| {
        if !bound.ip().is_loopback() && open {
            eprintln!(
                "Warning: listening on `{bound}`: other machines can reach it, with no \
                 authentication (`--api-key-env NAME` requires a key)"
            );
        }
        let key = if open { "" } else { ", API key required" };
        eprintln!(
            "Serving `{name}` at http://{bound}/v1 (batch {}{key}); Ctrl-C to stop",
            args.batch
        );
    })?;
    eprintln!("Stopped");
    Ok(())
}

/// `--kv-cache-gib` is checked before a model loads: a size in GiB, 0 for automatic.
pub(crate) fn check_kv_cache_gib(gib: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        gib.is_finite() && gib >= 0.0,
        "`--kv-cache-gib` must be a size in GiB (0: automatic), not {gib}"
    );
    Ok(())
}
