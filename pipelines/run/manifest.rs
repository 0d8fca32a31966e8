//! Stage manifests: what a pipeline stage ran with (a hash of its resolved config), what it read
//! and wrote, and whether it finished, so a rerun skips finished stages and resumes the one that
//! was interrupted.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageManifest {
    pub stage: String,
    pub status: Status,
    pub config_hash: String,
    pub config: serde_json::Value,
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<PathBuf>,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub finished: Option<u64>,
}

impl StageManifest {
    pub fn path(out: &Path, stage: &str) -> PathBuf {
        out.join("manifests").join(format!("{stage}.json"))
    }

    pub fn read(out: &Path, stage: &str) -> anyhow::Result<Option<Self>> {
        let path = Self::path(out, stage);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        let manifest = serde_json::from_str(&text)
            .with_context(|| format!("cannot parse stage manifest `{}`", path.display()))?;
        Ok(Some(manifest))
    }

    /// Written to a temporary name and renamed, so a crash never leaves a half manifest.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        let path = Self::path(out, &self.stage);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)? + "\n";
        std::fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot write `{}`", path.display()))?;
        Ok(())
    }
}

/// Stable 64-bit FNV-1a of the canonical JSON of a config (serde_json orders object keys), as
/// 16 hex digits. Stable across Rust versions, unlike `DefaultHasher`.
pub fn config_hash(config: &serde_json::Value) -> String {
    let text = config.to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_order_independent() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b": 1, "a": [1, 2]}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a": [1, 2], "b": 1}"#).unwrap();
        assert_eq!(config_hash(&a), config_hash(&b));
        assert_eq!(config_hash(&a), "30077cb0d8fc07be");
        let c: serde_json::Value = serde_json::from_str(r#"{"a": [2, 1], "b": 1}"#).unwrap();
        assert_ne!(config_hash(&a), config_hash(&c));
    }

    #[test]
    fn manifest_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m = StageManifest {
            stage: "generate".into(),
            status: Status::Running,
            config_hash: "abc".into(),
            config: serde_json::json!({"samples": 4}),
            inputs: vec!["problems.jsonl".into()],
            outputs: vec!["corpus".into()],
            started: 1,
            finished: None,
        };
        m.write(dir.path()).unwrap();
        assert_eq!(
            StageManifest::read(dir.path(), "generate").unwrap(),
            Some(m)
        );
        assert_eq!(StageManifest::read(dir.path(), "train").unwrap(), None);
    }
}
