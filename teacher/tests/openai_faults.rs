//! The `openai` backend against misbehaving loopback servers: 429 with `Retry-After`, 500, a hang
//! past the time-out and malformed JSON are retried and counted exactly; 401 stops at once without
//! leaking the key; other 4xx fail only their request; a closed port ends the run naming the URL.
//! Through the `generate` stage, every sample lands in the corpus exactly once and the failed
//! attempts are counted by kind in `generation.json`, summed across a resume. A `max_tokens` the
//! server's context cannot hold ends the run at once; finish reasons other than stop/length are
//! kept as they are; an answer cut while reasoning keeps its think block open; servers that only
//! stream are streamed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use distill_corpus::problems::ProblemSource;
use distill_corpus::record::records_from_batch;
use distill_corpus::shards::ShardReader;
use distill_models::chat::Message;
use distill_teacher::generate::{GenerateConfig, GenerateReport, Plan, PromptConfig};
use distill_teacher::openai::{ErrorCounts, OpenAiBackend, OpenAiConfig};
use distill_teacher::{Backend, Cancel, Event, GenOutput, GenRequest, SamplingParams};

/// What a mock endpoint answers to its `n`-th request (1-based), given the request body and its
/// `Authorization` header.
type Answer = dyn Fn(usize, &serde_json::Value, Option<&str>) -> Reply + Send + Sync;

enum Reply {
    Ok(String),
    Status(StatusCode, Vec<(&'static str, String)>, String),
    Hang(Duration),
    Raw(&'static str),
    /// A 200 with this JSON body.
    Json(serde_json::Value),
    /// A 200 event stream with this body.
    Sse(String),
}

#[derive(Clone)]
struct Mock {
    count: Arc<AtomicUsize>,
    answer: Arc<Answer>,
}

/// A mock endpoint on 127.0.0.1 that stops when dropped.
struct MockServer {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MockServer {
    fn start(
        answer: impl Fn(usize, &serde_json::Value, Option<&str>) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let mock = Mock {
            count: Arc::clone(&count),
            answer: Arc::new(answer),
        };
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(mock);
        runtime.spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            count,
            runtime: Some(runtime),
        }
    }

    fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Hanging handlers must not hold the test up.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(
    State(mock): State<Mock>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let n = mock.count.fetch_add(1, Ordering::SeqCst) + 1;
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    match (mock.answer)(n, &body, auth.as_deref()) {
        Reply::Ok(content) => Json(serde_json::json!({
            "id": format!("x{n}"),
            "object": "chat.completion",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "reasoning_content": "thinking"},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }))
        .into_response(),
        Reply::Status(status, headers, body) => {
            let mut response = (status, body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::Hang(wait) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, "{}").into_response()
        }
        Reply::Raw(text) => (StatusCode::OK, [("content-type", "application/json")], text).into_response(),
        Reply::Json(value) => Json(value).into_response(),
        Reply::Sse(text) => (StatusCode::OK, [("content-type", "text/event-stream")], text).into_response(),
    }
}

fn prompt_of(body: &serde_json::Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn requests(n: usize) -> Vec<GenRequest> {
    (0..n)
        .map(|i| GenRequest {
            key: format!("p{i}/0"),
            messages: vec![Message::user(format!("problem {i}"))],
            prefill: "<think>\n".into(),
            sampling: SamplingParams::default(),
            seed: i as u64,
            stop: Vec::new(),
            prompt_ids: None,
        })
        .collect()
}

fn config(addr: SocketAddr) -> OpenAiConfig {
    OpenAiConfig {
        base_urls: vec![format!("http://{addr}")],
        model: "mock".into(),
        concurrency: 4,
        timeout: Duration::from_millis(500),
        max_retries: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..OpenAiConfig::default()
    }
}

struct Run {
    done: Vec<GenOutput>,
    failed: Vec<(String, String)>,
    result: distill_teacher::Result<distill_teacher::GenStats>,
}

fn run(backend: &OpenAiBackend, n: usize) -> Run {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut iter = requests(n).into_iter();
    let result = backend.generate(&mut iter, &Cancel::new(), &mut |event| match event {
        Event::Done(output) => done.push(output),
        Event::Failed { key, error } => failed.push((key, error.to_string())),
        Event::Progress { .. } => {}
    });
    Run {
        done,
        failed,
        result,
    }
}

#[test]
fn faults_are_retried_and_counted() {
    let server = MockServer::start(|n, body, _| match n {
        1 => Reply::Status(
            StatusCode::TOO_MANY_REQUESTS,
            vec![("retry-after", "1".into())],
            r#"{"error":{"message":"slow down"}}"#.into(),
        ),
        2 => Reply::Status(StatusCode::INTERNAL_SERVER_ERROR, vec![], "boom".into()),
        3 => Reply::Hang(Duration::from_secs(5)),
        4 => Reply::Raw(r#"{"choices": [{"message": "#),
        _ => Reply::Ok(format!("answer to {}", prompt_of(body))),
    });
    let backend = OpenAiBackend::new(config(server.addr)).unwrap();
    let start = Instant::now();
    let run = run(&backend, 16);
    let stats = run.result.expect("the run succeeds");
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(stats.completed, 16);
    let mut keys: Vec<_> = run.done.iter().map(|o| o.key.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 16, "every sample exactly once");
    for output in &run.done {
        let i = output.key.trim_start_matches('p').trim_end_matches("/0");
        assert_eq!(
            output.text,
            format!("<think>\nthinking\n</think>\n\nanswer to problem {i}")
        );
        assert_eq!((output.prompt_tokens, output.completion_tokens), (7, 3));
    }
    assert_eq!(
        backend.error_counts(),
        ErrorCounts {
            rate_limited: 1,
            server: 1,
            timeout: 1,
            malformed: 1,
            ..ErrorCounts::default()
        }
    );
    assert_eq!(server.requests(), 20);
    // `Retry-After: 1` was obeyed rather than the 10 ms backoff.
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[test]
fn rejected_key_stops_at_once_without_leaking_it() {
    const VAR: &str = "DISTILL_TEST_OPENAI_KEY_401";
    const KEY: &str = "sk-very-secret-4011";
    std::env::set_var(VAR, KEY);
    for concurrency in [1, 4] {
        let server = MockServer::start(|_, _, auth| {
            assert_eq!(auth, Some("Bearer sk-very-secret-4011"));
            Reply::Status(
                StatusCode::UNAUTHORIZED,
                vec![],
                format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#),
            )
        });
        let backend = OpenAiBackend::new(OpenAiConfig {
            api_key_env: Some(VAR.into()),
            concurrency,
            max_retries: 5,
            ..config(server.addr)
        })
        .unwrap();
        assert!(!format!("{backend:?}").contains(KEY));
        let run = run(&backend, 16);
        let error = run.result.expect_err("a rejected key ends the run");
        let message = error.to_string();
        assert!(message.contains(&format!("`${VAR}`")), "{message}");
        assert!(!message.contains(KEY), "{message}");
        assert!(!format!("{error:?}").contains(KEY));
        assert!(run.done.is_empty() && run.failed.is_empty());
        // No retries: at most one request per slot already in flight (those still on their
        // way when the first 401 came back are abandoned).
        let made = server.requests();
        assert!(
            made >= 1 && made <= concurrency,
            "{made} requests at concurrency {concurrency}"
        );
        let counted = backend.error_counts().auth as usize;
        assert!(counted >= 1 && counted <= made, "{counted} of {made}");
    }
}

#[test]
fn unknown_model_stops_at_once_naming_it() {
    let server = MockServer::start(|_, _, _| {
        Reply::Status(
            StatusCode::NOT_FOUND,
            vec![],
            r#"{"error":{"message":"The model `no-such-model` does not exist."}}"#.into(),
        )
    });
    let backend = OpenAiBackend::new(OpenAiConfig {
        model: "no-such-model".into(),
        concurrency: 1,
        max_retries: 5,
        ..config(server.addr)
    })
    .unwrap();
    let run = run(&backend, 8);
    let message = run.result.expect_err("a 404 ends the run").to_string();
    assert!(message.contains("HTTP 404"), "{message}");
    assert!(message.contains("`no-such-model`"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert!(run.done.is_empty() && run.failed.is_empty());
    // One slot: exactly one request, no retries.
    assert_eq!(server.requests(), 1);
    assert_eq!(backend.error_counts().client, 1);
}

#[test]
fn missing_key_variable_is_reported_by_name() {
    let error = OpenAiBackend::new(OpenAiConfig {
        base_urls: vec!["http://127.0.0.1:9".into()],
        model: "m".into(),
        api_key_env: Some("DISTILL_TEST_OPENAI_KEY_UNSET".into()),
        ..OpenAiConfig::default()
    })
    .unwrap_err();
    assert!(error
        .to_string()
        .contains("`DISTILL_TEST_OPENAI_KEY_UNSET`"));
}

#[test]
fn other_client_errors_fail_only_their_request() {
    let server = MockServer::start(|_, body, _| {
        let prompt = prompt_of(body);
        if prompt == "problem 3" {
            Reply::Status(
                StatusCode::BAD_REQUEST,
                vec![],
                r#"{"error":{"message":"prompt too long"}}"#.into(),
            )
        } else {
            Reply::Ok("fine".into())
        }
    });
    let backend = OpenAiBackend::new(config(server.addr)).unwrap();
    let run = run(&backend, 8);
    let stats = run.result.unwrap();
    assert_eq!((stats.completed, stats.failed), (7, 1));
    assert_eq!(run.failed.len(), 1);
    assert_eq!(run.failed[0].0, "p3/0");
    assert!(
        run.failed[0].1.contains("prompt too long"),
        "{}",
        run.failed[0].1
    );
    assert_eq!(server.requests(), 8, "a 400 is not retried");
    assert_eq!(backend.error_counts().client, 1);
}

#[test]
fn unreachable_endpoint_names_the_url() {
    // A port that was just free and is closed again.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backend = OpenAiBackend::new(OpenAiConfig {
        base_urls: vec![format!("http://127.0.0.1:{port}/v1")],
        model: "m".into(),
        concurrency: 1,
        max_retries: 2,
        timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
        ..OpenAiConfig::default()
    })
    .unwrap();
    let start = Instant::now();
    let run = run(&backend, 5);
    let message = run.result.expect_err("nothing to reach").to_string();
    assert!(
        message.contains(&format!("`http://127.0.0.1:{port}/v1/chat/completions`")),
        "{message}"
    );
    assert!(message.contains("after 3 attempts"), "{message}");
    assert_eq!(backend.error_counts().connect, 3);
    assert!(start.elapsed() < Duration::from_secs(10));
}

fn write_problems(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("problems.jsonl");
    let lines: String = (0..n)
        .map(|i| {
            format!("{{\"id\": \"p{i}\", \"prompt\": \"problem {i}\", \"answer\": \"{i}\"}}\n")
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// One `generate` run (a new backend each time, as a rerun of the command would have).
fn generate_stage(addr: SocketAddr, problems: &Path, out: &Path) -> GenerateReport {
    try_generate_stage(config(addr), problems, out).unwrap()
}

fn try_generate_stage(
    config: OpenAiConfig,
    problems: &Path,
    out: &Path,
) -> distill_teacher::Result<GenerateReport> {
    let backend = OpenAiBackend::new(config).unwrap();
    let plan = Plan::new(
        GenerateConfig {
            problems: ProblemSource {
                path: problems.to_path_buf(),
                ..ProblemSource::default()
            },
            out: out.to_path_buf(),
            samples: 1,
            seed: 7,
            sampling: SamplingParams::default(),
            prompt: PromptConfig::default(),
            shard_rows: 4,
            shard_minutes: 0.0,
            force: false,
        },
        &backend.name(),
    )
    .unwrap();
    plan.run(&backend, &Cancel::new(), &mut |_| {})
}

fn corpus_ids(dir: &Path) -> Vec<String> {
    let reader = ShardReader::open(&[dir.to_path_buf()]).unwrap();
    let mut ids = Vec::new();
    for batch in reader.batches() {
        ids.extend(
            records_from_batch(&batch.unwrap())
                .unwrap()
                .into_iter()
                .map(|r| r.id),
        );
    }
    ids.sort();
    ids
}

fn manifest_errors(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("generation.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["errors"].clone()
}

/// 429, 500, a hang past the time-out and malformed JSON are retried; a 400 fails its sample,
/// which the next run (another misbehaving server) retries: the corpus ends with every sample
/// exactly once and `generation.json` holds the exact failed attempts of both runs by kind.
#[test]
fn generate_counts_faults_in_the_manifest_across_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path(), 16);
    let out = tmp.path().join("corpus");
    let first = MockServer::start(|n, body, _| match n {
        1 => Reply::Status(StatusCode::TOO_MANY_REQUESTS, vec![], "slow down".into()),
        2 => Reply::Status(StatusCode::BAD_GATEWAY, vec![], "boom".into()),
        3 => Reply::Hang(Duration::from_secs(5)),
        4 => Reply::Raw(r#"{"choices": [{"message": "#),
        _ if prompt_of(body).starts_with("problem 3\n") => Reply::Status(
            StatusCode::BAD_REQUEST,
            vec![],
            r#"{"error":{"message":"prompt too long"}}"#.into(),
        ),
        _ => Reply::Ok("\\boxed{1}".into()),
    });
    let report = generate_stage(first.addr, &problems, &out);
    assert_eq!((report.written, report.failed, report.skipped), (15, 1, 0));
    // Every problem's final attempt plus the four faulted ones.
    assert_eq!(first.requests(), 20);
    let all: Vec<String> = (0..16).map(|i| format!("p{i}/0")).collect();
    let mut want: Vec<String> = all.iter().filter(|k| *k != "p3/0").cloned().collect();
    want.sort();
    assert_eq!(corpus_ids(&out), want, "every finished sample exactly once");
    let errors = manifest_errors(&out);
    assert_eq!(errors["total"], 1);
    assert_eq!(
        errors["failed_attempts"],
        serde_json::json!({"http_429": 1, "http_5xx": 1, "timeout": 1, "connection": 0,
            "malformed": 1, "http_4xx": 1, "auth": 0})
    );
    assert_eq!(errors["recent"][0]["key"], "p3/0");
    assert!(
        errors["recent"][0]["message"]
            .as_str()
            .unwrap()
            .contains("prompt too long"),
        "{errors}"
    );
    drop(first);

    // The rerun asks only for the failed sample; its server fails it twice more first.
    let second = MockServer::start(|n, _, _| match n {
        1 => Reply::Status(StatusCode::SERVICE_UNAVAILABLE, vec![], "busy".into()),
        2 => Reply::Raw("not json"),
        _ => Reply::Ok("\\boxed{3}".into()),
    });
    let report = generate_stage(second.addr, &problems, &out);
    assert_eq!((report.written, report.failed, report.skipped), (1, 0, 15));
    assert_eq!(second.requests(), 3);
    let mut all = all;
    all.sort();
    assert_eq!(corpus_ids(&out), all, "every sample exactly once");
    let errors = manifest_errors(&out);
    assert_eq!(errors["total"], 1, "failed samples of every run");
    assert_eq!(
        errors["failed_attempts"],
        serde_json::json!({"http_429": 1, "http_5xx": 2, "timeout": 1, "connection": 0,
            "malformed": 2, "http_4xx": 1, "auth": 0})
    );
}

/// A run that ends on a rejected key still records its failed attempts.
#[test]
fn generate_records_the_attempts_of_a_failed_run() {
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path(), 4);
    let out = tmp.path().join("corpus");
    let server = MockServer::start(|n, _, _| match n {
        1 => Reply::Status(StatusCode::INTERNAL_SERVER_ERROR, vec![], "boom".into()),
        _ => Reply::Status(StatusCode::UNAUTHORIZED, vec![], "no".into()),
    });
    let config = OpenAiConfig {
        concurrency: 1,
        ..config(server.addr)
    };
    let error = try_generate_stage(config, &problems, &out).expect_err("401 ends the run");
    assert!(error.to_string().contains("401"), "{error}");
    assert_eq!(server.requests(), 2);
    assert!(corpus_ids(&out).is_empty());
    assert_eq!(
        manifest_errors(&out)["failed_attempts"],
        serde_json::json!({"http_429": 0, "http_5xx": 1, "timeout": 0, "connection": 0,
            "malformed": 0, "http_4xx": 0, "auth": 1})
    );
}

/// A non-streaming answer with these parts.
fn answer(reasoning: Option<&str>, content: Option<&str>, finish: Option<&str>) -> Reply {
    Reply::Json(serde_json::json!({
        "id": "x",
        "object": "chat.completion",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "reasoning_content": reasoning},
            "finish_reason": finish,
        }],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }))
}

/// vLLM's answer to a `max_tokens` larger than the model's context: every request gets it.
#[test]
fn max_tokens_beyond_the_context_ends_the_run_at_once() {
    const MESSAGE: &str = "'max_tokens' or 'max_completion_tokens' is too large: 32768. This \
        model's maximum context length is 4096 tokens and your request has 9 input tokens \
        (32768 > 4096 - 9).";
    for concurrency in [1, 4] {
        let server = MockServer::start(|_, _, _| {
            Reply::Status(
                StatusCode::BAD_REQUEST,
                vec![],
                serde_json::json!({"error": {"message": MESSAGE}}).to_string(),
            )
        });
        let backend = OpenAiBackend::new(OpenAiConfig {
            concurrency,
            ..config(server.addr)
        })
        .unwrap();
        let run = run(&backend, 16);
        let message = run
            .result
            .expect_err("the first such answer ends the run")
            .to_string();
        assert!(message.contains("`max_tokens = 32768`"), "{message}");
        assert!(
            message.contains("maximum context length is 4096"),
            "{message}"
        );
        assert!(
            run.done.is_empty() && run.failed.is_empty(),
            "{:?}",
            run.failed
        );
        let made = server.requests();
        assert!(
            made >= 1 && made <= concurrency,
            "{made} requests at {concurrency}"
        );
    }
}

/// Finish reasons are kept as what they are, in the output and in the corpus column.
#[test]
fn finish_reasons_other_than_stop_and_length_are_kept() {
    let reasons = [
        Some("stop"),
        Some("length"),
        Some("content_filter"),
        Some("abort"),
        Some("tool_calls"),
        None,
        Some("brand_new_reason"),
    ];
    let expected = [
        "stop",
        "length",
        "content_filter",
        "abort",
        "tool_calls",
        "unknown",
        "unknown",
    ];
    let server = MockServer::start(move |_, body, _| {
        let prompt = prompt_of(body);
        let i: usize = prompt
            .trim_start_matches("problem ")
            .split('\n')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        answer(Some("thinking"), Some("\\boxed{1}"), reasons[i])
    });
    let backend = OpenAiBackend::new(config(server.addr)).unwrap();
    let run = run(&backend, reasons.len());
    run.result.as_ref().unwrap();
    let mut got: Vec<(String, &str)> = run
        .done
        .iter()
        .map(|o| (o.key.clone(), o.finish_reason.as_str()))
        .collect();
    got.sort();
    let want: Vec<(String, &str)> = expected
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("p{i}/0"), *r))
        .collect();
    assert_eq!(got, want);

    // Through the `generate` stage into the corpus' `finish_reason` column.
    let tmp = tempfile::tempdir().unwrap();
    let problems = write_problems(tmp.path(), reasons.len());
    let out = tmp.path().join("corpus");
    try_generate_stage(config(server.addr), &problems, &out).unwrap();
    let reader = ShardReader::open(&[out]).unwrap();
    let mut column: Vec<(String, String)> = Vec::new();
    for batch in reader.batches() {
        for r in records_from_batch(&batch.unwrap()).unwrap() {
            column.push((r.id, r.finish_reason));
        }
    }
    column.sort();
    let want: Vec<(String, String)> = want.into_iter().map(|(k, r)| (k, r.to_string())).collect();
    assert_eq!(column, want);
}

/// `reasoning_content` of an answer cut before `</think>` is not closed: closing it would hide
/// the truncation from the filters. An answer cut after the reasoning ended is closed.
#[test]
fn an_answer_cut_while_reasoning_keeps_its_think_block_open() {
    let server = MockServer::start(|_, body, _| match prompt_of(body).as_str() {
        "problem 0" => answer(Some("Let me see. 6 times"), None, Some("length")),
        "problem 1" => answer(Some("Let me see. 6 times"), Some(""), Some("abort")),
        "problem 2" => answer(
            Some("6 times 7 is 42."),
            Some("The answer is"),
            Some("length"),
        ),
        _ => answer(Some("6 times 7 is 42."), Some("42"), Some("stop")),
    });
    let backend = OpenAiBackend::new(config(server.addr)).unwrap();
    let run = run(&backend, 4);
    run.result.as_ref().unwrap();
    let text = |key: &str| {
        run.done
            .iter()
            .find(|o| o.key == key)
            .map(|o| o.text.clone())
            .unwrap()
    };
    assert_eq!(text("p0/0"), "<think>\nLet me see. 6 times");
    assert_eq!(text("p1/0"), "<think>\nLet me see. 6 times");
    assert_eq!(
        text("p2/0"),
        "<think>\n6 times 7 is 42.\n</think>\n\nThe answer is"
    );
    assert_eq!(text("p3/0"), "<think>\n6 times 7 is 42.\n</think>\n\n42");
}

/// An event stream answering `problem i`: reasoning and content in several deltas, the finish
/// reason, then the usage chunk.
fn stream_answer(body: &serde_json::Value) -> Reply {
    let prompt = prompt_of(body);
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = serde_json::json!({"id": "s", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    };
    let mut text = String::new();
    text += &chunk(serde_json::json!({"role": "assistant"}), None);
    text += &chunk(serde_json::json!({"reasoning_content": "thinking "}), None);
    text += &chunk(serde_json::json!({"reasoning_content": "hard"}), None);
    text += &chunk(serde_json::json!({"content": "answer to "}), None);
    text += &chunk(serde_json::json!({"content": prompt}), Some("stop"));
    let usage = serde_json::json!({"id": "s", "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}});
    text += &format!("data: {usage}\n\ndata: [DONE]\n\n");
    Reply::Sse(text)
}

fn assert_streamed_answers(run: &Run, n: usize) {
    assert!(run.failed.is_empty(), "{:?}", run.failed);
    assert_eq!(run.done.len(), n);
    for output in &run.done {
        let i = output.key.trim_start_matches('p').trim_end_matches("/0");
        assert_eq!(
            output.text,
            format!("<think>\nthinking hard\n</think>\n\nanswer to problem {i}")
        );
        assert_eq!(output.finish_reason.as_str(), "stop");
        assert_eq!((output.prompt_tokens, output.completion_tokens), (7, 3));
    }
}

#[test]
fn stream_asks_for_a_stream_with_usage_and_joins_the_deltas() {
    let server = MockServer::start(|_, body, _| {
        assert_eq!(body["stream"], true, "{body}");
        assert_eq!(body["stream_options"]["include_usage"], true, "{body}");
        stream_answer(body)
    });
    let backend = OpenAiBackend::new(OpenAiConfig {
        stream: true,
        ..config(server.addr)
    })
    .unwrap();
    let run = run(&backend, 6);
    run.result.as_ref().unwrap();
    assert_streamed_answers(&run, 6);
    assert_eq!(server.requests(), 6);
}

/// A server that refuses non-streaming requests is streamed from its first refusal on; the
/// refusal is no failed attempt.
#[test]
fn a_server_that_only_streams_is_streamed_once_it_says_so() {
    let server = MockServer::start(|_, body, _| {
        if body["stream"] == true {
            stream_answer(body)
        } else {
            Reply::Status(
                StatusCode::BAD_REQUEST,
                vec![],
                r#"{"error":{"message":"Only streaming is supported: set `stream` to true"}}"#
                    .into(),
            )
        }
    });
    let backend = OpenAiBackend::new(OpenAiConfig {
        concurrency: 1,
        max_retries: 0,
        ..config(server.addr)
    })
    .unwrap();
    let run = run(&backend, 5);
    run.result.as_ref().unwrap();
    assert_streamed_answers(&run, 5);
    assert_eq!(server.requests(), 6, "one refusal, then five streams");
    assert_eq!(backend.error_counts(), ErrorCounts::default());
}

/// A server that streams although no stream was asked for is read all the same.
#[test]
fn an_unasked_stream_is_read() {
    let server = MockServer::start(|_, body, _| {
        assert_eq!(body["stream"], false);
        stream_answer(body)
    });
    let backend = OpenAiBackend::new(config(server.addr)).unwrap();
    let run = run(&backend, 3);
    run.result.as_ref().unwrap();
    assert_streamed_answers(&run, 3);
}
