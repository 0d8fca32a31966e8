//! `distill generate` and `distill serve`: command-line front end of the teacher crate.

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

pub fn generate(_args: GenerateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`distill generate` is not implemented yet")
}

pub fn serve(_args: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("`distill serve` is not implemented yet")
}
