//! Entry point: parse arguments, run, print the whole error chain on failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    distill_models::alloc::tune_allocator();
    let cli = distill::cli::Cli::parse();
    match distill::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
