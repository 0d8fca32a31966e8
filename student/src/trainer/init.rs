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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::ScratchConfig;
    use distill_models::{Architecture, Config};

    /// A from-scratch Qwen3 student lists its per-head q/k norms, starts them at one (as
    /// `transformers` does), and writes `head_dim` out (Qwen3's default is 128, not
    /// hidden / heads).
    #[test]
    fn qwen3_student_has_unit_qk_norms_and_explicit_head_dim() {
        let scratch = ScratchConfig {
            architecture: Architecture::Qwen3,
            ..ScratchConfig::default()
        };
        let config = scratch.model_config(300, Some(1), &[2]).unwrap();
        assert_eq!(config.to_json()["model_type"], "qwen3");
        assert_eq!(config.to_json()["head_dim"], 16);
        let text = serde_json::to_string(&config.to_json()).unwrap();
        let reread = Config::from_json_str(&text, std::path::Path::new("config.json")).unwrap();
        // (The reread config also holds `architectures` / `torch_dtype` in its extra keys.)
        assert_eq!(reread.architecture(), Architecture::Qwen3);
        assert_eq!(reread.common(), config.common());
        assert_eq!(reread.spec().unwrap(), config.spec().unwrap());
        let spec = config.spec().unwrap();
        assert_eq!(spec.head_dim, 16);
        let weights = init_weights(&spec, 7, &Device::Cpu).unwrap();
        assert_eq!(weights.len(), spec.tensor_shapes().len());
        for layer in 0..spec.num_layers {
            for norm in ["q_norm", "k_norm"] {
                let name = format!("model.layers.{layer}.self_attn.{norm}.weight");
                let w = weights
                    .get(&name)
                    .unwrap_or_else(|| panic!("{name} missing"));
                assert_eq!(w.to_vec1::<f32>().unwrap(), vec![1.0; 16], "{name}");
            }
        }
    }
}
