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

/// `n` rows of one document each, `len(r)` tokens long with token `token(r, i)` at position `i`,
/// labelled with the next token (the first and last positions unlabelled).
pub fn rows(
    n: usize,
    len: impl Fn(usize) -> usize,
    token: impl Fn(usize, usize) -> u32,
) -> Vec<distill_student::batch::PackedRow> {
    use distill_student::batch::{PackedRow, IGNORE};
    (0..n)
        .map(|r| {
            let len = len(r);
            let ids: Vec<u32> = (0..len).map(|i| token(r, i)).collect();
            let mut labels: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
            labels.push(IGNORE);
            labels[0] = IGNORE;
            PackedRow {
                position_ids: (0..len as u32).collect(),
                input_ids: ids,
                labels,
                teacher: None,
            }
        })
        .collect()
}

/// `n` rows of `len` tokens, each two packed documents (positions restart mid-row, at a split
/// that moves with the row), labelled with the next token except across the split.
pub fn packed_rows(n: usize, len: usize) -> Vec<distill_student::batch::PackedRow> {
    use distill_student::batch::{PackedRow, IGNORE};
    (0..n)
        .map(|r| {
            let ids: Vec<u32> = (0..len)
                .map(|i| ((r * 31 + i * 17) % 250 + 3) as u32)
                .collect();
            let split = len / 3 + r % 3;
            let mut labels: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
            labels.push(IGNORE);
            labels[0] = IGNORE;
            labels[split - 1] = IGNORE;
            PackedRow {
                position_ids: (0..split as u32).chain(0..(len - split) as u32).collect(),
                input_ids: ids,
                labels,
                teacher: None,
            }
        })
        .collect()
}

/// A short run of `steps` steps: 2 micro-batches of 2 rows a step, a warmed-up learning rate
/// of 3e-3 decaying to a tenth, loss chunks of 5 positions (so the chunking is exercised).
pub fn short_run(steps: u64) -> distill_student::TrainerConfig {
    distill_student::TrainerConfig {
        schedule: distill_student::schedule::ScheduleConfig {
            lr: 3e-3,
            warmup_steps: 1,
            min_lr_ratio: 0.1,
        },
        micro_batch_size: 2,
        accumulation_steps: 2,
        max_steps: Some(steps),
        loss_chunk_size: 5,
        checkpoint_every: 0,
        eval_every: 0,
        seed: 3,
        ..Default::default()
    }
}

/// Training on the CPU in `dtype`'s precision.
pub fn cpu_target(dtype: distill_models::DtypeChoice) -> distill_student::TrainTarget {
    let cpu = candle_core::Device::Cpu;
    distill_student::TrainTarget {
        precision: dtype.training(&cpu).unwrap(),
        device: cpu,
    }
}
