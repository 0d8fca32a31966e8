//! Helpers shared by the command-line integration tests: run the real `distill` binary and
//! insist on success or failure. Each test binary uses only some of them.
#![allow(dead_code)]

pub mod assets;

use std::process::{Command, Output};

pub fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .output()
        .expect("run distill")
}

/// Runs `distill`, asserts it succeeded, returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = distill(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "distill {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `distill`, asserts it failed, returns its stderr.
pub fn failing(args: &[&str]) -> String {
    let out = distill(args);
    assert!(!out.status.success(), "distill {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a prepared command (the binary with its own environment), asserts it succeeded.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes the newest of the two checkpoints under `checkpoints` (a run then resumes from the
/// older one, in its middle).
pub fn drop_newest_checkpoint(checkpoints: &std::path::Path) {
    let mut names: Vec<String> = std::fs::read_dir(checkpoints)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(checkpoints.join(&names[1])).unwrap();
}
