//! Defaults written once: every option struct derives `clap::Args` with its defaults in the
//! `#[arg]` attributes, and `Default` (also used by serde for missing keys) parses an empty
//! command line, so the CLI, config files and library callers can never disagree.

use clap::{Args, Parser};

#[derive(Parser)]
#[command(no_binary_name = true)]
struct Only<T: Args> {
    #[command(flatten)]
    inner: T,
}

/// The value of `T` when no flag is given.
///
/// Panics only if `T` declares a required argument, a programming error caught by each
/// option struct's `defaults_parse` test.
pub fn defaults<T: Args>() -> T {
    match Only::<T>::try_parse_from(std::iter::empty::<String>()) {
        Ok(only) => only.inner,
        Err(e) => panic!("option struct has a required argument: {e}"),
    }
}
