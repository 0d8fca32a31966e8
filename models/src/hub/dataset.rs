//! Datasets by name: `owner/name[/PATH][@revision]` is a Hugging Face hub dataset whose data
//! files (`.parquet`, `.jsonl`, `.ndjson`, `.json`, `.arrow`) under `PATH` are fetched into the standard
//! cache (`$HF_HOME/hub/datasets--owner--name/snapshots/<commit>/…`), as
//! `huggingface_hub.snapshot_download(repo_type="dataset", allow_patterns=…)` lays them out, so
//! either tool reuses what the other fetched. `PATH` is a prefix of the files' paths in the
//! repo: a folder (`open-r1/Mixture-of-Thoughts/math`), a split's files (`…/data/train`) or
//! one file.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::remote::{Fetch, Hub};
use super::{
    cached_snapshot, info_or_cached, list_files, record_ref, DownloadProgress, HubError, HubRef,
    HubSettings, RepoKind, Resolved,
};
use crate::Result;

/// A dataset on the hub, and which of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRef {
    pub repo: HubRef,
    /// A prefix of the data files' paths in the repo; all data files when absent.
    pub path: Option<String>,
}

impl DatasetRef {
    /// `owner/name[/PATH][@REVISION]`, or `None` when `arg` is not shaped like one (absolute
    /// and `./` paths, a single segment).
    pub fn parse(arg: &str) -> Option<Self> {
        let (head, revision) = match arg.split_once('@') {
            Some((head, rev)) => (head, Some(rev)),
            None => (arg, None),
        };
        let mut parts = head.splitn(3, '/');
        let (owner, name) = (parts.next()?, parts.next()?);
        let path = parts.next().map(|p| p.trim_end_matches('/').to_string());
        // The repo id parses as a model id would; only the kind differs.
        let id = match revision {
            Some(rev) => format!("{owner}/{name}@{rev}"),
            None => format!("{owner}/{name}"),
        };
        // `dir/file.jsonl` is a local file that does not exist (repos are not named so).
        let file_like = [
            ".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt", ".gz",
        ]
        .iter()
        .any(|ext| name.to_ascii_lowercase().ends_with(ext));
        if file_like {
            return None;
        }
        let mut repo = HubRef::parse(&id).filter(|r| r.gguf.is_none())?;
        repo.kind = RepoKind::Dataset;
        if path
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.split('/').any(|s| s.is_empty() || s == ".."))
        {
            return None;
        }
        Some(Self { repo, path })
    }
}

impl std::fmt::Display for DatasetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo.repo)?;
        if let Some(path) = &self.path {
            write!(f, "/{path}")?;
        }
        if let Some(rev) = &self.repo.revision {
            write!(f, "@{rev}")?;
        }
        Ok(())
    }
}

/// A hub dataset's files in the local cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDataset {
    /// The snapshot folder, its commit, files downloaded now, and a warning (the cache served).
    pub snapshot: Resolved,
    /// The data files, in path order.
    pub files: Vec<PathBuf>,
}

fn is_data_file(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let hidden = path.split('/').any(|p| p.starts_with('.'));
    // A `.json` in the repo's root is metadata (`dataset_info.json`, …), not rows; so are the
    // files `datasets` writes beside the shards of a saved dataset.
    let root_json = !path.contains('/') && lower.ends_with(".json");
    let name = lower.rsplit('/').next().unwrap_or(&lower);
    let metadata = [
        "dataset_info.json",
        "dataset_infos.json",
        "dataset_dict.json",
        "state.json",
    ]
    .contains(&name);
    !hidden
        && !root_json
        && !metadata
        && [
            ".parquet",
            ".jsonl",
            ".ndjson",
            ".json",
            ".arrow",
            ".jsonl.gz",
            ".ndjson.gz",
            ".json.gz",
        ]
        .iter()
        .any(|ext| lower.ends_with(ext))
}

/// How many data files a caller takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFiles {
    /// Every file the name covers (a corpus to import).
    All,
    /// Exactly one (a problem set): a name covering several fails before any download.
    One,
    /// Every parquet file of one folder, and only those (a training corpus: `distill train`
    /// reads a folder of shards).
    Folder,
}

/// The data files of `files` that `dataset` names: under its path, or, without one, all of
/// them when they sit in one folder (a dataset whose configs are folders must be told which).
fn choose(dataset: &DatasetRef, files: &[String], take: DataFiles) -> Result<Vec<String>> {
    let repo = &dataset.repo.repo;
    let chosen: Vec<String> = files
        .iter()
        .filter(|f| match &dataset.path {
            Some(path) => f.starts_with(path.as_str()) && (is_data_file(f) || *f == path),
            None => is_data_file(f),
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(HubError::NoDataFiles {
            repo: repo.clone(),
            under: dataset
                .path
                .as_ref()
                .map_or_else(String::new, |p| format!(" whose path starts with `{p}`")),
        }
        .into());
    }
    if dataset.path.is_none() && take != DataFiles::One {
        let folders: BTreeSet<&str> = chosen
            .iter()
            .map(|f| f.split_once('/').map_or(".", |(dir, _)| dir))
            .collect();
        if folders.len() > 1 {
            return Err(HubError::SeveralFolders {
                repo: repo.clone(),
                folders: folders.into_iter().collect::<Vec<_>>().join(", "),
            }
            .into());
        }
    }
    let mut chosen = chosen;
    chosen.sort();
    if take == DataFiles::Folder {
        whole_folder(dataset, files, &chosen)?;
    }
    if take == DataFiles::One && chosen.len() > 1 {
        return Err(HubError::SeveralFiles {
            dataset: dataset.to_string(),
            repo: repo.clone(),
            count: chosen.len(),
            files: chosen.join(", "),
        }
        .into());
    }
    Ok(chosen)
}

/// Checks that `chosen` is every data file of one folder, all parquet (what `distill train`
/// reads as a corpus).
fn whole_folder(dataset: &DatasetRef, files: &[String], chosen: &[String]) -> Result<()> {
    let parent = |f: &str| f.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
    let dirs: BTreeSet<String> = chosen.iter().map(|f| parent(f)).collect();
    let not_a_folder = |why: String| HubError::NotAFolder {
        dataset: dataset.to_string(),
        why,
    };
    let dir = match dirs.into_iter().collect::<Vec<_>>().as_slice() {
        [dir] => dir.clone(),
        several => {
            return Err(not_a_folder(format!("spans the folders {}", several.join(", "))).into())
        }
    };
    let others: Vec<&String> = files
        .iter()
        .filter(|f| is_data_file(f) && parent(f) == dir && !chosen.contains(f))
        .collect();
    if let Some(other) = others.first() {
        return Err(
            not_a_folder(format!("names part of its folder (`{other}` is in it too)")).into(),
        );
    }
    if let Some(other) = chosen.iter().find(|f| !f.ends_with(".parquet")) {
        return Err(not_a_folder(format!("has `{other}`, not parquet")).into());
    }
    Ok(())
}

/// Fetches the data files `dataset` names into the cache (those there already are not fetched
/// again). Offline, or when the hub cannot be reached, the cache alone answers.
pub fn resolve_dataset(
    dataset: &DatasetRef,
    take: DataFiles,
    settings: &HubSettings,
    progress: &mut dyn DownloadProgress,
) -> Result<ResolvedDataset> {
    let model = &dataset.repo;
    if settings.offline {
        return cached_dataset(dataset, take, settings);
    }
    let hub = Hub::new(model, settings)?;
    let info = match info_or_cached(
        &hub,
        settings,
        || cached_dataset(dataset, take, settings),
        |d| &mut d.snapshot,
    )? {
        Ok(info) => info,
        Err(found) => return Ok(found),
    };
    let listed: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let wanted = choose(dataset, &listed, take)?;
    record_ref(&hub, settings, &info.sha)?;
    let mut fetch = Fetch {
        hub: &hub,
        commit: info.sha.clone(),
        progress,
        downloaded: 0,
    };
    let files = wanted
        .iter()
        .map(|f| fetch.file(f))
        .collect::<Result<Vec<_>>>()?;
    Ok(ResolvedDataset {
        snapshot: Resolved {
            path: hub.cache_repo().pointer_path(&info.sha),
            commit: info.sha,
            downloaded: fetch.downloaded,
            warning: None,
        },
        files,
    })
}

/// `dataset` from the cache alone ([`HubError::NotCached`] when it was never fetched).
pub fn cached_dataset(
    dataset: &DatasetRef,
    take: DataFiles,
    settings: &HubSettings,
) -> Result<ResolvedDataset> {
    let (snapshot, commit) = cached_snapshot(&dataset.repo, settings)?;
    let mut listed = Vec::new();
    list_files(&snapshot, "", &mut listed);
    // Without the hub's file list, what the cache holds is what there is: a dataset fetched
    // one folder at a time reads as that folder.
    let files = match choose(dataset, &listed, take) {
        Ok(files) => files,
        Err(crate::Error::Hub(
            e @ (HubError::SeveralFolders { .. } | HubError::SeveralFiles { .. }),
        )) => return Err(e.into()),
        Err(_) => {
            return Err(HubError::OfflineMissing {
                repo: dataset.repo.name(),
                file: dataset.path.clone().unwrap_or_else(|| "data files".into()),
                cache: settings.cache.clone(),
            }
            .into())
        }
    };
    Ok(ResolvedDataset {
        files: files.iter().map(|f| snapshot.join(f)).collect(),
        snapshot: Resolved {
            path: snapshot,
            commit,
            downloaded: 0,
            warning: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(arg: &str) -> Option<(String, Option<String>, Option<String>)> {
        DatasetRef::parse(arg).map(|d| (d.repo.repo, d.path, d.repo.revision))
    }

    #[test]
    fn names_parse_with_a_path_and_a_revision() {
        assert_eq!(parse("o/d"), Some(("o/d".into(), None, None)));
        assert_eq!(
            parse("open-r1/Mixture-of-Thoughts/math@v1"),
            Some((
                "open-r1/Mixture-of-Thoughts".into(),
                Some("math".into()),
                Some("v1".into())
            ))
        );
        assert_eq!(
            parse("o/d/data/train-00000-of-00002.parquet"),
            Some((
                "o/d".into(),
                Some("data/train-00000-of-00002.parquet".into()),
                None
            ))
        );
        for local in [
            "/abs/o/d",
            "./o/d",
            "d",
            "o/d/../x",
            "o/d:Q4_K",
            "data/test.jsonl",
        ] {
            assert_eq!(parse(local), None, "{local}");
        }
    }

    #[test]
    fn data_files_are_chosen_by_folder_or_prefix() {
        let files: Vec<String> = [
            "README.md",
            ".gitattributes",
            "dataset_info.json",
            "all/train-00000-of-00001.parquet",
            "math/train-00000-of-00002.parquet",
            "math/train-00001-of-00002.parquet",
            "math/test-00000-of-00001.parquet",
            "math/state.json",
        ]
        .map(String::from)
        .to_vec();
        let pick =
            |arg: &str| match choose(&DatasetRef::parse(arg).unwrap(), &files, DataFiles::All) {
                Ok(f) => f.join(" "),
                Err(e) => e.to_string(),
            };
        assert_eq!(
            pick("o/d"),
            "dataset `o/d` has data files in several folders (all, math); name one as `o/d/FOLDER`"
        );
        assert_eq!(
            pick("o/d/math/train"),
            "math/train-00000-of-00002.parquet math/train-00001-of-00002.parquet"
        );
        assert_eq!(pick("o/d/all"), "all/train-00000-of-00001.parquet");
        let one = |arg: &str| {
            choose(&DatasetRef::parse(arg).unwrap(), &files, DataFiles::One)
                .map_or_else(|e| e.to_string(), |f| f.join(" "))
        };
        assert_eq!(one("o/d/math/test"), "math/test-00000-of-00001.parquet");
        let folder = |arg: &str| {
            choose(&DatasetRef::parse(arg).unwrap(), &files, DataFiles::Folder)
                .map_or_else(|e| e.to_string(), |f| f.join(" "))
        };
        assert_eq!(folder("o/d/all"), "all/train-00000-of-00001.parquet");
        assert_eq!(
            folder("o/d/math/train"),
            "dataset `o/d/math/train` names part of its folder (`math/test-00000-of-00001.parquet` \
             is in it too): `distill train` reads one folder of parquet files (name the folder, or \
             bring the files in with `distill corpus import`)"
        );
        assert_eq!(
            one("o/d/math/train"),
            "dataset `o/d/math/train` has 2 data files (math/train-00000-of-00002.parquet, \
             math/train-00001-of-00002.parquet): a problem set is one of them, named as \
             `o/d/FILE` (or a prefix only it has, such as its split)"
        );
        assert_eq!(
            pick("o/d/code"),
            "dataset `o/d` has no data files (.parquet, .jsonl, .json) whose path starts with `code`"
        );
    }
}
