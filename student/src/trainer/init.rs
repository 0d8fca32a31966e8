//! Seeded from-scratch weights, initialised as `transformers` does (`N(0, initializer_range)` for
//! matrices and embeddings, ones for norms, zeros for biases). candle's CPU `randn` cannot be
//! seeded, so the normals come from a ChaCha stream (Box–Muller): the same seed gives the same
//! student on every machine.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use distill_models::Spec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Fresh weights for `spec`, keyed by Hugging Face name.
pub fn init_weights(spec: &Spec, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let std = spec.initializer_range as f32;
    let mut out = HashMap::new();
    for (name, shape) in spec.tensor_shapes() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            normals(&mut rng, n, std)
        };
        out.insert(name, Tensor::from_vec(data, shape, device)?);
    }
    Ok(out)
}

fn normals(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // Box–Muller on (0, 1]: avoids ln(0).
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}
