//! The generation cache: one folder per model, `OUT/generations/<label>/`, holding corpus
//! shards written by the teacher crate's `generate` stage (same record schema, same prompt,
//! same per-sample seeds) plus `compare.json`, which records what the samples depend on and the
//! speed and memory measured while they were generated.
//!
//! Keys: the `generate` stage already refuses a folder written with another sampling config,
//! prompt, seed or problem file (its `generation.json`) and skips every sample already present;
//! `compare.json` adds the model's identity (path, file sizes, modification times) and the
//! problem file's size and modification time. When either key changes the folder is cleared and
//! regenerated; otherwise only missing samples are generated (more `--samples`, new problems,
//! a run interrupted half-way).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use distill_corpus::record::{records_from_batch, Record};
use distill_corpus::shards::{Manifest, ShardReader};
use distill_teacher::generate::{GenerateConfig, Plan};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::memory::PeakMethod;

/// The sidecar file in each model's cache folder.
pub const SIDECAR: &str = "compare.json";

/// Measurements accumulated over every run that generated samples into a cache folder.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// Samples generated (over all runs since the cache was last cleared).
    pub generated_samples: u64,
    /// Completion tokens of those samples.
    pub generated_tokens: u64,
    /// Wall-clock seconds spent generating them (model loading excluded).
    pub generate_seconds: f64,
    /// Seconds the last load of the model took.
    pub load_seconds: Option<f64>,
    /// Largest peak resident set over the runs (see [`super::memory`]).
    pub peak_rss_bytes: Option<u64>,
    /// Resident set just before the model was loaded, in the run that set the peak.
    pub baseline_rss_bytes: Option<u64>,
    pub peak_method: Option<PeakMethod>,
}

impl RunStats {
    /// Adds one run's measurements.
    pub fn add(&mut self, run: &RunStats) {
        self.generated_samples += run.generated_samples;
        self.generated_tokens += run.generated_tokens;
        self.generate_seconds += run.generate_seconds;
        if run.load_seconds.is_some() {
            self.load_seconds = run.load_seconds;
        }
        if run.peak_rss_bytes > self.peak_rss_bytes {
            self.peak_rss_bytes = run.peak_rss_bytes;
            self.baseline_rss_bytes = run.baseline_rss_bytes;
            self.peak_method = run.peak_method;
        }
    }

    /// Generated tokens per wall-clock second.
    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.generate_seconds > 0.0).then(|| self.generated_tokens as f64 / self.generate_seconds)
    }
}

/// `compare.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    /// Model and problem-file identity the samples were generated for.
    pub identity: Value,
    pub stats: RunStats,
}

/// `OUT/generations/<label>`.
pub fn model_dir(out: &Path, label: &str) -> PathBuf {
    out.join("generations").join(label)
}

pub fn read_sidecar(dir: &Path) -> anyhow::Result<Option<Sidecar>> {
    let path = dir.join(SIDECAR);
    match fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(sidecar) => Ok(Some(sidecar)),
            // An unreadable sidecar (an older layout) only costs a regeneration.
            Err(_) => Ok(None),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    }
}

/// Writes `compare.json` through a temporary file, so a crash never leaves half of it.
pub fn write_sidecar(dir: &Path, sidecar: &Sidecar) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let path = dir.join(SIDECAR);
    let tmp = dir.join(format!("{SIDECAR}.tmp"));
    let text = serde_json::to_string_pretty(sidecar)?;
    fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write `{}`", path.display()))
}

/// A model's cache folder made ready for a run.
pub struct Prepared {
    pub plan: Plan,
    pub sidecar: Sidecar,
    /// Whether an earlier cache was thrown away (identity or sampling config changed).
    pub cleared: bool,
}

impl Prepared {
    /// Samples this run still has to generate.
    pub fn missing(&self) -> u64 {
        self.plan.total().saturating_sub(self.plan.already_done())
    }
}

/// Checks the cache folder of `config.out` against `identity` and the sampling config, clearing
/// it when either changed, and plans the missing samples. `provenance` is the model name the
/// `generate` stage records.
pub fn prepare(
    mut config: GenerateConfig,
    provenance: &str,
    identity: Value,
) -> anyhow::Result<Prepared> {
    let dir = config.out.clone();
    let previous = read_sidecar(&dir)?;
    let has_samples = Manifest::read(&dir)
        .with_context(|| format!("cannot read the cache in `{}`", dir.display()))?
        .is_some_and(|m| !m.shards.is_empty());
    let mut cleared = has_samples && previous.as_ref().is_none_or(|s| s.identity != identity);
    config.force = cleared;
    let plan = match Plan::new(config.clone(), provenance) {
        Ok(plan) => plan,
        // Another sampling config, prompt or seed: these samples answer another question.
        Err(distill_teacher::Error::ConfigMismatch { .. }) => {
            cleared = true;
            config.force = true;
            Plan::new(config, provenance)?
        }
        Err(e) => return Err(e.into()),
    };
    let sidecar = match previous {
        Some(s) if !cleared && s.identity == identity => s,
        _ => Sidecar {
            identity,
            stats: RunStats::default(),
        },
    };
    write_sidecar(&dir, &sidecar)?;
    Ok(Prepared {
        plan,
        sidecar,
        cleared,
    })
}

/// Every record in the finished shards of a cache folder.
pub fn read_records(dir: &Path) -> anyhow::Result<Vec<Record>> {
    let Some(manifest) =
        Manifest::read(dir).with_context(|| format!("cannot read `{}`", dir.display()))?
    else {
        return Ok(Vec::new());
    };
    let files: Vec<PathBuf> = manifest.shards.iter().map(|s| dir.join(&s.file)).collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let reader = ShardReader::open(&files)?;
    let mut records = Vec::new();
    for batch in reader.batches() {
        records.extend(records_from_batch(&batch?)?);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_accumulate_and_keep_the_highest_peak() {
        let mut total = RunStats::default();
        total.add(&RunStats {
            generated_samples: 4,
            generated_tokens: 100,
            generate_seconds: 2.0,
            load_seconds: Some(0.5),
            peak_rss_bytes: Some(900),
            baseline_rss_bytes: Some(100),
            peak_method: Some(PeakMethod::VmhwmReset),
        });
        total.add(&RunStats {
            generated_samples: 2,
            generated_tokens: 50,
            generate_seconds: 1.0,
            load_seconds: None,
            peak_rss_bytes: Some(800),
            baseline_rss_bytes: Some(50),
            peak_method: Some(PeakMethod::VmhwmProcess),
        });
        assert_eq!(total.generated_samples, 6);
        assert_eq!(total.tokens_per_second(), Some(50.0));
        assert_eq!(total.load_seconds, Some(0.5));
        assert_eq!(total.peak_rss_bytes, Some(900));
        assert_eq!(total.baseline_rss_bytes, Some(100));
        assert_eq!(total.peak_method, Some(PeakMethod::VmhwmReset));
        assert_eq!(RunStats::default().tokens_per_second(), None);
    }
}
