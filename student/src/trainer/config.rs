//! The trainer's settings, with every default written once here. Unknown keys are rejected so a
//! typo in a config file fails instead of silently training with a default.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::optim::AdamWConfig;
use crate::schedule::ScheduleConfig;
use crate::{Error, Result};

/// How the trainer runs: optimisation, batching, evaluation and checkpoint cadence.
///
/// A micro-batch is `micro_batch_size` packed rows, padded to the longest (pad positions carry
/// no label and sit after every document, so they change nothing); an optimizer step sums the
/// gradients of `accumulation_steps` micro-batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub schedule: ScheduleConfig,
    pub optim: AdamWConfig,
    /// Packed rows per forward/backward pass.
    pub micro_batch_size: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub accumulation_steps: usize,
    /// Passes over the training rows (ignored when `max_steps` is set).
    pub epochs: f64,
    /// Optimizer steps to run, overriding `epochs`.
    pub max_steps: Option<u64>,
    /// Global gradient-norm clipping threshold; `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// Seeds the per-epoch shuffle (and from-scratch initialisation).
    pub seed: u64,
    /// Shuffle the rows each epoch (otherwise they are read in order).
    pub shuffle: bool,
    /// Positions per chunk of the cross-entropy; 0 computes full logits in one piece.
    pub loss_chunk_size: usize,
    /// Keep only each decoder layer's input for the backward pass and run the layer again
    /// there (activation checkpointing): activation memory of one layer instead of all of them,
    /// for one more forward of each layer per step. The gradients are the same.
    pub activation_checkpointing: bool,
    /// Evaluate the held-out loss every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (the oldest are deleted once a newer one is complete).
    pub keep_last: usize,
    /// Logit distillation against a frozen teacher (`[train.kd]`); `None` trains on the
    /// cross-entropy alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kd: Option<crate::kd::KdConfig>,
    /// On-policy distillation (`[train.opd]`, `distill train --method opd`): the student
    /// samples, `kd`'s teacher scores; `None` trains on the corpus's own samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opd: Option<super::on_policy::OpdConfig>,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            schedule: ScheduleConfig::default(),
            optim: AdamWConfig::default(),
            micro_batch_size: 4,
            accumulation_steps: 1,
            epochs: 1.0,
            max_steps: None,
            max_grad_norm: Some(1.0),
            seed: 0,
            shuffle: true,
            loss_chunk_size: 1024,
            activation_checkpointing: false,
            eval_every: 0,
            checkpoint_every: 0,
            keep_last: 2,
            kd: None,
            opd: None,
        }
    }
}

/// Keys that change only bookkeeping, not the trajectory of weights and losses: a resumed run
/// may change them.
/// (Activation checkpointing recomputes the same numbers, so it is one of them.)
pub(crate) const RESUMABLE_KEYS: &[&str] = &[
    "eval_every",
    "checkpoint_every",
    "keep_last",
    "activation_checkpointing",
];

impl TrainerConfig {
    /// Parses a JSON config (unknown keys rejected) and validates it.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self = serde_json::from_str(&text).map_err(|source| Error::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.schedule.validate()?;
        self.optim.validate()?;
        let positive = [
            ("micro_batch_size", self.micro_batch_size),
            ("accumulation_steps", self.accumulation_steps),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!(
                    "`{name}` must be at least 1, got `0`"
                )));
            }
        }
        if self.micro_batch_size > 65_536 || self.accumulation_steps > 65_536 {
            return Err(Error::Config(format!(
                "`micro_batch_size` (`{}`) and `accumulation_steps` (`{}`) must be at most 65536",
                self.micro_batch_size, self.accumulation_steps
            )));
        }
        if self.max_steps == Some(0) {
            return Err(Error::Config(
                "`max_steps` must be at least 1, got `0`".into(),
            ));
        }
        if self.max_steps.is_none() && !(self.epochs > 0.0 && self.epochs.is_finite()) {
            return Err(Error::Config(format!(
                "`epochs` must be positive, got `{}`",
                self.epochs
            )));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n > 0.0 && n.is_finite()) {
                return Err(Error::Config(format!(
                    "`max_grad_norm` must be positive (or absent to disable clipping), got `{n}`"
                )));
            }
        }
        if self.keep_last == 0 {
            return Err(Error::Config(
                "`keep_last` must be at least 1, got `0`".into(),
            ));
        }
        if let Some(kd) = &self.kd {
            kd.validate()?;
        }
        if self.opd.is_none() && self.kd.as_ref().is_some_and(|k| k.is_endpoint()) {
            return Err(Error::Config(
                "an endpoint teacher (`kd.teacher` is a URL) scores on-policy samples only: train with `--method opd`, or store its top-k in the corpus (`generate --logprobs K`) and use `kd.from_corpus`".into(),
            ));
        }
        if let Some(opd) = &self.opd {
            opd.validate()?;
            match &self.kd {
                Some(kd) if !kd.from_corpus && kd.weight == 1.0 => {}
                Some(kd) if kd.from_corpus => {
                    return Err(Error::Config(
                        "on-policy distillation scores the student's own samples: it needs a live teacher (`kd.teacher`), not `kd.from_corpus`".into(),
                    ))
                }
                Some(kd) => {
                    return Err(Error::Config(format!(
                        "on-policy distillation trains on the divergence alone: set `kd.weight = 1` (got `{}`)",
                        kd.weight
                    )))
                }
                None => {
                    return Err(Error::Config(
                        "on-policy distillation needs a teacher: set `kd.teacher` (`--kd-teacher MODEL`)".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Rows consumed by one optimizer step.
    pub fn rows_per_step(&self) -> usize {
        self.micro_batch_size * self.accumulation_steps
    }

    /// Optimizer steps for a dataset of `rows` rows.
    pub fn total_steps(&self, rows: usize) -> u64 {
        self.steps_over(rows, self.rows_per_step())
    }

    /// On-policy distillation's planned steps over `prompts`, `opd.prompts_per_step` a step.
    pub fn on_policy_steps(&self, prompts: usize) -> u64 {
        let per_step = self.opd.as_ref().map_or(1, |o| o.prompts_per_step);
        self.steps_over(prompts, per_step)
    }

    /// `max_steps`, else `epochs` passes over `items` at `per_step` a step (at least one).
    fn steps_over(&self, items: usize, per_step: usize) -> u64 {
        match self.max_steps {
            Some(n) => n,
            None => ((self.epochs * items as f64) / per_step as f64)
                .ceil()
                .max(1.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_str::<TrainerConfig>(r#"{"micro_batch": 2}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("micro_batch"), "{err}");
        let err = serde_json::from_str::<TrainerConfig>(r#"{"optim": {"beta": 0.9}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("beta"), "{err}");
    }

    #[test]
    fn partial_configs_take_defaults() {
        let c: TrainerConfig =
            serde_json::from_str(r#"{"schedule": {"lr": 0.001}, "accumulation_steps": 2}"#)
                .unwrap();
        assert_eq!(c.schedule.lr, 1e-3);
        assert_eq!(
            c.schedule.min_lr_ratio,
            ScheduleConfig::default().min_lr_ratio
        );
        assert_eq!(c.accumulation_steps, 2);
        assert_eq!(
            c.micro_batch_size,
            TrainerConfig::default().micro_batch_size
        );
        c.validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_named() {
        let mut c = TrainerConfig {
            micro_batch_size: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`micro_batch_size`"));
        c.micro_batch_size = 1;
        c.max_grad_norm = Some(-1.0);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`max_grad_norm`"));
        c.max_grad_norm = None;
        c.optim.beta2 = 1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`optim.beta2`"));
    }

    #[test]
    fn steps_from_epochs() {
        let c = TrainerConfig {
            micro_batch_size: 2,
            accumulation_steps: 3,
            epochs: 2.0,
            ..Default::default()
        };
        assert_eq!(c.total_steps(10), 4);
    }
}
