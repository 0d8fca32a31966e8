//! Training off the CPU f32 fast path, run on the CPU: the device-generic chunked loss, AdamW on
//! tensors, bf16 mixed precision (f32 master weights) and pure bf16. These are the code paths a
//! GPU takes; on the CPU they run through bf16 tensors, so CI proves them without a GPU.

mod common;
use common::{cpu_target, init, short_run};

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use distill_models::{Checkpoint, DtypeChoice, TrainPrecision};
use distill_student::batch::PackedRow;
use distill_student::checkpoint;
use distill_student::loss::{chunked_cross_entropy, chunked_cross_entropy_tensors};
use distill_student::{Control, Event, Trainer};

fn rows(n: usize) -> Vec<PackedRow> {
    common::rows(n, |r| 8 + r % 7, |r, i| ((r * 13 + i * 7) % 40 + 3) as u32)
}

fn losses(t: &Trainer) -> Vec<f64> {
    t.state().history.iter().map(|h| h.loss).collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    distill_models::ops::max_abs_diff(&a, &b).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    distill_models::ops::max_abs(&a.to_dtype(DType::F32).unwrap()).unwrap()
}

/// The tensor-op chunked loss (the GPU's path) equals the fused CPU loss: value and both
/// gradients, in f32 to rounding, in bf16 to bf16's precision.
#[test]
fn tensor_chunked_loss_equals_the_fused_one() {
    let dev = Device::Cpu;
    let (n, h, v) = (23, 16, 37);
    let hidden = Var::randn(0f32, 1.0, (n, h), &dev).unwrap();
    let weight = Var::randn(0f32, 0.5, (v, h), &dev).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % v as u32).collect();
    let scale = 1.0 / 19.0;
    let fused = chunked_cross_entropy(&hidden, &weight, &targets, scale, 4).unwrap();
    let fused_grads = fused.backward().unwrap();
    for chunk in [1, 4, 7, 64] {
        let tensors =
            chunked_cross_entropy_tensors(&hidden, &weight, &targets, scale, chunk).unwrap();
        let grads = tensors.backward().unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            tensors.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5, "chunk {chunk}: loss {a} vs {b}");
        for var in [&hidden, &weight] {
            let d = max_diff(grads.get(var).unwrap(), fused_grads.get(var).unwrap());
            assert!(d < 1e-6, "chunk {chunk}: gradient differs by {d}");
        }
    }
    // bf16 inputs (the mixed-precision forward): a cast of the f32 variables, so gradients
    // reach them in f32 through the cast.
    let (hb, wb) = (
        hidden.as_tensor().to_dtype(DType::BF16).unwrap(),
        weight.as_tensor().to_dtype(DType::BF16).unwrap(),
    );
    let bf16 = chunked_cross_entropy(&hb, &wb, &targets, scale, 4).unwrap();
    assert_eq!(bf16.dtype(), DType::F32);
    let grads = bf16.backward().unwrap();
    let rel = (bf16.to_scalar::<f32>().unwrap() - fused.to_scalar::<f32>().unwrap()).abs()
        / fused.to_scalar::<f32>().unwrap();
    assert!(rel < 1e-2, "bf16 loss off by {rel}");
    for var in [&hidden, &weight] {
        let (g, want) = (grads.get(var).unwrap(), fused_grads.get(var).unwrap());
        assert_eq!(g.dtype(), DType::F32);
        let d = max_diff(g, want) / max_abs(want);
        assert!(d < 3e-2, "bf16 gradient off by {d} of its largest element");
    }
}

/// bf16 compute over f32 master weights follows the f32 run closely and learns; the parameters
/// and the exported model stay f32 (the base's dtype).
#[test]
fn mixed_bf16_training_tracks_f32() {
    let train = rows(12);
    let mut f32_run = Trainer::new(init("tiny-qwen2"), short_run(12), &Device::Cpu).unwrap();
    f32_run
        .fit(&train, None, None, &mut |_| Control::Continue)
        .unwrap();
    let mut mixed = Trainer::new(
        init("tiny-qwen2"),
        short_run(12),
        cpu_target(DtypeChoice::Bf16),
    )
    .unwrap();
    assert!(mixed.precision().is_mixed());
    mixed
        .fit(&train, None, None, &mut |_| Control::Continue)
        .unwrap();
    let (a, b) = (losses(&f32_run), losses(&mixed));
    assert_eq!(a.len(), 12);
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() / x < 0.03,
            "step {}: f32 loss {x}, bf16 mixed {y}",
            step + 1
        );
    }
    assert!(
        b[11] < b[0] * 0.8,
        "mixed-precision loss did not fall: {b:?}"
    );
    for (name, w) in mixed.weights() {
        assert_eq!(w.dtype(), DType::F32, "{name}: master weight is not f32");
    }
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    mixed.save_model(&dir).unwrap();
    let saved = Checkpoint::open(&dir).unwrap();
    assert_eq!(saved.stored_dtype(), DType::F32);
}

fn bf16_bits(w: &HashMap<String, Tensor>) -> HashMap<String, Vec<u16>> {
    w.iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
            (k.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// Pure bf16 (bf16 weights and moments, the AdamW tensor path): learns, resumes bit for bit
/// from a checkpoint, and a bf16 base is exported in bf16 with `torch_dtype` saying so.
#[test]
fn pure_bf16_learns_resumes_exactly_and_exports_the_base_dtype() {
    let base = "tiny-llama-bf16";
    assert_eq!(init(base).dtype, DType::BF16);
    let train = rows(10);
    let pure = || cpu_target(DtypeChoice::Bf16Pure);
    assert_eq!(
        pure().precision,
        TrainPrecision {
            params: DType::BF16,
            compute: DType::BF16
        }
    );
    let mut full = Trainer::new(init(base), short_run(8), pure()).unwrap();
    full.fit(&train, None, None, &mut |_| Control::Continue)
        .unwrap();
    let l = losses(&full);
    assert!(l[7] < l[0] * 0.8, "pure bf16 loss did not fall: {l:?}");

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(init(base), short_run(8), pure()).unwrap();
    first
        .fit(&train, None, Some(dir.path()), &mut |e| match e {
            Event::Step(m) if m.step == 3 => Control::Stop,
            _ => Control::Continue,
        })
        .unwrap();
    let latest = checkpoint::latest(dir.path()).unwrap().unwrap();
    drop(first);
    let mut resumed = Trainer::resume(&latest, short_run(8), None, pure()).unwrap();
    resumed
        .fit(&train, None, None, &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(losses(&resumed), l, "loss curves differ after resume");
    assert!(
        bf16_bits(&resumed.weights()) == bf16_bits(&full.weights()),
        "weights differ after resume"
    );

    let out = tempfile::tempdir().unwrap();
    let model_dir = out.path().join("model");
    resumed.save_model(&model_dir).unwrap();
    let saved = Checkpoint::open(&model_dir).unwrap();
    assert_eq!(saved.stored_dtype(), DType::BF16);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
}

/// A mixed-precision run on a bf16 base checkpoints its f32 master weights (exact resume) but
/// exports the final model in bf16.
#[test]
fn mixed_precision_checkpoints_master_weights_and_exports_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(
        init("tiny-llama-bf16"),
        short_run(2),
        cpu_target(DtypeChoice::Bf16),
    )
    .unwrap();
    let summary = t
        .fit(&rows(6), None, Some(dir.path()), &mut |_| Control::Continue)
        .unwrap();
    let ckpt_model = summary.checkpoint.unwrap().join(checkpoint::MODEL_DIR);
    assert_eq!(
        Checkpoint::open(&ckpt_model).unwrap().stored_dtype(),
        DType::F32
    );
    let out = dir.path().join("final");
    t.save_model(&out).unwrap();
    assert_eq!(Checkpoint::open(&out).unwrap().stored_dtype(), DType::BF16);
}
