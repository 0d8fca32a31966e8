//! Golden trajectories: the first 5 optimizer steps on the tiny fixture models equal PyTorch's
//! (`fixtures/make_golden.py`: transformers model, torch.optim.AdamW, LambdaLR with the same
//! warmup + cosine, clip_grad_norm_) in loss, learning rate, gradient norm and final weights.

use std::path::{Path, PathBuf};

use candle_core::Device;
use distill_models::Checkpoint;
use distill_student::batch::PackedRow;
use distill_student::optim::AdamWConfig;
use distill_student::schedule::ScheduleConfig;
use distill_student::{Control, Event, StudentInit, Trainer, TrainerConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(name)
}

fn load_rows() -> Vec<PackedRow> {
    let text = std::fs::read_to_string(fixtures().join("golden-data.json")).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&text).unwrap();
    rows.iter()
        .map(|r| {
            let ints = |k: &str| -> Vec<i64> {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            };
            PackedRow {
                input_ids: ints("input_ids").iter().map(|&x| x as u32).collect(),
                position_ids: ints("position_ids").iter().map(|&x| x as u32).collect(),
                labels: ints("labels"),
                teacher: None,
            }
        })
        .collect()
}

/// The configuration `make_golden.py` mirrors.
fn golden_config(micro: usize, accumulation: usize, chunk: usize) -> TrainerConfig {
    TrainerConfig {
        schedule: ScheduleConfig {
            lr: 1e-2,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
        },
        optim: AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        },
        micro_batch_size: micro,
        accumulation_steps: accumulation,
        max_steps: Some(5),
        max_grad_norm: Some(0.5),
        shuffle: false,
        loss_chunk_size: chunk,
        ..Default::default()
    }
}

fn check(model: &str, golden: &str, micro: usize, accumulation: usize, chunk: usize) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(golden)).unwrap()).unwrap();
    let ckpt = Checkpoint::open(&model_fixture(model)).unwrap();
    let init = StudentInit::from_checkpoint(&ckpt).unwrap();
    let mut trainer = Trainer::new(
        init,
        golden_config(micro, accumulation, chunk),
        &Device::Cpu,
    )
    .unwrap();
    let mut steps = Vec::new();
    trainer
        .fit(&load_rows(), None, None, &mut |e| {
            if let Event::Step(m) = e {
                steps.push((m.loss, m.lr, m.grad_norm));
            }
            Control::Continue
        })
        .unwrap();
    let want = golden["steps"].as_array().unwrap();
    assert_eq!(steps.len(), want.len());
    for (i, ((loss, lr, norm), w)) in steps.iter().zip(want).enumerate() {
        let (wl, wlr, wn) = (
            w["loss"].as_f64().unwrap(),
            w["lr"].as_f64().unwrap(),
            w["grad_norm"].as_f64().unwrap(),
        );
        assert!(
            (loss - wl).abs() < 1e-4,
            "{model} step {i}: loss {loss} vs {wl}"
        );
        assert!(
            (lr - wlr).abs() < 1e-12,
            "{model} step {i}: lr {lr} vs {wlr}"
        );
        assert!(
            (norm - wn).abs() < 1e-4 * wn.max(1.0),
            "{model} step {i}: grad norm {norm} vs {wn}"
        );
    }
    let weights = trainer.weights();
    let want = golden["weights"].as_object().unwrap();
    assert_eq!(weights.len(), want.len(), "{model}: parameter count");
    for (name, w) in want {
        let t = weights
            .get(name)
            .unwrap_or_else(|| panic!("{model}: no `{name}`"));
        let v: Vec<f64> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let sum: f64 = v.iter().sum();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let (ws, wn) = (w["sum"].as_f64().unwrap(), w["norm"].as_f64().unwrap());
        assert!(
            (sum - ws).abs() < 1e-3,
            "{model} `{name}`: sum {sum} vs {ws}"
        );
        assert!(
            (norm - wn).abs() < 1e-4 * wn.max(1.0),
            "{model} `{name}`: norm {norm} vs {wn}"
        );
        for (k, f) in w["first"].as_array().unwrap().iter().enumerate() {
            let f = f.as_f64().unwrap();
            assert!(
                (v[k] - f).abs() < 1e-5,
                "{model} `{name}`[{k}]: {} vs {f}",
                v[k]
            );
        }
    }
}

#[test]
fn qwen2_matches_pytorch() {
    check("tiny-qwen2", "golden-qwen2.json", 2, 2, 7);
}

#[test]
fn llama_tied_matches_pytorch() {
    check("tiny-llama", "golden-llama.json", 2, 2, 7);
}

/// Full logits in one piece (no chunking) follow the same trajectory.
#[test]
fn unchunked_matches_pytorch() {
    check("tiny-qwen2", "golden-qwen2.json", 4, 1, 0);
}
