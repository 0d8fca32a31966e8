//! Training checkpoints on disk: one folder per saved step, written whole or not at all.
//!
//! ```text
//! OUT/checkpoints/step-00000100/
//!     model/                   Hugging Face folder (config, safetensors, tokenizer, generation)
//!     optimizer.safetensors    AdamW moments and step
//!     trainer_state.json       step, data cursor, dataset fingerprint, loss history, configs
//! ```
//!
//! Everything is written into a hidden `.step-….partial` sibling which is renamed into place
//! when complete; only then are older checkpoints deleted (keeping the last K). A failure at any
//! point (disk full included) removes the partial folder and leaves the previous checkpoints as
//! they were. The shuffle RNG needs no state of its own: each epoch's order is derived from
//! `(seed, epoch)`, so the data cursor (`rows_consumed`) is the whole RNG state.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::trainer::TrainerConfig;
use crate::{Error, Result};

/// Folder of the Hugging Face weights inside a checkpoint.
pub const MODEL_DIR: &str = "model";
/// The optimizer's moments and step.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Step, cursor, history and the configs the run was started with.
pub const STATE_FILE: &str = "trainer_state.json";
const PREFIX: &str = "step-";

/// Identifies the training rows a run consumes, so a resume on other data is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetFingerprint {
    pub rows: u64,
    pub tokens: u64,
    pub hash: u64,
}

/// One optimizer step's record in the loss history.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
}

/// Everything besides weights and moments needed to continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Planned optimizer steps of the whole run.
    pub total_steps: u64,
    /// Training rows consumed (the data cursor across epochs).
    pub rows_consumed: u64,
    pub dataset: Option<DatasetFingerprint>,
    pub history: Vec<StepRecord>,
    /// `(step, loss)` of each held-out evaluation.
    pub evals: Vec<(u64, f64)>,
    /// The model's `config.json` the run started from.
    pub model_config: serde_json::Value,
    pub trainer_config: TrainerConfig,
    /// The dtype the final model is exported in (the base checkpoint's): checkpoints hold the
    /// trained parameters exactly, so a resumed run must remember it. `f32` in older states.
    #[serde(default = "default_export_dtype")]
    pub export_dtype: String,
}

fn default_export_dtype() -> String {
    "f32".into()
}

/// Checkpoint folders under `root`, oldest first, with their steps.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name
            .strip_prefix(PREFIX)
            .and_then(|s| s.parse::<u64>().ok())
        {
            if entry.path().join(STATE_FILE).is_file() {
                out.push((step, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint under `root`.
pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// Writes checkpoint `step` under `root` through `fill` (which writes the files into the folder
/// it is given), atomically, then deletes all but the newest `keep_last`.
pub fn write_atomic(
    root: &Path,
    step: u64,
    keep_last: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    let name = format!("{PREFIX}{step:08}");
    let dest = root.join(&name);
    let tmp = root.join(format!(".{name}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = fill(&tmp).and_then(|()| sync_dir(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        // Re-saving a step (a resumed run stopping where it started): replace it.
        std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        Error::io(&dest, e)
    })?;
    let _ = sync_dir(root);
    let all = list(root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep_last.max(1))) {
        std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
    }
    Ok(dest)
}

/// Flushes a folder's files to disk so a crash after the rename cannot expose empty files.
fn sync_dir(dir: &Path) -> Result<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let path = entry.map_err(|e| Error::io(&d, e))?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                f.sync_all().map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    Ok(())
}

pub fn save_state(dir: &Path, state: &TrainerState) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::checkpoint(dir, e))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
}

pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, e))
}

/// The first difference between two JSON values, as `path: checkpoint A, now B`, skipping the
/// top-level keys in `ignore`.
pub fn first_difference(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    ignore: &[&str],
) -> Option<String> {
    fn walk(
        a: &serde_json::Value,
        b: &serde_json::Value,
        path: &str,
        ignore: &[&str],
    ) -> Option<String> {
        use serde_json::Value;
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter()
                    .filter(|k| !(path.is_empty() && ignore.contains(&k.as_str())))
                    .find_map(|k| {
                        let sub = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(
                            x.get(k).unwrap_or(&Value::Null),
                            y.get(k).unwrap_or(&Value::Null),
                            &sub,
                            &[],
                        )
                    })
            }
            _ if a == b => None,
            _ => Some(format!("`{path}` is `{a}` in the checkpoint but `{b}` now")),
        }
    }
    walk(saved, now, "", ignore)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_named() {
        let a = json!({"optim": {"lr": 0.1, "eps": 1e-8}, "keep_last": 2});
        let b = json!({"optim": {"lr": 0.2, "eps": 1e-8}, "keep_last": 3});
        let d = first_difference(&a, &b, &["keep_last"]).unwrap();
        assert!(
            d.contains("`optim.lr`") && d.contains("0.1") && d.contains("0.2"),
            "{d}"
        );
        assert_eq!(first_difference(&a, &a, &[]), None);
        let c = json!({"optim": {"lr": 0.1, "eps": 1e-8}, "keep_last": 5});
        assert_eq!(first_difference(&a, &c, &["keep_last"]), None);
    }

    #[test]
    fn failed_write_keeps_previous_and_prunes_after_success() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |step: u64| {
            write_atomic(root, step, 2, |d| {
                std::fs::write(d.join(STATE_FILE), "{}").map_err(|e| Error::io(d, e))
            })
        };
        write(1).unwrap();
        let err = write_atomic(root, 2, 2, |d| {
            std::fs::write(d.join(STATE_FILE), "{}").map_err(|e| Error::io(d, e))?;
            Err(Error::io(
                d,
                std::io::Error::other("No space left on device"),
            ))
        });
        assert!(err.is_err());
        let steps: Vec<u64> = list(root).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![1]);
        assert_eq!(
            std::fs::read_dir(root).unwrap().count(),
            1,
            "partial folder removed"
        );
        write(2).unwrap();
        write(3).unwrap();
        let steps: Vec<u64> = list(root).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, vec![2, 3]);
    }
}
