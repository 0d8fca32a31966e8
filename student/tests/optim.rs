//! The fused in-place AdamW against a straightforward f64 implementation of
//! `torch.optim.AdamW`, over several steps with weight decay, clipping and the decay rule; and
//! its state surviving a save/load round trip exactly.

use candle_core::{Device, Tensor, Var};
use distill_student::optim::{clip_factor, AdamW, AdamWConfig, GradBuffers};

struct Reference {
    p: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    decay: bool,
}

/// One torch-style AdamW step on one parameter, written the obvious way.
#[allow(clippy::needless_range_loop)]
fn reference_step(r: &mut Reference, g: &[f64], lr: f64, c: &AdamWConfig, t: i32) {
    for i in 0..r.p.len() {
        if r.decay {
            r.p[i] *= 1.0 - lr * c.weight_decay;
        }
        r.m[i] = c.beta1 * r.m[i] + (1.0 - c.beta1) * g[i];
        r.v[i] = c.beta2 * r.v[i] + (1.0 - c.beta2) * g[i] * g[i];
        let m_hat = r.m[i] / (1.0 - c.beta1.powi(t));
        let v_hat = r.v[i] / (1.0 - c.beta2.powi(t));
        r.p[i] -= lr * m_hat / (v_hat.sqrt() + c.eps);
    }
}

fn params(dev: &Device) -> Vec<(String, Var)> {
    // Large enough that the fused kernel splits it into parallel chunks.
    let shapes: [(&str, Vec<usize>); 4] = [
        ("model.embed_tokens.weight", vec![300, 256]),
        ("model.layers.0.mlp.up_proj.weight", vec![40, 16]),
        ("model.layers.0.self_attn.q_proj.bias", vec![40]),
        ("model.norm.weight", vec![16]),
    ];
    shapes
        .into_iter()
        .map(|(n, s)| (n.to_string(), Var::randn(0f32, 0.5, s, dev).unwrap()))
        .collect()
}

fn values(v: &Var) -> Vec<f64> {
    v.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect()
}

/// Gradients equal to `targets` for every variable, through candle's backward.
fn grads_for(vars: &[(String, Var)], step: usize) -> (GradBuffers, Vec<Tensor>) {
    let dev = Device::Cpu;
    let targets: Vec<Tensor> = vars
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let scale = if step.is_multiple_of(2) { 1.0 } else { 1e-3 };
            let t = Tensor::randn(0f32, 1.0, v.shape(), &dev).unwrap();
            t.affine(scale * (i + 1) as f64, 0.0).unwrap()
        })
        .collect();
    let mut loss = Tensor::new(0f32, &dev).unwrap();
    for ((_, v), t) in vars.iter().zip(&targets) {
        loss = (loss + (v.as_tensor() * t).unwrap().sum_all().unwrap()).unwrap();
    }
    (bufs_from(loss.backward().unwrap(), vars), targets)
}

fn bufs_from(store: candle_core::backprop::GradStore, vars: &[(String, Var)]) -> GradBuffers {
    let opt = AdamW::new(vars.to_vec(), AdamWConfig::default()).unwrap();
    let mut bufs = GradBuffers::new();
    bufs.accumulate(store, &opt).unwrap();
    bufs
}

#[test]
fn fused_equals_reference_over_steps() {
    let dev = Device::Cpu;
    let vars = params(&dev);
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.clone(), config.clone()).unwrap();
    assert_eq!(
        opt.decayed(),
        vec!["model.layers.0.mlp.up_proj.weight"],
        "only non-embedding matrices decay by default"
    );
    let mut refs: Vec<Reference> = vars
        .iter()
        .map(|(n, v)| Reference {
            p: values(v),
            m: vec![0.0; v.elem_count()],
            v: vec![0.0; v.elem_count()],
            decay: n.contains("up_proj"),
        })
        .collect();
    for step in 0..6 {
        let lr = 1e-2 / (step + 1) as f64;
        let (bufs, targets) = grads_for(&vars, step);
        // Clip at a threshold that bites on the large steps only.
        let norm = bufs.global_norm().unwrap();
        let expect_norm: f64 = targets
            .iter()
            .map(|t| {
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64
            })
            .sum::<f64>()
            .sqrt();
        assert!(
            (norm - expect_norm).abs() < 1e-3 * expect_norm,
            "{norm} vs {expect_norm}"
        );
        let factor = clip_factor(norm, Some(5.0));
        opt.step(&bufs, lr, factor).unwrap();
        for (r, t) in refs.iter_mut().zip(&targets) {
            let g: Vec<f64> = t
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64 * factor as f64)
                .collect();
            reference_step(r, &g, lr, &config, step as i32 + 1);
        }
        for ((name, v), r) in vars.iter().zip(&refs) {
            let got = values(v);
            let worst = got
                .iter()
                .zip(&r.p)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 2e-6, "step {step} `{name}`: off by {worst}");
        }
    }
    assert_eq!(opt.step_count(), 6);
}

#[test]
fn state_round_trip_continues_exactly() {
    let dev = Device::Cpu;
    let a_vars = params(&dev);
    let b_vars: Vec<(String, Var)> = a_vars
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    let config = AdamWConfig {
        weight_decay: 0.05,
        decay_embeddings: true,
        ..Default::default()
    };
    let mut a = AdamW::new(a_vars.clone(), config.clone()).unwrap();
    assert_eq!(a.decayed().len(), 2, "embeddings decay when asked");
    let mut b = AdamW::new(b_vars.clone(), config.clone()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    for step in 0..4 {
        let (ga, targets) = grads_for(&a_vars, step);
        a.step(&ga, 1e-2, 1.0).unwrap();
        let mut store_loss = Tensor::new(0f32, &dev).unwrap();
        for ((_, v), t) in b_vars.iter().zip(&targets) {
            store_loss = (store_loss + (v.as_tensor() * t).unwrap().sum_all().unwrap()).unwrap();
        }
        let gb = bufs_from(store_loss.backward().unwrap(), &b_vars);
        b.step(&gb, 1e-2, 1.0).unwrap();
        if step == 1 {
            // Replace b by a fresh optimizer restored from disk.
            b.save(&path).unwrap();
            b = AdamW::new(b_vars.clone(), config.clone()).unwrap();
            b.load(&path).unwrap();
            assert_eq!(b.step_count(), 2);
        }
    }
    for ((_, x), (_, y)) in a_vars.iter().zip(&b_vars) {
        let (x, y) = (values(x), values(y));
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}

#[test]
fn bad_hyper_parameters_are_named() {
    let c = AdamWConfig {
        beta1: 1.5,
        ..Default::default()
    };
    let msg = AdamW::new(vec![], c).err().unwrap().to_string();
    assert!(
        msg.contains("`optim.beta1`") && msg.contains("`1.5`"),
        "{msg}"
    );
}
