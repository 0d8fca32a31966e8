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

use std::fmt;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::RepoInfo;
use hf_hub::{Cache, Repo, RepoType};

use crate::hf::{CONFIG, GENERATION_CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::{Error, Result};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files read besides the config and weights, fetched when the repo has them.
const OPTIONAL_FILES: [&str; 5] = [
    GENERATION_CONFIG,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Local(PathBuf),
    Hub(HubRef),
}

/// A model on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `owner/name`.
    pub repo: String,
    /// A branch, tag or commit; `main` when absent.
    pub revision: Option<String>,
    /// Which `.gguf` file of a GGUF repo.
    pub gguf: Option<GgufPick>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufPick {
    /// A path inside the repo (`owner/name/sub/file.gguf`).
    File(String),
    /// A quantization named in the file name (`owner/name:Q4_K_M`).
    Quant(String),
}

impl ModelRef {
    /// An existing path is local; so is anything that is not shaped like a hub id (absolute or
    /// `./` paths, more than two segments not ending in `.gguf`, `dir/file.gguf`).
    pub fn parse(arg: &str) -> Self {
        if Path::new(arg).exists() {
            return Self::Local(arg.into());
        }
        HubRef::parse(arg).map_or_else(|| Self::Local(arg.into()), Self::Hub)
    }
}

impl HubRef {
    /// `owner/name[:QUANT | /FILE.gguf][@REVISION]`, or `None` when `arg` is not shaped like one.
    pub fn parse(arg: &str) -> Option<Self> {
        if arg.starts_with(['/', '.', '~'])
            || arg.contains('\\')
            || arg.contains(char::is_whitespace)
        {
            return None;
        }
        let (head, revision) = match arg.split_once('@') {
            Some((head, rev)) if !rev.is_empty() => (head, Some(rev.to_string())),
            Some(_) => return None,
            None => (arg, None),
        };
        let parts: Vec<&str> = head.split('/').collect();
        let (owner, name, gguf) = match parts.as_slice() {
            [owner, name] => match name.split_once(':') {
                Some((name, quant)) if valid_part(quant) => {
                    (*owner, name, Some(GgufPick::Quant(quant.to_string())))
                }
                Some(_) => return None,
                // `dir/model.gguf` is a local file that does not exist (repos are not named
                // `*.gguf`).
                None if is_gguf(name) => return None,
                None => (*owner, *name, None),
            },
            [owner, name, rest @ ..] => {
                let file = rest.join("/");
                if !is_gguf(&file) || rest.iter().any(|p| !valid_part(p)) {
                    return None;
                }
                (*owner, *name, Some(GgufPick::File(file)))
            }
            _ => return None,
        };
        if !valid_part(owner) || !valid_part(name) || owner.len() + name.len() > 96 {
            return None;
        }
        Some(Self {
            repo: format!("{owner}/{name}"),
            revision,
            gguf,
        })
    }

    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        match &self.gguf {
            Some(GgufPick::File(file)) => write!(f, "/{file}")?,
            Some(GgufPick::Quant(quant)) => write!(f, ":{quant}")?,
            None => {}
        }
        match &self.revision {
            Some(rev) => write!(f, "@{rev}"),
            None => Ok(()),
        }
    }
}

/// Letters, digits, `.`, `_`, `-`; not starting or ending with `.` or `-`, no `..`.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !part.starts_with(['.', '-'])
        && !part.ends_with(['.', '-'])
        && !part.contains("..")
}

fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Where and how to reach the hub, from the environment as `huggingface_hub` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Without a trailing `/`.
    pub endpoint: String,
    /// The hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`.
    pub cache: PathBuf,
    pub token: Option<Token>,
    /// `HF_HUB_OFFLINE`: the cache only, no network.
    pub offline: bool,
}

/// An access token and where it came from (named in errors; the token itself never is).
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    pub source: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(from {})", self.source)
    }
}

impl HubSettings {
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
    }

    /// [`from_env`](Self::from_env) with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let home = match var("HF_HOME") {
            Some(home) => PathBuf::from(home),
            None => {
                let base = match (var("XDG_CACHE_HOME"), var("HOME")) {
                    (Some(xdg), _) => PathBuf::from(xdg),
                    (None, Some(home)) => PathBuf::from(home).join(".cache"),
                    (None, None) => {
                        return Err(HubError::NoCache.into());
                    }
                };
                base.join("huggingface")
            }
        };
        let cache = var("HF_HUB_CACHE").map_or_else(|| home.join("hub"), PathBuf::from);
        let token = match var("HF_TOKEN") {
            Some(value) => Some(Token {
                value: value.trim().to_string(),
                source: "HF_TOKEN".into(),
            }),
            None => {
                let file = home.join("token");
                std::fs::read_to_string(&file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .map(|value| Token {
                        value,
                        source: format!("`{}`", file.display()),
                    })
            }
        };
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        let endpoint = var("HF_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            endpoint,
            cache,
            token,
            offline,
        })
    }
}

/// Why a hub model could not be had; each message is one line naming the model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "model `{repo}` was not found on {endpoint}, nor as a local path (check the name, or log \
         in with HF_TOKEN if it is private)"
    )]
    NotFound { repo: String, endpoint: String },
    #[error("model `{repo}` has no revision `{revision}` on {endpoint}")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },
    #[error("model `{repo}` on {endpoint} is gated or private (HTTP {status}): {advice}")]
    Gated {
        repo: String,
        endpoint: String,
        status: u16,
        advice: String,
    },
    #[error(
        "cannot reach {endpoint} for model `{repo}` ({cause}), and it is not in the Hugging Face \
         cache `{cache}`; check the network or HF_ENDPOINT"
    )]
    Unreachable {
        repo: String,
        endpoint: String,
        cause: String,
        cache: PathBuf,
    },
    #[error("{endpoint} answered HTTP {status} for `{file}` of model `{repo}`")]
    Http {
        repo: String,
        file: String,
        endpoint: String,
        status: u16,
    },
    #[error("model `{repo}` has no file `{file}` at revision `{revision}`")]
    FileNotFound {
        repo: String,
        file: String,
        revision: String,
    },
    #[error(
        "HF_HUB_OFFLINE is set and model `{repo}` (revision `{revision}`) is not in the Hugging \
         Face cache `{cache}`, nor is it a local path"
    )]
    NotCached {
        repo: String,
        revision: String,
        cache: PathBuf,
    },
    #[error(
        "HF_HUB_OFFLINE is set and `{file}` of model `{repo}` is not in the Hugging Face cache \
         `{cache}`"
    )]
    OfflineMissing {
        repo: String,
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
        "downloading `{file}` of model `{repo}` from {endpoint} failed ({cause}); run again to \
         resume"
    )]
    Download {
        repo: String,
        file: String,
        endpoint: String,
        cause: String,
    },
    #[error(
        "model `{repo}` changed on the hub during the download (revision `{revision}` moved); \
         run again"
    )]
    Moved { repo: String, revision: String },
    #[error("cannot parse the hub's answer for model `{repo}`: {cause}")]
    BadAnswer { repo: String, cause: String },
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
    let revision = model.revision();
    if settings.offline {
        return cached(model, settings);
    }
    // A commit never changes: when it is all here, the hub need not be asked.
    if is_commit(revision) {
        if let Ok(found) = cached(model, settings) {
            return Ok(found);
        }
    }
    let hub = Hub::new(model, settings)?;
    let info = match hub.info() {
        Ok(info) => info,
        Err(Failure::Transport(cause)) => {
            return match cached(model, settings) {
                Ok(mut found) => {
                    found.warning = Some(format!(
                        "cannot reach {} ({cause}); using model `{model}` from the cache \
                         (commit {})",
                        settings.endpoint,
                        short(&found.commit)
                    ));
                    Ok(found)
                }
                Err(_) => Err(HubError::Unreachable {
                    repo: model.repo.clone(),
                    endpoint: settings.endpoint.clone(),
                    cause,
                    cache: settings.cache.clone(),
                }
                .into()),
            };
        }
        Err(failure) => return Err(hub.error(failure, None)),
    };
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let layout = choose(model, &files)?;
    let mut fetch = Fetch {
        hub: &hub,
        commit: info.sha.clone(),
        progress,
        downloaded: 0,
    };
    if revision != info.sha {
        // As `huggingface_hub` does: the ref says which snapshot the revision is (offline use).
        hub.cache_repo()
            .create_ref(&info.sha)
            .map_err(|e| Error::io(ref_path(model, settings), e))?;
    }
    let snapshot = hub.cache_repo().pointer_path(&info.sha);
    let path = match layout {
        Layout::Gguf(file) => fetch.file(&file)?,
        Layout::Folder => {
            let has = |f: &str| files.iter().any(|x| x == f);
            fetch.file(CONFIG)?;
            for file in OPTIONAL_FILES.into_iter().filter(|f| has(f)) {
                fetch.file(file)?;
            }
            if has(WEIGHTS) {
                fetch.file(WEIGHTS)?;
            } else if has(WEIGHTS_INDEX) {
                let index = fetch.file(WEIGHTS_INDEX)?;
                for shard in shards(&index, &model.repo)? {
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

/// `model` from the cache alone: [`HubError::NotCached`] or [`HubError::OfflineMissing`] when
/// something is missing (a dry run reads these as "not downloaded yet").
pub fn cached(model: &HubRef, settings: &HubSettings) -> Result<Resolved> {
    let cache = Cache::new(settings.cache.clone()).repo(repo(model));
    let revision = model.revision();
    let not_cached = || HubError::NotCached {
        repo: model.repo.clone(),
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
    let missing = |file: &str| HubError::OfflineMissing {
        repo: model.repo.clone(),
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
                if !has(WEIGHTS) {
                    if !has(WEIGHTS_INDEX) {
                        return Err(missing(WEIGHTS).into());
                    }
                    let index = snapshot.join(WEIGHTS_INDEX);
                    if let Some(shard) = shards(&index, &model.repo)?.into_iter().find(|s| !has(s))
                    {
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

fn repo(model: &HubRef) -> Repo {
    Repo::with_revision(
        model.repo.clone(),
        RepoType::Model,
        model.revision().to_string(),
    )
}

/// `refs/<revision>`: the commit a branch or tag was when last fetched.
fn ref_path(model: &HubRef, settings: &HubSettings) -> PathBuf {
    settings
        .cache
        .join(repo(model).folder_name())
        .join("refs")
        .join(model.revision())
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
                    repo: model.repo.clone(),
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
fn shards(index: &Path, repo: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::parse(index, e))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::parse(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files
        .iter()
        .find(|f| f.split('/').any(|p| p.is_empty() || p == ".."))
    {
        return Err(HubError::BadAnswer {
            repo: repo.to_string(),
            cause: format!("`{WEIGHTS_INDEX}` lists the shard `{bad}`"),
        }
        .into());
    }
    Ok(files)
}

/// How a request failed.
enum Failure {
    /// No HTTP answer: connection, DNS, TLS, a broken transfer.
    Transport(String),
    Status {
        status: u16,
        code: Option<String>,
    },
    Other(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::StatusCode(status) => Failure::Status { status, code: None },
                other => Failure::Transport(other.to_string()),
            },
            ApiError::TooManyRetries(inner) => Failure::from(*inner),
            ApiError::IoError(e) => Failure::Transport(e.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// The hub API for one model.
struct Hub<'a> {
    model: &'a HubRef,
    settings: &'a HubSettings,
    api: Api,
}

impl<'a> Hub<'a> {
    fn new(model: &'a HubRef, settings: &'a HubSettings) -> Result<Self> {
        let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.as_ref().map(|t| t.value.clone()))
            .with_progress(false)
            // A transfer that breaks is resumed from where it stopped, within this run.
            .with_retries(3)
            .with_user_agent("distill", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Download {
                repo: model.repo.clone(),
                file: CONFIG.into(),
                endpoint: settings.endpoint.clone(),
                cause: e.to_string(),
            })?;
        Ok(Self {
            model,
            settings,
            api,
        })
    }

    fn api_repo(&self) -> ApiRepo {
        self.api.repo(repo(self.model))
    }

    fn cache_repo(&self) -> hf_hub::CacheRepo {
        Cache::new(self.settings.cache.clone()).repo(repo(self.model))
    }

    /// The revision's commit and file list (`/api/models/{repo}/revision/{revision}`).
    fn info(&self) -> Result<RepoInfo, Failure> {
        let response = self
            .api_repo()
            .info_request()
            .config()
            .http_status_as_error(false)
            .build()
            .call();
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Err(Failure::Transport(e.to_string())),
        };
        let status = response.status().as_u16();
        if status != 200 {
            let code = response
                .headers()
                .get("x-error-code")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return Err(Failure::Status { status, code });
        }
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure::Transport(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| Failure::Other(e.to_string()))
    }

    /// The error for a failed request about `file` (`None`: the repo itself).
    fn error(&self, failure: Failure, file: Option<&str>) -> Error {
        let repo = self.model.repo.clone();
        let endpoint = self.settings.endpoint.clone();
        let err = match failure {
            Failure::Status { status, code } => match (status, code.as_deref(), file) {
                (_, Some("RevisionNotFound"), _) => HubError::RevisionNotFound {
                    repo,
                    revision: self.model.revision().into(),
                    endpoint,
                },
                (401 | 403, Some("RepoNotFound"), _) | (404, _, None) => {
                    HubError::NotFound { repo, endpoint }
                }
                (404, _, Some(file)) => HubError::FileNotFound {
                    repo,
                    file: file.into(),
                    revision: self.model.revision().into(),
                },
                (401 | 403, _, _) => HubError::Gated {
                    repo,
                    endpoint,
                    status,
                    advice: match &self.settings.token {
                        None => "accept its terms on its page, then set HF_TOKEN to an access \
                                 token (or log in, which writes the token file in HF_HOME)"
                            .into(),
                        Some(token) => format!(
                            "the token from {} was refused; accept the model's terms on its \
                             page, or use a token with access",
                            token.source
                        ),
                    },
                },
                (status, _, file) => HubError::Http {
                    repo,
                    file: file.unwrap_or("the repo info").into(),
                    endpoint,
                    status,
                },
            },
            Failure::Transport(cause) | Failure::Other(cause) => match file {
                Some(file) => HubError::Download {
                    repo,
                    file: file.into(),
                    endpoint,
                    cause,
                },
                None => HubError::BadAnswer { repo, cause },
            },
        };
        err.into()
    }
}

/// Fetches files of one commit into its snapshot.
struct Fetch<'a, 'p> {
    hub: &'a Hub<'a>,
    commit: String,
    progress: &'p mut dyn DownloadProgress,
    downloaded: usize,
}

impl Fetch<'_, '_> {
    /// The file's path in the snapshot, downloaded unless it is there (or its blob is: another
    /// revision, or Python, fetched the same content).
    fn file(&mut self, file: &str) -> Result<PathBuf> {
        let cache = self.hub.cache_repo();
        let target = cache.pointer_path(&self.commit).join(file);
        if target.is_file() {
            return Ok(target);
        }
        let api_repo = self.hub.api_repo();
        let metadata = self
            .hub
            .api
            .metadata(&api_repo.url(file))
            .map_err(|e| self.hub.error(e.into(), Some(file)))?;
        if metadata.commit_hash() != self.commit {
            return Err(self.moved());
        }
        let blob = cache.blob_path(metadata.etag());
        let size = metadata.size() as u64;
        let part = blob.with_extension("part");
        if !blob.is_file() && file_len(&part) == Some(size) {
            // A download that finished but was not moved into place.
            std::fs::rename(&part, &blob).map_err(|e| Error::io(&blob, e))?;
        }
        if file_len(&blob) == Some(size) {
            link(&blob, &target, file)?;
            return Ok(target);
        }
        self.progress.start(&self.hub.model.repo, file, size);
        let result = api_repo.download_with_progress(
            file,
            Adapter {
                progress: &mut *self.progress,
                position: 0,
            },
        );
        self.progress.finish();
        let path = result.map_err(|e| self.hub.error(e.into(), Some(file)))?;
        self.downloaded += 1;
        if path != target {
            return Err(self.moved());
        }
        Ok(target)
    }

    fn moved(&self) -> Error {
        HubError::Moved {
            repo: self.hub.model.repo.clone(),
            revision: self.hub.model.revision().into(),
        }
        .into()
    }
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// `target` (in a snapshot) pointing at `blob`: a relative symlink, as `huggingface_hub` makes.
fn link(blob: &Path, target: &Path, file: &str) -> Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(unix)]
    {
        // From `snapshots/<commit>/<file>` up to the repo folder, then into `blobs/`.
        let mut relative = PathBuf::new();
        for _ in 0..file.split('/').count() + 1 {
            relative.push("..");
        }
        relative.push("blobs");
        relative.push(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(&relative, target).map_err(|e| Error::io(target, e))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        std::fs::copy(blob, target)
            .map(|_| ())
            .map_err(|e| Error::io(target, e))
    }
}

/// `hf-hub`'s progress calls as positions within the file: it announces a file again (and
/// reports the bytes already on disk) each time a broken transfer resumes.
struct Adapter<'p> {
    progress: &'p mut dyn DownloadProgress,
    position: u64,
}

impl hf_hub::api::Progress for Adapter<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.position = 0;
    }

    fn update(&mut self, size: usize) {
        self.position += size as u64;
        self.progress.position(self.position);
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(arg: &str) -> Option<HubRef> {
        match ModelRef::parse(arg) {
            ModelRef::Hub(h) => Some(h),
            ModelRef::Local(_) => None,
        }
    }

    #[test]
    fn model_arguments_parse() {
        let h = hub("Qwen/Qwen2.5-1.5B-Instruct").unwrap();
        assert_eq!(h.repo, "Qwen/Qwen2.5-1.5B-Instruct");
        assert_eq!((h.revision(), h.gguf.clone()), ("main", None));
        let h = hub("Qwen/Qwen2.5-1.5B-Instruct@v1.0").unwrap();
        assert_eq!(h.revision.as_deref(), Some("v1.0"));
        let h = hub("a/b-GGUF:Q4_K_M@refs/pr/1").unwrap();
        assert_eq!(h.gguf, Some(GgufPick::Quant("Q4_K_M".into())));
        assert_eq!(h.revision(), "refs/pr/1");
        assert_eq!(h.to_string(), "a/b-GGUF:Q4_K_M@refs/pr/1");
        let h = hub("a/b-GGUF/sub/model-q8_0.gguf").unwrap();
        assert_eq!(h.gguf, Some(GgufPick::File("sub/model-q8_0.gguf".into())));
        assert_eq!(h.to_string(), "a/b-GGUF/sub/model-q8_0.gguf");
        for local in [
            "/abs/path",
            "./rel/dir",
            "../shared/models/x.gguf",
            "models/teacher.gguf",
            "runs/demo/teacher/model",
            "single",
            "a/b@",
            "a/../b",
            "a/b c",
            "-a/b",
            "C:\\models\\x",
        ] {
            assert_eq!(hub(local), None, "{local}");
        }
        // An existing path always wins, even shaped like a hub id (`src/hub.rs` is this file,
        // relative to the crate folder tests run in).
        assert_eq!(hub("src/hub.rs"), None);
        assert!(HubRef::parse("src/hub.rs").is_some());
    }

    #[test]
    fn settings_follow_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let s = HubSettings::from_vars(vars(vec![("HF_HOME", home.clone())])).unwrap();
        assert_eq!(s.cache, dir.path().join("hub"));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.token.as_ref().unwrap().value, "hf_file");
        assert!(!s.offline);
        let s = HubSettings::from_vars(vars(vec![
            ("HF_HOME", home.clone()),
            ("HF_HUB_CACHE", "/elsewhere".into()),
            ("HF_TOKEN", "hf_env".into()),
            ("HF_ENDPOINT", "http://127.0.0.1:9/".into()),
            ("HF_HUB_OFFLINE", "yes".into()),
        ]))
        .unwrap();
        assert_eq!(s.cache, PathBuf::from("/elsewhere"));
        assert_eq!(s.endpoint, "http://127.0.0.1:9");
        assert_eq!(
            s.token,
            Some(Token {
                value: "hf_env".into(),
                source: "HF_TOKEN".into()
            })
        );
        assert!(s.offline);
        let s = HubSettings::from_vars(vars(vec![("HOME", "/home/u".into())])).unwrap();
        assert_eq!(s.cache, PathBuf::from("/home/u/.cache/huggingface/hub"));
        assert!(matches!(
            HubSettings::from_vars(|_| None),
            Err(Error::Hub(HubError::NoCache))
        ));
    }

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
