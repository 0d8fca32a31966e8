//! Rotary position embedding frequencies, with Hugging Face `rope_scaling` applied (`linear`,
//! `llama3`, `yarn`), and the factor YaRN scales the rotary cosines and sines by.

use crate::{Error, Result};

/// Rotary embedding frequencies, with Hugging Face `rope_scaling` already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub inv_freq: Vec<f32>,
    /// Multiplies the rotary cosines and sines (`attention_scaling` in `transformers`): 1 except
    /// for YaRN, where it is the paper's `mscale`.
    pub attention_factor: f32,
}

impl RopeSpec {
    /// From a config's `rope_theta`/`rope_scaling`, or the `rope_parameters` object that
    /// `transformers` v5 writes instead (it holds `rope_theta` and the scaling keys together).
    /// As `transformers` does, a scaling that needs `original_max_position_embeddings` takes it
    /// from the config's top level, or else from `max_position_embeddings`.
    pub fn from_config(
        theta: f64,
        scaling: Option<&serde_json::Value>,
        extra: &serde_json::Map<String, serde_json::Value>,
        head_dim: usize,
        max_position_embeddings: usize,
    ) -> Result<Self> {
        let (theta, scaling) = resolve_scaling(theta, scaling, extra, max_position_embeddings);
        Self::from_hf(theta, scaling.as_ref(), head_dim)
    }

    /// Mirrors `transformers`' `ROPE_INIT_FUNCTIONS` for `default`, `linear`, `llama3` and
    /// `yarn`, computed in f32 as PyTorch does.
    pub fn from_hf(
        theta: f64,
        scaling: Option<&serde_json::Value>,
        head_dim: usize,
    ) -> Result<Self> {
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let mut attention_factor = 1.0;
        let Some(scaling) = scaling.filter(|s| !s.is_null()) else {
            return Ok(Self {
                inv_freq,
                attention_factor,
            });
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num64 = |key: &str| -> Result<f64> {
            scaling.get(key).and_then(|v| v.as_f64()).ok_or_else(|| {
                Error::Config(format!("`rope_scaling` of type `{kind}` needs `{key}`"))
            })
        };
        let num = |key: &str| -> Result<f32> { num64(key).map(|v| v as f32) };
        match kind {
            "default" => {}
            "linear" => {
                let factor = num("factor")?;
                inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let factor = num("factor")?;
                let low = num("low_freq_factor")?;
                let high = num("high_freq_factor")?;
                let old_len = num("original_max_position_embeddings")?;
                let (low_wavelen, high_wavelen) = (old_len / low, old_len / high);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_len / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            "yarn" => {
                let optional = |key: &str| scaling.get(key).and_then(|v| v.as_f64());
                let yarn = Yarn {
                    factor: num64("factor")?,
                    original_max_position_embeddings: num64("original_max_position_embeddings")?,
                    // `or 32` / `or 1` in transformers: a 0 (or null) means the default too.
                    beta_fast: optional("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0),
                    beta_slow: optional("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0),
                    truncate: scaling
                        .get("truncate")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(true),
                };
                inv_freq = yarn.inv_freq(base, head_dim);
                attention_factor = match optional("attention_factor") {
                    Some(given) => given,
                    None => yarn.mscale(optional("mscale"), optional("mscale_all_dim")),
                } as f32;
            }
            other => {
                return Err(Error::Config(format!(
                    "`rope_scaling` type `{other}` is not supported (supported: default, linear, llama3, yarn)"
                )))
            }
        }
        Ok(Self {
            inv_freq,
            attention_factor,
        })
    }
}

/// The `rope_theta` and `rope_scaling` a config means, wherever it keeps them: top-level keys, or
/// transformers 5's `rope_parameters`; a scaling that needs `original_max_position_embeddings`
/// gets it from the config's top level or else from `max_position_embeddings`, and YaRN without
/// `factor` gets the ratio of the two context lengths, as `transformers` does.
pub(crate) fn resolve_scaling(
    theta: f64,
    scaling: Option<&serde_json::Value>,
    extra: &serde_json::Map<String, serde_json::Value>,
    max_position_embeddings: usize,
) -> (f64, Option<serde_json::Value>) {
    let (theta, scaling) = match extra.get("rope_parameters").filter(|p| p.is_object()) {
        Some(params) if scaling.is_none_or(|s| s.is_null()) => {
            let theta = params
                .get("rope_theta")
                .and_then(|t| t.as_f64())
                .unwrap_or(theta);
            (theta, Some(params))
        }
        _ => (theta, scaling.filter(|s| !s.is_null())),
    };
    let Some(mut scaling) = scaling.cloned() else {
        return (theta, None);
    };
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let kind = kind.as_deref();
    if matches!(kind, Some("llama3" | "yarn")) {
        if let Some(map) = scaling.as_object_mut() {
            let original = extra
                .get("original_max_position_embeddings")
                .cloned()
                .or_else(|| map.get("original_max_position_embeddings").cloned())
                .unwrap_or_else(|| max_position_embeddings.into());
            map.insert("original_max_position_embeddings".into(), original);
            if kind == Some("yarn") && map.get("factor").is_none_or(|f| f.is_null()) {
                if let Some(original) = map["original_max_position_embeddings"].as_f64() {
                    let factor = max_position_embeddings as f64 / original;
                    map.insert("factor".into(), factor.into());
                }
            }
        }
    }
    (theta, Some(scaling))
}

/// YaRN's parameters, as `transformers`' `_compute_yarn_parameters` reads them.
struct Yarn {
    factor: f64,
    original_max_position_embeddings: f64,
    beta_fast: f64,
    beta_slow: f64,
    truncate: bool,
}

impl Yarn {
    /// Frequencies below `beta_slow` rotations over the original context are interpolated
    /// (divided by `factor`), those above `beta_fast` kept, with a linear ramp between; the
    /// ramp bounds in f64 as Python computes them, the blend in f32 as PyTorch does.
    fn inv_freq(&self, base: f32, head_dim: usize) -> Vec<f32> {
        let dim = head_dim as f64;
        let correction_dim = |rotations: f64| {
            dim * (self.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI))
                .ln()
                / (2.0 * f64::from(base).ln())
        };
        let (mut low, mut high) = (
            correction_dim(self.beta_fast),
            correction_dim(self.beta_slow),
        );
        if self.truncate {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
        if low == high {
            high += 0.001; // transformers' guard against a zero-width ramp
        }
        let (low, span) = (low as f32, (high - low) as f32);
        let factor = self.factor as f32;
        (0..head_dim)
            .step_by(2)
            .enumerate()
            .map(|(j, i)| {
                let pos_freq = base.powf(i as f32 / head_dim as f32);
                let extrapolation = 1.0 / pos_freq;
                let interpolation = 1.0 / (factor * pos_freq);
                let ramp = ((j as f32 - low) / span).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                interpolation * (1.0 - keep) + extrapolation * keep
            })
            .collect()
    }

    /// The attention factor when the config does not give one: `0.1·ln(factor) + 1`, or the
    /// ratio of that with `mscale` and `mscale_all_dim` when both are set (DeepSeek).
    fn mscale(&self, mscale: Option<f64>, mscale_all_dim: Option<f64>) -> f64 {
        let get = |m: f64| {
            if self.factor <= 1.0 {
                1.0
            } else {
                0.1 * m * self.factor.ln() + 1.0
            }
        };
        match (mscale, mscale_all_dim) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => get(m) / get(all),
            _ => get(1.0),
        }
    }
}
