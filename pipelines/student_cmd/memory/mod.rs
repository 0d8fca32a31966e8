//! GPU memory for `distill train`: an estimate checked against the device's free memory before
//! the first step, and out-of-memory errors turned into one line naming the stage, the batch and
//! the estimated need (instead of a CUDA error from deep inside a kernel launch). A live
//! teacher's weights and an on-policy run's sample caches count too ([`Beside`]). On the CPU,
//! [`cpu_estimate`] models the fused ops and a warning names a run that will not fit.
//!
//! [`sharded`] estimates the same parts for one process of a PyTorch job (the TRL engine), where
//! ZeRO-3 or FSDP2 divide weights, gradients and optimizer states over the processes.

use candle_core::DType;
use distill_models::device::{is_out_of_memory, memory_info, size};
use distill_models::{chunked_attention, kv_pool};
use distill_models::{Checkpoint, Spec, TrainPrecision};
use distill_student::TrainTarget;

use super::TrainSettings;

mod sharded;
pub use sharded::{lora_parameters, sharded, Sharding};

/// Bytes a training run needs on one device, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Parameters: master weights and (mixed precision) the compute-dtype copy; under sharding
    /// also the gathered layers a process holds while it computes them.
    pub weights: f64,
    pub gradients: f64,
    /// AdamW's two moments.
    pub optimizer: f64,
    /// Activations kept for the backward pass of one micro-batch.
    pub activations: f64,
}

impl Estimate {
    /// Weights, gradients and optimizer states: what stays for the whole run.
    pub fn state(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }

    pub fn total(&self) -> f64 {
        self.state() + self.activations
    }
}

/// What a run of `spec` needs at `micro_batch` rows of `seq_len` tokens. Activations follow the
/// ops a GPU runs: per layer the values its backward pass keeps ([`layer_values`], with distill's
/// CUDA kernels where they run, else candle's composed ops) and one f32 log-sum-exp per query
/// head and token (attention keeps no scores: [`chunked_attention`]), plus, where the
/// flash-attention kernels do not run (they keep their tiles on chip:
/// `distill_models::cuda::flash_attention_runs`), the working set of one attention chunk (four
/// chunks' f32 scores). With activation checkpointing (`recompute`) each layer keeps only its
/// input, and one layer's activations exist at a time.
pub fn estimate(
    spec: &Spec,
    target: &TrainTarget,
    micro_batch: usize,
    seq_len: usize,
    recompute: bool,
) -> Estimate {
    let p = &target.precision;
    let path = KernelPath {
        kernels: distill_models::cuda::runs_on(&target.device, p.compute),
        flash_attention: distill_models::cuda::flash_attention_runs(
            &target.device,
            p.compute,
            spec.head_dim,
        ),
    };
    estimate_on(spec, p, path, micro_batch, seq_len, recompute)
}

/// Which of distill's CUDA kernels a run takes (what [`estimate`] asks of its device; tests
/// state it to estimate a GPU run on the CPU).
#[derive(Debug, Clone, Copy)]
struct KernelPath {
    kernels: bool,
    flash_attention: bool,
}

/// [`estimate`] for a run in `precision` on `path`.
fn estimate_on(
    spec: &Spec,
    p: &TrainPrecision,
    path: KernelPath,
    micro_batch: usize,
    seq_len: usize,
    recompute: bool,
) -> Estimate {
    let n = spec.num_parameters() as f64;
    let bytes = |d: DType| d.size_in_bytes() as f64;
    let copy = if p.is_mixed() { bytes(p.compute) } else { 0.0 };
    // parameter + gradient + two moments (in the parameter's dtype) + the cast copy.
    let tokens = (micro_batch * seq_len) as f64;
    let per_layer = tokens * layer_values(spec, path.kernels) as f64 * bytes(p.compute)
        + tokens * (spec.num_heads * DType::F32.size_in_bytes()) as f64;
    let working = if path.flash_attention {
        0.0
    } else {
        4.0 * chunked_attention::chunk_score_bytes(micro_batch, spec.num_heads, seq_len) as f64
    };
    let layers = spec.num_layers as f64;
    let activations = working
        + if recompute {
            (layers + 1.0) * tokens * spec.hidden_size as f64 * bytes(p.compute) + per_layer
        } else {
            layers * per_layer
        };
    Estimate {
        weights: n * (bytes(p.params) + copy),
        gradients: n * bytes(p.params),
        optimizer: n * 2.0 * bytes(p.params),
        activations,
    }
}

/// Values per token one decoder layer keeps for its backward pass, attention scores aside.
/// With distill's CUDA kernels (`kernels`), counted from the graph: the two norms' outputs; q,
/// k and v as projected (again with their biases added), laid out heads-first, q and k rotated
/// (Qwen3: also head-normed); the attention output, its merged copy and projection; the gate,
/// up and SwiGLU values and their projection; the two residual sums — 12 × hidden + 7 × kv
/// width + 3 × intermediate for Qwen2.5 (not yet measured: `check-device`'s SFT figures print
/// this estimate beside the peak). With candle's composed ops (an f32 copy and its square in
/// each RMSNorm, RoPE's rotated halves, `silu(gate)`): ~16 × hidden + 6 × intermediate.
fn layer_values(spec: &Spec, kernels: bool) -> usize {
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    if !kernels {
        return 16 * h + 6 * i;
    }
    let kv = spec.num_kv_heads * spec.head_dim;
    let q = spec.num_heads * spec.head_dim;
    let (bias, qk_norm) = (spec.qkv_bias as usize, spec.qk_norm as usize);
    // normed, attention output, merged, o_proj, residual, normed, down_proj, residual
    let hidden = 6 * h + 2 * q;
    // projected (+ bias), heads-first, rotated (q, k), head-normed (Qwen3)
    let q_values = q * (3 + bias + qk_norm);
    let kv_values = kv * (3 + bias + qk_norm) + kv * (2 + bias);
    let mlp = 3 * i + if spec.mlp_bias { 2 * i + h } else { 0 };
    hidden + q_values + kv_values + mlp + if spec.o_bias { h } else { 0 }
}

/// What a run keeps on the device beside the student's own training state, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Beside {
    /// A live teacher's weights.
    pub teacher: f64,
    /// The KV caches of an on-policy step's samples.
    pub samples: f64,
    /// What the divergence of logit or on-policy distillation keeps for one micro-batch's
    /// backward pass ([`Beside::divergence`]).
    pub divergence: f64,
}

impl Beside {
    /// A live teacher's weights as they will sit on `target`: a GGUF file's bytes (its
    /// matrices stay quantized), else its parameters in the compute dtype.
    pub fn teacher_weights(teacher: &Checkpoint, target: &TrainTarget) -> anyhow::Result<f64> {
        if teacher.is_gguf() {
            return Ok(teacher.size_on_disk()? as f64);
        }
        let n = teacher.config().spec()?.num_parameters() as f64;
        Ok(n * target.precision.compute.size_in_bytes() as f64)
    }

    /// The KV caches of `sequences` samples of up to `seq_len` tokens of `spec`, in `dtype`:
    /// the paged generation pool they grow to (every sample at full length, in blocks, the
    /// blocks rounded up to a power of two).
    pub fn sample_caches(spec: &Spec, sequences: usize, seq_len: usize, dtype: DType) -> f64 {
        (kv_pool::extent(sequences, seq_len) * kv_pool::block_bytes(spec, dtype)) as f64
    }

    /// What the divergence keeps until the backward pass for `positions` compared positions of
    /// `spec`, comparing `top_k` tokens per position (`None`: the whole vocabulary). Over the
    /// whole vocabulary: the student's logits and their gradient, `2 × positions × vocab` f32
    /// (computed apart from the value, `kd::Divergence::per_position`): 10 GB for Qwen's
    /// 151,936 tokens at 8,192 positions, where the cross-entropy, chunked, keeps none. At K
    /// tokens (`kd::logits_at`): the K rows of the output layer each position gathers, in
    /// `dtype`, and the logits and gradient there, `positions × K × (hidden · dtype + 8)`.
    pub fn divergence(spec: &Spec, positions: usize, top_k: Option<usize>, dtype: DType) -> f64 {
        let positions = positions as f64;
        match top_k.filter(|&k| k < spec.vocab_size) {
            None => 2.0 * positions * spec.vocab_size as f64 * 4.0,
            Some(k) => {
                let per_id = (spec.hidden_size * dtype.size_in_bytes()) as f64 + 8.0;
                positions * k as f64 * per_id
            }
        }
    }

    fn total(&self) -> f64 {
        self.teacher + self.samples + self.divergence
    }
}

/// Fails before the first step when the estimate for `width`-token rows, with what the run
/// keeps `beside` them, exceeds the GPU's free memory. On the CPU, where the operating system
/// has the last word, a warning instead ([`cpu_warning`]).
pub fn preflight(
    settings: &TrainSettings,
    spec: &Spec,
    target: &TrainTarget,
    width: usize,
    beside: Beside,
) -> anyhow::Result<()> {
    if target.device.is_cpu() {
        if let Some(available) = distill_models::device::host_memory_available() {
            if let Some(line) = cpu_warning(settings, spec, target, width, beside, available) {
                eprintln!("warning: {line}");
            }
        }
        return Ok(());
    }
    let Some((free, _)) = memory_info(&target.device) else {
        return Ok(());
    };
    let need = run_estimate(settings, spec, target, width);
    if need.total() + beside.total() > free as f64 {
        anyhow::bail!(
            "{}",
            advice(settings, target, width, &need, beside, Some(free))
        );
    }
    Ok(())
}

/// [`estimate`] for the run `settings` describe, at `width`-token rows.
fn run_estimate(
    settings: &TrainSettings,
    spec: &Spec,
    target: &TrainTarget,
    width: usize,
) -> Estimate {
    let train = &settings.train;
    estimate(
        spec,
        target,
        train.micro_batch_size,
        width,
        train.activation_checkpointing,
    )
}

/// What a run holds in host memory on the CPU: [`estimate`]'s state and, in f32, each layer's
/// kept values under the fused ops instead of the composed ones (the block's inputs,
/// projections and MLP values: `8 × hidden + 2 × kv + 3 × intermediate` per token; no attention
/// scores), or with recomputed layers their inputs and one layer twice (its values and their
/// gradients); plus one chunk of the loss's logits with their gradient (f32). Measured on the
/// 0.6B cut student of the README (f32, 4 × 768 tokens): 17.2 GB peak, 11.4 GB recomputed.
pub fn cpu_estimate(
    spec: &Spec,
    target: &TrainTarget,
    micro_batch: usize,
    seq_len: usize,
    recompute: bool,
    loss_chunk: usize,
) -> Estimate {
    let mut need = estimate(spec, target, micro_batch, seq_len, recompute);
    let tokens = (micro_batch * seq_len) as f64;
    if target.precision.compute == DType::F32 {
        let kv = spec.num_kv_heads * spec.head_dim;
        let per_token = 8 * spec.hidden_size + 2 * kv + 3 * spec.intermediate_size;
        let one_layer = tokens * per_token as f64 * 4.0;
        let layers = spec.num_layers as f64;
        need.activations = if recompute {
            (layers + 1.0) * tokens * spec.hidden_size as f64 * 4.0 + 2.0 * one_layer
        } else {
            layers * one_layer
        };
    }
    let chunk = if loss_chunk == 0 {
        tokens
    } else {
        (loss_chunk as f64).min(tokens)
    };
    need.activations += 2.0 * chunk * spec.vocab_size as f64 * 4.0;
    need
}

/// The warning a CPU run gets when its estimate exceeds the `available` host memory: the
/// kernel's out-of-memory killer would end it without a word, after the loading at least.
fn cpu_warning(
    settings: &TrainSettings,
    spec: &Spec,
    target: &TrainTarget,
    width: usize,
    beside: Beside,
    available: usize,
) -> Option<String> {
    let train = &settings.train;
    let estimate = |recompute| {
        cpu_estimate(
            spec,
            target,
            train.micro_batch_size,
            width,
            recompute,
            train.loss_chunk_size,
        )
    };
    let need = estimate(train.activation_checkpointing);
    let total = need.total() + beside.total();
    if total <= available as f64 {
        return None;
    }
    let recomputed = estimate(true).total() + beside.total();
    Some(format!(
        "train: micro-batch {} × {width} tokens needs about {} of memory on the CPU (weights, gradients and AdamW moments {}, activations and the loss {}{}) and {} is available; {}lower `micro_batch_size` or `max_seq_len` (raise `accumulation_steps` to keep the batch), or the system may end the run",
        train.micro_batch_size,
        size(total),
        size(need.state()),
        size(need.activations),
        if beside.total() > 0.0 { format!(", the teacher and divergence {}", size(beside.total())) } else { String::new() },
        size(available as f64),
        if train.activation_checkpointing { String::new() } else { format!("set `activation_checkpointing = true` (`--activation-checkpointing`) to need about {}, or ", size(recomputed)) },
    ))
}

/// An out-of-memory failure becomes one line with the batch and the estimate for `spec`;
/// anything else passes through.
pub fn explain(
    e: anyhow::Error,
    settings: &TrainSettings,
    target: &TrainTarget,
    spec: &Spec,
    beside: Beside,
) -> anyhow::Error {
    let oom = e.chain().any(|c| {
        c.downcast_ref::<candle_core::Error>()
            .is_some_and(is_out_of_memory)
            || c.to_string().contains("OUT_OF_MEMORY")
    });
    if !oom {
        return e;
    }
    let width = settings.data.max_seq_len;
    let free = memory_info(&target.device).map(|(f, _)| f);
    let need = run_estimate(settings, spec, target, width);
    anyhow::anyhow!("{}", advice(settings, target, width, &need, beside, free))
}

/// Whether the run's divergence compares whole vocabularies: a live teacher without `top_k`
/// (stored and endpoint targets are always K tokens).
fn whole_vocabulary(settings: &TrainSettings) -> bool {
    settings
        .train
        .kd
        .as_ref()
        .is_some_and(|kd| !kd.from_corpus && !kd.is_endpoint() && kd.top_k == 0)
}

fn advice(
    settings: &TrainSettings,
    target: &TrainTarget,
    width: usize,
    need: &Estimate,
    beside: Beside,
    free: Option<usize>,
) -> String {
    let mut parts = format!(
        "weights, gradients and AdamW moments {}, activations {}",
        size(need.state()),
        size(need.activations)
    );
    if beside.teacher > 0.0 {
        parts += &format!(", the teacher {}", size(beside.teacher));
    }
    if beside.samples > 0.0 {
        parts += &format!(", the samples' KV caches {}", size(beside.samples));
    }
    if beside.divergence > 0.0 {
        parts += &format!(", the divergence {}", size(beside.divergence));
    }
    format!(
        "train: out of GPU memory: micro-batch {} × {width} tokens in {} needs about {} ({parts}){}; {}lower `micro_batch_size` or `max_seq_len` (raise `accumulation_steps` to keep the batch){}{}{}",
        settings.train.micro_batch_size,
        target.precision,
        size(need.total() + beside.total()),
        free.map_or(String::new(), |f| format!(", {} has {} free", distill_models::device::describe(&target.device), size(f as f64))),
        if settings.train.activation_checkpointing { "" } else { "set `activation_checkpointing = true` (`--activation-checkpointing`: layers recomputed in backward), or " },
        if beside.samples > 0.0 { ", or `prompts_per_step`" } else { "" },
        if whole_vocabulary(settings) { ", or compare the teacher's top tokens only (`kd_top_k`)" } else { "" },
        if target.precision.params == DType::F32 { ", or use `--dtype bf16-pure`" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_models::transformer::RopeSpec;

    /// Qwen2.5-1.5B (1.54 B parameters): 16 bytes per parameter of state with f32 master
    /// weights (+2 for the bf16 copy), 8 in pure bf16.
    pub(super) fn spec() -> Spec {
        Spec {
            vocab_size: 151936,
            hidden_size: 1536,
            intermediate_size: 8960,
            num_layers: 28,
            num_heads: 12,
            num_kv_heads: 2,
            head_dim: 128,
            rms_norm_eps: 1e-6,
            rope: RopeSpec::from_hf(1e6, None, 128).unwrap(),
            qkv_bias: true,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            tie_word_embeddings: true,
            hidden_act: "silu".into(),
            initializer_range: 0.02,
        }
    }

    /// A target of `params` master weights computing in `compute` (the host stands in).
    fn target(params: DType, compute: DType) -> TrainTarget {
        TrainTarget {
            device: candle_core::Device::Cpu,
            precision: TrainPrecision { params, compute },
        }
    }

    #[test]
    fn qwen_1_5b_estimate() {
        let spec = spec();
        let n = spec.num_parameters() as f64;
        assert!((1.5e9..1.6e9).contains(&n), "{n}");
        let mixed = estimate(&spec, &target(DType::F32, DType::BF16), 8, 2048, false);
        assert_eq!(mixed.state(), n * 18.0);
        let pure = estimate(&spec, &target(DType::BF16, DType::BF16), 8, 2048, false);
        assert_eq!(pure.state(), n * 8.0);
        assert_eq!(mixed.activations, pure.activations);
        // Per layer: 16 × hidden + 6 × intermediate bf16 values and 12 f32 log-sum-exps per
        // token; beside the layers, four chunks of f32 scores (341 query rows × 2048 keys ×
        // 8 rows × 12 heads: 255.8 MiB each).
        let layer = |tokens: f64| tokens * ((16.0 * 1536.0 + 6.0 * 8960.0) * 2.0 + 12.0 * 4.0);
        let working = 4.0 * (8 * 12 * 2048 * 341 * 4) as f64;
        assert_eq!(pure.activations, 28.0 * layer(16384.0) + working);
        // No `seq²` term: the layers' part is linear in the length.
        let short = estimate(&spec, &target(DType::BF16, DType::BF16), 8, 1024, false);
        let short_working = 4.0 * (8 * 12 * 1024 * 682 * 4) as f64;
        assert_eq!(short.activations, 28.0 * layer(8192.0) + short_working);
        // Recomputed layers: 29 layer inputs of 8 × 2048 × 1536 bf16 values (1.36 GiB) and
        // one layer's activations, where the full graph keeps all 28 layers'.
        let recomputed = estimate(&spec, &target(DType::BF16, DType::BF16), 8, 2048, true);
        assert_eq!(recomputed.state(), pure.state());
        let inputs = 29.0 * 8.0 * 2048.0 * 1536.0 * 2.0;
        assert_eq!(recomputed.activations, inputs + layer(16384.0) + working);
        assert!(recomputed.activations < pure.activations / 10.0);
    }

    /// Issue 18's goal: a full fine-tune of Qwen2.5-7B in pure bf16 on 16k-token packed rows
    /// fits a 141 GB H200 with the CUDA kernels and flash attention when layers are recomputed
    /// (61 GB of weights, gradients and moments, ~7 GB of activations), and does not otherwise
    /// (~95 GB of activations); with the chunked attention's working set the recomputed run
    /// still fits.
    #[test]
    fn qwen_7b_at_16k_tokens_fits_one_h200_recomputed() {
        let spec = Spec {
            vocab_size: 152_064,
            hidden_size: 3584,
            intermediate_size: 18_944,
            num_heads: 28,
            num_kv_heads: 4,
            tie_word_embeddings: false,
            ..spec()
        };
        let n = spec.num_parameters() as f64;
        assert!((7.6e9..7.7e9).contains(&n), "{n}");
        let pure = TrainPrecision {
            params: DType::BF16,
            compute: DType::BF16,
        };
        let gpu = KernelPath {
            kernels: true,
            flash_attention: true,
        };
        let h200 = 141e9;
        let recomputed = estimate_on(&spec, &pure, gpu, 1, 16_384, true);
        assert_eq!(recomputed.state(), 8.0 * n);
        assert!(recomputed.total() < h200 * 0.55, "{recomputed:?}");
        let full = estimate_on(&spec, &pure, gpu, 1, 16_384, false);
        assert!(full.total() > h200, "{full:?}");
        let chunked = KernelPath {
            flash_attention: false,
            ..gpu
        };
        let with_chunks = estimate_on(&spec, &pure, chunked, 1, 16_384, true);
        assert!(with_chunks.total() > recomputed.total());
        assert!(with_chunks.total() < h200, "{with_chunks:?}");
    }

    /// The values a layer keeps per token: Qwen2.5-1.5B with the CUDA kernels 12 × 1,536 +
    /// 7 × 256 + 3 × 8,960 (40% under the composed ops' count); Qwen3 (q/k norms, no biases)
    /// and Llama (no biases) by their own graphs.
    #[test]
    fn the_kernels_keep_fewer_values() {
        let qwen = spec();
        assert_eq!(layer_values(&qwen, true), 12 * 1536 + 7 * 256 + 3 * 8960);
        assert_eq!(layer_values(&qwen, false), 16 * 1536 + 6 * 8960);
        let ratio = layer_values(&qwen, true) as f64 / layer_values(&qwen, false) as f64;
        assert!((0.55..0.65).contains(&ratio), "{ratio}");
        let llama = Spec {
            qkv_bias: false,
            ..spec()
        };
        assert_eq!(layer_values(&llama, true), 11 * 1536 + 5 * 256 + 3 * 8960);
        let qwen3 = Spec {
            qkv_bias: false,
            qk_norm: true,
            ..spec()
        };
        assert_eq!(layer_values(&qwen3, true), 12 * 1536 + 6 * 256 + 3 * 8960);
    }

    /// The R1 preset's student (Qwen2.5-Math-1.5B, 1 × 4096 tokens, bf16 over f32 masters):
    /// with attention in query chunks the full graph's activations (~18 GiB) fit an 80 GB GPU
    /// beside the 26 GiB of state, so the preset does not recompute layers; recomputed (~3 GiB),
    /// the run fits a 40 GB one.
    #[test]
    fn the_r1_preset_fits_an_80_gb_gpu() {
        let mixed = target(DType::F32, DType::BF16);
        let plain = estimate(&spec(), &mixed, 1, 4096, false);
        let recomputed = estimate(&spec(), &mixed, 1, 4096, true);
        let gib = |b: f64| b / (1u64 << 30) as f64;
        assert!((17.0..19.0).contains(&gib(plain.activations)), "{plain:?}");
        assert!(gib(plain.total()) < 46.0, "{plain:?}");
        assert!(gib(recomputed.activations) < 3.5, "{recomputed:?}");
        assert!(gib(recomputed.total()) < 30.0, "{recomputed:?}");
        let preset = include_str!("../../r1-distill-qwen-1.5b.toml");
        assert!(preset.contains("\nactivation_checkpointing = false\n"));
    }

    /// One on-policy step of 32 samples of 4096 tokens keeps 32 · 4096 · (2 · 28 layers · 2 KV
    /// heads · 128) bf16 values: 3.76 GB beside the training state, and the advice names it.
    #[test]
    fn on_policy_samples_and_teacher_count() {
        let caches = Beside::sample_caches(&spec(), 32, 4096, DType::BF16);
        assert_eq!(caches, 32.0 * 4096.0 * (2 * 28 * 2 * 128 * 2) as f64);
        // The pool holds blocks of 32 positions (33 × 94 for 3,000 each), their number
        // rounded up to a power of two: 4,096 blocks.
        let rounded = Beside::sample_caches(&spec(), 33, 3000, DType::BF16);
        assert_eq!(rounded, 4096.0 * 32.0 * (2 * 28 * 2 * 128 * 2) as f64);
        let target = target(DType::F32, DType::BF16);
        let need = estimate(&spec(), &target, 8, 4096, false);
        let beside = Beside {
            teacher: 15.2e9,
            samples: caches,
            divergence: 0.0,
        };
        let line = advice(
            &TrainSettings::default(),
            &target,
            4096,
            &need,
            beside,
            None,
        );
        assert!(line.contains("the teacher 14.2 GiB"), "{line}");
        assert!(line.contains("the samples' KV caches 3.5 GiB"), "{line}");
        assert!(line.contains("or `prompts_per_step`"), "{line}");
        let total = size(need.total() + beside.total());
        assert!(line.contains(&format!("needs about {total}")), "{line}");
    }

    /// The divergence of a live teacher over Qwen's whole vocabulary keeps the student's logits
    /// and their gradient, 2 × 8,192 positions × 151,936 × 4 bytes (9.3 GiB); at the teacher's
    /// top 20 it keeps the 20 gathered output rows per position instead (0.47 GiB in bf16), and
    /// the advice names `kd_top_k` only where it would help.
    #[test]
    fn the_divergence_counts_and_its_advice_names_top_k() {
        let spec = spec();
        let whole = Beside::divergence(&spec, 4 * 2048, None, DType::BF16);
        assert_eq!(whole, 2.0 * 8192.0 * 151936.0 * 4.0);
        let top = Beside::divergence(&spec, 4 * 2048, Some(20), DType::BF16);
        assert_eq!(top, 8192.0 * 20.0 * (1536.0 * 2.0 + 8.0));
        assert_eq!(
            Beside::divergence(&spec, 10, Some(200_000), DType::F32),
            Beside::divergence(&spec, 10, None, DType::F32)
        );
        let target = target(DType::F32, DType::BF16);
        let need = estimate(&spec, &target, 4, 2048, false);
        let mut settings = TrainSettings::default();
        settings.train.kd = Some(distill_student::kd::KdConfig {
            teacher: "teacher.gguf".into(),
            ..Default::default()
        });
        let beside = Beside {
            divergence: whole,
            ..Default::default()
        };
        let line = advice(&settings, &target, 2048, &need, beside, None);
        assert!(line.contains("the divergence 9.3 GiB"), "{line}");
        assert!(line.contains("(`kd_top_k`)"), "{line}");
        let total = size(need.total() + whole);
        assert!(line.contains(&format!("needs about {total}")), "{line}");
        settings.train.kd.as_mut().unwrap().top_k = 20;
        let beside = Beside {
            divergence: top,
            ..Default::default()
        };
        let line = advice(&settings, &target, 2048, &need, beside, None);
        assert!(
            line.contains("the divergence 0.5 GiB") && !line.contains("kd_top_k"),
            "{line}"
        );
    }

    /// The 0.6B cut student of the README (Qwen2.5-Coder-0.5B without layer 20, untied head)
    /// at 4 × 768 tokens peaked at 17.2 GB, and 11.4 GB with recomputed layers.
    #[test]
    fn the_cpu_estimate_matches_the_measured_peaks() {
        let cut = Spec {
            vocab_size: 151936,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 23,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: 64,
            tie_word_embeddings: false,
            ..spec()
        };
        let gb = |e: Estimate| e.total() / 1e9;
        let f32 = target(DType::F32, DType::F32);
        let plain = gb(cpu_estimate(&cut, &f32, 4, 768, false, 1024));
        let recomputed = gb(cpu_estimate(&cut, &f32, 4, 768, true, 1024));
        assert!((plain / 17.2 - 1.0).abs() < 0.1, "{plain}");
        assert!((recomputed / 11.4 - 1.0).abs() < 0.1, "{recomputed}");
        // Pure bf16 on the CPU: half the state, and the composed ops' activations.
        let pure = target(DType::BF16, DType::BF16);
        let bf16 = cpu_estimate(&cut, &pure, 4, 768, false, 1024);
        let composed = estimate(&cut, &pure, 4, 768, false);
        assert_eq!(
            bf16.state(),
            cpu_estimate(&cut, &f32, 4, 768, false, 1024).state() / 2.0
        );
        assert!(
            bf16.activations > composed.activations,
            "the loss chunk counts too"
        );

        let mut settings = TrainSettings::default();
        settings.train.micro_batch_size = 4;
        let (beside, gib16) = (Beside::default(), 16 << 30);
        let line = cpu_warning(&settings, &cut, &f32, 768, beside, gib16).unwrap();
        assert!(
            line.starts_with("train: micro-batch 4 × 768 tokens needs about 16."),
            "{line}"
        );
        assert!(line.contains("and 16.0 GiB is available"), "{line}");
        assert!(
            line.contains("`--activation-checkpointing`) to need about 11.1 GiB,"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        assert_eq!(
            cpu_warning(&settings, &cut, &f32, 768, beside, 20 << 30),
            None
        );
        settings.train.activation_checkpointing = true;
        assert_eq!(cpu_warning(&settings, &cut, &f32, 768, beside, gib16), None);
        let line = cpu_warning(&settings, &cut, &f32, 768, beside, 8 << 30).unwrap();
        assert!(!line.contains("activation_checkpointing"), "{line}");
    }

    #[test]
    fn only_out_of_memory_errors_are_rewritten() {
        let settings = TrainSettings::default();
        let target = TrainTarget::from(&candle_core::Device::Cpu);
        let spec = spec();
        let beside = Beside::default();
        let other = explain(
            anyhow::anyhow!("disk full"),
            &settings,
            &target,
            &spec,
            beside,
        );
        assert_eq!(other.to_string(), "disk full");
        let out_of_memory = |settings: &TrainSettings| {
            let e = anyhow::anyhow!("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")");
            explain(e, settings, &target, &spec, beside).to_string()
        };
        let oom = out_of_memory(&settings);
        assert!(oom.starts_with("train: out of GPU memory"), "{oom}");
        assert!(oom.contains("micro-batch"), "{oom}");
        assert!(
            oom.contains("set `activation_checkpointing = true`"),
            "{oom}"
        );
        assert!(!oom.contains('\n'));
        // Once it is on, the advice no longer offers it.
        let mut settings = settings;
        settings.train.activation_checkpointing = true;
        let oom = out_of_memory(&settings);
        assert!(!oom.contains("activation_checkpointing"), "{oom}");
    }
}
