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
