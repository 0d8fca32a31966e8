//! Models by name: `owner/name` is a Hugging Face hub repo, fetched into the standard Hugging
//! Face cache (`$HF_HOME/hub/models--owner--name/snapshots/<commit>/…`) and opened from there,
//! so files that Python's `huggingface_hub` downloaded are reused and the other way round.
//!
//! The one place every model argument is resolved: an existing local path always wins;
//! otherwise `owner/name`, `owner/name@revision`, and for GGUF repos `owner/name/FILE.gguf` or
//! `owner/name:QUANT` name a hub model. Only what a checkpoint needs is downloaded (config,
//! generation config, tokenizer files, chat template, the safetensors file or the shards its
//! index lists, or one `.gguf` file), with resume of partial downloads (`hf-hub` keeps them as
//! `blobs/<etag>.part`). The environment is read as `huggingface_hub` reads it: `HF_HOME`,
//! `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` (else the token file in `HF_HOME`) and
//! `HF_HUB_OFFLINE`.
//!
//! This module never prints: downloads report through [`DownloadProgress`], and a warning (the
//! hub could not be reached, the cache was used) comes back in [`Resolved`].

mod dataset;
mod name;
mod remote;
mod settings;

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};

pub use dataset::{cached_dataset, resolve_dataset, DataFiles, DatasetRef, ResolvedDataset};
pub use name::{GgufPick, HubRef, ModelRef, RepoKind, RepoName};
use remote::{Failure, Fetch, Hub};
pub use settings::{HubSettings, Token, DEFAULT_ENDPOINT};

use crate::hf::{CONFIG, GENERATION_CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::{Error, Result};

/// Files read besides the config and weights, fetched when the repo has them.
const OPTIONAL_FILES: [&str; 5] = [
    GENERATION_CONFIG,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Why a hub model could not be had; each message is one line naming the model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{repo} was not found on {endpoint}, nor as a local path (check the name, or log \
         in with HF_TOKEN if it is private)"
    )]
    NotFound { repo: RepoName, endpoint: String },
    #[error("{repo} has no revision `{revision}` on {endpoint}")]
    RevisionNotFound {
        repo: RepoName,
        revision: String,
        endpoint: String,
    },
    #[error("{repo} on {endpoint} is gated or private (HTTP {status}): {advice}")]
    Gated {
        repo: RepoName,
        endpoint: String,
        status: u16,
        advice: String,
    },
    #[error(
        "cannot reach {endpoint} for {repo} ({cause}), and it is not in the Hugging Face \
         cache `{cache}`; check the network or HF_ENDPOINT"
    )]
    Unreachable {
        repo: RepoName,
        endpoint: String,
        cause: String,
        cache: PathBuf,
    },
    #[error("{endpoint} answered HTTP {status} for `{file}` of {repo}")]
    Http {
        repo: RepoName,
        file: String,
        endpoint: String,
        status: u16,
    },
    #[error("{repo} has no file `{file}` at revision `{revision}`")]
    FileNotFound {
        repo: RepoName,
        file: String,
        revision: String,
    },
    #[error(
        "HF_HUB_OFFLINE is set and {repo} (revision `{revision}`) is not in the Hugging \
         Face cache `{cache}`, nor is it a local path"
    )]
    NotCached {
        repo: RepoName,
        revision: String,
        cache: PathBuf,
    },
    #[error(
        "HF_HUB_OFFLINE is set and `{file}` of {repo} is not in the Hugging Face cache \
         `{cache}`"
    )]
    OfflineMissing {
        repo: RepoName,
        file: String,
        cache: PathBuf,
    },
    #[error("model `{repo}` has no `{CONFIG}` (a Hugging Face checkpoint) and no `.gguf` file")]
    NotAModel { repo: String },
    #[error(
        "model `{repo}` has no `{WEIGHTS}` or `{WEIGHTS_INDEX}` (only safetensors weights are \
         supported)"
    )]
    NoWeights { repo: String },
    #[error("model `{repo}` has no `.gguf` file")]
    NoGguf { repo: String },
    #[error(
        "model `{repo}` has {what}; pick one with `{repo}/FILE.gguf` or `{repo}:QUANT` ({choices})"
    )]
    PickGguf {
        repo: String,
        what: String,
        choices: String,
    },
    #[error(
        "downloading `{file}` of {repo} from {endpoint} failed ({cause}); run again to \
         resume"
    )]
    Download {
        repo: RepoName,
        file: String,
        endpoint: String,
        cause: String,
    },
    #[error(
        "{repo} changed on the hub during the download (revision `{revision}` moved); \
         run again"
    )]
    Moved { repo: RepoName, revision: String },
    #[error("cannot parse the hub's answer for {repo}: {cause}")]
    BadAnswer { repo: RepoName, cause: String },
    #[error("dataset `{repo}` has no data files (.parquet, .jsonl, .json){under}")]
    NoDataFiles { repo: String, under: String },
    #[error(
        "dataset `{repo}` has data files in several folders ({folders}); name one as \
         `{repo}/FOLDER`"
    )]
    SeveralFolders { repo: String, folders: String },
    #[error(
        "dataset `{dataset}` has {count} data files ({files}): a problem set is one of them, \
         named as `{repo}/FILE` (or a prefix only it has, such as its split)"
    )]
    SeveralFiles {
        dataset: String,
        repo: String,
        count: usize,
        files: String,
    },
    #[error(
        "dataset `{dataset}` {why}: `distill train` reads one folder of parquet files (name the \
         folder, or bring the files in with `distill corpus import`)"
    )]
    NotAFolder { dataset: String, why: String },
    #[error("cannot find the Hugging Face cache: set HF_HOME (or HOME)")]
    NoCache,
}

/// Download progress, one file at a time (files already in the cache are not reported).
pub trait DownloadProgress {
    /// `file` of `repo` starts downloading; `bytes` is its size.
    fn start(&mut self, repo: &str, file: &str, bytes: u64);
    /// Bytes of the current file on disk so far (a resumed file starts past zero).
    fn position(&mut self, bytes: u64);
    /// The current file is complete.
    fn finish(&mut self);
}

/// Reports nothing.
impl DownloadProgress for () {
    fn start(&mut self, _: &str, _: &str, _: u64) {}
    fn position(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// A hub model in the local cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The snapshot folder (`…/snapshots/<commit>`), or the `.gguf` file in it.
    pub path: PathBuf,
    /// The commit the snapshot is of.
    pub commit: String,
    /// Files downloaded now (0: everything was in the cache).
    pub downloaded: usize,
    /// Something the user should know (the hub was unreachable and the cache was used).
    pub warning: Option<String>,
}

/// A checkpoint's layout, from the repo's file list.
enum Layout {
    Folder,
    Gguf(String),
}

/// Fetches what `model` needs into the cache (nothing when it is there already) and returns its
/// local path. Offline, or when the hub cannot be reached, the cache alone answers.
pub fn resolve(
    model: &HubRef,
    settings: &HubSettings,
    progress: &mut dyn DownloadProgress,
) -> Result<Resolved> {
    resolve_files(model, settings, progress, Files::All)
}

/// Which files of a checkpoint folder to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// Everything a checkpoint needs, weights included.
    All,
    /// Config, generation config, tokenizer and chat template only: what describing a model or
    /// tokenising for it needs (a job that another program trains, which fetches the weights
    /// itself). For a GGUF repo nothing is fetched and the path names the `.gguf` file.
    Metadata,
}

/// [`resolve`] without the weights: see [`Files::Metadata`].
pub fn resolve_metadata(
    model: &HubRef,
    settings: &HubSettings,
    progress: &mut dyn DownloadProgress,
) -> Result<Resolved> {
    resolve_files(model, settings, progress, Files::Metadata)
}

fn resolve_files(
    model: &HubRef,
    settings: &HubSettings,
    progress: &mut dyn DownloadProgress,
    wanted: Files,
) -> Result<Resolved> {
    let revision = model.revision();
    if settings.offline {
        return cached_files(model, settings, wanted);
    }
    // A commit never changes: when it is all here, the hub need not be asked.
    if is_commit(revision) {
        if let Ok(found) = cached_files(model, settings, wanted) {
            return Ok(found);
        }
    }
    let hub = Hub::new(model, settings)?;
    let info = match info_or_cached(
        &hub,
        settings,
        || cached_files(model, settings, wanted),
        |f| f,
    )? {
        Ok(info) => info,
        Err(found) => return Ok(found),
    };
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let layout = choose(model, &files)?;
    let mut fetch = Fetch {
        hub: &hub,
        commit: info.sha.clone(),
        progress,
        downloaded: 0,
    };
    record_ref(&hub, settings, &info.sha)?;
    let snapshot = hub.cache_repo().pointer_path(&info.sha);
    let path = match layout {
        Layout::Gguf(file) if wanted == Files::Metadata => snapshot.join(file),
        Layout::Gguf(file) => fetch.file(&file)?,
        Layout::Folder => {
            let has = |f: &str| files.iter().any(|x| x == f);
            fetch.file(CONFIG)?;
            for file in OPTIONAL_FILES.into_iter().filter(|f| has(f)) {
                fetch.file(file)?;
            }
            if wanted == Files::Metadata {
                // The config and tokenizer are all that is wanted.
            } else if has(WEIGHTS) {
                fetch.file(WEIGHTS)?;
            } else if has(WEIGHTS_INDEX) {
                let index = fetch.file(WEIGHTS_INDEX)?;
                for shard in shards(&index, model)? {
                    fetch.file(&shard)?;
                }
            } else {
                return Err(HubError::NoWeights {
                    repo: model.repo.clone(),
                }
                .into());
            }
            snapshot
        }
    };
    Ok(Resolved {
        path,
        commit: info.sha,
        downloaded: fetch.downloaded,
        warning: None,
    })
}

/// The revision's commit and file list from the hub; when the hub cannot be reached (no answer,
/// or a server error), what the cache alone gives (`cached`), with a warning saying so.
fn info_or_cached<T>(
    hub: &Hub,
    settings: &HubSettings,
    cached: impl FnOnce() -> Result<T>,
    resolved: impl FnOnce(&mut T) -> &mut Resolved,
) -> Result<std::result::Result<hf_hub::api::RepoInfo, T>> {
    let model = hub.model();
    match hub.info() {
        Ok(info) => Ok(Ok(info)),
        Err(failure @ (Failure::Transport(_) | Failure::Status { status: 500.., .. })) => {
            let cause = match failure {
                Failure::Status { status, .. } => format!("HTTP {status}"),
                Failure::Transport(cause) | Failure::Other(cause) => cause,
            };
            match cached() {
                Ok(mut found) => {
                    let r = resolved(&mut found);
                    r.warning = Some(format!(
                        "cannot reach {} ({cause}); using {} from the cache (commit {})",
                        settings.endpoint,
                        model.name(),
                        short(&r.commit)
                    ));
                    Ok(Err(found))
                }
                Err(_) => Err(HubError::Unreachable {
                    repo: model.name(),
                    endpoint: settings.endpoint.clone(),
                    cause,
                    cache: settings.cache.clone(),
                }
                .into()),
            }
        }
        Err(failure) => Err(hub.error(failure, None)),
    }
}

/// Writes `refs/<revision>` when the revision is a branch or tag, as `huggingface_hub` does: the
/// ref says which snapshot the revision is, for offline use.
fn record_ref(hub: &Hub, settings: &HubSettings, commit: &str) -> Result<()> {
    let model = hub.model();
    if model.revision() != commit {
        hub.cache_repo()
            .create_ref(commit)
            .map_err(|e| Error::io(ref_path(model, settings), e))?;
    }
    Ok(())
}

/// `model` from the cache alone: [`HubError::NotCached`] or [`HubError::OfflineMissing`] when
/// something is missing (a dry run reads these as "not downloaded yet").
pub fn cached(model: &HubRef, settings: &HubSettings) -> Result<Resolved> {
    cached_files(model, settings, Files::All)
}

/// [`cached`] for `wanted` files only (see [`Files`]).
pub fn cached_files(model: &HubRef, settings: &HubSettings, wanted: Files) -> Result<Resolved> {
    let (snapshot, commit) = cached_snapshot(model, settings)?;
    let missing = |file: &str| HubError::OfflineMissing {
        repo: model.name(),
        file: file.to_string(),
        cache: settings.cache.clone(),
    };
    let mut files = Vec::new();
    list_files(&snapshot, "", &mut files);
    let path = match &model.gguf {
        Some(GgufPick::File(file)) if !snapshot.join(file).is_file() => {
            return Err(missing(file).into())
        }
        None if !files.iter().any(|f| f == CONFIG) && !files.iter().any(|f| is_gguf(f)) => {
            return Err(missing(CONFIG).into())
        }
        Some(GgufPick::Quant(quant))
            if !files.iter().any(|f| {
                is_gguf(f) && f.to_ascii_lowercase().contains(&quant.to_ascii_lowercase())
            }) =>
        {
            return Err(missing(&format!("*{quant}*.gguf")).into())
        }
        _ => match choose(model, &files)? {
            Layout::Gguf(file) => snapshot.join(file),
            Layout::Folder => {
                let has = |f: &str| snapshot.join(f).is_file();
                if wanted == Files::Metadata {
                    if !has(CONFIG) {
                        return Err(missing(CONFIG).into());
                    }
                } else if !has(WEIGHTS) {
                    if !has(WEIGHTS_INDEX) {
                        return Err(missing(WEIGHTS).into());
                    }
                    let index = snapshot.join(WEIGHTS_INDEX);
                    if let Some(shard) = shards(&index, model)?.into_iter().find(|s| !has(s)) {
                        return Err(missing(&shard).into());
                    }
                }
                snapshot
            }
        },
    };
    Ok(Resolved {
        path,
        commit,
        downloaded: 0,
        warning: None,
    })
}

/// The cached snapshot folder of `model`'s revision and its commit ([`HubError::NotCached`]
/// when the revision was never fetched).
fn cached_snapshot(model: &HubRef, settings: &HubSettings) -> Result<(PathBuf, String)> {
    let cache = Cache::new(settings.cache.clone()).repo(repo(model));
    let revision = model.revision();
    let not_cached = || HubError::NotCached {
        repo: model.name(),
        revision: revision.to_string(),
        cache: settings.cache.clone(),
    };
    let commit = if is_commit(revision) {
        revision.to_string()
    } else {
        std::fs::read_to_string(ref_path(model, settings))
            .map_err(|_| not_cached())?
            .trim()
            .to_string()
    };
    let snapshot = cache.pointer_path(&commit);
    if !snapshot.is_dir() {
        return Err(not_cached().into());
    }
    Ok((snapshot, commit))
}

fn repo(model: &HubRef) -> Repo {
    let kind = match model.kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    Repo::with_revision(model.repo.clone(), kind, model.revision().to_string())
}

/// `refs/<revision>`: the commit a branch or tag was when last fetched.
fn ref_path(model: &HubRef, settings: &HubSettings) -> PathBuf {
    settings
        .cache
        .join(repo(model).folder_name())
        .join("refs")
        .join(model.revision())
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// Files under `dir` (symlinks included) as `/`-separated paths relative to the snapshot.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            list_files(&path, &rel, out);
        } else {
            out.push(rel);
        }
    }
}

/// Folder or which `.gguf` file, from the repo's file list.
fn choose(model: &HubRef, files: &[String]) -> Result<Layout> {
    let ggufs: Vec<&String> = files.iter().filter(|f| is_gguf(f)).collect();
    let pick_error = |what: String, among: &[&String]| {
        let mut names: Vec<&str> = among.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        let shown = names.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        let more = names.len().saturating_sub(8);
        HubError::PickGguf {
            repo: model.repo.clone(),
            what,
            choices: if more > 0 {
                format!("{shown} and {more} more")
            } else {
                shown
            },
        }
    };
    match &model.gguf {
        Some(GgufPick::File(file)) => {
            if files.iter().any(|f| f == file) {
                Ok(Layout::Gguf(file.clone()))
            } else {
                Err(HubError::FileNotFound {
                    repo: model.name(),
                    file: file.clone(),
                    revision: model.revision().to_string(),
                }
                .into())
            }
        }
        Some(GgufPick::Quant(_)) if ggufs.is_empty() => Err(HubError::NoGguf {
            repo: model.repo.clone(),
        }
        .into()),
        Some(GgufPick::Quant(quant)) => {
            let tag = quant.to_ascii_lowercase();
            let name = |f: &str| f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase();
            let matching: Vec<&String> = ggufs
                .iter()
                .copied()
                .filter(|f| name(f).contains(&tag))
                .collect();
            // `Q4_K` also appears in `…-Q4_K_M.gguf`: a file ending in the tag wins.
            let exact: Vec<&String> = matching
                .iter()
                .copied()
                .filter(|f| {
                    let n = name(f);
                    let stem = n.strip_suffix(".gguf").unwrap_or(&n);
                    stem.strip_suffix(tag.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with(['-', '.', '_']))
                })
                .collect();
            match (matching.as_slice(), exact.as_slice()) {
                ([one], _) | (_, [one]) => Ok(Layout::Gguf((*one).clone())),
                ([], _) => {
                    Err(pick_error(format!("no `.gguf` file matching `{quant}`"), &ggufs).into())
                }
                (several, _) => Err(pick_error(
                    format!("several `.gguf` files matching `{quant}`"),
                    several,
                )
                .into()),
            }
        }
        None if files.iter().any(|f| f == CONFIG) => Ok(Layout::Folder),
        None => match ggufs.as_slice() {
            [] => Err(HubError::NotAModel {
                repo: model.repo.clone(),
            }
            .into()),
            [one] => Ok(Layout::Gguf((*one).clone())),
            several => Err(pick_error(format!("{} `.gguf` files", several.len()), several).into()),
        },
    }
}

/// The shard files `model.safetensors.index.json` lists, sorted and deduplicated.
fn shards(index: &Path, model: &HubRef) -> Result<Vec<String>> {
    let files = crate::hf::shard_names(index)?;
    if let Some(bad) = files
        .iter()
        .find(|f| f.split('/').any(|p| p.is_empty() || p == ".."))
    {
        return Err(HubError::BadAnswer {
            repo: model.name(),
            cause: format!("`{WEIGHTS_INDEX}` lists the shard `{bad}`"),
        }
        .into());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_files_are_picked_by_name_or_quant() {
        let files: Vec<String> = [
            "README.md",
            "m-Q4_K.gguf",
            "m-Q4_K_M.gguf",
            "m-Q8_0.gguf",
            "sub/m-F16.gguf",
        ]
        .map(String::from)
        .to_vec();
        let pick = |arg: &str| match choose(&HubRef::parse(arg).unwrap(), &files) {
            Ok(Layout::Gguf(f)) => f,
            Ok(Layout::Folder) => "folder".into(),
            Err(e) => e.to_string(),
        };
        assert_eq!(pick("o/m:q8_0"), "m-Q8_0.gguf");
        assert_eq!(pick("o/m:Q4_K"), "m-Q4_K.gguf");
        assert_eq!(pick("o/m:Q4_K_M"), "m-Q4_K_M.gguf");
        assert_eq!(pick("o/m:F16"), "sub/m-F16.gguf");
        assert_eq!(pick("o/m/sub/m-F16.gguf"), "sub/m-F16.gguf");
        assert_eq!(
            pick("o/m"),
            "model `o/m` has 4 `.gguf` files; pick one with `o/m/FILE.gguf` or `o/m:QUANT` \
             (m-Q4_K.gguf, m-Q4_K_M.gguf, m-Q8_0.gguf, sub/m-F16.gguf)"
        );
        assert_eq!(
            pick("o/m:Q5"),
            "model `o/m` has no `.gguf` file matching `Q5`; pick one with `o/m/FILE.gguf` or \
             `o/m:QUANT` (m-Q4_K.gguf, m-Q4_K_M.gguf, m-Q8_0.gguf, sub/m-F16.gguf)"
        );
        assert_eq!(
            pick("o/m/x.gguf"),
            "model `o/m` has no file `x.gguf` at revision `main`"
        );
        let folder = [CONFIG.to_string(), "m-Q8_0.gguf".into()];
        assert!(matches!(
            choose(&HubRef::parse("o/m").unwrap(), &folder),
            Ok(Layout::Folder)
        ));
    }
}
