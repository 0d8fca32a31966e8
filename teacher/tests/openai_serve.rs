//! The `openai` backend against `distill serve`'s router on loopback, both on the tiny fixture
//! model: every sample comes back exactly once, and greedy samples equal the local backend's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use distill_models::chat::Message;
use distill_models::Checkpoint;
use distill_teacher::openai::{ApiKey, OpenAiBackend, OpenAiConfig, PrefillMode};
use distill_teacher::server::{RunningServer, Server, ServerConfig};
use distill_teacher::{
    Backend, Cancel, Engine, EngineOptions, Event, GenOutput, GenRequest, LocalBackend,
    SamplingParams,
};

const MODEL: &str = "tiny-llama";

fn engine() -> Arc<Engine> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-llama.gguf");
    let checkpoint = Checkpoint::open(&path).expect("fixture opens");
    let options = EngineOptions {
        batch: 4,
        ..EngineOptions::default()
    };
    Arc::new(Engine::load(&checkpoint, options).expect("fixture loads"))
}

fn requests(n: usize, prefill: &str) -> Vec<GenRequest> {
    (0..n)
        .map(|i| GenRequest {
            key: format!("p{i}/0"),
            messages: vec![Message::user(format!("What is {i} plus {}?", i * 7))],
            prefill: prefill.to_string(),
            sampling: SamplingParams {
                temperature: 0.0,
                top_p: 1.0,
                top_k: 0,
                max_new_tokens: 12 + i % 5,
                logprobs: 0,
            },
            seed: i as u64,
            stop: Vec::new(),
            prompt_ids: None,
        })
        .collect()
}

/// Runs `backend` and returns its outputs by key, failing on any duplicate or failure.
fn collect(backend: &dyn Backend, requests: Vec<GenRequest>) -> HashMap<String, GenOutput> {
    let mut out = HashMap::new();
    let mut failures = Vec::new();
    let mut progress = 0;
    let mut iter = requests.into_iter();
    let stats = backend
        .generate(&mut iter, &Cancel::new(), &mut |event| match event {
            Event::Done(output) => {
                let key = output.key.clone();
                assert!(
                    out.insert(key.clone(), output).is_none(),
                    "`{key}` came back twice"
                );
            }
            Event::Failed { key, error } => failures.push(format!("{key}: {error}")),
            Event::Progress { new_tokens } => progress += new_tokens,
        })
        .expect("generation runs");
    assert!(failures.is_empty(), "failures: {failures:?}");
    assert_eq!(stats.completed as usize, out.len());
    // Tokens/s displays read `Progress`: every backend reports all its tokens there.
    assert_eq!(progress, stats.completion_tokens, "{}", backend.name());
    out
}

/// `got` is `want`: the same text, tokens and ids; log-probabilities within 1e-5 (float32 values
/// that went through JSON, from a batch of other sequences).
fn assert_same_sample(got: &GenOutput, want: &GenOutput, key: &str) {
    let strip = |o: &GenOutput| GenOutput {
        logprobs: None,
        ..o.clone()
    };
    assert_eq!(strip(got), strip(want), "sample `{key}`");
    let (g, w) = (
        got.logprobs.as_ref().unwrap(),
        want.logprobs.as_ref().unwrap(),
    );
    assert_eq!((g.k(), g.token_ids()), (w.k(), w.token_ids()), "`{key}`");
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-5;
    assert!(g
        .token_logprobs()
        .zip(w.token_logprobs())
        .all(|(a, b)| close(a, b)));
    for i in 0..g.len() {
        assert_eq!(g.top(i).0, w.top(i).0, "`{key}` step {i}");
        assert!(
            g.top(i).1.zip(w.top(i).1).all(|(a, b)| close(a, b)),
            "`{key}` step {i}"
        );
    }
}

fn client(server: &RunningServer, prefill: PrefillMode) -> OpenAiBackend {
    let base = server.base_url();
    OpenAiBackend::new(OpenAiConfig {
        // The same server twice, once with `/v1`: round-robin and both URL forms.
        base_urls: vec![format!("{base}/v1"), format!("{base}/")],
        model: MODEL.into(),
        concurrency: 4,
        timeout: Duration::from_secs(60),
        max_retries: 0,
        prefill,
        ..OpenAiConfig::default()
    })
    .expect("backend builds")
}

#[test]
fn openai_backend_against_serve_equals_local() {
    let engine = engine();
    let local = LocalBackend::new(Arc::clone(&engine), MODEL);
    let server = Server::new(Arc::clone(&engine), ServerConfig::new(MODEL)).expect("server starts");
    let running = RunningServer::start(server, "127.0.0.1:0").expect("server binds");

    // No prefill: what an R1 endpoint is sent by default.
    let expected = collect(&local, requests(16, ""));
    let remote = client(&running, PrefillMode::None);
    let got = collect(&remote, requests(16, ""));
    assert_eq!(got.len(), 16);
    for (key, want) in &expected {
        assert_eq!(got.get(key), Some(want), "sample `{key}`");
    }
    assert_eq!(remote.error_counts().total(), 0);
    assert_eq!(remote.name(), "openai:tiny-llama");

    // Streamed: the deltas, finish reason and usage of `distill serve`'s event stream join into
    // the same samples.
    let streamed = OpenAiBackend::new(OpenAiConfig {
        stream: true,
        ..client(&running, PrefillMode::None).config().clone()
    })
    .expect("backend builds");
    let got = collect(&streamed, requests(16, ""));
    assert_eq!(got.len(), 16);
    for (key, want) in &expected {
        assert_eq!(got.get(key), Some(want), "streamed sample `{key}`");
    }
    assert_eq!(streamed.error_counts().total(), 0);

    // The R1 prefill sent with `continue_final_message`: the text starts with it, as locally.
    let expected = collect(&local, requests(16, "<think>\n"));
    let remote = client(&running, PrefillMode::ContinueFinalMessage);
    let got = collect(&remote, requests(16, "<think>\n"));
    assert_eq!(got.len(), 16);
    for (key, want) in &expected {
        assert!(want.text.starts_with("<think>\n"));
        assert_eq!(got.get(key), Some(want), "sample `{key}` with prefill");
    }

    let stats = running.server().stats();
    assert_eq!(stats.completed, 48);
    assert_eq!(stats.failed, 0);
    assert!(stats.peak_live <= 4, "{stats:?}");
}

/// `logprobs: K` through the `openai` backend against `distill serve`: the client asks for
/// `logprobs`, `top_logprobs` and `return_tokens_as_token_ids`, the server answers with the
/// engine's per-token float32 log-probabilities named `token_id:N`, and the result equals the
/// local backend's (the values within 1e-5: the server batches the requests differently),
/// streamed (`--stream`: the chunks' entries joined) or not. Asked by hand without token ids, the server
/// names tokens by text; an out-of-range `top_logprobs` is refused by name.
#[test]
fn logprobs_through_the_endpoint_equal_the_local_engines() {
    let engine = engine();
    let local = LocalBackend::new(Arc::clone(&engine), MODEL);
    let server = Server::new(Arc::clone(&engine), ServerConfig::new(MODEL)).expect("server starts");
    let running = RunningServer::start(server, "127.0.0.1:0").expect("server binds");
    let asked = |n| {
        let mut r = requests(n, "");
        for q in &mut r {
            q.sampling.logprobs = 5;
        }
        r
    };
    let expected = collect(&local, asked(6));
    let got = collect(&client(&running, PrefillMode::None), asked(6));
    // Streamed, the chunks' log-probabilities join into the same record.
    let streamed = OpenAiBackend::new(OpenAiConfig {
        stream: true,
        ..client(&running, PrefillMode::None).config().clone()
    })
    .expect("backend builds");
    let got_streamed = collect(&streamed, asked(6));
    for (key, want) in &expected {
        let lp = want.logprobs.as_ref().expect("local log-probabilities");
        assert_eq!(lp.len(), want.completion_tokens as usize);
        assert_same_sample(&got[key], want, key);
        assert_same_sample(&got_streamed[key], want, &format!("streamed {key}"));
    }

    // By hand, without `return_tokens_as_token_ids`: tokens by their text.
    let url = format!("{}/v1/chat/completions", running.base_url());
    let body = serde_json::json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2,
    });
    let post = |body: serde_json::Value| -> serde_json::Value {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let response = reqwest::Client::new()
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap();
            response.json().await.unwrap()
        })
    };
    let answer = post(body);
    let content = answer["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap();
    assert!(!content.is_empty());
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(!content[0]["token"]
        .as_str()
        .unwrap()
        .starts_with("token_id:"));
    let refused = post(serde_json::json!({
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
        "logprobs": true, "top_logprobs": 21,
    }));
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`top_logprobs` is 21"));
}

/// A server that requires a key: the `openai` backend given it (`api_key_env`) samples as
/// before; without it the first request fails at once saying a key is needed; with a wrong one,
/// that it was rejected (naming the variable, never the key).
#[test]
fn a_keyed_server_answers_the_client_with_its_key_only() {
    const VAR: &str = "DISTILL_TEST_OPENAI_SERVE_KEY";
    const WRONG: &str = "DISTILL_TEST_OPENAI_SERVE_WRONG_KEY";
    // Names no other test reads, set before any backend reads them.
    std::env::set_var(VAR, "s3cret-key");
    std::env::set_var(WRONG, "s3cret-kez");
    let engine = engine();
    let local = LocalBackend::new(Arc::clone(&engine), MODEL);
    let mut config = ServerConfig::new(MODEL);
    config.api_key = Some(ApiKey::new("s3cret-key"));
    let server = Server::new(Arc::clone(&engine), config).expect("server starts");
    let running = RunningServer::start(server, "127.0.0.1:0").expect("server binds");
    let keyed = |env: Option<&str>| {
        OpenAiBackend::new(OpenAiConfig {
            api_key_env: env.map(str::to_string),
            ..client(&running, PrefillMode::None).config().clone()
        })
        .expect("backend builds")
    };
    let expected = collect(&local, requests(4, ""));
    let got = collect(&keyed(Some(VAR)), requests(4, ""));
    assert_eq!(got, expected);

    for (env, says) in [(None, "no API key was given"), (Some(WRONG), WRONG)] {
        let backend = keyed(env);
        let mut iter = requests(1, "").into_iter();
        let error = backend
            .generate(&mut iter, &Cancel::new(), &mut |_| {})
            .expect_err("refused without the key")
            .to_string();
        assert!(error.contains("401") && error.contains(says), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }
}
