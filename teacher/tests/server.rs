//! `distill serve`'s router on loopback with the tiny fixture model: OpenAI-style 400s, the model
//! list, streaming, `n` choices, raw prompts on `/v1/completions`, and concurrent requests
//! sharing the engine's batch.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distill_models::chat::Message;
use distill_models::Checkpoint;
use distill_teacher::openai::ApiKey;
use distill_teacher::server::{RunningServer, Server, ServerConfig};
use distill_teacher::{Engine, EngineOptions};
use serde_json::{json, Value};

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

fn serve(engine: Arc<Engine>) -> RunningServer {
    let server = Server::new(engine, ServerConfig::new(MODEL)).expect("server starts");
    RunningServer::start(server, "127.0.0.1:0").expect("server binds")
}

fn start() -> RunningServer {
    serve(engine())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, url: &str, body: &str) -> (u16, String) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request reaches the server");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `body` streamed with the usage: its chunks.
async fn stream_chunks(client: &reqwest::Client, url: &str, mut body: Value) -> Vec<Value> {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, text) = post(client, url, &body.to_string()).await;
    assert_eq!(status, 200, "{text}");
    sse_chunks(&text)
}

/// The JSON chunks of a server-sent event stream, which must end with one `[DONE]`.
fn sse_chunks(text: &str) -> Vec<Value> {
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("SSE data line"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    assert_eq!(events.iter().filter(|e| **e == "[DONE]").count(), 1);
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

fn greedy(content: &str, max_tokens: u32) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": max_tokens,
    })
}

#[test]
fn malformed_requests_get_openai_style_400s() {
    let server = start();
    let url = format!("{}/v1/chat/completions", server.base_url());
    let cases: Vec<(&str, String, &str)> =
        vec![
        ("not json", "{".into(), ""),
        ("no messages", json!({"model": MODEL}).to_string(), "messages"),
        ("empty messages", json!({"messages": []}).to_string(), "messages"),
        (
            "temperature",
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 3.5}).to_string(),
            "temperature",
        ),
        (
            "top_p",
            json!({"messages": [{"role": "user", "content": "x"}], "top_p": 0}).to_string(),
            "top_p",
        ),
        (
            "max_tokens",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).to_string(),
            "max_tokens",
        ),
        (
            "n",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0}).to_string(),
            "n",
        ),
        (
            "n over the limit",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 129}).to_string(),
            "n",
        ),
        (
            "a penalty the server does not apply",
            json!({"messages": [{"role": "user", "content": "x"}], "presence_penalty": 0.5})
                .to_string(),
            "presence_penalty",
        ),
        (
            "a grammar the server does not apply",
            json!({"messages": [{"role": "user", "content": "x"}],
                   "response_format": {"type": "json_object"}})
            .to_string(),
            "response_format",
        ),
        (
            "role",
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            "messages",
        ),
        (
            "messages type",
            json!({"messages": "hello"}).to_string(),
            "",
        ),
        (
            "no generation prompt",
            json!({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": false})
                .to_string(),
            "add_generation_prompt",
        ),
        (
            "continue without assistant",
            json!({"messages": [{"role": "user", "content": "x"}], "continue_final_message": true})
                .to_string(),
            "continue_final_message",
        ),
    ];
    runtime().block_on(async {
        let client = client();
        for (name, body, param) in cases {
            let (status, text) = post(&client, &url, &body).await;
            assert_eq!(status, 400, "{name}: {text}");
            let value: Value = serde_json::from_str(&text).expect("error body is JSON");
            assert_eq!(value["error"]["type"], "invalid_request_error", "{name}");
            assert!(value["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            if !param.is_empty() {
                assert_eq!(value["error"]["param"], param, "{name}: {text}");
            }
        }
        // Another model's name: 404 like OpenAI and vLLM.
        let body = json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]});
        let (status, text) = post(&client, &url, &body.to_string()).await;
        assert_eq!(status, 404, "{text}");
        assert!(text.contains("gpt-9"));
    });
    assert_eq!(
        server.server().stats().submitted,
        0,
        "nothing invalid reached the engine"
    );
}

#[test]
fn models_lists_the_model() {
    let server = start();
    runtime().block_on(async {
        let response = client()
            .get(format!("{}/v1/models", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let value: Value = response.json().await.unwrap();
        assert_eq!(value["object"], "list");
        assert_eq!(value["data"][0]["id"], MODEL);
        assert_eq!(value["data"].as_array().map(Vec::len), Some(1));
    });
}

#[test]
fn concurrent_requests_share_a_batch() {
    let server = start();
    let url = format!("{}/v1/chat/completions", server.base_url());
    let engine = server.server().engine();
    // Hold the engine's intake so both requests are queued before it takes either.
    engine.set_paused(true);
    runtime().block_on(async {
        let client = client();
        let a = tokio::spawn({
            let (client, url) = (client.clone(), url.clone());
            async move { post(&client, &url, &greedy("first", 16).to_string()).await }
        });
        let b = tokio::spawn({
            let (client, url) = (client.clone(), url.clone());
            async move { post(&client, &url, &greedy("second", 16).to_string()).await }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.stats().queued < 2 {
            assert!(
                Instant::now() < deadline,
                "requests never queued: {:?}",
                engine.stats()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(engine.stats().peak_live, 0);
        engine.set_paused(false);
        for handle in [a, b] {
            let (status, text) = handle.await.unwrap();
            assert_eq!(status, 200, "{text}");
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["object"], "chat.completion");
            assert_eq!(value["model"], MODEL);
            assert_eq!(value["choices"][0]["message"]["role"], "assistant");
            assert!(value["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
        }
    });
    let stats = engine.stats();
    assert_eq!(stats.completed, 2);
    assert_eq!(
        stats.peak_live, 2,
        "both requests were live in the engine at once"
    );
}

#[test]
fn streaming_matches_the_whole_reply() {
    let server = start();
    let url = format!("{}/v1/chat/completions", server.base_url());
    runtime().block_on(async {
        let client = client();
        let body = greedy("stream me", 20);
        let (status, text) = post(&client, &url, &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let whole: Value = serde_json::from_str(&text).unwrap();
        let content = whole["choices"][0]["message"]["content"].as_str().unwrap();

        let chunks = stream_chunks(&client, &url, body).await;
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, content);
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, whole["choices"][0]["finish_reason"].as_str());
        let usage = &chunks.last().unwrap()["usage"];
        assert_eq!(usage, &whole["usage"]);
    });
}

/// Streamed `logprobs` (OpenAI's and vLLM's chunks carry their tokens'): the chunks' entries,
/// joined, are the whole answer's, token for token with their alternatives (values within
/// 1e-5: float32 from two runs of the batch), for a sampled reply ended by a stop string and
/// for `n` = 2 under each choice's index.
#[test]
fn streamed_logprobs_join_into_the_whole_answers() {
    let server = start();
    let url = format!("{}/v1/chat/completions", server.base_url());
    runtime().block_on(async {
        let client = client();
        let mut body = greedy("stream my log-probabilities", 24);
        body["temperature"] = json!(0.9);
        body["seed"] = json!(5);
        body["logprobs"] = json!(true);
        body["top_logprobs"] = json!(3);
        body["n"] = json!(2);
        for stop in [json!(null), json!(["e"])] {
            body["stop"] = stop.clone();
            let (status, text) = post(&client, &url, &body.to_string()).await;
            assert_eq!(status, 200, "{text}");
            let whole: Value = serde_json::from_str(&text).unwrap();
            let chunks = stream_chunks(&client, &url, body.clone()).await;
            for index in 0..2 {
                let choice = &whole["choices"][index];
                let want = choice["logprobs"]["content"].as_array().unwrap();
                assert!(!want.is_empty() && want[0]["top_logprobs"].as_array().unwrap().len() == 3);
                let mine = chunks.iter().filter_map(|c| {
                    c["choices"]
                        .as_array()
                        .and_then(|cs| cs.iter().find(|ch| ch["index"] == index))
                });
                let (mut text, mut entries) = (String::new(), Vec::new());
                for ch in mine {
                    text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
                    if let Some(e) = ch["logprobs"]["content"].as_array() {
                        entries.extend(e.iter().cloned());
                    }
                }
                assert_eq!(
                    text,
                    choice["message"]["content"].as_str().unwrap(),
                    "{stop}"
                );
                assert_same_entries(&entries, want, &format!("choice {index}, stop {stop}"));
            }
        }
    });
}

/// Log-probability entries (`logprobs.content`) equal in everything but the values, which
/// agree within 1e-5.
fn assert_same_entries(got: &[Value], want: &[Value], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let close = |a: &Value, b: &Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-5;
    for (g, w) in got.iter().zip(want) {
        let strip = |e: &Value| {
            let mut e = e.clone();
            e["logprob"] = Value::Null;
            for t in e["top_logprobs"].as_array_mut().unwrap() {
                t["logprob"] = Value::Null;
            }
            e
        };
        assert_eq!(strip(g), strip(w), "{what}");
        assert!(close(&g["logprob"], &w["logprob"]), "{what}: {g} vs {w}");
        let tops = g["top_logprobs"].as_array().unwrap();
        for (a, b) in tops.iter().zip(w["top_logprobs"].as_array().unwrap()) {
            assert!(close(&a["logprob"], &b["logprob"]), "{what}: {a} vs {b}");
        }
    }
}

/// `n` choices are `n` seeded samples: choice i is what a request of one choice with seed s + i
/// returns, the prompt counts once in the usage, and the stream carries each choice's text
/// under its index; fields asking for nothing (a zero penalty) are accepted.
#[test]
fn n_choices_are_the_seeded_samples_one_by_one() {
    let server = start();
    let url = format!("{}/v1/chat/completions", server.base_url());
    let request = |n: u32, seed: u64| {
        json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "tell me"}],
            "temperature": 1.0,
            "max_tokens": 12,
            "seed": seed,
            "n": n,
            "presence_penalty": 0,
            "logit_bias": {},
        })
    };
    runtime().block_on(async {
        let client = client();
        let (status, text) = post(&client, &url, &request(3, 7).to_string()).await;
        assert_eq!(status, 200, "{text}");
        let whole: Value = serde_json::from_str(&text).unwrap();
        let choices = whole["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 3);
        let mut completion = 0;
        let mut texts = Vec::new();
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(choice["index"], i as u64);
            let (status, text) = post(&client, &url, &request(1, 7 + i as u64).to_string()).await;
            assert_eq!(status, 200, "{text}");
            let one: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                one["choices"][0]["message"], choice["message"],
                "choice {i}"
            );
            assert_eq!(one["choices"][0]["finish_reason"], choice["finish_reason"]);
            assert_eq!(
                one["usage"]["prompt_tokens"],
                whole["usage"]["prompt_tokens"]
            );
            completion += one["usage"]["completion_tokens"].as_u64().unwrap();
            texts.push(choice["message"]["content"].as_str().unwrap().to_string());
        }
        assert_eq!(whole["usage"]["completion_tokens"], completion);
        assert_eq!(
            whole["usage"]["total_tokens"].as_u64().unwrap(),
            whole["usage"]["prompt_tokens"].as_u64().unwrap() + completion
        );
        assert!(
            texts.iter().any(|t| t != &texts[0]),
            "sampled choices differ: {texts:?}"
        );

        let chunks = stream_chunks(&client, &url, request(3, 7)).await;
        let mut streamed = vec![String::new(); 3];
        let mut roles = 0;
        let mut finishes = vec![None; 3];
        for chunk in &chunks[..chunks.len() - 1] {
            let choice = &chunk["choices"][0];
            let index = choice["index"].as_u64().unwrap() as usize;
            if choice["delta"]["role"] == "assistant" {
                roles += 1;
            }
            if let Some(text) = choice["delta"]["content"].as_str() {
                streamed[index].push_str(text);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert!(finishes[index].is_none(), "choice {index} finished twice");
                finishes[index] = Some(reason.to_string());
            }
        }
        assert_eq!(roles, 3);
        assert_eq!(streamed, texts);
        for (i, choice) in choices.iter().enumerate() {
            assert_eq!(finishes[i].as_deref(), choice["finish_reason"].as_str());
        }
        assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
    });
}

/// `/v1/completions` continues raw prompt ids exactly as the chat endpoint continues the same
/// ids from its template: greedy texts equal, `n` choices per prompt of a batch in order, each
/// prompt counted once in the usage, and log-probabilities in the completions API's shape;
/// streamed, the same texts and log-probabilities, and under `echo` the prompt first.
#[test]
fn completions_continue_raw_prompts_as_chat_continues_its_template() {
    let engine = engine();
    let contents = ["first", "a second, longer one"];
    let ids: Vec<Vec<u32>> = contents
        .iter()
        .map(|c| engine.prompt_ids(&[Message::new("user", *c)], "").unwrap())
        .collect();
    let first_text = engine.tokenizer().decode(&ids[0], false).unwrap();
    let server = serve(engine);
    let chat_url = format!("{}/v1/chat/completions", server.base_url());
    let url = format!("{}/v1/completions", server.base_url());
    runtime().block_on(async {
        let client = client();
        let mut chats = Vec::new();
        for content in contents {
            let (status, text) = post(&client, &chat_url, &greedy(content, 12).to_string()).await;
            assert_eq!(status, 200, "{text}");
            chats.push(serde_json::from_str::<Value>(&text).unwrap());
        }
        let body = json!({
            "model": MODEL, "prompt": ids, "max_tokens": 12, "temperature": 0, "n": 2,
            "logprobs": 2,
        });
        let (status, text) = post(&client, &url, &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["object"], "text_completion");
        let choices = answer["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4);
        let mut completion = 0;
        for (i, choice) in choices.iter().enumerate() {
            let chat = &chats[i / 2];
            assert_eq!(choice["index"], i as u64);
            assert_eq!(
                choice["text"], chat["choices"][0]["message"]["content"],
                "choice {i}"
            );
            assert_eq!(choice["finish_reason"], chat["choices"][0]["finish_reason"]);
            let tokens = chat["usage"]["completion_tokens"].as_u64().unwrap();
            completion += tokens;
            let lp = &choice["logprobs"];
            assert_eq!(lp["tokens"].as_array().unwrap().len() as u64, tokens);
            for (t, (token, logprob)) in lp["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .zip(lp["token_logprobs"].as_array().unwrap())
                .enumerate()
            {
                let top = lp["top_logprobs"][t].as_object().unwrap();
                assert!(!top.is_empty() && top.len() <= 2, "{top:?}");
                // Greedy: the chosen token is the most likely one.
                let best = top
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                assert!(
                    (logprob.as_f64().unwrap() - best).abs() < 1e-6,
                    "{token} {top:?}"
                );
            }
            // Each token starts where the one before ends, in characters.
            let offsets = lp["text_offset"].as_array().unwrap();
            let mut at = 0;
            for (token, offset) in lp["tokens"].as_array().unwrap().iter().zip(offsets) {
                assert_eq!(offset.as_u64(), Some(at));
                at += token.as_str().unwrap().chars().count() as u64;
            }
        }
        let prompt: u64 = ids.iter().map(|p| p.len() as u64).sum();
        assert_eq!(answer["usage"]["prompt_tokens"], prompt);
        assert_eq!(answer["usage"]["completion_tokens"], completion);

        // `echo` prepends the prompt's text.
        let echo = json!({"model": MODEL, "prompt": ids[0], "max_tokens": 12, "temperature": 0,
                          "echo": true});
        let (status, text) = post(&client, &url, &echo.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let echoed: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            echoed["choices"][0]["text"],
            json!(format!(
                "{first_text}{}",
                choices[0]["text"].as_str().unwrap()
            ))
        );

        // Streamed: text chunks under each choice's index add up to the same texts, and their
        // log-probabilities to the same entries, offsets counted through the whole text.
        let chunks = stream_chunks(&client, &url, body).await;
        let mut streamed = vec![(String::new(), Vec::new(), Vec::new(), Vec::new()); 4];
        for chunk in &chunks[..chunks.len() - 1] {
            assert_eq!(chunk["object"], "text_completion");
            let choice = &chunk["choices"][0];
            let (text, tokens, logprobs, offsets) =
                &mut streamed[choice["index"].as_u64().unwrap() as usize];
            text.push_str(choice["text"].as_str().unwrap());
            if let Some(lp) = choice["logprobs"].as_object() {
                tokens.extend(lp["tokens"].as_array().unwrap().iter().cloned());
                logprobs.extend(lp["token_logprobs"].as_array().unwrap().iter().cloned());
                offsets.extend(lp["text_offset"].as_array().unwrap().iter().cloned());
            }
        }
        for (i, (text, tokens, logprobs, offsets)) in streamed.iter().enumerate() {
            let whole = &choices[i];
            assert_eq!(text, whole["text"].as_str().unwrap(), "choice {i}");
            assert_eq!(tokens, whole["logprobs"]["tokens"].as_array().unwrap());
            assert_eq!(
                offsets,
                whole["logprobs"]["text_offset"].as_array().unwrap()
            );
            let want = whole["logprobs"]["token_logprobs"].as_array().unwrap();
            assert_eq!(logprobs.len(), want.len());
            for (a, b) in logprobs.iter().zip(want) {
                assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-5);
            }
        }
        assert_eq!(chunks.last().unwrap()["usage"], answer["usage"]);

        // Streamed with `echo`: each choice's first chunk is its prompt.
        let mut echo = echo;
        echo["stream"] = json!(true);
        let chunks = stream_chunks(&client, &url, echo).await;
        assert_eq!(chunks[0]["choices"][0]["text"], json!(first_text));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(text, echoed["choices"][0]["text"].as_str().unwrap());
    });
}

/// With a key, every route but `/health` and `/metrics` answers 401 in OpenAI's error shape
/// unless the request carries `Authorization: Bearer KEY`.
#[test]
fn a_key_guards_the_api_but_not_health() {
    let mut config = ServerConfig::new(MODEL);
    config.api_key = Some(ApiKey::new("s3cret"));
    let server = Server::new(engine(), config).expect("server starts");
    let server = RunningServer::start(server, "127.0.0.1:0").expect("server binds");
    let base = server.base_url();
    runtime().block_on(async {
        let client = client();
        let chat = format!("{base}/v1/chat/completions");
        let body = greedy("hello", 4).to_string();
        let send = |auth: Option<&'static str>, url: String, body: Option<String>| {
            let client = client.clone();
            async move {
                let mut request = match &body {
                    Some(body) => client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone()),
                    None => client.get(&url),
                };
                if let Some(auth) = auth {
                    request = request.header("authorization", auth);
                }
                let response = request.send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }
        };
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Bearer s3cre"),
        ] {
            for (url, body) in [
                (chat.clone(), Some(body.clone())),
                (
                    format!("{base}/v1/completions"),
                    Some(json!({"prompt": [1, 2], "max_tokens": 0}).to_string()),
                ),
                (format!("{base}/v1/models"), None),
                (
                    format!("{base}/tokenize"),
                    Some(json!({"prompt": "a"}).to_string()),
                ),
            ] {
                let (status, text) = send(auth, url.clone(), body).await;
                assert_eq!(status, 401, "{url} with {auth:?}: {text}");
                let error: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(error["error"]["type"], "invalid_request_error");
                assert!(!text.contains("s3cret"), "{text}");
            }
        }
        let (status, text) = send(Some("Bearer s3cret"), chat, Some(body)).await;
        assert_eq!(status, 200, "{text}");
        let (status, _) = send(Some("Bearer s3cret"), format!("{base}/v1/models"), None).await;
        assert_eq!(status, 200);
        let (status, _) = send(None, format!("{base}/health"), None).await;
        assert_eq!(status, 200);
        // Prometheus scrapes without the key; the one finished request is counted.
        let (status, metrics) = send(None, format!("{base}/metrics"), None).await;
        assert_eq!(status, 200, "{metrics}");
        let value = |name: &str| -> u64 {
            let prefix = format!("distill:{name}{{model_name=\"{MODEL}\"}} ");
            let line = metrics.lines().find(|l| l.starts_with(&prefix));
            line.and_then(|l| l[prefix.len()..].parse().ok())
                .unwrap_or_else(|| panic!("no `{name}` in {metrics}"))
        };
        assert_eq!(value("requests_completed_total"), 1);
        assert_eq!(value("num_requests_running"), 0);
        let usage: Value = serde_json::from_str(&text).unwrap();
        let usage = &usage["usage"];
        assert_eq!(
            value("prompt_tokens_total"),
            usage["prompt_tokens"].as_u64().unwrap()
        );
        assert_eq!(
            value("generation_tokens_total"),
            usage["completion_tokens"].as_u64().unwrap()
        );
        assert!(metrics.contains("# TYPE distill:requests_completed_total counter"));
    });
    assert_eq!(server.server().stats().completed, 1);
}

/// With the model's context set (as `distill serve` sets it), a prompt that fills it is the
/// request's fault: a 400 naming the context
/// (vLLM answers the same), in the chat endpoint, in a completion and mid-stream; a long
/// `max_tokens` is cut at the context with `length`.
#[test]
fn the_models_context_bounds_every_request() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/tiny-llama.gguf");
    let checkpoint = Checkpoint::open(&path).unwrap();
    let mut engine = Engine::load(&checkpoint, EngineOptions::default()).unwrap();
    // What `distill serve` sets.
    let context = checkpoint.config().max_position_embeddings();
    engine.set_context_len(Some(context));
    let server = serve(Arc::new(engine));
    let chat = format!("{}/v1/chat/completions", server.base_url());
    let completions = format!("{}/v1/completions", server.base_url());
    runtime().block_on(async {
        let client = client();
        let long = "many words ".repeat(context);
        let (status, text) = post(&client, &chat, &greedy(&long, 4).to_string()).await;
        assert_eq!(status, 400, "{text}");
        assert!(
            text.contains(&format!("context of {context} positions")),
            "{text}"
        );
        let ids: Vec<u32> = (0..context as u32).map(|i| 3 + i % 200).collect();
        let body = json!({"prompt": ids, "max_tokens": 4});
        let (status, text) = post(&client, &completions, &body.to_string()).await;
        assert_eq!(status, 400, "{text}");
        // Scoring takes a prompt of the whole context, not one position more.
        let body = json!({"prompt": ids, "max_tokens": 0, "prompt_logprobs": 1});
        let (status, text) = post(&client, &completions, &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let longer: Vec<u32> = (0..=context as u32).map(|i| 3 + i % 200).collect();
        let body = json!({"prompt": longer, "max_tokens": 0, "prompt_logprobs": 1});
        let (status, text) = post(&client, &completions, &body.to_string()).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("exceeds the model's context"), "{text}");
        let mut body = greedy(&long, 4);
        body["stream"] = json!(true);
        let (status, text) = post(&client, &chat, &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("invalid_request_error") && text.contains("context"),
            "{text}"
        );

        let body = json!({"prompt": [3, 4, 5], "max_tokens": 10 * context, "temperature": 0});
        let (status, text) = post(&client, &completions, &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let answer: Value = serde_json::from_str(&text).unwrap();
        if answer["choices"][0]["finish_reason"] == "length" {
            assert_eq!(answer["usage"]["total_tokens"], context as u64);
        }
    });
}

/// `/tokenize` gives the server's own ids: a conversation's are the chat endpoint's prompt (its
/// count is that request's `prompt_tokens`), a text's follow `add_special_tokens`, and
/// `/detokenize` turns them back into the text; a body with neither or both, an id outside the
/// vocabulary and another model's name are refused.
#[test]
fn tokenize_gives_the_servers_own_ids() {
    let engine = engine();
    let messages = [Message::new("user", "how many tokens?")];
    let chat_ids = engine.prompt_ids(&messages, "").unwrap();
    let text = "count these words";
    let plain = engine.tokenizer().encode(text, false).unwrap();
    let special = engine.tokenizer().encode(text, true).unwrap();
    let server = serve(engine);
    let base = server.base_url();
    runtime().block_on(async {
        let client = client();
        let tokenize = format!("{base}/tokenize");
        let ask = |body: Value| {
            let (client, url) = (client.clone(), tokenize.clone());
            async move {
                let (status, text) = post(&client, &url, &body.to_string()).await;
                (status, serde_json::from_str::<Value>(&text).unwrap())
            }
        };
        let (status, answer) =
            ask(json!({"messages": [{"role": "user", "content": "how many tokens?"}]})).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["tokens"], json!(chat_ids));
        assert_eq!(answer["count"], chat_ids.len());
        let chat = format!("{base}/v1/chat/completions");
        let (_, reply) = post(&client, &chat, &greedy("how many tokens?", 2).to_string()).await;
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["usage"]["prompt_tokens"], chat_ids.len());

        let (_, answer) = ask(json!({"prompt": text, "add_special_tokens": false})).await;
        assert_eq!(answer["tokens"], json!(plain));
        let (_, answer) = ask(json!({"prompt": text})).await;
        assert_eq!(answer["tokens"], json!(special));
        let body = json!({"tokens": plain}).to_string();
        let (status, back) = post(&client, &format!("{base}/detokenize"), &body).await;
        assert_eq!(status, 200, "{back}");
        assert_eq!(
            serde_json::from_str::<Value>(&back).unwrap()["prompt"],
            text
        );

        for body in [
            json!({}),
            json!({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),
        ] {
            let (status, answer) = ask(body).await;
            assert_eq!(status, 400, "{answer}");
        }
        let (status, answer) = ask(json!({"prompt": "a", "model": "other"})).await;
        assert_eq!(status, 404, "{answer}");
        let body = json!({"tokens": [1, 99999]}).to_string();
        let (status, text) = post(&client, &format!("{base}/detokenize"), &body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("99999"), "{text}");
    });
}
