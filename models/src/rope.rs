//! Rotary position embedding frequencies, with Hugging Face `rope_scaling` applied.

use crate::{Error, Result};

/// Rotary embedding frequencies, with Hugging Face `rope_scaling` already applied.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub inv_freq: Vec<f32>,
}

impl RopeSpec {
    /// From a config's `rope_theta`/`rope_scaling`, or the `rope_parameters` object that
    /// `transformers` v5 writes instead (it holds `rope_theta` and the scaling keys together).
    pub fn from_config(
        theta: f64,
        scaling: Option<&serde_json::Value>,
        extra: &serde_json::Map<String, serde_json::Value>,
        head_dim: usize,
    ) -> Result<Self> {
        match extra.get("rope_parameters").filter(|p| p.is_object()) {
            Some(params) if scaling.is_none_or(|s| s.is_null()) => {
                let theta = params
                    .get("rope_theta")
                    .and_then(|t| t.as_f64())
                    .unwrap_or(theta);
                Self::from_hf(theta, Some(params), head_dim)
            }
            _ => Self::from_hf(theta, scaling, head_dim),
        }
    }

    /// Mirrors `transformers`' `ROPE_INIT_FUNCTIONS` for `default`, `linear` and `llama3`,
    /// computed in f32 as PyTorch does.
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
        let Some(scaling) = scaling.filter(|s| !s.is_null()) else {
            return Ok(Self { inv_freq });
        };
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let num = |key: &str| -> Result<f32> {
            scaling
                .get(key)
                .and_then(|v| v.as_f64())
                .map(|v| v as f32)
                .ok_or_else(|| {
                    Error::Config(format!("`rope_scaling` of type `{kind}` needs `{key}`"))
                })
        };
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
            other => {
                return Err(Error::Config(format!(
                    "`rope_scaling` type `{other}` is not supported (supported: default, linear, llama3)"
                )))
            }
        }
        Ok(Self { inv_freq })
    }
}
