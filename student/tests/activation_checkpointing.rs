//! Activation checkpointing (`activation_checkpointing = true`): the decoder layers are run
//! again in the backward pass instead of keeping their activations. The recomputation runs the
//! same code on the same inputs, so training follows the run without it bit for bit: losses,
//! gradient norms and weights, on the CPU's fused f32 path and on the composed bf16 paths a GPU
//! takes. A run may switch it on when resumed. (What it saves is measured in `memory_peaks.rs`.)

mod common;
use common::{cpu_target, init, packed_rows};

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use distill_models::DtypeChoice;
use distill_student::checkpoint::{self, StepRecord};
use distill_student::{Control, Event, Trainer, TrainerConfig};

fn config(checkpointing: bool) -> TrainerConfig {
    TrainerConfig {
        activation_checkpointing: checkpointing,
        ..common::short_run(4)
    }
}

/// Every weight's bits (bf16 and f32 alike, widened to f32 exactly).
fn bits(w: &HashMap<String, Tensor>) -> HashMap<String, Vec<u32>> {
    w.iter()
        .map(|(k, t)| {
            let v = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
            let v = v.to_vec1::<f32>().unwrap();
            (k.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn train(model: &str, dtype: DtypeChoice, checkpointing: bool) -> (Vec<StepRecord>, Trainer) {
    let mut t = Trainer::new(init(model), config(checkpointing), cpu_target(dtype)).unwrap();
    t.fit(&packed_rows(8, 24), None, None, &mut |_| Control::Continue)
        .unwrap();
    (t.state().history.clone(), t)
}

#[test]
fn checkpointed_training_equals_the_full_graph_bit_for_bit() {
    // Qwen2 (q/k/v biases), Llama, Qwen3 (q/k norms, YaRN); the CPU's fused f32 ops, the
    // composed ops a GPU runs (bf16 compute over f32 masters), and pure bf16.
    let cases = [
        ("tiny-qwen2", DtypeChoice::F32),
        ("tiny-llama", DtypeChoice::F32),
        ("tiny-qwen3", DtypeChoice::F32),
        ("tiny-qwen2", DtypeChoice::Bf16),
        ("tiny-llama-bf16", DtypeChoice::Bf16Pure),
    ];
    for (model, dtype) in cases {
        let (plain, a) = train(model, dtype, false);
        let (recomputed, b) = train(model, dtype, true);
        assert_eq!(plain.len(), 4);
        assert!(
            plain[3].loss < plain[0].loss,
            "{model} {dtype}: the loss did not fall: {plain:?}"
        );
        assert_eq!(
            recomputed, plain,
            "{model} {dtype}: losses or gradient norms differ"
        );
        assert!(
            bits(&a.weights()) == bits(&b.weights()),
            "{model} {dtype}: weights differ"
        );
    }
}

#[test]
fn a_run_resumed_with_checkpointing_continues_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let (full, uninterrupted) = train("tiny-qwen2", DtypeChoice::F32, false);
    let mut first = Trainer::new(init("tiny-qwen2"), config(false), &Device::Cpu).unwrap();
    first
        .fit(
            &packed_rows(8, 24),
            None,
            Some(dir.path()),
            &mut |e| match e {
                Event::Step(m) if m.step == 2 => Control::Stop,
                _ => Control::Continue,
            },
        )
        .unwrap();
    let latest = checkpoint::latest(dir.path()).unwrap().unwrap();
    // Out of memory at step 3, say: the same run goes on with the layers recomputed.
    let mut resumed = Trainer::resume(&latest, config(true), None, &Device::Cpu).unwrap();
    resumed
        .fit(&packed_rows(8, 24), None, None, &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(resumed.state().history, full);
    assert!(bits(&resumed.weights()) == bits(&uninterrupted.weights()));
}
