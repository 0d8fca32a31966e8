//! `distill run PIPELINE.toml`: one config file runs the whole chain, stage by stage, resumably.
//!
//! Each stage is a `distill` subcommand; its TOML table holds that subcommand's flags (`key =
//! value` for `--key value`, `true` for a switch, arrays for repeated flags), so every default is
//! written once, in the subcommand. The runner adds the paths that connect the stages (a table
//! may override them) and checks every key against the subcommand before any work starts.

pub mod check;
pub mod exec;
pub mod manifest;
pub mod plan;

use std::path::PathBuf;

use anyhow::Context;

use exec::{Outcome, Selection};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (see `pipelines/*.toml`).
    pub pipeline: PathBuf,
    /// Re-run this stage and every stage after it.
    #[arg(long, conflicts_with = "only")]
    pub from: Option<String>,
    /// Re-run only this stage.
    #[arg(long)]
    pub only: Option<String>,
    /// Output folder (default: the file's `[pipeline] out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the stages and their commands, and check them against the models and files they
    /// use, without running anything.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.pipeline)
        .with_context(|| format!("cannot read `{}`", args.pipeline.display()))?;
    let pipeline = plan::Pipeline::parse(&text, &args.pipeline, args.out.as_deref())?;
    let stages = pipeline.stages()?;
    // Before any stage runs: settings against the models and files they will use (hub models
    // are downloaded now, except in a dry run).
    let notes = check::check(&stages, !args.dry_run)?;
    if args.dry_run {
        for s in &stages {
            println!("{:>14}  distill {}", s.name, s.argv.join(" "));
        }
        for note in &notes {
            println!("{:>14}  {note}", "note");
        }
        return Ok(());
    }
    std::fs::create_dir_all(&pipeline.out)
        .with_context(|| format!("cannot create `{}`", pipeline.out.display()))?;
    pipeline.save_resolved(&stages)?;
    let plans: Vec<exec::StagePlan> = stages.iter().map(plan::Stage::to_plan).collect();
    let selection = Selection {
        from: args.from,
        only: args.only,
    };
    let total = plans.len();
    let mut index = 0;
    let report = exec::execute(&pipeline.out, &plans, &selection, |name, outcome| {
        index += 1;
        let what = match outcome {
            Outcome::Skipped => "done already, skipped",
            Outcome::Resumed => "resuming",
            Outcome::Ran => "running",
            Outcome::NotSelected => "not selected",
        };
        eprintln!("[{index}/{total}] {name}: {what}");
    })?;
    let ran = report
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Ran | Outcome::Resumed))
        .count();
    eprintln!(
        "pipeline `{}` finished ({ran} of {total} stages ran); outputs in {}",
        pipeline.name,
        pipeline.out.display()
    );
    Ok(())
}
