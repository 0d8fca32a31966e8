//! Models by name, end to end against a stand-in for the Hugging Face hub on 127.0.0.1: the
//! file endpoints `hf-hub` uses (`/api/models/{repo}/revision/{rev}` for the commit and file
//! list, `/{repo}/resolve/{rev}/{file}` with `Range`, `ETag` / `X-Linked-Etag`,
//! `X-Repo-Commit` and `Content-Range`) serving the tiny fixtures. Checks that only the files a
//! model needs land in the standard cache layout, that later runs work with the server stopped
//! or `HF_HUB_OFFLINE=1`, that partial and broken downloads resume, and that a missing, gated or
//! unreachable model gives a one-line error.

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
use distill_corpus::record::{self, records_from_batch, Record};
use distill_corpus::shards::{ShardReader, ShardWriter, WriterOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models/tests/fixtures")
        .join(name)
}

/// One repo of the stand-in hub.
struct FakeRepo {
    sha: String,
    files: BTreeMap<String, Vec<u8>>,
    /// Answer every request with this status (401: gated).
    status: Option<u16>,
    /// Files whose first full download breaks off halfway.
    cut_once: Vec<String>,
}

/// One request the server saw: `METHOD path range authorization`.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct FakeHub {
    repos: BTreeMap<String, Mutex<FakeRepo>>,
    seen: Mutex<Vec<Seen>>,
}

/// The blob name `huggingface_hub` gives a file: the LFS sha256 (`X-Linked-Etag`) for weights,
/// else the git blob id (`ETag`). Here any stable hex digest of the content stands in.
fn etag(content: &[u8], lfs: bool) -> String {
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

fn is_lfs(file: &str) -> bool {
    file.ends_with(".safetensors") || file.ends_with(".gguf")
}

fn status(code: u16, error_code: Option<&str>) -> Response {
    let mut r = Response::builder().status(code);
    if let Some(e) = error_code {
        r = r.header("x-error-code", e);
    }
    r.body(Body::empty()).unwrap()
}

async fn handle(
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
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // `/api/models/{owner}/{name}/revision/{rev}`
    if let ["api", "models", owner, name, "revision", rev] = parts.as_slice() {
        let Some(repo) = hub.repos.get(&format!("{owner}/{name}")) else {
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
    let Some(repo) = hub.repos.get(&format!("{owner}/{name}")) else {
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
struct CutStream {
    half: Option<Bytes>,
    paused: bool,
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
struct Server {
    endpoint: String,
    hub: Arc<FakeHub>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(repos: Vec<(&str, FakeRepo)>) -> Self {
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

    fn seen(&self) -> Vec<Seen> {
        self.hub.seen.lock().unwrap().clone()
    }

    /// Requests for `file` (any repo).
    fn requests_for(&self, file: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.ends_with(&format!("/{file}")))
            .collect()
    }

    fn stop(&mut self) {
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

fn repo(sha_digit: char, files: &[(&str, PathBuf)]) -> FakeRepo {
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
fn sharded_repo() -> FakeRepo {
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
fn distill(hf_home: &Path, endpoint: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
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

fn succeed(out: Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

/// The error of a failed run: exactly one line.
fn one_line_error(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "should fail: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0].to_string()
}

fn inspect_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn a_folder_model_lands_in_the_hf_cache_and_works_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let mut server = Server::start(vec![("tiny/qwen2-sharded", sharded_repo())]);
    let sha = "a".repeat(40);
    let repo_dir = home.join("hub/models--tiny--qwen2-sharded");
    let snapshot = repo_dir.join("snapshots").join(&sha);

    let args = ["inspect", "tiny/qwen2-sharded", "--json"];
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    let report = inspect_json(&stdout);
    assert_eq!(report["path"], snapshot.display().to_string());
    assert_eq!(report["hub"], format!("tiny/qwen2-sharded@{sha}"));
    assert!(
        stderr.contains(&format!(
            "Downloading `tiny/qwen2-sharded` from {} into `{}`",
            server.endpoint,
            home.join("hub").display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Downloaded 6 files of `tiny/qwen2-sharded`"),
        "{stderr}"
    );
    // The same model as the fixture folder it was served from.
    let local = fixture("tiny-qwen2-sharded");
    let (local_stdout, _) = succeed(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", local.to_str().unwrap(), "--json"],
    ));
    let local_report = inspect_json(&local_stdout);
    assert_eq!(local_report.get("hub"), None);
    for key in [
        "parameters",
        "bytes_on_disk",
        "layers",
        "tensor_types",
        "vocab_size",
    ] {
        assert_eq!(report[key], local_report[key], "{key}");
    }

    // The layout `huggingface_hub` uses: refs, relative symlinks into content-addressed blobs,
    // and only the files a model needs.
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );
    assert_eq!(
        files_under(&snapshot),
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
        ]
    );
    for (file, lfs) in [
        ("config.json", false),
        ("model-00002-of-00003.safetensors", true),
    ] {
        let content = std::fs::read(local.join(file)).unwrap();
        let link = std::fs::read_link(snapshot.join(file)).unwrap();
        assert_eq!(
            link,
            Path::new("../../blobs").join(etag(&content, lfs)),
            "{file}"
        );
        assert_eq!(
            std::fs::read(snapshot.join(file)).unwrap(),
            content,
            "{file}"
        );
    }
    assert!(server.requests_for("README.md").is_empty());
    assert!(server.requests_for("pytorch_model.bin").is_empty());

    // Cached: a second run asks only for the commit, and downloads nothing.
    let before = server.seen().len();
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert!(!stderr.contains("Download"), "{stderr}");
    let after = server.seen();
    assert_eq!(after.len(), before + 1);
    assert_eq!(
        after[before].path,
        "/api/models/tiny/qwen2-sharded/revision/main"
    );

    // With the hub down or gone, the cache answers (with a warning); offline, without one.
    server.hub.repos["tiny/qwen2-sharded"]
        .lock()
        .unwrap()
        .status = Some(503);
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert_eq!(
        stderr,
        format!(
            "Warning: cannot reach {} (HTTP 503); using model `tiny/qwen2-sharded` from the \
             cache (commit aaaaaaaaaaaa)\n",
            server.endpoint
        )
    );
    server.stop();
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &[], &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert!(
        stderr.contains(&format!("Warning: cannot reach {}", server.endpoint))
            && stderr
                .contains("using model `tiny/qwen2-sharded` from the cache (commit aaaaaaaaaaaa)"),
        "{stderr}"
    );
    let offline = [("HF_HUB_OFFLINE", "1")];
    let (stdout, stderr) = succeed(distill(&home, &server.endpoint, &offline, &args));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);
    assert_eq!(stderr, "");
    // A pinned commit in the cache needs no hub either.
    let pinned = format!("tiny/qwen2-sharded@{sha}");
    let (stdout, _) = succeed(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", &pinned, "--json"],
    ));
    assert_eq!(inspect_json(&stdout)["path"], report["path"]);

    // What the cache lacks is named, in one line.
    let cache = home.join("hub").display().to_string();
    assert_eq!(
        one_line_error(distill(
            &home,
            &server.endpoint,
            &offline,
            &["inspect", "tiny/other"]
        )),
        format!(
            "error: HF_HUB_OFFLINE is set and model `tiny/other` (revision `main`) is not in \
             the Hugging Face cache `{cache}`, nor is it a local path"
        )
    );
    std::fs::remove_file(snapshot.join("model-00002-of-00003.safetensors")).unwrap();
    assert_eq!(
        one_line_error(distill(&home, &server.endpoint, &offline, &args)),
        format!(
            "error: HF_HUB_OFFLINE is set and `model-00002-of-00003.safetensors` of model \
             `tiny/qwen2-sharded` is not in the Hugging Face cache `{cache}`"
        )
    );
    assert_eq!(
        one_line_error(distill(
            &home,
            &server.endpoint,
            &[],
            &["inspect", "tiny/other"]
        )),
        format!(
            "error: cannot reach {} for model `tiny/other` (io: Connection refused (os error 111)), and it is not \
             in the Hugging Face cache `{cache}`; check the network or HF_ENDPOINT",
            server.endpoint
        )
    );
    // A local file not there (a typo, or not fetched yet) shaped like a hub file says both.
    let line = one_line_error(distill(
        &home,
        &server.endpoint,
        &[],
        &["inspect", "runs/models/teacher.gguf"],
    ));
    assert!(
        line.starts_with("error: cannot reach")
            && line.ends_with(
                "(read as a hub file: no local file `runs/models/teacher.gguf` exists either)"
            ),
        "{line}"
    );
}

#[test]
fn missing_gated_and_wrong_names_fail_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let mut gated = repo('b', &[("config.json", fixture("tiny-qwen2/config.json"))]);
    gated.status = Some(401);
    let server = Server::start(vec![
        ("org/gated", gated),
        ("tiny/qwen2-sharded", sharded_repo()),
    ]);
    let e = &server.endpoint;
    let run = |env: &[(&str, &str)], args: &[&str]| one_line_error(distill(&home, e, env, args));

    assert_eq!(
        run(&[], &["inspect", "org/missing"]),
        format!(
            "error: model `org/missing` was not found on {e}, nor as a local path (check the \
             name, or log in with HF_TOKEN if it is private)"
        )
    );
    assert_eq!(
        run(&[], &["inspect", "org/gated"]),
        format!(
            "error: model `org/gated` on {e} is gated or private (HTTP 401): accept its terms \
             on its page, then set HF_TOKEN to an access token (or log in, which writes the \
             token file in HF_HOME)"
        )
    );
    assert_eq!(
        run(&[("HF_TOKEN", "hf_env")], &["inspect", "org/gated"]),
        format!(
            "error: model `org/gated` on {e} is gated or private (HTTP 401): the token from \
             HF_TOKEN was refused; accept the model's terms on its page, or use a token with \
             access"
        )
    );
    assert_eq!(
        run(&[], &["inspect", "tiny/qwen2-sharded@v9"]),
        format!("error: model `tiny/qwen2-sharded` has no revision `v9` on {e}")
    );
    assert_eq!(
        run(&[], &["inspect", "tiny/qwen2-sharded:Q4_K_M"]),
        "error: model `tiny/qwen2-sharded` has no `.gguf` file"
    );
    // Every model argument resolves the same way.
    let problems = tmp.path().join("problems.jsonl");
    std::fs::write(&problems, "{\"problem\": \"1 + 1?\", \"answer\": \"2\"}\n").unwrap();
    let problems = problems.to_str().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    for args in [
        &["serve", "org/missing"][..],
        &["convert", "org/missing", out],
        &[
            "compare",
            "--models",
            "org/missing",
            "--problems",
            problems,
            "--out",
            out,
        ],
        &[
            "train",
            "--base",
            "org/missing",
            "--corpus",
            problems,
            "--out",
            out,
        ],
        &[
            "generate",
            "--model",
            "org/missing",
            "--problems",
            problems,
            "--out",
            out,
        ],
    ] {
        let line = run(&[], args);
        assert!(
            line.contains("model `org/missing` was not found on"),
            "{args:?}: {line}"
        );
    }
    // The token goes with every request: HF_TOKEN, else the token file in HF_HOME.
    let auth = |path: &str| -> Vec<Option<String>> {
        server
            .seen()
            .into_iter()
            .filter(|s| s.path.contains(path))
            .map(|s| s.authorization)
            .collect()
    };
    assert_eq!(auth("org/gated"), [None, Some("Bearer hf_env".to_string())]);
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("token"), "hf_file\n").unwrap();
    let line = run(&[], &["inspect", "org/gated"]);
    assert!(
        line.contains(&format!(
            "the token from `{}` was refused",
            home.join("token").display()
        )),
        "{line}"
    );
    assert_eq!(
        auth("org/gated").last().unwrap().as_deref(),
        Some("Bearer hf_file")
    );
}

#[test]
fn gguf_files_are_picked_and_downloads_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let llama = fixture("tiny-llama.gguf");
    let qwen2 = fixture("tiny-qwen2.gguf");
    let mut cut = repo('c', &[("tiny-llama.gguf", llama.clone())]);
    cut.cut_once = vec!["tiny-llama.gguf".into()];
    let server = Server::start(vec![
        (
            "tiny/gguf",
            repo(
                'd',
                &[
                    ("tiny-llama.gguf", llama.clone()),
                    ("q/tiny-qwen2.gguf", qwen2.clone()),
                ],
            ),
        ),
        ("tiny/cut", cut),
    ]);
    let e = &server.endpoint;
    assert_eq!(
        one_line_error(distill(&home, e, &[], &["inspect", "tiny/gguf"])),
        "error: model `tiny/gguf` has 2 `.gguf` files; pick one with `tiny/gguf/FILE.gguf` or \
         `tiny/gguf:QUANT` (q/tiny-qwen2.gguf, tiny-llama.gguf)"
    );

    // A file in a subfolder, by path: the snapshot keeps the subfolder.
    let (stdout, _) = succeed(distill(
        &home,
        e,
        &[],
        &["inspect", "tiny/gguf/q/tiny-qwen2.gguf", "--json"],
    ));
    let report = inspect_json(&stdout);
    let snapshot = home
        .join("hub/models--tiny--gguf/snapshots")
        .join("d".repeat(40));
    assert_eq!(
        report["path"],
        snapshot.join("q/tiny-qwen2.gguf").display().to_string()
    );
    assert_eq!(report["architecture"], "qwen2");
    assert_eq!(report["format"], "gguf");
    assert_eq!(files_under(&snapshot), ["q"]);

    // A partial download from an earlier run (`blobs/<etag>.part`) continues where it stopped.
    let content = std::fs::read(&llama).unwrap();
    let blobs = home.join("hub/models--tiny--gguf/blobs");
    let blob = blobs.join(etag(&content, true));
    let half = content.len() / 2;
    std::fs::write(blob.with_extension("part"), &content[..half]).unwrap();
    let (stdout, _) = succeed(distill(
        &home,
        e,
        &[],
        &["inspect", "tiny/gguf:llama", "--json"],
    ));
    assert_eq!(inspect_json(&stdout)["architecture"], "llama");
    let ranges: Vec<Option<String>> = server
        .requests_for("tiny/gguf/resolve/main/tiny-llama.gguf")
        .into_iter()
        .map(|s| s.range)
        .collect();
    assert!(
        ranges.contains(&Some(format!("bytes={half}-")))
            && !ranges.contains(&Some("bytes=0-".into())),
        "{ranges:?}"
    );
    assert_eq!(std::fs::read(&blob).unwrap(), content);
    assert!(!blob.with_extension("part").exists());

    // A transfer that breaks off mid-file resumes within the run; `generate` records the
    // teacher by the name it was given.
    let problems = tmp.path().join("problems.jsonl");
    std::fs::write(
        &problems,
        "{\"id\": \"p0\", \"problem\": \"Tom has 2 apples and buys 3 more. How many now?\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = tmp.path().join("corpus");
    let (_, stderr) = succeed(distill(
        &home,
        e,
        &[],
        &[
            "--threads",
            "1",
            "generate",
            "--model",
            "tiny/cut:llama",
            "--problems",
            problems.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-new-tokens",
            "4",
        ],
    ));
    let ranges: Vec<Option<String>> = server
        .requests_for("tiny/cut/resolve/main/tiny-llama.gguf")
        .into_iter()
        .map(|s| s.range)
        .collect();
    let resumed = format!("bytes={}-", content.len() / 2);
    assert!(ranges.contains(&Some(resumed)), "{ranges:?}\n{stderr}");
    let cut_blob = home
        .join("hub/models--tiny--cut/blobs")
        .join(etag(&content, true));
    assert_eq!(std::fs::read(cut_blob).unwrap(), content);
    let reader = ShardReader::open(&[out]).unwrap();
    let mut teachers = Vec::new();
    for batch in reader.batches() {
        for record in records_from_batch(&batch.unwrap()).unwrap() {
            teachers.push(record.teacher);
        }
    }
    assert_eq!(teachers, ["tiny/cut:llama"]);
}

#[test]
fn a_pipeline_fetches_its_hub_models_before_the_first_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let server = Server::start(vec![(
        "tiny/llama",
        repo('e', &[("tiny-llama.gguf", fixture("tiny-llama.gguf"))]),
    )]);
    let out = tmp.path().join("run");
    let corpus = write_corpus(tmp.path());
    let pipeline = tmp.path().join("p.toml");
    std::fs::write(
        &pipeline,
        format!(
            "[pipeline]\nout = {out:?}\n\n[problems]\ncount = 2\nseed = 1\n\n[train]\n\
             base = \"tiny/llama\"\ncorpus = {corpus:?}\nmax_seq_len = 128\nmax_steps = 1\n\
             micro_batch_size = 2\neval_fraction = 0.0\nquiet = true\n",
            out = out.display().to_string(),
            corpus = corpus.display().to_string(),
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["--threads", "1", "run", pipeline.to_str().unwrap()];
        args.extend_from_slice(extra);
        distill(&home, &server.endpoint, &[], &args)
    };

    // A dry run downloads nothing and says so.
    let (stdout, _) = succeed(run(&["--dry-run"]));
    assert!(
        stdout.contains(
            "stage `train`: `base` `tiny/llama` not checked: no such local path, and no hub \
             model of that name in the Hugging Face cache yet"
        ),
        "{stdout}"
    );
    assert!(server.seen().is_empty(), "{:?}", server.seen());

    let (_, stderr) = succeed(run(&[]));
    let download = stderr.find("Downloading `tiny/llama`").expect(&stderr);
    let first_stage = stderr.find("[1/2] problems: running").expect(&stderr);
    assert!(download < first_stage, "{stderr}");
    assert_eq!(
        stderr.matches("Downloaded 1 file of `tiny/llama`").count(),
        1,
        "{stderr}"
    );
    assert!(out.join("student/model/config.json").is_file());
    let config = std::fs::read_to_string(out.join("student/train_config.toml")).unwrap();
    assert!(config.contains("base = \"tiny/llama\""), "{config}");

    // Cached now: the dry run checks it from the cache.
    let (stdout, _) = succeed(run(&["--dry-run"]));
    assert!(!stdout.contains("not checked"), "{stdout}");
}

/// Four short verified samples, as a corpus folder.
fn write_corpus(dir: &Path) -> PathBuf {
    let records: Vec<Record> = (0..4)
        .map(|i| {
            let prompt = format!("What is {i} + 2?");
            let reasoning = format!("{i} + 2 = {}", i + 2);
            let completion = format!("\\boxed{{{}}}", i + 2);
            Record {
                final_answer: Some((i + 2).to_string()),
                reference_answer: Some((i + 2).to_string()),
                correct: Some(true),
                teacher: "test".into(),
                seed: i,
                ..Record::sample(&format!("q{i}"), 0, &prompt, &reasoning, &completion)
            }
        })
        .collect();
    let out = dir.join("corpus");
    let mut w = ShardWriter::create(&out, record::schema(), WriterOptions::default()).unwrap();
    w.write(&record::records_to_batch(&records).unwrap())
        .unwrap();
    w.finish().unwrap();
    out
}

/// A TRL job trains on the cluster, where TRL fetches the weights: distill fetches only what it
/// reads (config, generation config, tokenizer), also offline from the cache, and the recipe
/// names the hub model.
#[test]
fn a_trl_job_fetches_the_config_and_tokenizer_only() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("hf");
    let corpus = write_corpus(tmp.path());
    // A tiny model with a tokenizer to serve: distill trains one from scratch for one step.
    let base = tmp.path().join("base");
    let (_, _) = succeed(distill(
        &home,
        "http://127.0.0.1:9",
        &[],
        &[
            "--threads",
            "1",
            "train",
            "--from-scratch",
            "--quiet",
            "--corpus",
            corpus.to_str().unwrap(),
            "--out",
            base.to_str().unwrap(),
            "--vocab-size",
            "60",
            "--hidden-size",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--intermediate-size",
            "32",
            "--max-seq-len",
            "128",
            "--max-steps",
            "1",
        ],
    ));
    let model = base.join("model");
    let files: Vec<(&str, PathBuf)> = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ]
    .into_iter()
    .map(|f| (f, model.join(f)))
    .collect();
    let server = Server::start(vec![("tiny/student", repo('f', &files))]);
    let job = tmp.path().join("job");
    let args = [
        "train",
        "--engine",
        "trl",
        "--dry-run",
        "--quiet",
        "--base",
        "tiny/student",
        "--corpus",
        corpus.to_str().unwrap(),
        "--out",
        job.to_str().unwrap(),
        "--max-seq-len",
        "128",
    ];
    succeed(distill(&home, &server.endpoint, &[], &args));
    assert!(server.requests_for("model.safetensors").is_empty());
    assert!(!server.requests_for("tokenizer.json").is_empty());
    let snapshot = home
        .join("hub/models--tiny--student/snapshots")
        .join("f".repeat(40));
    assert_eq!(
        files_under(&snapshot),
        [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let recipe = std::fs::read_to_string(job.join("recipe.yaml")).unwrap();
    assert!(
        recipe.contains("\nmodel_name_or_path: \"tiny/student\"\n"),
        "{recipe}"
    );
    // Offline, the cache holds all the job needs.
    succeed(distill(
        &home,
        &server.endpoint,
        &[("HF_HUB_OFFLINE", "1")],
        &args,
    ));
    assert_eq!(server.requests_for("model.safetensors").len(), 0);
}
