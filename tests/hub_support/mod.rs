//! The stand-in for the Hugging Face hub the hub tests run against (`cli_hub.rs`,
//! `cli_hub_jobs.rs`): an axum server on 127.0.0.1 with the file endpoints `hf-hub` uses, and
//! helpers that run `distill` against it. Each test binary uses only some of them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures")
        .join(name)
}

/// One repo of the stand-in hub.
pub struct FakeRepo {
    pub sha: String,
    pub files: BTreeMap<String, Vec<u8>>,
    /// Answer every request with this status (401: gated).
    pub status: Option<u16>,
    /// Files whose first full download breaks off halfway.
    pub cut_once: Vec<String>,
}

/// One request the server saw: `METHOD path range authorization`.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

pub struct FakeHub {
    pub repos: BTreeMap<String, Mutex<FakeRepo>>,
    pub seen: Mutex<Vec<Seen>>,
}

/// The blob name `huggingface_hub` gives a file: the LFS sha256 (`X-Linked-Etag`) for weights,
/// else the git blob id (`ETag`). Here any stable hex digest of the content stands in.
pub fn etag(content: &[u8], lfs: bool) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in content {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let digest = format!("{hash:016x}{:08x}", content.len());
    if lfs {
        digest.repeat(3)[..64].to_string()
    } else {
        digest.repeat(2)[..40].to_string()
    }
}

pub fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".gguf") || file.ends_with(".parquet")
}

pub fn status(code: u16, error_code: Option<&str>) -> Response {
    let mut r = Response::builder().status(code);
    if let Some(e) = error_code {
        r = r.header("x-error-code", e);
    }
    r.body(Body::empty()).unwrap()
}

pub async fn handle(
    State(hub): State<Arc<FakeHub>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = uri.path().to_string();
    hub.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: header("range"),
        authorization: header("authorization"),
    });
    if method != Method::GET && method != Method::HEAD {
        return status(405, None);
    }
    let mut parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Datasets are the repos keyed `datasets/{owner}/{name}`, under the same two endpoints with
    // `datasets` in front of the id (`/api/datasets/…`, `/datasets/…/resolve/…`).
    let mut kind = "";
    if parts.first() == Some(&"datasets") {
        parts.remove(0);
        kind = "datasets/";
    } else if parts.get(1) == Some(&"datasets") {
        parts[1] = "models";
        kind = "datasets/";
    }
    // `/api/models/{owner}/{name}/revision/{rev}`
    if let ["api", "models", owner, name, "revision", rev] = parts.as_slice() {
        let Some(repo) = hub.repos.get(&format!("{kind}{owner}/{name}")) else {
            return status(401, Some("RepoNotFound"));
        };
        let repo = repo.lock().unwrap();
        if let Some(code) = repo.status {
            return status(code, Some("GatedRepo"));
        }
        if *rev != "main" && *rev != repo.sha {
            return status(404, Some("RevisionNotFound"));
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": format!("{owner}/{name}"), "sha": repo.sha, "siblings": siblings });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
    }
    // `/{owner}/{name}/resolve/{rev}/{file…}`
    let [owner, name, "resolve", rev, file @ ..] = parts.as_slice() else {
        return status(404, None);
    };
    let Some(repo) = hub.repos.get(&format!("{kind}{owner}/{name}")) else {
        return status(401, Some("RepoNotFound"));
    };
    let mut repo = repo.lock().unwrap();
    if let Some(code) = repo.status {
        return status(code, Some("GatedRepo"));
    }
    if *rev != "main" && *rev != repo.sha {
        return status(404, Some("RevisionNotFound"));
    }
    let file = file.join("/");
    let Some(content) = repo.files.get(&file).cloned() else {
        return status(404, Some("EntryNotFound"));
    };
    let len = content.len();
    let (start, end) = match header("range")
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
    {
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                len - 1
            } else {
                b.parse().unwrap()
            };
            if a >= len {
                return status(416, None);
            }
            (a, b.min(len - 1))
        }
        None => (0, len - 1),
    };
    let slice = Bytes::from(content[start..=end].to_vec());
    let mut response = Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("content-range", format!("bytes {start}-{end}/{len}"))
        .header("content-length", slice.len().to_string())
        .header("x-repo-commit", repo.sha.clone());
    if is_lfs(&file) {
        response = response
            .header("etag", format!("\"{}\"", etag(&content, false)))
            .header("x-linked-etag", format!("\"{}\"", etag(&content, true)));
    } else {
        response = response.header("etag", format!("\"{}\"", etag(&content, false)));
    }
    let cut = start == 0 && end > 0 && repo.cut_once.contains(&file);
    if cut {
        repo.cut_once.retain(|f| *f != file);
        let half = slice.slice(..slice.len() / 2);
        return response
            .body(Body::from_stream(CutStream {
                half: Some(half),
                paused: false,
            }))
            .unwrap();
    }
    response.body(Body::from(slice)).unwrap()
}

/// Half a body, then a broken connection (the client sees a short transfer). It pauses once
/// after the half so the server writes it out before the error drops the connection.
pub struct CutStream {
    pub half: Option<Bytes>,
    pub paused: bool,
}

impl futures_util::Stream for CutStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(half) = self.half.take() {
            return Poll::Ready(Some(Ok(half)));
        }
        if !self.paused {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(std::io::Error::other("cut"))))
    }
}

/// The stand-in hub on 127.0.0.1, serving until stopped.
pub struct Server {
    pub endpoint: String,
    pub hub: Arc<FakeHub>,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(repos: Vec<(&str, FakeRepo)>) -> Self {
        let hub = Arc::new(FakeHub {
            repos: repos
                .into_iter()
                .map(|(name, repo)| (name.to_string(), Mutex::new(repo)))
                .collect(),
            seen: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new().fallback(handle).with_state(hub.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            endpoint,
            hub,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.hub.seen.lock().unwrap().clone()
    }

    /// Requests for `file` (any repo).
    pub fn requests_for(&self, file: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with(&format!("/{file}")))
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn repo(sha_digit: char, files: &[(&str, PathBuf)]) -> FakeRepo {
    FakeRepo {
        sha: sha_digit.to_string().repeat(40),
        files: files
            .iter()
            .map(|(name, path)| (name.to_string(), std::fs::read(path).unwrap()))
            .collect(),
        status: None,
        cut_once: Vec::new(),
    }
}

/// The sharded tiny Qwen2 folder, plus files a model does not need.
pub fn sharded_repo() -> FakeRepo {
    let dir = fixture("tiny-qwen2-sharded");
    let mut files: Vec<(&str, PathBuf)> = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
    ]
    .into_iter()
    .map(|f| (f, dir.join(f)))
    .collect();
    files.push(("README.md", dir.join("config.json")));
    files.push((
        "pytorch_model.bin",
        dir.join("model-00003-of-00003.safetensors"),
    ));
    repo('a', &files)
}

/// `distill` with the hub environment of a test: its endpoint (or none) and cache, and nothing
/// from the environment the tests run in.
pub fn distill(hf_home: &Path, endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distill"));
    for var in [
        "HF_TOKEN",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_ENDPOINT",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", hf_home).env("HF_ENDPOINT", endpoint);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run distill")
}

pub fn succeed(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The error of a failed run: exactly one line.
pub fn one_line_error(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

pub fn inspect_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}
