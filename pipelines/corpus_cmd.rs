//! `distill corpus …`: command-line front end of the corpus crate.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {}

pub fn run(cmd: CorpusCommand) -> anyhow::Result<()> {
    match cmd {}
}
