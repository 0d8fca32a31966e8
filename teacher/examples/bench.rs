//! Generation throughput benchmark (not a test): a fixed workload of `batch` sequences, each a
//! 64-token prompt (`BENCH_PROMPT_TOKENS`: another length) followed by exactly 256 greedy tokens
//! (no EOS), at batch 1, 8 and 32.
//!
//! `cargo run --release -p distill-teacher --example bench -- MODEL.gguf [IDS.json]` prints
//! generated tokens/s per batch size, the prefill rate (the same prompts with one new token
//! each, timed on their own: all `batch` prompts go through one ragged forward) and the decode
//! rate (the rest of the run after that prefill time); with `IDS.json` it writes the prompt ids there so
//! `teacher/bench/hf_generate.py` runs the identical workload (`teacher/bench/run.sh` does both).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use distill_models::chat::Message;
use distill_models::Checkpoint;
use distill_teacher::engine::{IterSource, Update};
use distill_teacher::{Cancel, Engine, EngineOptions, GenRequest, SamplingParams};

/// The prompt's length; `BENCH_PROMPT_TOKENS` changes it (long R1-style contexts).
const PROMPT_TOKENS: usize = 64;
const NEW_TOKENS: usize = 256;
const BATCHES: [usize; 3] = [1, 8, 32];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    distill_models::alloc::tune_allocator();
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: bench MODEL [IDS.json]")?);
    let ids_out = args.next().map(PathBuf::from);
    let checkpoint = Checkpoint::open(&model)?;
    // BENCH_BATCHES=32 (comma-separated) runs a subset, e.g. under a profiler.
    let batches: Vec<usize> = match std::env::var("BENCH_BATCHES") {
        Ok(list) => list
            .split(',')
            .map(|b| b.trim().parse())
            .collect::<Result<_, _>>()?,
        Err(_) => BATCHES.to_vec(),
    };
    let mut engines = Vec::new();
    for &batch in &batches {
        // BENCH_KV_DTYPE=f16: the CPU's cache in half precision (`--kv-cache-dtype`).
        let kv_cache_dtype = match std::env::var("BENCH_KV_DTYPE") {
            Ok(d) => d.parse()?,
            Err(_) => Default::default(),
        };
        let options = EngineOptions {
            batch,
            kv_cache_dtype,
            ..EngineOptions::default()
        };
        let mut engine = Engine::load(&checkpoint, options)?;
        // No EOS: every sequence generates exactly NEW_TOKENS.
        engine.set_eos_token_ids(Vec::new());
        engines.push(engine);
    }
    let prompt_tokens: usize = match std::env::var("BENCH_PROMPT_TOKENS") {
        Ok(n) => n.parse()?,
        Err(_) => PROMPT_TOKENS,
    };
    // A user message whose rendered prompt is exactly `prompt_tokens` long.
    let engine = &engines[0];
    let mut words = String::from("Explain step by step:");
    let mut k = 0;
    let user = loop {
        let ids = engine.prompt_ids(&[Message::user(words.clone())], "")?;
        if ids.len() == prompt_tokens {
            break words;
        }
        if ids.len() > prompt_tokens {
            return Err(format!("cannot hit {prompt_tokens} prompt tokens exactly").into());
        }
        // Whole words while far from the length (fast), one at a time near it.
        let step = if ids.len() + 64 < prompt_tokens {
            16
        } else {
            1
        };
        for _ in 0..step {
            words.push_str([" a", " number", " seven", " x"][k % 4]);
            k += 1;
        }
    };
    let ids = engine.prompt_ids(&[Message::user(user.clone())], "")?;
    if let Some(path) = ids_out {
        std::fs::write(&path, serde_json::to_string(&ids)?)?;
    }
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!("model {} · threads {threads}", model.display());
    for (engine, &batch) in engines.iter().zip(&batches) {
        // Prompt tokens / s: the prompts alone (one new token each, which the prefill's own
        // forward pass samples).
        let (_, prefill_secs) = generate(engine, &user, batch, 1)?;
        let (generated, secs) = generate(engine, &user, batch, NEW_TOKENS)?;
        // Decode alone: the tokens after each sequence's first, in the time after the prefill.
        println!(
            "distill batch {batch:>2}: {generated} tokens in {secs:.2}s = {:.1} tok/s (prefill {:.0} tok/s, decode {:.1} tok/s)",
            generated as f64 / secs,
            (batch * prompt_tokens) as f64 / prefill_secs,
            (generated - batch as u64) as f64 / (secs - prefill_secs)
        );
    }
    Ok(())
}

/// Runs `batch` copies of the prompt to exactly `new_tokens` greedy tokens each; returns the
/// tokens generated and the seconds taken.
fn generate(
    engine: &Engine,
    user: &str,
    batch: usize,
    new_tokens: usize,
) -> Result<(u64, f64), Box<dyn std::error::Error>> {
    let requests = (0..batch).map(|i| GenRequest {
        key: i.to_string(),
        messages: vec![Message::user(user.to_string())],
        prefill: String::new(),
        sampling: SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            max_new_tokens: new_tokens,
            logprobs: 0,
        },
        seed: i as u64,
        stop: Vec::new(),
        prompt_ids: None,
    });
    let start = Instant::now();
    let mut generated = 0u64;
    engine.run(&mut IterSource(requests), &Cancel::new(), &mut |u| {
        if let Update::Done(o) = u {
            generated += u64::from(o.completion_tokens);
        }
        ControlFlow::Continue(())
    })?;
    Ok((generated, start.elapsed().as_secs_f64()))
}
