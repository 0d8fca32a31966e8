//! What a training step and a checkpoint hold at most, counted by this test binary's allocator
//! (every byte the process allocates, whichever thread): activation checkpointing keeps a
//! fraction of the full graph's activations, attention outside the fused CPU ops (bf16, GPUs)
//! keeps no `seq × seq` scores, and saving a checkpoint does not copy the AdamW moments all at
//! once.

mod common;
use common::{cpu_target, init, packed_rows};

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::Device;
use distill_models::{Config, DtypeChoice};
use distill_student::batch::PackedRow;
use distill_student::{StudentInit, Trainer, TrainerConfig};

/// Counts the bytes the process holds, and the most it held since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Every allocation of the process counts: the tests run one at a time.
static ONE_TEST: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most the process held while `f` ran, above what it held before.
fn peak_of(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(before)
}

fn config(checkpointing: bool) -> TrainerConfig {
    TrainerConfig {
        micro_batch_size: 8,
        max_steps: Some(2),
        activation_checkpointing: checkpointing,
        ..Default::default()
    }
}

#[test]
fn checkpointing_keeps_a_fraction_of_the_activations() {
    let _one = ONE_TEST.lock().unwrap_or_else(|e| e.into_inner());
    // 4 layers, eight rows of 128 tokens: activations dominate what a step allocates.
    let long = packed_rows(8, 128);
    let micro: Vec<Vec<&PackedRow>> = vec![long.iter().collect()];
    let mut peaks = Vec::new();
    for checkpointing in [false, true] {
        let mut t = Trainer::new(
            init("tiny-qwen2-4layers"),
            config(checkpointing),
            &Device::Cpu,
        )
        .unwrap();
        // The first step also allocates the AdamW moments.
        t.train_step(&micro).unwrap();
        peaks.push(peak_of(|| {
            t.train_step(&micro).unwrap();
        }));
    }
    let (plain, recomputed) = (peaks[0], peaks[1]);
    eprintln!("a step held at most {plain} bytes, {recomputed} with recomputed layers");
    // The full graph keeps 4 layers' activations; recomputed, one layer's (and its gradients
    // while its backward runs) plus the layer inputs: measured 22.1 MB against 11.6 MB.
    assert!(
        (recomputed as f64) < 0.6 * plain as f64,
        "a checkpointed step held {recomputed} bytes at most, the full graph {plain}"
    );
}

/// A Qwen2-shaped model from scratch: `layers` layers `hidden` wide, 4 query and 2 kv heads.
fn student(layers: usize, hidden: usize, positions: usize) -> StudentInit {
    let config = serde_json::json!({
        "model_type": "qwen2", "vocab_size": 256, "hidden_size": hidden,
        "intermediate_size": 4 * hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": positions, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    });
    let config = Config::from_json_str(&config.to_string(), Path::new("student")).unwrap();
    StudentInit::from_scratch(config, Default::default(), None, 0).unwrap()
}

/// A Qwen2-shaped model of 3.5M parameters: 28 MB of AdamW moments.
fn wide_student() -> StudentInit {
    student(4, 256, 256)
}

/// bf16 steps (the compositions a GPU runs) at 8 rows of 512 tokens, 2 and 8 layers: the
/// composed attention kept each layer's f32 scores and probabilities (and their masked and
/// cast copies), `8 × 4 heads × 512² × 4` bytes (33.5 MB) each: measured, each layer added
/// 320 MB to the peak (2.8 GB at 8 layers). Attention in chunks of queries keeps none of
/// them, so a layer adds only its projections, norms and MLP values (measured 16.9 MB a
/// layer, 272 MB at 8 layers).
#[test]
fn attention_keeps_no_scores_between_forward_and_backward() {
    let _one = ONE_TEST.lock().unwrap_or_else(|e| e.into_inner());
    let rows = packed_rows(8, 512);
    let micro: Vec<Vec<&PackedRow>> = vec![rows.iter().collect()];
    let peak = |layers: usize| {
        let target = cpu_target(DtypeChoice::Bf16Pure);
        let mut t = Trainer::new(student(layers, 32, 512), config(false), target).unwrap();
        t.train_step(&micro).unwrap();
        peak_of(|| {
            t.train_step(&micro).unwrap();
        })
    };
    let (two, eight) = (peak(2), peak(8));
    let per_layer = (eight - two) / 6;
    let scores = 8 * 4 * 512 * 512 * 4;
    eprintln!(
        "a bf16 step held at most {two} bytes with 2 layers, {eight} with 8: {per_layer} a \
         layer; one layer's f32 scores are {scores}"
    );
    assert!(
        per_layer < scores,
        "each layer added {per_layer} bytes to a bf16 step's peak: scores kept for backward?"
    );
}

#[test]
fn a_checkpoint_is_written_without_copying_the_moments() {
    let _one = ONE_TEST.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Trainer::new(wide_student(), config(false), &Device::Cpu).unwrap();
    let short = packed_rows(2, 16);
    t.train_step(&[short.iter().collect()]).unwrap();
    let params: usize = t.weights().values().map(|w| w.elem_count()).sum();
    let moments = 2 * 4 * params;
    let dir = tempfile::tempdir().unwrap();
    let peak = peak_of(|| {
        t.save_checkpoint(dir.path()).unwrap();
    });
    eprintln!("saving held at most {peak} bytes beside {moments} bytes of moments");
    // One tensor's bytes at a time (the largest is 1 MiB) and the writer's 1 MiB buffer;
    // before, a copy of every moment (28 MB) and then each one's bytes.
    assert!(
        peak < moments / 4,
        "saving a checkpoint held {peak} bytes at most; the moments are {moments}"
    );
}
