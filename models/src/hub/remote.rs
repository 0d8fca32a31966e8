//! Talking to the hub through `hf-hub`: the revision's commit and file list, file metadata and
//! resumable downloads into the cache, and every failure turned into a [`HubError`] naming the
//! model and, where there is one, the file.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::api::RepoInfo;
use hf_hub::Cache;

use super::{repo, DownloadProgress, HubError, HubRef, HubSettings};
use crate::hf::CONFIG;
use crate::{Error, Result};

/// How a request failed.
pub(super) enum Failure {
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
pub(super) struct Hub<'a> {
    model: &'a HubRef,
    settings: &'a HubSettings,
    api: Api,
}

impl<'a> Hub<'a> {
    pub(super) fn new(model: &'a HubRef, settings: &'a HubSettings) -> Result<Self> {
        let api = ApiBuilder::from_cache(Cache::new(settings.cache.clone()))
            .with_endpoint(settings.endpoint.clone())
            .with_token(settings.token.as_ref().map(|t| t.value.clone()))
            .with_progress(false)
            // A transfer that breaks is resumed from where it stopped, within this run.
            .with_retries(3)
            .with_user_agent("distill", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::Download {
                repo: model.name(),
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

    pub(super) fn model(&self) -> &HubRef {
        self.model
    }

    fn api_repo(&self) -> ApiRepo {
        self.api.repo(repo(self.model))
    }

    pub(super) fn cache_repo(&self) -> hf_hub::CacheRepo {
        Cache::new(self.settings.cache.clone()).repo(repo(self.model))
    }

    /// The revision's commit and file list (`/api/models/{repo}/revision/{revision}`).
    pub(super) fn info(&self) -> Result<RepoInfo, Failure> {
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
    pub(super) fn error(&self, failure: Failure, file: Option<&str>) -> Error {
        let repo = self.model.name();
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
                    file: file.map_or_else(
                        || {
                            format!(
                                "api/{}s/{}/revision/{}",
                                self.model.kind,
                                self.model.repo,
                                self.model.revision()
                            )
                        },
                        str::to_string,
                    ),
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
pub(super) struct Fetch<'a, 'p> {
    pub(super) hub: &'a Hub<'a>,
    pub(super) commit: String,
    pub(super) progress: &'p mut dyn DownloadProgress,
    pub(super) downloaded: usize,
}

impl Fetch<'_, '_> {
    /// The file's path in the snapshot, downloaded unless it is there (or its blob is: another
    /// revision, or Python, fetched the same content).
    pub(super) fn file(&mut self, file: &str) -> Result<PathBuf> {
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
            repo: self.hub.model.name(),
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
