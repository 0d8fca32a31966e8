//! `distill inspect` and `distill convert`.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A Hugging Face checkpoint folder or a `.gguf` file.
    pub model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// The `.gguf` file to convert.
    pub model: PathBuf,
    /// Output folder (created; must be empty or absent).
    pub out_dir: PathBuf,
}

pub fn inspect(_args: InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("`distill inspect` is not implemented yet")
}

pub fn convert(_args: ConvertArgs) -> anyhow::Result<()> {
    anyhow::bail!("`distill convert` is not implemented yet")
}
