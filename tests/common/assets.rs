//! Tests that need a downloaded asset from `../shared` (a model, a data set) or one a set-up
//! script makes (the TRL venv): one rule for every crate's tests (the crates include this file
//! by path). Locally a missing asset skips the
//! test with a loud note; in CI (`CI` set, as every CI service does) the assets are provisioned,
//! so a missing one fails the test instead of letting it pass without running.
#![allow(dead_code)]

use std::path::Path;

/// Where the shared assets come from.
const SHARED: &str = "see ../shared/models/README.md and ../shared/data/README.md";

/// Whether `path` is there to test with. Absent: panics in CI, else prints why the test is
/// skipped and returns false (the caller returns).
pub fn present(path: &Path) -> bool {
    present_in(path, in_ci(std::env::var("CI").ok().as_deref()))
}

/// [`present`] for an asset that `how` makes (a command, a README section), not `../shared`.
pub fn present_or(path: &Path, how: &str) -> bool {
    present_hinted(path, how, in_ci(std::env::var("CI").ok().as_deref()))
}

/// [`present`] with the CI decision made by the caller.
pub fn present_in(path: &Path, ci: bool) -> bool {
    present_hinted(path, SHARED, ci)
}

fn present_hinted(path: &Path, how: &str, ci: bool) -> bool {
    if path.exists() {
        return true;
    }
    let note = format!("`{}` is absent ({how})", path.display());
    if ci {
        panic!("{note}; CI provisions it, so this test must run");
    }
    eprintln!("\n*** SKIPPED: {note}; this test did not run ***\n");
    false
}

/// Whether a `CI` variable with this value means a CI run: set to anything but empty, `0` or
/// `false`.
pub fn in_ci(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}
