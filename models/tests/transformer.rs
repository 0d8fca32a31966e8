//! Properties of the decoder that need no reference implementation: gradients reach every
//! parameter, packing is exact, cached decoding equals the full forward, ragged batches equal
//! sequences run alone.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use distill_models::transformer::{Logits, RopeSpec};
use distill_models::{Model, Spec};

fn spec(tied: bool, qkv_bias: bool) -> Spec {
    Spec {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope: RopeSpec::from_hf(10000.0, None, 8).unwrap(),
        qkv_bias,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        tie_word_embeddings: tied,
        hidden_act: "silu".into(),
        initializer_range: 0.2,
    }
}

fn random_model(spec: &Spec) -> (VarMap, Model) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Model::new(spec, vb).unwrap();
    // Fresh init has zero biases and unit norms; perturb them so a dropped term shows.
    for var in varmap.all_vars() {
        let noise = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
    (varmap, model)
}

/// Plain-tensor copy of a trained model, so the inference (fused-op) paths run.
fn frozen(varmap: &VarMap, spec: &Spec) -> Model {
    let tensors = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Model::new(
        spec,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    distill_models::ops::max_abs_diff(a, b).unwrap()
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn every_parameter_receives_a_gradient() {
    for (tied, bias, qk_norm) in [
        (true, false, false),
        (false, true, false),
        (true, false, true),
    ] {
        let spec = Spec {
            qk_norm,
            ..spec(tied, bias)
        };
        let (varmap, model) = random_model(&spec);
        let input =
            Tensor::new(&[[1u32, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]], &Device::Cpu).unwrap();
        let logits = model.forward(&input, None).unwrap();
        assert_eq!(logits.dims(), &[2, 6, 50]);
        let loss = candle_nn::loss::cross_entropy(
            &logits.flatten_to(1).unwrap(),
            &input.flatten_all().unwrap(),
        )
        .unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert_eq!(vars.len(), spec.tensor_shapes().len());
        for (name, var) in vars.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "zero gradient for {name}");
        }
    }
}

#[test]
fn gradient_matches_finite_difference() {
    let spec = spec(false, true);
    let (varmap, model) = random_model(&spec);
    let input = ids(&[3, 1, 4, 1, 5, 9]);
    let loss_of = |m: &Model| -> f64 {
        let logits = m.forward(&input, None).unwrap().squeeze(0).unwrap();
        candle_nn::loss::cross_entropy(&logits, &input.squeeze(0).unwrap())
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let grads = model
        .forward(&input, None)
        .and_then(|l| {
            let l = l.squeeze(0)?;
            Ok(candle_nn::loss::cross_entropy(&l, &input.squeeze(0)?)?)
        })
        .unwrap()
        .backward()
        .unwrap();
    // One entry of a norm weight and one of a q bias: both sit behind the ops that candle's
    // fused kernels would have cut off.
    for name in [
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.self_attn.q_proj.bias",
    ] {
        let var: Var = varmap.data().lock().unwrap()[name].clone();
        let analytic: f32 = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .get(3)
            .unwrap()
            .to_scalar()
            .unwrap();
        let base = var.as_tensor().copy().unwrap().detach();
        let eps = 1e-2f32;
        let mut bumped = base.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        bumped[3] += eps;
        var.set(
            &Tensor::new(bumped.as_slice(), &Device::Cpu)
                .unwrap()
                .reshape(base.shape())
                .unwrap(),
        )
        .unwrap();
        let up = loss_of(&model);
        bumped[3] -= 2.0 * eps;
        var.set(
            &Tensor::new(bumped.as_slice(), &Device::Cpu)
                .unwrap()
                .reshape(base.shape())
                .unwrap(),
        )
        .unwrap();
        let down = loss_of(&model);
        var.set(&base).unwrap();
        let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
        assert!(
            (numeric - analytic).abs() < 2e-3 + 0.02 * analytic.abs(),
            "{name}: {numeric} vs {analytic}"
        );
    }
}

#[test]
fn packed_documents_equal_separate_runs() {
    let spec = spec(false, true);
    let (varmap, model) = random_model(&spec);
    let a = [3u32, 14, 15, 9, 26];
    let b = [5u32, 35, 8, 9, 7, 9, 3];
    for m in [&model, &frozen(&varmap, &spec)] {
        let la = m.forward(&ids(&a), None).unwrap();
        let lb = m.forward(&ids(&b), None).unwrap();
        let packed: Vec<u32> = a.iter().chain(&b).copied().collect();
        let pos: Vec<u32> = (0..5).chain(0..7).collect();
        let lp = m.forward(&ids(&packed), Some(&ids(&pos))).unwrap();
        assert!(max_diff(&lp.narrow(1, 0, 5).unwrap(), &la) < 1e-5);
        assert!(max_diff(&lp.narrow(1, 5, 7).unwrap(), &lb) < 1e-5);
        // Without position ids the second document would see the first.
        let leaky = m.forward(&ids(&packed), None).unwrap();
        assert!(max_diff(&leaky.narrow(1, 5, 7).unwrap(), &lb) > 1e-3);
    }
}

#[test]
fn cached_decode_equals_full_forward() {
    // Qwen3-style q/k norms and yarn tables (attention factor 1.1386 on cos/sin) too.
    let yarn = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
        "original_max_position_embeddings": 4});
    let qwen3 = Spec {
        qk_norm: true,
        rope: RopeSpec::from_hf(10000.0, Some(&yarn), 8).unwrap(),
        ..spec(true, false)
    };
    assert!(qwen3.rope.attention_factor > 1.1);
    for spec in [spec(true, false), qwen3] {
        cached_decode_equals_full_forward_for(&spec);
    }
}

fn cached_decode_equals_full_forward_for(spec: &Spec) {
    let spec = spec.clone();
    let (varmap, _) = random_model(&spec);
    let model = frozen(&varmap, &spec);
    let seq = [7u32, 1, 22, 8, 30, 2, 2, 41, 5];
    let full = model.forward(&ids(&seq), None).unwrap().squeeze(0).unwrap();
    let mut cache = model.new_cache();
    let mut rows = vec![model.forward_cached(&seq[..4], &mut cache).unwrap()];
    for &t in &seq[4..] {
        rows.push(model.forward_cached(&[t], &mut cache).unwrap());
    }
    assert_eq!(cache.len(), seq.len());
    let stepped = Tensor::cat(&rows, 0).unwrap();
    assert!(
        max_diff(&stepped, &full) < 1e-5,
        "{}",
        max_diff(&stepped, &full)
    );
}

#[test]
fn ragged_batch_equals_sequences_alone() {
    let spec = spec(false, true);
    let (varmap, _) = random_model(&spec);
    let model = frozen(&varmap, &spec);
    let prompts: [&[u32]; 3] = [&[1, 2, 3, 4, 5], &[9], &[10, 11, 12]];
    // Alone: prefill then two decode steps with fixed tokens.
    let mut alone = Vec::new();
    for p in prompts {
        let mut cache = model.new_cache();
        let mut out = vec![model
            .forward_cached(p, &mut cache)
            .unwrap()
            .narrow(0, p.len() - 1, 1)
            .unwrap()];
        for t in [17u32, 23] {
            out.push(model.forward_cached(&[t], &mut cache).unwrap());
        }
        alone.push(Tensor::cat(&out, 0).unwrap());
    }
    // Together, with sequence 1 joining one step late (continuous batching).
    let mut caches: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
    let mut got: Vec<Vec<Tensor>> = vec![Vec::new(); 3];
    {
        let [c0, c1, c2] = &mut caches[..] else {
            unreachable!()
        };
        let out = model
            .step(
                &mut [(prompts[0], &mut *c0), (prompts[2], &mut *c2)],
                Logits::Last,
            )
            .unwrap();
        got[0].push(out[0].clone());
        got[2].push(out[1].clone());
        let out = model
            .step(
                &mut [(&[17], &mut *c0), (prompts[1], &mut *c1), (&[17], &mut *c2)],
                Logits::Last,
            )
            .unwrap();
        got[0].push(out[0].clone());
        got[1].push(out[1].clone());
        got[2].push(out[2].clone());
        let out = model
            .step(
                &mut [(&[23], &mut *c0), (&[17], &mut *c1), (&[23], &mut *c2)],
                Logits::Last,
            )
            .unwrap();
        got[0].push(out[0].clone());
        got[1].push(out[1].clone());
        got[2].push(out[2].clone());
        let out = model.step(&mut [(&[23], &mut *c1)], Logits::Last).unwrap();
        got[1].push(out[0].clone());
    }
    for (i, rows) in got.iter().enumerate() {
        let together = Tensor::cat(rows, 0).unwrap();
        assert!(max_diff(&together, &alone[i]) < 1e-5, "sequence {i}");
    }
}

#[test]
fn out_of_vocabulary_id_is_an_error() {
    let spec = spec(true, false);
    let (_, model) = random_model(&spec);
    let err = model.forward(&ids(&[1, 50]), None).unwrap_err().to_string();
    assert!(
        err.contains("token id 50 is outside the vocabulary (size 50)"),
        "{err}"
    );
}

#[test]
fn parameter_count_counts_tied_embeddings_once() {
    let tied = spec(true, false);
    let untied = spec(false, false);
    assert_eq!(untied.num_parameters() - tied.num_parameters(), 50 * 32);
    let per_layer = 4 * 32 * 8 * 2 + 2 * 32 * 8 * 2 + 3 * 32 * 48 + 2 * 32;
    assert_eq!(tied.num_parameters(), 50 * 32 + 2 * per_layer + 32);
}
