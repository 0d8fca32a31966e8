//! Helpers shared by the student crate's integration tests: the models crate's tiny fixtures
//! and students started from them. Each test binary uses only some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use distill_models::Checkpoint;
use distill_student::StudentInit;

/// A model fixture of the models crate (`tiny-qwen2`, `tiny-llama-bf16`, …).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(name)
}

/// A student starting from fixture `name`.
pub fn init(name: &str) -> StudentInit {
    StudentInit::from_checkpoint(&Checkpoint::open(&fixture(name)).unwrap()).unwrap()
}
