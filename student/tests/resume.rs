//! Checkpoints and exact resume: a run stopped at step k and resumed reproduces the loss curve
//! and final weights of an uninterrupted run bit for bit; resumes from another config, model or
//! dataset are refused with the difference named; the saved folder reloads as the same model.

mod common;
use common::init;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use distill_models::Checkpoint;
use distill_student::batch::{PackedRow, IGNORE};
use distill_student::checkpoint::{self, StepRecord};
use distill_student::schedule::ScheduleConfig;
use distill_student::{Control, Error, Event, Trainer, TrainerConfig};

fn rows(n: usize) -> Vec<PackedRow> {
    common::rows(
        n,
        |r| 6 + r % 9,
        |r, i| ((r * 31 + i * 17) % 250 + 3) as u32,
    )
}

fn config() -> TrainerConfig {
    TrainerConfig {
        schedule: ScheduleConfig {
            lr: 3e-3,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
        },
        micro_batch_size: 2,
        accumulation_steps: 2,
        // 10 rows, 4 per step: 3 epochs, with steps straddling epoch boundaries.
        epochs: 3.0,
        loss_chunk_size: 4,
        checkpoint_every: 3,
        eval_every: 2,
        keep_last: 2,
        seed: 5,
        ..Default::default()
    }
}

fn bits(w: &HashMap<String, Tensor>) -> HashMap<String, Vec<u32>> {
    w.iter()
        .map(|(k, t)| {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k.clone(), v.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

fn curve(t: &Trainer) -> Vec<StepRecord> {
    t.state().history.clone()
}

#[test]
fn stopped_and_resumed_run_is_identical() {
    for model in ["tiny-qwen2", "tiny-llama"] {
        let (train, eval) = (rows(10), rows(4));
        let full_dir = tempfile::tempdir().unwrap();
        let mut full = Trainer::new(init(model), config(), &Device::Cpu).unwrap();
        let summary = full
            .fit(&train, Some(&eval), Some(full_dir.path()), &mut |_| {
                Control::Continue
            })
            .unwrap();
        assert_eq!(summary.steps, 8);
        assert!(!summary.stopped);
        // keep_last = 2: steps 6 and 8 remain.
        let kept: Vec<u64> = checkpoint::list(full_dir.path())
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(kept, vec![6, 8]);

        let dir = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(init(model), config(), &Device::Cpu).unwrap();
        let stopped = first
            .fit(&train, Some(&eval), Some(dir.path()), &mut |e| match e {
                Event::Step(m) if m.step == 5 => Control::Stop,
                _ => Control::Continue,
            })
            .unwrap();
        assert!(stopped.stopped);
        assert_eq!(stopped.steps, 5);
        let latest = checkpoint::latest(dir.path()).unwrap().unwrap();
        assert!(latest.ends_with("step-00000005"), "{}", latest.display());
        drop(first);

        let mut resumed = Trainer::resume(
            &latest,
            config(),
            Some(init(model).config).as_ref(),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(resumed.state().step, 5);
        resumed
            .fit(&train, Some(&eval), Some(dir.path()), &mut |_| {
                Control::Continue
            })
            .unwrap();
        assert_eq!(curve(&resumed), curve(&full), "{model}: loss curves differ");
        assert_eq!(
            resumed.state().evals,
            full.state().evals,
            "{model}: eval losses differ"
        );
        assert!(
            bits(&resumed.weights()) == bits(&full.weights()),
            "{model}: weights differ"
        );

        // The final checkpoint's model folder reloads as the trained model.
        let saved =
            Checkpoint::open(&summary.checkpoint.unwrap().join(checkpoint::MODEL_DIR)).unwrap();
        let reloaded = saved.load_model(&Device::Cpu).unwrap();
        let ids = Tensor::new(&[[5u32, 9, 33, 2, 7, 100]], &Device::Cpu).unwrap();
        let a = reloaded.forward(&ids, None).unwrap();
        // Same kernels on both sides: the trained weights, detached (inference path).
        let vb = candle_nn::VarBuilder::from_tensors(
            full.weights(),
            candle_core::DType::F32,
            &Device::Cpu,
        );
        let detached = distill_models::Model::new(full.model().spec(), vb).unwrap();
        let b = detached.forward(&ids, None).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(
            d.to_scalar::<f32>().unwrap(),
            0.0,
            "{model}: reloaded logits differ"
        );
    }
}

#[test]
fn mismatched_resumes_are_refused() {
    let train = rows(10);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(init("tiny-qwen2"), config(), &Device::Cpu).unwrap();
    t.fit(&train, None, Some(dir.path()), &mut |e| match e {
        Event::Step(m) if m.step == 2 => Control::Stop,
        _ => Control::Continue,
    })
    .unwrap();
    let latest = checkpoint::latest(dir.path()).unwrap().unwrap();

    let mut other = config();
    other.schedule.lr = 1e-3;
    let err = Trainer::resume(&latest, other, None, &Device::Cpu)
        .err()
        .unwrap();
    assert!(matches!(err, Error::ResumeMismatch { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("`schedule.lr`") && msg.contains("0.003") && msg.contains("0.001"),
        "{msg}"
    );

    let llama = init("tiny-llama").config;
    let msg = Trainer::resume(&latest, config(), Some(&llama), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("model config differs"), "{msg}");

    // Cadence settings may change on resume; the data may not.
    let mut cadence = config();
    cadence.checkpoint_every = 5;
    cadence.keep_last = 4;
    let mut resumed = Trainer::resume(&latest, cadence, None, &Device::Cpu).unwrap();
    let msg = resumed
        .fit(&rows(11), None, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("training data differs"), "{msg}");
}

#[test]
fn bad_input_is_rejected() {
    let mut t = Trainer::new(init("tiny-qwen2"), config(), &Device::Cpu).unwrap();
    let msg = t
        .fit(&Vec::<PackedRow>::new(), None, None, &mut |_| {
            Control::Continue
        })
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no rows"), "{msg}");
    let mut unlabelled = rows(3);
    unlabelled.iter_mut().for_each(|r| r.labels.fill(IGNORE));
    let msg = t
        .fit(&unlabelled, None, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no training row has a label"), "{msg}");
    let mut bad = rows(3);
    bad[1].labels[2] = 999;
    let msg = t
        .fit(&bad, None, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`999`"), "{msg}");
    let mut ragged = rows(3);
    ragged[0].labels.pop();
    let msg = t
        .fit(&ragged, None, None, &mut |_| Control::Continue)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("row 0"), "{msg}");
}
