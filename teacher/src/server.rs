//! `distill serve`: an OpenAI-compatible HTTP server for a local model: `POST
//! /v1/chat/completions` (`server/chat.rs`), `GET /v1/models`, `POST /v1/completions` for raw
//! prompts and for scoring them (`server/completions.rs`), and vLLM's `POST /tokenize` and
//! `/detokenize`. Every request goes to one engine thread, so concurrent requests decode in the
//! same continuous batch; `n` choices are `n` sequences of that batch, choice i seeded with the
//! request's seed + i. Fields the server does not apply (penalties, grammars, tools) are
//! refused by name unless they ask for nothing. With a key set, every route but `/health` and
//! `/metrics` (Prometheus's text format) requires it.

mod chat;
mod choices;
mod completions;
pub mod intake;
mod sse;
mod tokenize;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::oneshot;

use crate::backend::{GenRequest, SamplingParams};
use crate::engine::{Engine, Update};
use crate::openai::wire::{self, ErrorBody, ErrorDetail};
use crate::openai::ApiKey;
use crate::{Error, Result};
pub use intake::{EngineThread, ServeStats};
use intake::{Job, SubmitError};

/// Settings of the server (the model and its engine are passed separately).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerConfig {
    /// The model's name in `/v1/models` and in responses; requests naming another are refused.
    pub model_name: String,
    /// Return `reasoning_content` apart from `content` when the reply closes a `<think>` block.
    pub reasoning_parser: bool,
    /// Sampling when a request leaves a field out (`max_new_tokens` stands for `max_tokens`).
    pub defaults: SamplingParams,
    /// Requests waiting for the engine at most; past it the server answers 503.
    pub max_queue: usize,
    /// The key every request but `/health` and `/metrics` must carry (`Authorization: Bearer
    /// KEY`); `None`: open.
    #[serde(skip)]
    pub api_key: Option<ApiKey>,
}

impl ServerConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        Self {
            model_name: model_name.into(),
            reasoning_parser: true,
            defaults: SamplingParams {
                max_new_tokens: 4096,
                logprobs: 0,
                ..SamplingParams::default()
            },
            max_queue: 4096,
            api_key: None,
        }
    }
}

/// The server's engine thread and router.
pub struct Server {
    state: Arc<AppState>,
    engine: EngineThread,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct AppState {
    config: ServerConfig,
    engine: EngineThread,
    next_id: AtomicU64,
    /// Names tokens in `logprobs` answers.
    tokenizer: distill_models::tokenizer::TextTokenizer,
    /// The engine's model, for scoring on `/v1/completions` beside the engine thread.
    model: Arc<Engine>,
}

impl Server {
    /// Starts the engine thread.
    pub fn new(engine: Arc<Engine>, config: ServerConfig) -> Result<Self> {
        if config.model_name.trim().is_empty() {
            return Err(Error::Config("the served model needs a name".into()));
        }
        let tokenizer = engine.tokenizer().clone();
        let model = Arc::clone(&engine);
        let (engine, thread) =
            EngineThread::start(engine, config.max_queue).map_err(Error::Runtime)?;
        Ok(Self {
            state: Arc::new(AppState {
                config,
                engine: engine.clone(),
                next_id: AtomicU64::new(0),
                tokenizer,
                model,
            }),
            engine,
            thread: Some(thread),
        })
    }

    pub fn router(&self) -> Router {
        let mut api = Router::new()
            .route("/v1/chat/completions", post(chat::chat_completions))
            .route("/v1/completions", post(completions::completions))
            .route("/v1/models", get(models))
            .route("/tokenize", post(tokenize::tokenize))
            .route("/detokenize", post(tokenize::detokenize));
        if let Some(key) = &self.state.config.api_key {
            api = api.route_layer(middleware::from_fn_with_state(key.clone(), require_key));
        }
        // `/health` and `/metrics` stay open, as vLLM's do: a load balancer or Prometheus
        // probes them without a key.
        api.route("/health", get(|| async { StatusCode::OK }))
            .route("/metrics", get(metrics))
            .with_state(Arc::clone(&self.state))
    }

    pub fn engine(&self) -> &EngineThread {
        &self.engine
    }

    pub fn stats(&self) -> ServeStats {
        self.engine.stats()
    }

    /// Serves on `listener` until `shutdown` resolves.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| Error::Bind { addr, source })
    }
}

/// Serves `server` on `addr` until Ctrl-C, on a runtime of its own (for `distill serve`).
/// `on_ready` gets the bound address once the server listens.
pub fn run_until_ctrl_c(
    server: Server,
    addr: &str,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("distill-serve")
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async {
        let bind_error = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        on_ready(listener.local_addr().map_err(bind_error)?);
        let shutdown = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                // Without a signal handler the server runs until killed.
                tracing::warn!("cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        };
        server.serve(listener, shutdown).await
    })?;
    // Requests still decoding are dropped rather than waited for.
    server.engine().shutdown();
    runtime.shutdown_background();
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.engine.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A server running on its own runtime thread, for tests and embedding; dropping it stops it.
pub struct RunningServer {
    addr: SocketAddr,
    server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free port) and serves `server` in the background.
    pub fn start(server: Server, addr: &str) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("distill-serve")
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let bind_error = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let local = std_listener.local_addr().map_err(bind_error)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?
        };
        let server = Arc::new(server);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("distill-serve-http".into())
            .spawn(move || {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = runtime.block_on(serving.serve(listener, shutdown)) {
                    tracing::error!("server stopped: {e}");
                }
                // Open connections (a client stuck on a slow request) must not hold the drop.
                runtime.shutdown_background();
            })
            .map_err(Error::Runtime)?;
        Ok(Self {
            addr: local,
            server,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` (no `/v1`), as a base URL for the `openai` backend.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn server(&self) -> &Server {
        &self.server
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        // Stop the engine first so requests still decoding end now rather than hold the exit.
        self.server.engine().shutdown();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An OpenAI-style error response.
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.message,
                kind: self.kind.to_string(),
                param: self.param.map(str::to_string),
                code: None,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Lets a request through when it carries the server's key (`Authorization: Bearer KEY`);
/// answers 401 in OpenAI's error shape otherwise.
async fn require_key(State(key): State<ApiKey>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(presented) if key.matches(presented.trim()) => next.run(request).await,
        _ => ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "invalid_request_error",
            message: "Missing or wrong API key: send it as `Authorization: Bearer KEY`".into(),
            param: None,
        }
        .into_response(),
    }
}

/// The engine thread's counters in Prometheus's text format (names after vLLM's where one
/// exists, under `distill:`), for a scraper watching a long-running server.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let s = state.engine.stats();
    // A label value escapes backslashes, quotes and newlines.
    let model = state
        .config
        .model_name
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let rows: [(&str, &str, &str, u64); 8] = [
        (
            "requests_submitted_total",
            "counter",
            "Requests queued for the engine (a choice each)",
            s.submitted,
        ),
        (
            "requests_completed_total",
            "counter",
            "Requests finished",
            s.completed,
        ),
        (
            "requests_failed_total",
            "counter",
            "Requests failed or dropped (a client hung up)",
            s.failed,
        ),
        (
            "num_requests_waiting",
            "gauge",
            "Requests waiting for the engine",
            s.queued as u64,
        ),
        (
            "num_requests_running",
            "gauge",
            "Sequences live in the engine",
            s.live as u64,
        ),
        (
            "num_requests_running_peak",
            "gauge",
            "Most sequences live at once",
            s.peak_live as u64,
        ),
        (
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of finished requests",
            s.prompt_tokens,
        ),
        (
            "generation_tokens_total",
            "counter",
            "Completion tokens of finished requests",
            s.completion_tokens,
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        text.push_str(&format!(
            "# HELP distill:{name} {help}\n# TYPE distill:{name} {kind}\ndistill:{name}{{model_name=\"{model}\"}} {value}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": state.config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "distill",
        }],
    }))
    .into_response()
}

/// The most choices one request may ask for (OpenAI's limit on `n`).
const MAX_CHOICES: usize = 128;

/// Queues one engine job per request; their update receivers in order. A refused job drops the
/// receivers of those queued before it, which makes the engine drop them too.
fn submit_all(
    state: &AppState,
    requests: impl Iterator<Item = GenRequest>,
) -> std::result::Result<Vec<tokio::sync::mpsc::UnboundedReceiver<Update>>, ApiError> {
    let mut receivers = Vec::new();
    for request in requests {
        let (updates_tx, updates) = tokio::sync::mpsc::unbounded_channel();
        state
            .engine
            .submit(Job {
                request,
                updates: updates_tx,
            })
            .map_err(|e| ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                kind: "server_error",
                message: match e {
                    SubmitError::QueueFull => "Too many requests are waiting; retry later".into(),
                    SubmitError::Stopped => "The server is shutting down".into(),
                },
                param: None,
            })?;
        receivers.push(updates);
    }
    Ok(receivers)
}

pub(crate) const STOPPED: &str = "The engine stopped before finishing this request";

/// Fields OpenAI or vLLM apply that this server does not, each with the values that ask for
/// nothing (null always does). Any other value is refused by name: ignoring a penalty or a
/// grammar would answer a different question than the one asked.
const UNAPPLIED: &[(&str, Neutral, &str)] = &[
    ("presence_penalty", |v| v.as_f64() == Some(0.0), "0"),
    ("frequency_penalty", |v| v.as_f64() == Some(0.0), "0"),
    ("repetition_penalty", |v| v.as_f64() == Some(1.0), "1"),
    ("min_p", |v| v.as_f64() == Some(0.0), "0"),
    ("min_tokens", |v| v.as_u64() == Some(0), "0"),
    (
        "logit_bias",
        |v| v.as_object().is_some_and(|o| o.is_empty()),
        "{}",
    ),
    (
        "stop_token_ids",
        |v| v.as_array().is_some_and(Vec::is_empty),
        "[]",
    ),
    ("ignore_eos", |v| v.as_bool() == Some(false), "false"),
    ("use_beam_search", |v| v.as_bool() == Some(false), "false"),
    ("echo", |v| v.as_bool() == Some(false), "false"),
    ("tools", |v| v.as_array().is_some_and(Vec::is_empty), "[]"),
    (
        "response_format",
        |v| v["type"] == "text",
        "{\"type\": \"text\"}",
    ),
    ("guided_json", |_| false, "null"),
    ("guided_regex", |_| false, "null"),
    ("guided_choice", |_| false, "null"),
    ("guided_grammar", |_| false, "null"),
    ("structured_outputs", |_| false, "null"),
];

/// Whether a field's value asks for nothing.
type Neutral = fn(&serde_json::Value) -> bool;

/// Refuses a request that asks for something in [`UNAPPLIED`] but the fields in `applied`
/// (what the endpoint does apply).
fn refuse_unapplied(
    raw: &serde_json::Value,
    applied: &[&str],
) -> std::result::Result<(), ApiError> {
    for &(field, neutral, allowed) in UNAPPLIED {
        if applied.contains(&field) {
            continue;
        }
        match raw.get(field) {
            None | Some(serde_json::Value::Null) => {}
            Some(value) if neutral(value) => {}
            Some(value) => {
                return Err(bad(
                    format!(
                        "`{field}` is {value}; `distill serve` does not apply it (leave it out or set {allowed})"
                    ),
                    Some(field),
                ))
            }
        }
    }
    Ok(())
}

/// A request naming another model than the served one is refused (404, as vLLM does).
fn check_model(config: &ServerConfig, model: Option<&str>) -> std::result::Result<(), ApiError> {
    match model {
        Some(model) if model != config.model_name => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!(
                "The model `{model}` does not exist; this server serves `{}`",
                config.model_name
            ),
            param: Some("model"),
        }),
        _ => Ok(()),
    }
}

fn bad(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
    ApiError::bad_request(message, param)
}

fn internal(message: String) -> ApiError {
    ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message,
        param: None,
    }
}

/// The sampling fields `/v1/chat/completions` and `/v1/completions` share, as sent.
struct SamplingFields {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    max_tokens: Option<i64>,
    seed: Option<i64>,
    stop: Option<wire::Stop>,
    n: Option<i64>,
}

/// [`SamplingFields`] checked, in the engine's terms.
struct Sampling {
    params: SamplingParams,
    /// The first choice's seed (a random one when the request names none).
    seed: u64,
    stop: Vec<String>,
    /// Choices per prompt.
    n: usize,
}

/// Checks the sampling fields over the server's defaults.
fn sampling_of(
    config: &ServerConfig,
    fields: SamplingFields,
) -> std::result::Result<Sampling, ApiError> {
    let mut sampling = config.defaults.clone();
    if let Some(t) = fields.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad(
                format!("`temperature` is {t}; it must be within [0, 2]"),
                Some("temperature"),
            ));
        }
        sampling.temperature = t as f32;
    }
    if let Some(p) = fields.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(bad(
                format!("`top_p` is {p}; it must be within (0, 1]"),
                Some("top_p"),
            ));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = fields.top_k {
        // vLLM's -1 and 0 both mean "no top-k".
        if k < -1 {
            return Err(bad(
                format!("`top_k` is {k}; it must be -1, 0 or positive"),
                Some("top_k"),
            ));
        }
        sampling.top_k = usize::try_from(k.max(0)).unwrap_or(0);
    }
    if let Some(m) = fields.max_tokens {
        if m < 1 {
            return Err(bad(
                format!("`max_tokens` is {m}; it must be at least 1"),
                Some("max_tokens"),
            ));
        }
        sampling.max_new_tokens = usize::try_from(m).unwrap_or(usize::MAX);
    }
    let n = match fields.n {
        None => 1,
        Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(bad(
                format!("`n` is {n}; it must be within [1, {MAX_CHOICES}]"),
                Some("n"),
            ))
        }
    };
    let seed = match fields.seed {
        Some(s) => s as u64,
        None => rand::random::<u64>(),
    };
    let stop = fields.stop.map(wire::Stop::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(bad("`stop` holds an empty string", Some("stop")));
    }
    Ok(Sampling {
        params: sampling,
        seed,
        stop,
        n,
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
