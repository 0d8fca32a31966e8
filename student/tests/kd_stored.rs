//! Logit distillation from stored top-k distributions equals distillation from the live teacher
//! restricted to the same k tokens: the teacher's top-k at every labelled position of two rows
//! is stored as the corpus stores it (ids and float16 log-probabilities), and a first step
//! from it reports the divergence that a live teacher (`top_k = k`) gives on the same rows, for
//! the forward KL, the JSD and the reverse KL.

use candle_core::Device;
use distill_models::Checkpoint;
use distill_student::batch::{PackedRow, TeacherTargets, IGNORE};
use distill_student::kd::{KdConfig, Teacher};
use distill_student::{StudentInit, Trainer, TrainerConfig};
use half::f16;

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(name)
}

/// Two rows (the second packs two documents) of pseudo-random ids, every position but each
/// document's last labelled.
fn rows() -> Vec<PackedRow> {
    let mut state = 7u32;
    let mut next = || {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (state >> 16) % 256
    };
    [vec![23usize], vec![12, 9]]
        .into_iter()
        .map(|docs| {
            let mut row = PackedRow::default();
            for len in docs {
                let ids: Vec<u32> = (0..len).map(|_| next()).collect();
                for i in 0..len {
                    row.labels.push(if i + 1 < len {
                        i64::from(ids[i + 1])
                    } else {
                        IGNORE
                    });
                }
                row.position_ids.extend(0..len as u32);
                row.input_ids.extend(ids);
            }
            row
        })
        .collect()
}

fn config(kd: KdConfig) -> TrainerConfig {
    TrainerConfig {
        micro_batch_size: 2,
        max_steps: Some(1),
        kd: Some(kd),
        ..TrainerConfig::default()
    }
}

fn student() -> StudentInit {
    StudentInit::from_checkpoint(&Checkpoint::open(&fixture("tiny-llama.gguf")).unwrap()).unwrap()
}

fn teacher() -> Teacher {
    let ckpt = Checkpoint::open(&fixture("tiny-qwen2.gguf")).unwrap();
    Teacher::new(ckpt.load_model(&Device::Cpu).unwrap())
}

/// The teacher's top-`k` at every labelled position, stored as the corpus stores it.
fn with_stored_targets(rows: &[PackedRow], k: usize) -> Vec<PackedRow> {
    let teacher = teacher();
    rows.iter()
        .map(|row| {
            let positions: Vec<u32> = (0..row.len() as u32)
                .filter(|&p| row.labels[p as usize] != IGNORE)
                .collect();
            let hidden = teacher
                .hidden_at(&row.input_ids, &row.position_ids, 1, &positions)
                .unwrap();
            let logits: Vec<Vec<f32>> = teacher.logits(&hidden).unwrap().to_vec2().unwrap();
            let mut targets = TeacherTargets::new(k);
            for (&p, row_logits) in positions.iter().zip(&logits) {
                let lse = row_logits
                    .iter()
                    .map(|&x| (x as f64).exp())
                    .sum::<f64>()
                    .ln() as f32;
                let mut order: Vec<usize> = (0..row_logits.len()).collect();
                order.sort_by(|&a, &b| row_logits[b].total_cmp(&row_logits[a]));
                targets.positions.push(p);
                for &i in &order[..k] {
                    targets.ids.push(i as u32);
                    targets
                        .logprobs
                        .push(f16::from_f32(row_logits[i] - lse).to_bits());
                }
            }
            PackedRow {
                teacher: Some(targets),
                ..row.clone()
            }
        })
        .collect()
}

#[test]
fn stored_top_k_equals_the_live_teacher_on_the_same_k() {
    let k = 8;
    let plain = rows();
    let stored = with_stored_targets(&plain, k);
    for beta in [0.0, 0.5, 1.0] {
        let kd = KdConfig {
            beta,
            temperature: 1.5,
            weight: 1.0,
            ..KdConfig::default()
        };
        let mut live = Trainer::new(
            student(),
            config(KdConfig {
                teacher: "tiny-qwen2.gguf".into(),
                top_k: k,
                ..kd.clone()
            }),
            &Device::Cpu,
        )
        .unwrap();
        live.set_teacher(teacher()).unwrap();
        let live = live.train_step(&[plain.iter().collect()]).unwrap();
        let mut from_corpus = Trainer::new(
            student(),
            config(KdConfig {
                from_corpus: true,
                ..kd.clone()
            }),
            &Device::Cpu,
        )
        .unwrap();
        let from_corpus = from_corpus.train_step(&[stored.iter().collect()]).unwrap();
        let (a, b) = (live.kd.unwrap(), from_corpus.kd.unwrap());
        eprintln!("beta {beta}: live {a} stored {b}");
        assert!(a > 1e-3, "the models differ: {a}");
        assert!(
            (a - b).abs() <= 2e-3 * a,
            "beta {beta}: live {a} vs stored {b}"
        );
        assert_eq!(live.loss, from_corpus.loss, "the same cross-entropy");
        assert!((live.grad_norm - from_corpus.grad_norm).abs() <= 5e-3 * live.grad_norm);
    }
}

#[test]
fn a_distillation_config_without_its_teacher_fails_in_the_step() {
    let mut t = Trainer::new(
        student(),
        config(KdConfig {
            teacher: "somewhere".into(),
            ..KdConfig::default()
        }),
        &Device::Cpu,
    )
    .unwrap();
    let rows = rows();
    let err = t.train_step(&[rows.iter().collect()]).unwrap_err();
    assert!(err.to_string().contains("no teacher was loaded"), "{err}");
}
