//! Logit-distillation divergences against PyTorch (TRL's GKD definitions) on fixed logits:
//! forward KL, reverse KL and generalised JSD at two temperatures, values and gradients.

use candle_core::{DType, Device, Tensor, Var};
use distill_student::kd::Divergence;
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kd-losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn divergences_and_gradients_match_pytorch() {
    let f = fixture();
    let (n, vocab) = (
        f["positions"].as_u64().unwrap() as usize,
        f["vocab"].as_u64().unwrap() as usize,
    );
    let teacher = Tensor::from_vec(floats(&f["teacher"]), (n, vocab), &Device::Cpu).unwrap();
    let cases = f["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let d = Divergence {
            beta: case["beta"].as_f64().unwrap(),
            temperature: case["temperature"].as_f64().unwrap(),
        };
        let student = Var::from_tensor(
            &Tensor::from_vec(floats(&f["student"]), (n, vocab), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let loss = d.loss(student.as_tensor(), &teacher).unwrap();
        let value = loss
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let expected = case["loss"].as_f64().unwrap();
        assert!(
            (value - expected).abs() <= 1e-5 * expected.abs().max(1.0),
            "{d:?}: {value} vs PyTorch {expected}"
        );
        let grads = loss.backward().unwrap();
        let grad: Vec<f32> = grads
            .get(student.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected = floats(&case["grad"]);
        let worst = grad
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-6, "{d:?}: gradient differs by {worst}");
    }
}

#[test]
fn bad_settings_and_shapes_are_refused() {
    let a = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let ok = Divergence {
        beta: 0.5,
        temperature: 1.0,
    };
    let err = ok.loss(&a, &b).unwrap_err().to_string();
    assert!(err.contains("differ in shape"), "{err}");
    let err = Divergence { beta: 1.5, ..ok }
        .loss(&a, &a)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`beta` must be in [0, 1]"), "{err}");
    let err = Divergence {
        temperature: 0.0,
        ..ok
    }
    .loss(&a, &a)
    .unwrap_err()
    .to_string();
    assert!(err.contains("`temperature` must be positive"), "{err}");
    // Identical distributions diverge by nothing, whatever the divergence.
    for beta in [0.0, 0.3, 1.0] {
        let zero = Divergence { beta, ..ok }.loss(&a, &a).unwrap();
        assert!(zero.to_scalar::<f32>().unwrap().abs() < 1e-7);
    }
}

/// `divergence_sum` on the whole vocabulary equals the divergence summed over positions; on
/// the teacher's top k it equals the divergence of both distributions gathered at the
/// teacher's k largest logits (picked here on the host) and renormalised there.
#[test]
fn top_k_compares_the_teachers_most_likely_tokens() {
    use distill_student::kd::{divergence_sum, KdConfig};
    let f = fixture();
    let (n, vocab) = (
        f["positions"].as_u64().unwrap() as usize,
        f["vocab"].as_u64().unwrap() as usize,
    );
    let teacher_host = floats(&f["teacher"]);
    let student_host = floats(&f["student"]);
    let teacher = Tensor::from_vec(teacher_host.clone(), (n, vocab), &Device::Cpu).unwrap();
    let student = Tensor::from_vec(student_host.clone(), (n, vocab), &Device::Cpu).unwrap();
    let scalar = |t: Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    for beta in [0.0, 0.5, 1.0] {
        let config = |top_k| KdConfig {
            teacher: "t".into(),
            beta,
            temperature: 2.0,
            top_k,
            ..KdConfig::default()
        };
        let d = config(0).divergence();
        let full = scalar(d.loss(&student, &teacher).unwrap()) * n as f64;
        for k in [0, vocab, vocab + 5] {
            let sum = scalar(divergence_sum(&config(k), &student, &teacher).unwrap());
            assert!(
                (sum - full).abs() < 1e-5 * full.abs().max(1.0),
                "k {k}: {sum} vs {full}"
            );
        }
        let k = 3;
        let (mut s_top, mut t_top) = (Vec::new(), Vec::new());
        for p in 0..n {
            let row = &teacher_host[p * vocab..(p + 1) * vocab];
            let mut ids: Vec<usize> = (0..vocab).collect();
            ids.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for &i in &ids[..k] {
                t_top.push(row[i]);
                s_top.push(student_host[p * vocab + i]);
            }
        }
        let s_top = Tensor::from_vec(s_top, (n, k), &Device::Cpu).unwrap();
        let t_top = Tensor::from_vec(t_top, (n, k), &Device::Cpu).unwrap();
        let expected = scalar(d.loss(&s_top, &t_top).unwrap()) * n as f64;
        let sum = scalar(divergence_sum(&config(k), &student, &teacher).unwrap());
        assert!(
            (sum - expected).abs() < 1e-5,
            "top {k}, beta {beta}: {sum} vs {expected}"
        );
        assert!(
            (sum - full).abs() > 1e-3,
            "top {k} differs from the whole vocabulary"
        );
    }
}

/// The student's logits made only where they are compared: from hidden states and the output
/// layer, `live_divergence_sum` equals `divergence_sum` of the full logits `hidden · headᵀ`, in
/// value and in the gradients of both, on the whole vocabulary and on the teacher's top k.
#[test]
fn logits_at_the_teachers_top_k_only_change_nothing() {
    use distill_student::kd::{divergence_sum, live_divergence_sum, KdConfig};
    let (n, width, vocab) = (5, 6, 11);
    let mut state = 3u32;
    let mut noise = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((state >> 8) % 2001) as f32 / 500.0 - 2.0
            })
            .collect()
    };
    let dev = &Device::Cpu;
    let hidden = Tensor::from_vec(noise(n * width), (n, width), dev).unwrap();
    let head = Tensor::from_vec(noise(vocab * width), (vocab, width), dev).unwrap();
    // A teacher whose vocabulary is padded past the student's: the padding is never compared.
    let teacher = Tensor::from_vec(noise(n * (vocab + 2)), (n, vocab + 2), dev).unwrap();
    let scalar = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    let max_diff =
        |a: &Tensor, b: &Tensor| scalar(&(a - b).unwrap().abs().unwrap().max_all().unwrap());
    for (beta, top_k) in [
        (0.0, 0),
        (0.0, 4),
        (0.5, 4),
        (1.0, 4),
        (1.0, 2),
        (0.0, vocab),
    ] {
        let config = KdConfig {
            teacher: "t".into(),
            beta,
            temperature: 1.5,
            top_k,
            ..KdConfig::default()
        };
        let run = |live: bool| {
            let (h, w) = (
                Var::from_tensor(&hidden).unwrap(),
                Var::from_tensor(&head).unwrap(),
            );
            let sum = if live {
                live_divergence_sum(&config, h.as_tensor(), w.as_tensor(), &teacher).unwrap()
            } else {
                let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                divergence_sum(&config, &logits, &teacher).unwrap()
            };
            let grads = sum.backward().unwrap();
            let g = |v: &Var| grads.get(v.as_tensor()).unwrap().clone();
            (scalar(&sum), g(&h), g(&w))
        };
        let ((a, ah, aw), (b, bh, bw)) = (run(true), run(false));
        assert!(
            a > 1e-3,
            "beta {beta}, top {top_k}: a divergence to compare ({a})"
        );
        assert!(
            (a - b).abs() < 1e-5 * b.abs().max(1.0),
            "beta {beta}, top {top_k}: {a} vs {b}"
        );
        assert!(
            max_diff(&ah, &bh) < 1e-5,
            "beta {beta}, top {top_k}: hidden gradients"
        );
        assert!(
            max_diff(&aw, &bw) < 1e-5,
            "beta {beta}, top {top_k}: head gradients"
        );
    }
}
