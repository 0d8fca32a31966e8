//! Top-level clap definitions and dispatch to the stage commands.

use clap::{Parser, Subcommand};

use crate::{compare, corpus_cmd, model_cmd, problems_cmd, student_cmd, teacher_cmd};

#[derive(Debug, Parser)]
#[command(
    name = "distill",
    version,
    about = "Distill a reasoning teacher into a laptop-sized student"
)]
pub struct Cli {
    /// Worker threads for model maths and data processing (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Describe a checkpoint (Hugging Face folder or GGUF file).
    Inspect(model_cmd::InspectArgs),
    /// Convert a GGUF file into a Hugging Face checkpoint folder.
    Convert(model_cmd::ConvertArgs),
    /// Write a checkpoint as a GGUF file for llama.cpp, ollama and LM Studio (F16, Q8_0, Q4_K_M,
    /// Q6_K), with an ollama Modelfile beside it.
    Export(model_cmd::ExportArgs),
    /// Write a synthetic problem set (and its worked solutions as a corpus).
    Problems(problems_cmd::ProblemsArgs),
    /// Curate a chain-of-thought corpus: verify, filter, dedup, decontaminate, split, stats, export.
    #[command(subcommand)]
    Corpus(corpus_cmd::CorpusCommand),
    /// Run a teacher over a problem set and stream a chain-of-thought corpus into parquet shards.
    Generate(teacher_cmd::GenerateArgs),
    /// Serve a local model behind an OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`).
    Serve(teacher_cmd::ServeArgs),
    /// Train a student: supervised fine-tuning on a corpus, logit distillation, or on-policy
    /// distillation (`--method opd`).
    // Boxed: the largest set of flags, which would otherwise size every variant.
    Train(Box<student_cmd::TrainArgs>),
    /// Evaluate a teacher and its students on held-out problems; writes a report with charts.
    Compare(compare::CompareArgs),
    /// Run a pipeline file: every stage in order, resuming where a previous run stopped.
    Run(crate::run::RunArgs),
    /// Check a device (a GPU): parity with the CPU, a short fine-tune, throughput; JSON lines.
    CheckDevice(crate::device_check::CheckDeviceArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing();
    if let Some(threads) = cli.threads {
        set_threads(threads)?;
    }
    dispatch(cli.command)
}

/// Runs one subcommand; `distill run` calls this for every stage of a pipeline.
pub fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Inspect(args) => model_cmd::inspect(args),
        Command::Convert(args) => model_cmd::convert(args),
        Command::Export(args) => model_cmd::export(args),
        Command::Problems(args) => problems_cmd::problems(args),
        Command::Corpus(cmd) => corpus_cmd::run(cmd),
        Command::Generate(args) => teacher_cmd::generate(args),
        Command::Serve(args) => teacher_cmd::serve(args),
        Command::Train(args) => student_cmd::train(*args),
        Command::Compare(args) => compare::compare(args),
        Command::Run(args) => crate::run::run(args),
        Command::CheckDevice(args) => crate::device_check::check_device(args),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DISTILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// candle's CPU kernels use rayon's global pool; `RAYON_NUM_THREADS` is read when it starts.
fn set_threads(threads: usize) -> anyhow::Result<()> {
    anyhow::ensure!(threads > 0, "`--threads` must be at least 1");
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    Ok(())
}
