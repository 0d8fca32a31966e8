//! Scoring given token ids: `distill serve`'s `/v1/completions` with vLLM's `prompt_logprobs`,
//! read back by the `PromptScorer` client, against the model's own full forward.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use distill_models::Checkpoint;
use distill_teacher::openai::prompt_logprobs::PromptScorer;
use distill_teacher::openai::OpenAiConfig;
use distill_teacher::score::{score_prompt, score_prompts, score_tokens};
use distill_teacher::server::{RunningServer, Server, ServerConfig};
use distill_teacher::{Engine, EngineOptions};
use serde_json::{json, Value};

const MODEL: &str = "tiny-llama";

fn engine() -> Arc<Engine> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-llama.gguf");
    let checkpoint = Checkpoint::open(&path).expect("fixture opens");
    Arc::new(Engine::load(&checkpoint, EngineOptions::default()).expect("fixture loads"))
}

fn start(engine: Arc<Engine>) -> RunningServer {
    let server = Server::new(engine, ServerConfig::new(MODEL)).expect("server starts");
    RunningServer::start(server, "127.0.0.1:0").expect("server binds")
}

fn post(url: &str, body: Value) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
            .post(url)
            .json(&body)
            .send()
            .await
            .expect("request reaches the server");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    })
}

/// Log-softmax rows of the model's training forward over `ids` (no cache).
fn reference_logprobs(engine: &Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    common::log_softmax_rows(engine.model(), ids)
}

const IDS: [u32; 9] = [1, 17, 42, 9, 100, 3, 77, 5, 64];

#[test]
fn served_prompt_logprobs_are_the_models() {
    let engine = engine();
    let reference = reference_logprobs(&engine, &IDS);
    let server = start(Arc::clone(&engine));
    let url = format!("{}/v1/completions", server.base_url());
    let (status, answer) = post(
        &url,
        json!({"model": MODEL, "prompt": IDS, "max_tokens": 1, "prompt_logprobs": 3}),
    );
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["prompt_token_ids"], json!(IDS));
    let entries = choice["prompt_logprobs"].as_array().unwrap();
    assert_eq!(entries.len(), IDS.len());
    assert!(entries[0].is_null());
    for (i, entry) in entries.iter().enumerate().skip(1) {
        let entry = entry.as_object().unwrap();
        let row = &reference[i - 1];
        // The prompt's own token is always there, with its rank.
        let own = &entry[&IDS[i].to_string()];
        let want = row[IDS[i] as usize];
        assert!((own["logprob"].as_f64().unwrap() as f32 - want).abs() < 2e-3);
        let rank = 1 + row.iter().filter(|&&x| x > want).count() as u64;
        assert_eq!(own["rank"].as_u64().unwrap(), rank, "position {i}");
        assert!(own["decoded_token"].is_string());
        // The top 3 by rank are the reference's 3 largest.
        let mut sorted: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (r, &(id, lp)) in sorted.iter().take(3).enumerate() {
            let got = &entry[&id.to_string()];
            assert_eq!(got["rank"].as_u64().unwrap(), r as u64 + 1, "position {i}");
            assert!((got["logprob"].as_f64().unwrap() as f32 - lp).abs() < 2e-3);
        }
        assert_eq!(entry.len(), if rank <= 3 { 3 } else { 4 });
    }
    // The one generated token is the most likely after the prompt.
    let last = reference_logprobs(&engine, &IDS[..]).pop().unwrap();
    let best = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap() as u32;
    let text = engine.tokenizer().decode(&[best], false).unwrap();
    assert_eq!(choice["text"], json!(text));
    assert_eq!(answer["usage"]["prompt_tokens"], json!(IDS.len()));

    // The client reads the same numbers, for several sequences at once.
    let scorer = PromptScorer::new(OpenAiConfig {
        base_urls: vec![server.base_url()],
        ..OpenAiConfig::default()
    })
    .expect("the scorer finds the served model");
    assert_eq!(scorer.model(), MODEL);
    let sequences = vec![IDS.to_vec(), IDS[2..7].to_vec()];
    let scored = scorer.score(&sequences, 4).unwrap();
    for (ids, scores) in sequences.iter().zip(&scored) {
        let local = score_tokens(engine.model(), ids, 4).unwrap();
        assert_eq!(scores.len(), ids.len() - 1);
        for (s, l) in scores.iter().zip(&local) {
            assert_eq!(s.rank, l.rank);
            assert_eq!(
                s.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                l.top.iter().map(|t| t.0).collect::<Vec<_>>()
            );
            // f32 → JSON f64 → f32 is exact; the two runs may split the kernels' work
            // differently (last-bit differences).
            assert!(
                (s.logprob - l.logprob).abs() < 1e-5,
                "{} {}",
                s.logprob,
                l.logprob
            );
            assert!(s.text.is_some());
        }
    }
}

/// Prompts scored together (a ragged batch, chunks of long ones in later steps) score as each
/// alone: the same ranks, alternatives and next token, log-probabilities within the kernels'
/// summation-order differences.
#[test]
fn prompts_scored_together_score_as_each_alone() {
    let engine = engine();
    let long: Vec<u32> = (0..700).map(|i| (i * 37 % 250 + 3) as u32).collect();
    let prompts: Vec<&[u32]> = vec![&IDS, &long, &IDS[2..7], &IDS[..1], &long[..300]];
    for next in [false, true] {
        let together = score_prompts(engine.model(), &prompts, 3, next).unwrap();
        assert_eq!(together.len(), prompts.len());
        for (ids, (scores, after)) in prompts.iter().zip(&together) {
            let (alone, alone_after) = score_prompt(engine.model(), ids, 3, next).unwrap();
            assert_eq!(scores.len(), alone.len());
            assert_eq!(scores.len(), ids.len() - 1);
            for (a, b) in scores.iter().zip(&alone) {
                assert_eq!(a.rank, b.rank);
                let ids = |s: &distill_teacher::score::TokenScore| {
                    s.top.iter().map(|t| t.0).collect::<Vec<_>>()
                };
                assert_eq!(ids(a), ids(b));
                assert!(
                    (a.logprob - b.logprob).abs() < 1e-4,
                    "{} {}",
                    a.logprob,
                    b.logprob
                );
            }
            assert_eq!(after.is_some(), next);
            assert_eq!(
                after.as_ref().map(|a| a.0),
                alone_after.as_ref().map(|a| a.0)
            );
        }
    }
}

/// What lm-evaluation-harness sends for a log-likelihood (`echo`, `logprobs` 1, `max_tokens` 1,
/// token ids) and reads (`token_logprobs` over the prompt, the first `null`, and whether each
/// token was the greedy one from `top_logprobs`): the model's numbers, the greedy next token
/// last; with `max_tokens` 0 the prompt alone; without `echo` the next token alone.
#[test]
fn echoed_logprobs_are_what_lm_evaluation_harness_reads() {
    let engine = engine();
    let reference = reference_logprobs(&engine, &IDS);
    let server = start(Arc::clone(&engine));
    let url = format!("{}/v1/completions", server.base_url());
    let name = |id: u32| engine.tokenizer().decode(&[id], false).unwrap();
    let best_of = |row: &[f32]| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .unwrap() as u32
    };
    let body = json!({"model": MODEL, "prompt": IDS, "max_tokens": 1, "temperature": 0,
                      "logprobs": 1, "echo": true, "seed": 1234});
    let (status, answer) = post(&url, body.clone());
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    let lp = &choice["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    let logprobs = lp["token_logprobs"].as_array().unwrap();
    let tops = lp["top_logprobs"].as_array().unwrap();
    assert_eq!(tokens.len(), IDS.len() + 1);
    assert_eq!(logprobs.len(), IDS.len() + 1);
    assert!(logprobs[0].is_null() && tops[0].is_null());
    for i in 1..IDS.len() {
        let row = &reference[i - 1];
        assert_eq!(tokens[i], json!(name(IDS[i])));
        let got = logprobs[i].as_f64().unwrap() as f32;
        assert!((got - row[IDS[i] as usize]).abs() < 2e-3, "position {i}");
        // The harness's is-greedy test: the top entry is the token itself exactly when the
        // token is the model's most likely one.
        let top = tops[i].as_object().unwrap();
        assert_eq!(top.len(), 1);
        let greedy = best_of(row);
        assert!(top.contains_key(&name(greedy)), "position {i}");
    }
    let last = reference_logprobs(&engine, &IDS).pop().unwrap();
    let next = best_of(&last);
    assert_eq!(tokens[IDS.len()], json!(name(next)));
    let got = logprobs[IDS.len()].as_f64().unwrap() as f32;
    assert!((got - last[next as usize]).abs() < 2e-3);
    let prompt_text = engine.tokenizer().decode(&IDS, false).unwrap();
    assert_eq!(
        choice["text"],
        json!(format!("{prompt_text}{}", name(next)))
    );
    let offsets = lp["text_offset"].as_array().unwrap();
    assert_eq!(offsets[0], 0);
    assert_eq!(offsets[1], json!(name(IDS[0]).len()));
    assert_eq!(answer["usage"]["completion_tokens"], 1);

    let mut prompt_only = body.clone();
    prompt_only["max_tokens"] = json!(0);
    let (status, answer) = post(&url, prompt_only);
    assert_eq!(status, 200, "{answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["text"], json!(prompt_text));
    assert_eq!(
        choice["logprobs"]["token_logprobs"]
            .as_array()
            .map(Vec::len),
        Some(IDS.len())
    );
    assert_eq!(answer["usage"]["completion_tokens"], 0);

    // Without `echo`, `max_tokens` 1 and `logprobs` generate one greedy token, its numbers alone.
    let mut next_only = body;
    next_only["echo"] = json!(false);
    let (status, answer) = post(&url, next_only);
    assert_eq!(status, 200, "{answer}");
    let lp = &answer["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!([name(next)]));
    assert!((lp["token_logprobs"][0].as_f64().unwrap() as f32 - last[next as usize]).abs() < 2e-3);
}

#[test]
fn scoring_requests_are_checked() {
    let server = start(engine());
    let url = format!("{}/v1/completions", server.base_url());
    for (body, param, says) in [
        (
            json!({"prompt": [1, 2], "prompt_logprobs": 1}),
            "max_tokens",
            "`max_tokens` is 16",
        ),
        (
            json!({"prompt": [1, 2], "max_tokens": 5, "prompt_logprobs": 0}),
            "max_tokens",
            "must be 0 or 1 when scoring",
        ),
        (
            json!({"prompt": [1, 2], "max_tokens": 0, "echo": true, "logprobs": 21}),
            "logprobs",
            "within [0, 20]",
        ),
        (json!({"max_tokens": 1}), "prompt", "`prompt` is required"),
        (
            json!({"prompt": [], "max_tokens": 1}),
            "prompt",
            "at least one token",
        ),
        (
            json!({"prompt": [1, 99999], "max_tokens": 1}),
            "prompt",
            "outside the model's vocabulary",
        ),
        (
            json!({"prompt": [1], "max_tokens": 1, "prompt_logprobs": 1, "stream": true}),
            "stream",
            "`stream`",
        ),
        // Generation (no `prompt_logprobs`): what it does not do is refused by name too.
        (
            json!({"prompt": [1], "max_tokens": 4, "echo": true, "logprobs": 1}),
            "echo",
            "`echo` with `logprobs`",
        ),
        (
            json!({"prompt": [1], "max_tokens": 4, "logprobs": 21}),
            "logprobs",
            "within [0, 20]",
        ),
        (
            json!({"prompt": [1], "max_tokens": 4, "frequency_penalty": 1.0}),
            "frequency_penalty",
            "does not apply it",
        ),
        (json!({"prompt": [1], "n": 0}), "n", "`n` is 0"),
        (
            json!({"prompt": [1], "max_tokens": 1, "prompt_logprobs": -1}),
            "prompt_logprobs",
            "at least 0",
        ),
    ] {
        let (status, answer) = post(&url, body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["param"], json!(param), "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let (status, _) = post(
        &url,
        json!({"model": "other", "prompt": [1], "max_tokens": 1}),
    );
    assert_eq!(status, 404);
    // A text prompt and a batch of texts: tokenised by the server.
    let (status, answer) = post(&url, json!({"prompt": ["a b", "c"], "max_tokens": 0}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"].as_array().unwrap().len(), 2);
    assert_eq!(answer["choices"][0]["text"], json!(""));
    assert!(answer["choices"][0].get("prompt_logprobs").is_none());

    // The client names the model it looked for, and a server nobody listens on, at once.
    let e = PromptScorer::new(OpenAiConfig {
        base_urls: vec![server.base_url()],
        model: "other".into(),
        ..OpenAiConfig::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("`other`") && e.contains(MODEL), "{e}");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let started = Instant::now();
    let e = PromptScorer::new(OpenAiConfig {
        base_urls: vec![format!("http://{closed}")],
        ..OpenAiConfig::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains(&format!("http://{closed}/v1/models")), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// An endpoint serving `answer` on `/v1/completions` (and one model, `m`, on `/v1/models`), on a
/// runtime of its own that stops when the returned value is dropped.
fn fake_endpoint(answer: Value) -> (String, tokio::runtime::Runtime) {
    use axum::routing::{get, post};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"data": [{"id": "m"}]})) }),
        )
        .route(
            "/v1/completions",
            post(move || {
                let answer = answer.clone();
                async move { axum::Json(answer) }
            }),
        );
    runtime.spawn(async move { axum::serve(listener, app).await });
    (url, runtime)
}

/// An endpoint that answers without `prompt_logprobs` (it does not score prompts), or with fewer
/// alternatives than asked, ends the call at once with the reason, instead of being retried as
/// a malformed answer.
#[test]
fn endpoints_that_do_not_score_fail_at_once() {
    let no_scores = json!({"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]});
    let short = json!({"choices": [{"index": 0, "text": "x", "prompt_logprobs": [
        null, {"7": {"logprob": -0.5, "rank": 1}}
    ]}]});
    for (answer, says) in [
        (no_scores, "does not score prompts"),
        (short, "holds 1 tokens where 2 were asked"),
    ] {
        let (url, _runtime) = fake_endpoint(answer);
        let scorer = PromptScorer::new(OpenAiConfig {
            base_urls: vec![url.clone()],
            ..OpenAiConfig::default()
        })
        .unwrap();
        let started = Instant::now();
        let e = scorer.score(&[vec![1, 7]], 2).unwrap_err().to_string();
        assert!(e.contains(says) && e.contains(&url), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "retried: {e}");
    }
}
