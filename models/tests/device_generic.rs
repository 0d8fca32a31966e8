//! The decoder off the CPU f32 fast paths, run on the CPU in bf16: the paged KV pool (blocks
//! taken as sequences grow and given back, a pool that doubles, one batched attention per
//! decode step over gathered blocks), masked attention with an f32 softmax, rotary tables in
//! the compute dtype, composed differentiable ops. These are the paths a GPU takes (but for
//! its kernels); bf16 on the CPU proves them in CI.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use distill_models::transformer::Logits;
use distill_models::{Checkpoint, Model};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn f32_of(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F32).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    distill_models::ops::max_abs_diff(&f32_of(a), &f32_of(b)).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    distill_models::ops::max_abs(&f32_of(a)).unwrap()
}

fn load(name: &str, dtype: DType) -> Model {
    Checkpoint::open(&fixture(name))
        .unwrap()
        .load_for_inference(&Device::Cpu, dtype)
        .unwrap()
}

/// A folder loads in the dtype asked for, and bf16 logits follow the f32 ones to bf16's
/// precision.
#[test]
fn bf16_forward_follows_f32() {
    for name in ["tiny-qwen2", "tiny-llama", "tiny-qwen3"] {
        let (m32, m16) = (load(name, DType::F32), load(name, DType::BF16));
        assert_eq!(m16.dtype(), DType::BF16);
        let ids = Tensor::new(&[[3u32, 77, 12, 200, 5, 9, 41, 8]], &Device::Cpu).unwrap();
        let (a, b) = (
            m32.forward(&ids, None).unwrap(),
            m16.forward(&ids, None).unwrap(),
        );
        assert_eq!(b.dtype(), DType::BF16);
        let rel = max_diff(&a, &b) / max_abs(&a);
        assert!(
            rel < 3e-2,
            "{name}: bf16 logits off by {rel} of the largest"
        );
        assert!(
            rel > 0.0,
            "{name}: bf16 gave f32's exact logits: not run in bf16?"
        );
    }
}

/// `stored_dtype` reads what the safetensors hold; `auto` on the CPU still runs f32.
#[test]
fn stored_dtype_is_the_files_dtype() {
    let bf16 = Checkpoint::open(&fixture("tiny-llama-bf16")).unwrap();
    assert_eq!(bf16.stored_dtype(), DType::BF16);
    let f32 = Checkpoint::open(&fixture("tiny-qwen2")).unwrap();
    assert_eq!(f32.stored_dtype(), DType::F32);
    let gguf = Checkpoint::open(&fixture("tiny-qwen2.gguf")).unwrap();
    assert_eq!(gguf.stored_dtype(), DType::F32);
    let auto = distill_models::DtypeChoice::Auto
        .inference(&Device::Cpu, bf16.stored_dtype())
        .unwrap();
    assert_eq!(auto, DType::F32);
}

/// Cached decoding on the tensor path equals the full forward, past the pool's first blocks
/// (16 of 32 positions), so its growth and copy are exercised; the blocks go back when the
/// cache is dropped.
#[test]
fn tensor_cache_decode_equals_full_forward_across_pool_growth() {
    use distill_models::kv_pool::{BLOCK, MIN_BLOCKS};
    let model = load("tiny-qwen2", DType::BF16);
    let first = MIN_BLOCKS * BLOCK;
    let total = first + 40;
    let tokens: Vec<u32> = (0..total as u32).map(|i| (i * 37 + 11) % 256).collect();
    let full = model
        .forward(
            &Tensor::new(tokens.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut cache = model.new_cache();
    // A prompt that fills all but 10 positions of the first blocks, then one token at a time
    // across their end.
    let prompt = first - 10;
    let prefill = model.forward_cached(&tokens[..prompt], &mut cache).unwrap();
    assert_eq!(model.kv_pool_blocks(), (MIN_BLOCKS, 0));
    let scale = max_abs(&full);
    let d = max_diff(&prefill, &full.narrow(0, 0, prompt).unwrap()) / scale;
    assert!(d < 2e-2, "prefill differs by {d}");
    for (i, &t) in tokens.iter().enumerate().skip(prompt) {
        let step = model.forward_cached(&[t], &mut cache).unwrap();
        let d = max_diff(&step, &full.narrow(0, i, 1).unwrap()) / scale;
        assert!(d < 2e-2, "position {i}: cached logits differ by {d}");
    }
    assert_eq!(cache.len(), total);
    let held = total.div_ceil(BLOCK);
    assert_eq!(
        model.kv_pool_blocks(),
        (2 * MIN_BLOCKS, 2 * MIN_BLOCKS - held)
    );
    drop(cache);
    assert_eq!(
        model.kv_pool_blocks(),
        (0, 0),
        "the pool let go of its memory"
    );
}

/// Qwen3 on the tensor path (q/k norm and yarn-scaled tables in bf16, tensor caches) decodes
/// the reference's cached logits to bf16 precision.
#[test]
fn qwen3_tensor_path_decode_follows_transformers() {
    let model = load("tiny-qwen3", DType::BF16);
    let r =
        candle_core::safetensors::load(fixture("tiny-qwen3/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let row: Vec<u32> = r["input_ids"]
        .get(0)
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut cache = model.new_cache();
    let mut steps = vec![model.forward_cached(&row[..4], &mut cache).unwrap()];
    for &t in &row[4..] {
        steps.push(model.forward_cached(&[t], &mut cache).unwrap());
    }
    let got = Tensor::cat(&steps, 0).unwrap();
    let want = &r["decode_logits"];
    let rel = max_diff(&got, want) / max_abs(want);
    assert!(
        rel < 3e-2,
        "bf16 cached decode off by {rel} of the largest logit"
    );
}

/// A ragged batch on the tensor path equals each sequence run alone.
#[test]
fn tensor_path_ragged_batch_equals_sequences_alone() {
    let model = load("tiny-llama", DType::BF16);
    let prompts: [&[u32]; 3] = [&[1, 5, 9], &[7, 7, 2, 200, 31, 4], &[90]];
    let alone: Vec<Tensor> = prompts
        .iter()
        .map(|p| {
            let mut c = model.new_cache();
            model.forward_cached(p, &mut c).unwrap()
        })
        .collect();
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut batch: Vec<(&[u32], &mut distill_models::KvCache)> =
        prompts.iter().copied().zip(caches.iter_mut()).collect();
    let out = model.step(&mut batch, Logits::All).unwrap();
    for (i, (a, b)) in alone.iter().zip(&out).enumerate() {
        let d = max_diff(a, b) / max_abs(a);
        assert!(d < 2e-2, "sequence {i}: batched logits differ by {d}");
    }
}

/// Continuous batching on the paged pool: sequences join (prompts fed whole or in two chunks,
/// so a feed continues a history over its blocks), decode together (one batched attention),
/// finish and give their blocks to newcomers, while the pool doubles (16 → 32 blocks); every
/// step's logits equal each sequence run alone.
#[test]
fn pooled_continuous_batching_equals_sequences_alone() {
    let model = load("tiny-qwen2", DType::BF16);
    // Sequence s: a prompt of `prompt[s]` tokens, then `decode[s]` one-token steps; it joins
    // at step `join[s]` and its prompt arrives in `chunks[s]` feeds.
    let prompt = [5usize, 40, 2, 270, 9, 17, 3, 60, 11, 8];
    let decode = [30usize, 12, 25, 8, 20, 6, 14, 9, 18, 4];
    let join = [0usize, 0, 1, 2, 2, 3, 4, 5, 12, 20];
    let chunks = [1usize, 2, 1, 2, 1, 1, 2, 1, 2, 1];
    let stream = |s: usize| -> Vec<u32> {
        (0..prompt[s] + decode[s])
            .map(|i| ((s * 97 + i * 31 + 7) % 250 + 3) as u32)
            .collect()
    };
    let alone: Vec<Tensor> = (0..prompt.len())
        .map(|s| {
            let mut c = model.new_cache();
            model.forward_cached(&stream(s), &mut c).unwrap()
        })
        .collect();
    let scale = alone.iter().map(max_abs).fold(0f32, f32::max);
    // Per sequence: its cache (dropped when it finishes) and the next position to feed.
    let mut caches: Vec<Option<distill_models::KvCache>> =
        (0..prompt.len()).map(|_| None).collect();
    let mut fed = vec![0usize; prompt.len()];
    let (mut most_live, mut most_blocks) = (0, 0);
    for step in 0.. {
        let mut feeds: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for s in 0..prompt.len() {
            let total = prompt[s] + decode[s];
            if step < join[s] || fed[s] == total {
                continue;
            }
            let cache = caches[s].get_or_insert_with(|| model.new_cache());
            assert_eq!(cache.len(), fed[s]);
            let end = if fed[s] < prompt[s] {
                let piece = prompt[s].div_ceil(chunks[s]);
                (fed[s] + piece).min(prompt[s])
            } else {
                fed[s] + 1
            };
            feeds.push((s, fed[s]..end));
        }
        if feeds.is_empty() {
            break;
        }
        most_live = most_live.max(feeds.len());
        most_blocks = most_blocks.max(model.kv_pool_blocks().0);
        let streams: Vec<Vec<u32>> = feeds
            .iter()
            .map(|(s, r)| stream(*s)[r.clone()].to_vec())
            .collect();
        let mut taken: Vec<Option<distill_models::KvCache>> =
            caches.iter_mut().map(Option::take).collect();
        let mut entries: Vec<(usize, distill_models::KvCache)> = feeds
            .iter()
            .map(|(s, _)| (*s, taken[*s].take().unwrap()))
            .collect();
        let out = {
            let mut batch: Vec<(&[u32], &mut distill_models::KvCache)> = streams
                .iter()
                .zip(entries.iter_mut())
                .map(|(t, (_, c))| (t.as_slice(), c))
                .collect();
            model.step(&mut batch, Logits::All).unwrap()
        };
        for ((s, range), logits) in feeds.iter().zip(&out) {
            let want = alone[*s].narrow(0, range.start, range.len()).unwrap();
            let d = max_diff(logits, &want) / scale;
            assert!(
                d < 2e-2,
                "step {step}, sequence {s}, positions {range:?}: off by {d}"
            );
            fed[*s] = range.end;
        }
        for (s, cache) in entries {
            // A finished sequence's cache is dropped: its slot goes back to the pool.
            if fed[s] < prompt[s] + decode[s] {
                taken[s] = Some(cache);
            }
        }
        for (slot, t) in caches.iter_mut().zip(taken) {
            if t.is_some() {
                *slot = t;
            }
        }
    }
    assert_eq!(
        fed,
        (0..prompt.len())
            .map(|s| prompt[s] + decode[s])
            .collect::<Vec<_>>()
    );
    assert!(most_live > 4, "the schedule runs several sequences at once");
    assert_eq!(
        most_blocks, 32,
        "the schedule must outgrow the first 16 blocks"
    );
    assert_eq!(model.kv_pool_blocks(), (0, 0), "every block given back");
}

/// A cache holds blocks of its model's pool: another model refuses it in one line.
#[test]
fn a_cache_of_another_model_is_refused() {
    let (a, b) = (
        load("tiny-qwen2", DType::BF16),
        load("tiny-qwen2", DType::BF16),
    );
    let mut cache = a.new_cache();
    a.forward_cached(&[5, 6, 7], &mut cache).unwrap();
    let err = b.forward_cached(&[8], &mut cache).unwrap_err().to_string();
    assert!(err.contains("another model"), "{err}");
    assert_eq!(cache.len(), 3);
    cache.clear();
    // A cleared cache gave its blocks back and takes some of whichever model steps it next.
    b.forward_cached(&[8], &mut cache).unwrap();
    assert_eq!(cache.len(), 1);
}

/// The mixed-precision training forward: a bf16 cast of f32 variables, composed
/// differentiable ops, gradients back in f32 within bf16 precision of the f32 fused path.
#[test]
fn bf16_training_gradients_follow_f32() {
    for name in ["tiny-qwen2", "tiny-qwen3"] {
        bf16_training_gradients_follow_f32_for(name);
    }
}

fn bf16_training_gradients_follow_f32_for(fixture_name: &str) {
    let ckpt = Checkpoint::open(&fixture(fixture_name)).unwrap();
    let spec = ckpt.config().spec().unwrap();
    let vars: Vec<(String, Var)> = ckpt
        .tensors(&Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
        .collect();
    let tensors = || {
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    let ids: Vec<u32> = vec![4, 8, 15, 16, 23, 42, 4, 8, 15, 16, 23, 42];
    // Two packed documents per row: positions restart at 0.
    let pos: Vec<u32> = vec![0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5];
    let loss = |dtype: DType| {
        let model = Model::new(
            &spec,
            VarBuilder::from_tensors(tensors(), dtype, &Device::Cpu),
        )
        .unwrap();
        let logits = model.forward_hidden_host(&ids, &pos, 2).unwrap();
        let logits = model.lm_head().forward(&logits).unwrap();
        let target = Tensor::from_slice(&ids, 12, &Device::Cpu).unwrap();
        candle_nn::loss::cross_entropy(
            &f32_of(&logits.reshape((12, spec.vocab_size)).unwrap()),
            &target,
        )
        .unwrap()
    };
    let (g32, g16) = (
        loss(DType::F32).backward().unwrap(),
        loss(DType::BF16).backward().unwrap(),
    );
    for (name, var) in &vars {
        let (a, b) = (g32.get(var).unwrap(), g16.get(var).unwrap());
        assert_eq!(b.dtype(), DType::F32, "{name}");
        let rel = max_diff(a, b) / max_abs(a).max(1e-6);
        assert!(
            rel < 0.1,
            "{fixture_name} {name}: bf16 gradient off by {rel} of its largest"
        );
    }
}

/// Ids outside the vocabulary are refused on the host, before anything is uploaded.
#[test]
fn host_forward_checks_ids_and_shapes() {
    let model = load("tiny-qwen2", DType::BF16);
    let e = model
        .forward_hidden_host(&[1, 2, 999], &[0, 1, 2], 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("999"), "{e}");
    assert!(model.forward_hidden_host(&[1, 2, 3], &[0, 1], 1).is_err());
    assert!(model
        .forward_hidden_host(&[1, 2, 3], &[0, 1, 2], 2)
        .is_err());
}
