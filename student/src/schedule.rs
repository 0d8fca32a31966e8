//! The learning-rate schedule: linear warmup to the peak, then cosine decay to
//! `min_lr_ratio × lr` at the last step.
//!
//! Step `s` (0-based, the `s`-th optimizer update) uses
//! - `lr · (s + 1) / warmup` while `s < warmup` — the first update already moves the weights,
//!   unlike `transformers`' `get_cosine_schedule_with_warmup`, whose step 0 has lr 0;
//! - then `lr · (r + (1 − r) · ½(1 + cos(π · p)))` with `p = (s − warmup) / (total − warmup)`,
//!   so the peak is reached at the first step after warmup and the floor `r · lr` at the end.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Learning-rate schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Optimizer steps of linear warmup.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` (1.0 keeps it constant after warmup).
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            warmup_steps: 0,
            min_lr_ratio: 0.1,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return Err(Error::Config(format!(
                "`schedule.lr` must be in (0, 1), got `{}`",
                self.lr
            )));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::Config(format!(
                "`schedule.min_lr_ratio` must be in [0, 1], got `{}`",
                self.min_lr_ratio
            )));
        }
        Ok(())
    }

    /// Learning rate of optimizer step `step` (0-based) out of `total`.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return self.lr * (step + 1) as f64 / w as f64;
        }
        let span = total.saturating_sub(w).max(1) as f64;
        let progress = ((step - w) as f64 / span).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine() {
        let s = ScheduleConfig {
            lr: 1e-3,
            warmup_steps: 4,
            min_lr_ratio: 0.1,
        };
        let lrs: Vec<f64> = (0..14).map(|i| s.lr_at(i, 14)).collect();
        assert!((lrs[0] - 2.5e-4).abs() < 1e-12);
        assert!((lrs[3] - 1e-3).abs() < 1e-12);
        assert!((lrs[4] - 1e-3).abs() < 1e-12, "peak right after warmup");
        assert!(lrs[4..].windows(2).all(|w| w[1] < w[0]), "decays");
        assert!(lrs[13] > 1e-4 && lrs[13] < 1.3e-4);
        assert!(
            (s.lr_at(100, 14) - 1e-4).abs() < 1e-12,
            "floor after the end"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let s = ScheduleConfig {
            lr: 2.0,
            ..Default::default()
        };
        let msg = s.validate().unwrap_err().to_string();
        assert!(
            msg.contains("`schedule.lr`") && msg.contains("`2`"),
            "{msg}"
        );
    }
}
