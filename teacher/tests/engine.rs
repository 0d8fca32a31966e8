//! Engine tests on the tiny GGUF fixtures (random weights, 256-token byte-level tokenizer,
//! ChatML): batch independence, stop conditions, streaming, cancellation, the server handle.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;

mod common;

use distill_models::chat::Message;
use distill_models::Checkpoint;
use distill_teacher::engine::{IterSource, Update};
use distill_teacher::sampling::{sample, sample_seed, SampleRng};
use distill_teacher::{
    Backend, Cancel, Engine, EngineHandle, EngineOptions, Event, FinishReason, GenOutput,
    GenRequest, LocalBackend, SamplingParams,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures")
        .join(name)
}

fn options(batch: usize) -> EngineOptions {
    EngineOptions {
        batch,
        ..EngineOptions::default()
    }
}

/// `quantized`: GGUF weights as stored (QMatMul); otherwise dequantized to f32.
fn engine(name: &str, batch: usize, quantized: bool, eos: Option<Vec<u32>>) -> Engine {
    let ckpt = Checkpoint::open(&fixture(name)).unwrap();
    let dev = candle_core::Device::Cpu;
    let model = if quantized {
        ckpt.load_quantized_model(&dev).unwrap()
    } else {
        ckpt.load_model(&dev).unwrap()
    };
    let tokenizer = ckpt.tokenizer().unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let eos = eos.unwrap_or_else(|| ckpt.eos_token_ids());
    Engine::new(model, tokenizer, template, eos, options(batch)).unwrap()
}

fn request(i: usize, temperature: f32, max_new_tokens: usize) -> GenRequest {
    let key = format!("p{i}/0");
    GenRequest {
        key: key.clone(),
        messages: vec![Message::user(format!(
            "Problem {i}: what is {} plus {}?",
            i * 7,
            i + 3
        ))],
        prefill: "<think>\n".into(),
        sampling: SamplingParams {
            temperature,
            top_p: 0.95,
            top_k: 0,
            max_new_tokens,
            logprobs: 0,
        },
        seed: sample_seed(1234, &format!("p{i}"), 0),
        stop: Vec::new(),
        prompt_ids: None,
    }
}

fn run(engine: &Engine, requests: Vec<GenRequest>) -> BTreeMap<String, GenOutput> {
    let mut out = BTreeMap::new();
    let stats = engine
        .run(
            &mut IterSource(requests.into_iter()),
            &Cancel::new(),
            &mut |u| {
                if let Update::Done(o) = u {
                    assert!(out.insert(o.key.clone(), o).is_none(), "reported twice");
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(stats.completed as usize, out.len());
    assert_eq!(stats.failed, 0);
    out
}

/// Varied lengths so sequences finish at different steps and slots get refilled mid-run.
fn workload(temperature: f32) -> Vec<GenRequest> {
    (0..12)
        .map(|i| request(i, temperature, 8 + (i * 5) % 23))
        .collect()
}

fn assert_batch_independent(name: &str, quantized: bool, temperature: f32) {
    let one = run(&engine(name, 1, quantized, None), workload(temperature));
    let eight = run(&engine(name, 8, quantized, None), workload(temperature));
    assert_eq!(one.len(), 12);
    for (key, a) in &one {
        assert_eq!(
            Some(a),
            eight.get(key),
            "{name} q={quantized} T={temperature} {key}"
        );
        assert!(a.text.starts_with("<think>\n"));
        assert!(a.completion_tokens > 0);
    }
}

#[test]
fn batch_1_equals_batch_8_greedy_and_sampled() {
    for (name, quantized) in [
        ("tiny-llama.gguf", true),
        ("tiny-qwen2.gguf", true),
        ("tiny-llama.gguf", false),
    ] {
        assert_batch_independent(name, quantized, 0.0);
        assert_batch_independent(name, quantized, 0.9);
    }
}

#[test]
fn seeds_change_samples_and_greedy_ignores_them() {
    let e = engine("tiny-llama.gguf", 4, true, None);
    let mut a = request(1, 1.0, 24);
    let mut b = a.clone();
    b.key = "other".into();
    b.seed ^= 1;
    let out = run(&e, vec![a.clone(), b.clone()]);
    assert_ne!(out["p1/0"].text, out["other"].text);
    a.sampling.temperature = 0.0;
    b.sampling.temperature = 0.0;
    let out = run(&e, vec![a, b]);
    assert_eq!(out["p1/0"].text, out["other"].text);
}

#[test]
fn max_new_tokens_ends_with_length() {
    let e = engine("tiny-llama.gguf", 4, true, Some(vec![]));
    let out = run(&e, vec![request(0, 0.7, 17), request(1, 0.0, 0)]);
    assert_eq!(out["p0/0"].finish_reason, FinishReason::Length);
    assert_eq!(out["p0/0"].completion_tokens, 17);
    assert_eq!(out["p1/0"].finish_reason, FinishReason::Length);
    assert_eq!(out["p1/0"].completion_tokens, 0);
    assert_eq!(out["p1/0"].text, "<think>\n");
    let prompt = e
        .prompt_ids(&request(0, 0.0, 1).messages, "<think>\n")
        .unwrap();
    assert_eq!(out["p0/0"].prompt_tokens as usize, prompt.len());
}

/// DeepSeek-R1-Distill's published template ends the generation prompt with `<think>\n`; the
/// default prefill must not open the think block a second time (the model never saw that).
/// With a context set (`Engine::load` sets the checkpoint's, vLLM's `max_model_len`), a
/// sequence ends there (finish reason `length`, prompt + generated = context) however large
/// `max_new_tokens` is; a prompt that fills the context fails with the reason, and the other
/// requests of the run still finish.
#[test]
fn generation_ends_at_the_context() {
    for (name, context) in [
        ("tiny-llama.gguf", 2048),
        ("tiny-qwen3.gguf", 128),
        ("tiny-qwen2.gguf", 2048),
    ] {
        let loaded = Engine::load(&Checkpoint::open(&fixture(name)).unwrap(), options(1));
        assert_eq!(loaded.unwrap().context_len(), Some(context), "{name}");
    }
    // No end-of-sequence id: only the context or `max_new_tokens` ends a sequence.
    let mut e = engine("tiny-llama.gguf", 2, true, Some(Vec::new()));
    assert_eq!(e.context_len(), None, "no limit unless one is set");
    let prompt = e
        .prompt_ids(&request(0, 0.0, 1).messages, "<think>\n")
        .unwrap()
        .len();
    e.set_context_len(Some(prompt + 9));
    let out = run(&e, vec![request(0, 0.0, 1000), request(1, 0.0, 4)]);
    let long = &out["p0/0"];
    assert_eq!(long.finish_reason, FinishReason::Length);
    assert_eq!(
        long.prompt_tokens as usize + long.completion_tokens as usize,
        prompt + 9
    );
    assert_eq!(out["p1/0"].completion_tokens, 4);

    e.set_context_len(Some(prompt));
    let mut failed = Vec::new();
    let stats = e
        .run(
            &mut IterSource(vec![request(0, 0.0, 8)].into_iter()),
            &Cancel::new(),
            &mut |u| {
                if let Update::Failed { error, .. } = u {
                    failed.push(error.to_string());
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(stats.failed, 1);
    assert!(
        failed[0].contains(&format!("prompt of {prompt} tokens")) && failed[0].contains("context"),
        "{failed:?}"
    );
}

#[test]
fn a_template_that_opens_think_gets_no_second_think() {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("r1-distill-qwen/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    let template = distill_models::chat::ChatTemplate::new(
        config["chat_template"].as_str().unwrap(),
        config["bos_token"]["content"].as_str(),
        config["eos_token"]["content"].as_str(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(&fixture("tiny-llama.gguf")).unwrap();
    let dev = candle_core::Device::Cpu;
    let model = ckpt.load_quantized_model(&dev).unwrap();
    let e = Engine::new(
        model,
        ckpt.tokenizer().unwrap(),
        template,
        vec![],
        options(1),
    )
    .unwrap();
    let r = request(0, 0.0, 3);
    let text = e.prompt_text(&r.messages, &r.prefill).unwrap();
    assert_eq!(
        text,
        "<｜begin▁of▁sentence｜><｜User｜>Problem 0: what is 0 plus 3?<｜Assistant｜><think>\n"
    );
    // The turn still starts with the prefill, so `<think>` parsing sees the open tag.
    let out = run(&e, vec![r]);
    assert!(out["p0/0"].text.starts_with("<think>\n"));
}

/// Request `i`'s tokens from a plain one-sequence loop over the model (the reference the
/// engine's batching must reproduce), without any EOS.
fn reference_ids(e: &Engine, r: &GenRequest) -> Vec<u32> {
    let prompt = e.prompt_ids(&r.messages, &r.prefill).unwrap();
    let model = e.model();
    let mut cache = model.new_cache();
    let mut rng = SampleRng::new(r.seed);
    let last = |t: candle_core::Tensor| -> Vec<f32> {
        let n = t.dim(0).unwrap();
        t.narrow(0, n - 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut logits = last(model.forward_cached(&prompt, &mut cache).unwrap());
    let mut ids = Vec::new();
    while ids.len() < r.sampling.max_new_tokens {
        let token = sample(&logits, &r.sampling, &mut rng);
        ids.push(token);
        logits = last(model.forward_cached(&[token], &mut cache).unwrap());
    }
    ids
}

#[test]
fn engine_matches_a_plain_decode_loop_and_eos_ends_with_stop() {
    let free = engine("tiny-llama.gguf", 3, true, Some(vec![]));
    let r = request(0, 0.8, 30);
    let ids = reference_ids(&free, &r);
    assert_eq!(ids.len(), 30);
    let requests: Vec<GenRequest> = workload(0.8).into_iter().skip(1).chain([r]).collect();
    let out = run(&free, requests.clone());
    let text = free.tokenizer().decode(&ids, false).unwrap();
    assert_eq!(out["p0/0"].text, format!("<think>\n{text}"));
    // The first token that does not occur before it, at position >= 5.
    let at = (5..ids.len())
        .find(|&i| !ids[..i].contains(&ids[i]))
        .expect("a fresh token in 30 sampled steps");
    let e = engine("tiny-llama.gguf", 3, true, Some(vec![ids[at]]));
    let out = run(&e, requests);
    let o = &out["p0/0"];
    assert_eq!(o.finish_reason, FinishReason::Stop);
    assert_eq!(o.completion_tokens as usize, at + 1, "EOS is counted");
    let expected = e.tokenizer().decode(&ids[..at], false).unwrap();
    assert_eq!(
        o.text,
        format!("<think>\n{expected}"),
        "EOS is not in the text"
    );
}

#[test]
fn stop_string_ends_with_stop_and_is_cut() {
    let e = engine("tiny-llama.gguf", 2, true, Some(vec![]));
    let free = run(&e, workload(0.7));
    // A 2-letter ASCII string first occurring at byte 3 or later of some sample.
    let (key, stop, at) = free
        .iter()
        .find_map(|(key, o)| {
            let body = &o.text["<think>\n".len()..];
            let b = body.as_bytes();
            (3..b.len().saturating_sub(1)).find_map(|i| {
                let pair = &b[i..i + 2];
                let s = std::str::from_utf8(pair).ok()?;
                (pair.iter().all(u8::is_ascii_alphabetic) && body.find(s) == Some(i))
                    .then(|| (key.clone(), s.to_string(), i))
            })
        })
        .expect("a fresh letter pair");
    let full = &free[&key].text["<think>\n".len()..];
    let kept = full[..at].to_string();
    let mut r = workload(0.7).into_iter().find(|r| r.key == key).unwrap();
    r.stop = vec!["never-appears".into(), stop.clone()];
    let mut deltas = String::new();
    let mut done = None;
    e.run(
        &mut IterSource(std::iter::once(r)),
        &Cancel::new(),
        &mut |u| {
            match u {
                Update::Delta { text, .. } => deltas.push_str(&text),
                Update::Done(o) => done = Some(o),
                _ => {}
            }
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let o = done.unwrap();
    assert_eq!(o.finish_reason, FinishReason::Stop, "stop {stop:?}");
    assert_eq!(o.text, format!("<think>\n{kept}"));
    assert!(o.completion_tokens < free[&key].completion_tokens);
    assert_eq!(deltas, kept, "streamed text never shows the stop string");
}

#[test]
fn cancel_stops_the_run() {
    let e = engine("tiny-llama.gguf", 2, true, Some(vec![]));
    let cancel = Cancel::new();
    let mut done = 0;
    let stats = e
        .run(
            &mut IterSource((0..100).map(|i| request(i, 0.5, 10))),
            &cancel,
            &mut |u| {
                if let Update::Done(_) = u {
                    done += 1;
                    if done == 3 {
                        cancel.cancel();
                    }
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert!(stats.cancelled);
    assert!(
        (3..10).contains(&done),
        "{done} finished after cancelling at 3"
    );
}

#[test]
fn local_backend_and_handle_agree_with_the_engine() {
    let expected = run(&engine("tiny-qwen2.gguf", 3, true, None), workload(0.8));
    let backend = LocalBackend::open(&fixture("tiny-qwen2.gguf"), options(5)).unwrap();
    assert_eq!(backend.name(), "tiny-qwen2.gguf");
    let mut got = BTreeMap::new();
    let mut progress = 0;
    let stats = backend
        .generate(
            &mut workload(0.8).into_iter(),
            &Cancel::new(),
            &mut |e| match e {
                Event::Done(o) => {
                    got.insert(o.key.clone(), o);
                }
                Event::Progress { new_tokens } => progress += new_tokens,
                Event::Failed { key, error } => panic!("{key}: {error}"),
            },
        )
        .unwrap();
    assert_eq!(got, expected);
    assert_eq!(stats.completion_tokens, progress);
    assert_eq!(
        stats.completion_tokens,
        expected
            .values()
            .map(|o| u64::from(o.completion_tokens))
            .sum::<u64>()
    );

    // Concurrent submitters through the handle: same samples.
    let handle = EngineHandle::spawn(backend.engine().clone());
    let receivers: Vec<_> = workload(0.8)
        .into_iter()
        .map(|r| handle.submit(r).unwrap())
        .collect();
    // Abandon one request: the others are unaffected.
    let mut kept = BTreeMap::new();
    for (i, rx) in receivers.into_iter().enumerate() {
        if i == 2 {
            continue;
        }
        let mut text = String::new();
        for u in rx {
            match u {
                Update::Delta { text: t, .. } => text.push_str(&t),
                Update::Done(o) => {
                    assert_eq!(format!("<think>\n{text}"), o.text, "deltas add up");
                    kept.insert(o.key.clone(), o);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    handle.shutdown().unwrap();
    assert_eq!(kept.len(), 11);
    for (k, o) in kept {
        assert_eq!(expected[&k], o);
    }
    let _ = Arc::strong_count(backend.engine());
}

/// Log-softmax rows of one f32 forward over `prompt` and the generated `tokens` (no cache).
fn full_forward_log_probs(
    model: &distill_models::Model,
    prompt: &[u32],
    tokens: &[u32],
) -> Vec<Vec<f32>> {
    let ids: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    common::log_softmax_rows(model, &ids)
}

/// `logprobs: k` returns, for every sampled token, the model's own log-probabilities: equal
/// (within 1e-4: float32, not the corpus's float16) to `log_softmax` of a full forward over
/// prompt + generated tokens,
/// the `k` ids in the order of those logits, the sampled token among them when greedy, and
/// the same sample text and tokens as without log-probabilities.
#[test]
fn top_logprobs_are_the_models_own_distribution() {
    use candle_core::Device;
    let name = "tiny-qwen2.gguf";
    let ckpt = Checkpoint::open(&fixture(name)).unwrap();
    let model = ckpt.load_model(&Device::Cpu).unwrap();
    let engine = engine(name, 4, false, Some(Vec::new()));
    let k = 6;
    for temperature in [0.0, 0.9] {
        let plain: Vec<GenRequest> = (0..3).map(|i| request(i, temperature, 9)).collect();
        let mut asked = plain.clone();
        for r in &mut asked {
            r.sampling.logprobs = k;
        }
        let without = run(&engine, plain.clone());
        let with = run(&engine, asked);
        for (req, (key, out)) in plain.iter().zip(&with) {
            assert_eq!(out.text, without[key].text, "{key}: same sample");
            assert!(without[key].logprobs.is_none());
            let lp = out.logprobs.as_ref().expect("log-probabilities were asked");
            assert_eq!(lp.k(), k);
            assert_eq!(lp.len(), out.completion_tokens as usize);
            let prompt = engine.prompt_ids(&req.messages, &req.prefill).unwrap();
            let log_probs = full_forward_log_probs(&model, &prompt, lp.token_ids());
            let token_lps: Vec<f32> = lp.token_logprobs().collect();
            for (i, &token) in lp.token_ids().iter().enumerate() {
                let row = &log_probs[prompt.len() - 1 + i];
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
                assert!(close(token_lps[i], row[token as usize]), "{key} step {i}");
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let (top_ids, top_lps) = lp.top(i);
                let top_lps: Vec<f32> = top_lps.collect();
                for j in 0..k {
                    assert!(close(top_lps[j], row[top_ids[j] as usize]), "{key} {i} {j}");
                    assert!(close(top_lps[j], row[order[j]]), "{key} {i} rank {j}");
                }
                if temperature == 0.0 {
                    assert_eq!(top_ids[0], token, "greedy picks the most likely token");
                }
            }
        }
    }
}

/// `kv_cache_dtype: f16` (the CPU's host caches in half precision): every reported
/// log-probability is still the model's own within 2e-2 of a full f32 forward over the same
/// tokens, and the values differ from the f32 cache's (the option is in effect).
#[test]
fn an_f16_kv_cache_stays_close_to_the_models_distribution() {
    use candle_core::Device;
    use distill_models::HostKvDtype;
    let name = "tiny-qwen2.gguf";
    let ckpt = Checkpoint::open(&fixture(name)).unwrap();
    let reference = ckpt.load_model(&Device::Cpu).unwrap();
    let mut model = ckpt.load_model(&Device::Cpu).unwrap();
    model.set_host_kv_dtype(HostKvDtype::F16);
    let tokenizer = ckpt.tokenizer().unwrap();
    let template = tokenizer.chat_template().unwrap().unwrap();
    let half = Engine::new(model, tokenizer, template, Vec::new(), options(4)).unwrap();
    let full = engine(name, 4, false, Some(Vec::new()));
    assert_eq!(
        2 * half.model().kv_bytes_per_position(),
        full.model().kv_bytes_per_position()
    );
    let asked: Vec<GenRequest> = (0..3)
        .map(|i| {
            let mut r = request(i, 0.9, 12);
            r.sampling.logprobs = 4;
            r
        })
        .collect();
    let (with_half, with_full) = (run(&half, asked.clone()), run(&full, asked.clone()));
    let mut differs = false;
    for req in &asked {
        let lp = with_half[&req.key].logprobs.as_ref().unwrap();
        let prompt = half.prompt_ids(&req.messages, &req.prefill).unwrap();
        let rows = full_forward_log_probs(&reference, &prompt, lp.token_ids());
        let token_lps: Vec<f32> = lp.token_logprobs().collect();
        for (i, &token) in lp.token_ids().iter().enumerate() {
            let row = &rows[prompt.len() - 1 + i];
            assert!(
                (token_lps[i] - row[token as usize]).abs() < 2e-2,
                "{} step {i}",
                req.key
            );
            let (top, top_lps) = lp.top(i);
            for (&id, l) in top.iter().zip(top_lps) {
                assert!(
                    (l - row[id as usize]).abs() < 2e-2,
                    "{} step {i} id {id}",
                    req.key
                );
            }
        }
        let f32_lps = with_full[&req.key]
            .logprobs
            .as_ref()
            .unwrap()
            .token_logprobs();
        differs |= token_lps.iter().zip(f32_lps).any(|(a, b)| a != &b);
    }
    assert!(
        differs,
        "an f16 cache gave the f32 cache's values exactly: not in effect"
    );
}

/// The tiny Qwen2 at batch 4 in `dtype` on the CPU (f32: host caches; bf16: the paged pool)
/// under a KV cache limit of `gib` (0: automatic).
fn budgeted_engine(dtype: candle_core::DType, gib: f64) -> Engine {
    let ckpt = Checkpoint::open(&fixture("tiny-qwen2")).unwrap();
    let tokenizer = Checkpoint::open(&fixture("tiny-qwen2.gguf"))
        .unwrap()
        .tokenizer()
        .unwrap();
    let model = ckpt
        .load_for_inference(&candle_core::Device::Cpu, dtype)
        .unwrap();
    let options = EngineOptions {
        batch: 4,
        kv_cache_gib: gib,
        ..EngineOptions::default()
    };
    let template = distill_models::chat::ChatTemplate::chatml();
    Engine::new(model, tokenizer, template, vec![], options).unwrap()
}

/// A run under a KV cache limit: the finished outputs by key, the failures `(key, message)`,
/// the stats, and the most blocks the model's pool held at any update.
#[allow(clippy::type_complexity)]
fn run_budgeted(
    engine: &Engine,
    requests: Vec<GenRequest>,
) -> (
    BTreeMap<String, GenOutput>,
    Vec<(String, String)>,
    distill_teacher::GenStats,
    usize,
) {
    let (mut out, mut failed, mut most) = (BTreeMap::new(), Vec::new(), 0);
    let stats = engine
        .run(
            &mut IterSource(requests.into_iter()),
            &Cancel::new(),
            &mut |u| {
                most = most.max(engine.model().kv_pool_blocks().0);
                match u {
                    Update::Done(o) => drop(out.insert(o.key.clone(), o)),
                    Update::Failed { key, error } => failed.push((key, error.to_string())),
                    _ => {}
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    (out, failed, stats, most)
}

/// Every request of a run with preemptions completed its 90 tokens, and its text follows the
/// unlimited run's for at least 90% of the characters (a replay recomputes the same positions,
/// which may round a little differently from one at a time).
fn assert_recomputed_samples_follow(
    want: &BTreeMap<String, GenOutput>,
    got: &BTreeMap<String, GenOutput>,
) {
    let (mut same, mut total) = (0, 0);
    for (key, w) in want {
        let g = &got[key];
        assert_eq!(g.completion_tokens, 90, "{key}");
        assert_eq!(g.finish_reason, FinishReason::Length);
        same += w
            .text
            .chars()
            .zip(g.text.chars())
            .take_while(|(a, b)| a == b)
            .count();
        total += w.text.chars().count();
    }
    assert!(
        same as f64 >= 0.9 * total as f64,
        "the recomputed samples follow the unlimited run's for {same} of {total} characters"
    );
}

/// Under a limit of three blocks (96 positions; two for the sequences, one for a step's
/// padding row) no request fits (a ~50-token prompt and 90 tokens): each fails on its own,
/// saying why and which flag to raise.
fn assert_each_fails_alone(engine: &Engine, requests: &[GenRequest]) {
    let (done, failed, stats, _) = run_budgeted(engine, requests.to_vec());
    assert!(done.is_empty());
    assert_eq!(failed.len(), requests.len());
    assert_eq!(stats.failed, requests.len() as u64);
    assert!(
        failed[0]
            .1
            .contains("the sequence needs more than the KV cache's 2 blocks")
            && failed[0].1.contains("--kv-cache-gib"),
        "{}",
        failed[0].1
    );
}

/// Generation under a KV cache limit on the paged pool (bf16 on the CPU, the path a GPU
/// takes): six sequences of ~140 positions at batch 4 need ~20 blocks, the limit allows 10, so
/// the youngest sequences are paused and recomputed from their prompt and samples. Every one
/// still completes all its tokens, the pool never grows past the limit, the samples follow the
/// unlimited run's (a replay recomputes the same positions, which bf16 rounds a little
/// differently from one at a time), and a limit that cannot hold one sequence fails just
/// that request, with the reason: at admission when the prompt alone does not fit, else when
/// its generation outgrows the limit.
#[test]
fn a_kv_cache_limit_preempts_and_recomputes() {
    let make = |gib: f64| budgeted_engine(candle_core::DType::BF16, gib);
    let workload: Vec<GenRequest> = (0..6).map(|i| request(i, 1.0, 90)).collect();
    let free = make(0.0);
    let block = free.model().kv_block_bytes() as f64;
    let (want, failed, stats, _) = run_budgeted(&free, workload.clone());
    assert!(failed.is_empty() && stats.preempted == 0);
    // 11 blocks: 10 for the sequences, one for the step's padding row.
    let limited = make(11.0 * block / (1u64 << 30) as f64);
    let (got, failed, stats, most) = run_budgeted(&limited, workload.clone());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(stats.preempted >= 3, "{stats:?}");
    assert!(most <= 11, "the pool grew to {most} blocks");
    assert_recomputed_samples_follow(&want, &got);
    // Blocks of the pool held outside the engine (`distill serve` scoring a prompt beside it)
    // count against the budget: the sequences make do with what is left, and the pool stays
    // within the 11 blocks (without counting them it grew to 14).
    let outside = {
        let model = limited.model();
        let prompt = limited.prompt_ids(&workload[0].messages, "").unwrap();
        let ids = [prompt.as_slice(), &prompt].concat();
        let mut cache = model.new_cache();
        model
            .step(
                &mut [(&ids[..], &mut cache)],
                distill_models::transformer::Logits::Last,
            )
            .unwrap();
        cache
    };
    let held_outside = {
        let (pool, free) = limited.model().kv_pool_blocks();
        pool - free
    };
    assert!((3..=4).contains(&held_outside), "{held_outside}");
    let (got, failed, stats, most) = run_budgeted(&limited, workload.clone());
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(got.len(), workload.len());
    assert!(stats.preempted >= 3, "{stats:?}");
    assert!(most <= 11, "the pool grew to {most} blocks");
    // Held outside until no request fits, then let go from another thread: the engine waits
    // for the blocks instead of failing requests that fit alone.
    let mut hog = vec![outside];
    while limited.model().kv_pool_blocks().0 - limited.model().kv_pool_blocks().1 < 8 {
        let prompt = limited.prompt_ids(&workload[0].messages, "").unwrap();
        let ids = [prompt.as_slice(), &prompt].concat();
        let mut cache = limited.model().new_cache();
        limited
            .model()
            .step(
                &mut [(&ids[..], &mut cache)],
                distill_models::transformer::Logits::Last,
            )
            .unwrap();
        hog.push(cache);
    }
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(hog);
    });
    let (got, failed, _, _) = run_budgeted(&limited, workload[..2].to_vec());
    release.join().unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(got.len(), 2);
    assert_each_fails_alone(&make(3.0 * block / (1u64 << 30) as f64), &workload[..2]);
    // Two blocks: one for the sequences, which a ~50-token prompt does not fit.
    let none = make(2.0 * block / (1u64 << 30) as f64);
    let (done, failed, _, most) = run_budgeted(&none, workload[..1].to_vec());
    assert!(done.is_empty() && most == 0, "refused before any work");
    let why = &failed[0].1;
    assert!(
        why.contains("the prompt of ") && why.contains("needs more than the KV cache's 1 block ("),
        "{why}"
    );
}

/// The same budget where the caches live in host buffers (the CPU's f32 path, which had none
/// and could grow until the system killed the run): the limit counts each sequence's cached
/// positions in blocks of 32, the youngest sequences are paused (their buffers freed) and
/// recomputed, every request completes, the samples follow the unlimited run's, and a limit
/// that cannot hold one sequence fails that request with the reason.
#[test]
fn a_kv_cache_limit_preempts_host_caches_too() {
    let make = |gib: f64| {
        let engine = budgeted_engine(candle_core::DType::F32, gib);
        assert!(!engine.model().uses_kv_pool(), "the host path");
        engine
    };
    let workload: Vec<GenRequest> = (0..6).map(|i| request(i, 1.0, 90)).collect();
    // Automatic: a share of the host's available memory, far more than this workload needs.
    let free = make(0.0);
    let block = free.model().kv_block_bytes() as f64;
    assert_eq!(
        block as usize,
        free.model().kv_bytes_per_position() * 32,
        "a block is 32 positions of the host cache"
    );
    let (want, failed, want_stats, _) = run_budgeted(&free, workload.clone());
    assert!(
        failed.is_empty() && want_stats.preempted == 0,
        "{want_stats:?}"
    );
    assert!(
        free.kv_budget_warning(4, 90).is_none(),
        "a small batch fits the automatic budget"
    );
    let limited = make(11.0 * block / (1u64 << 30) as f64);
    let warning = limited.kv_budget_warning(6, 140).unwrap();
    assert!(
        warning.contains("(`--kv-cache-dtype f16` halves it)"),
        "{warning}"
    );
    let (got, failed, stats, _) = run_budgeted(&limited, workload.clone());
    assert!(failed.is_empty(), "{failed:?}");
    assert!(stats.preempted >= 3, "{stats:?}");
    // 10 blocks for the sequences (one is kept for a step's padding row); unlimited, the four
    // live sequences of ~140 positions held about 20.
    assert!(stats.peak_kv_bytes <= 10 * block as u64, "{stats:?}");
    assert!(stats.peak_kv_bytes >= 8 * block as u64, "{stats:?}");
    assert!(
        want_stats.peak_kv_bytes as f64 / block >= 16.0,
        "{want_stats:?}"
    );
    assert_recomputed_samples_follow(&want, &got);
    assert_each_fails_alone(&make(3.0 * block / (1u64 << 30) as f64), &workload[..2]);
}
