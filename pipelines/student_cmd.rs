//! `distill train`: command-line front end of the student crate.

#[derive(Debug, clap::Args)]
pub struct TrainArgs {}

pub fn train(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`distill train` is not implemented yet")
}
