//! `distill check-device`: proves a device runs distill correctly and measures it, one JSON line
//! per figure on stdout (the GPU check script, `gpu/check.sh`, adds PyTorch's figures beside
//! them in the same run).
//!
//! - `parity`: logits (max relative difference) and every parameter gradient (relative L2
//!   difference) of tiny seeded Qwen2 and Llama models on the device against the CPU's f32, per
//!   dtype, with the tolerance each dtype is held to;
//! - `finetune`: a short fine-tune of a tiny model on the device whose loss must fall; the model
//!   is saved (with its logits on fixed ids) for `gpu/check.py` to reload in transformers;
//! - `cuda_kernels`: the training kernels (`distill_models::cuda`) against candle's composed ops
//!   on the same device: the parity models' logits and gradients with the kernels on and off,
//!   a ragged batch decoded both ways (decode attention), sampling against the host
//!   sampler's nucleus, and the chunked loss's cross-entropy and the AdamW step on their own;
//! - `kd_top_k`: logit distillation's top-k ids of vocabulary-wide rows, device against CPU;
//! - `sft`: tokens/s, MFU and peak memory of SFT steps on a random-init Qwen2.5 config, then of
//!   a few steps with activation checkpointing, whose losses must equal the first run's, and a
//!   few with the CUDA kernels off (candle's composed ops: the kernels' speed-up);
//! - `decode`: a GGUF decoded greedily on the device and on the CPU, tokens compared; and decode
//!   tokens/s of a random-init model at batch 1 and 64 (and 64 again with the CUDA kernels off).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use distill_models::device::{describe, memory_info};
use distill_models::transformer::Logits;
use distill_models::{Checkpoint, Config, DeviceChoice, DtypeChoice, Model, TrainPrecision};
use distill_student::batch::{PackedRow, IGNORE};
use distill_student::{Control, StudentInit, TrainTarget, Trainer, TrainerConfig};
use serde_json::json;

mod kernels;

/// Peak dense bf16 tensor-core throughput of an H100/H200 SXM, the MFU denominator PyTorch's
/// anchors use.
const PEAK_FLOPS: f64 = 989e12;

#[derive(Debug, Clone, clap::Args)]
pub struct CheckDeviceArgs {
    /// The device to check (`cuda`, `cuda:N`; `cpu` runs the same checks against itself).
    #[arg(long, default_value = "cuda")]
    pub device: DeviceChoice,
    /// Where the fine-tuned tiny model and its reference logits go.
    #[arg(long, default_value = "check-device")]
    pub out: PathBuf,
    /// Model config (a `config.json`) for the SFT throughput figure; none: skip it.
    #[arg(long)]
    pub sft_config: Option<PathBuf>,
    /// SFT: rows per step, tokens per row, measured steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 2)]
    pub sft_batch: usize,
    #[arg(long, default_value_t = 2048)]
    pub sft_seq: usize,
    #[arg(long, default_value_t = 20)]
    pub sft_steps: usize,
    /// SFT precision (`bf16`: f32 master weights; `bf16-pure`).
    #[arg(long, default_value = "bf16")]
    pub sft_dtype: DtypeChoice,
    /// GGUF files (local, or on the hub: `owner/name:QUANT`) whose greedy decode is compared
    /// between the device and the CPU.
    #[arg(long, num_args = 0..)]
    pub gguf: Vec<PathBuf>,
    /// Greedy tokens compared per GGUF.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Skip the decode speed figure (random-init `--sft-config` model, bf16).
    #[arg(long)]
    pub no_decode_speed: bool,
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

pub fn check_device(args: CheckDeviceArgs) -> anyhow::Result<()> {
    // Hub models (`owner/name:QUANT`) are fetched before any device work.
    let ggufs = args
        .gguf
        .iter()
        .map(|g| crate::model_arg::resolve(g).map(|m| m.path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let placement = args.device.resolve()?;
    let dev = placement.device.clone();
    emit(json!({"check": "device", "device": placement.description}));
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create `{}`", args.out.display()))?;
    let mut failures = 0;
    for arch in ["qwen2", "llama"] {
        for dtype in [DType::F32, DType::BF16] {
            failures += parity(arch, dtype, &dev)? as usize;
        }
    }
    if dev.is_cuda() {
        failures += kernels::cuda_kernels(&dev)? as usize;
    }
    failures += finetune(&dev, &args.out)? as usize;
    failures += kd_top_k(&dev)? as usize;
    if let Some(config) = &args.sft_config {
        failures += sft(config, &args, &dev)? as usize;
        if !args.no_decode_speed {
            for batch in [1, 64] {
                decode_speed(config, batch, &dev)?;
            }
            // Batch 64 again on candle's composed ops: the decode and sampling kernels' share.
            if dev.is_cuda() && distill_models::cuda::enabled() {
                distill_models::cuda::set_enabled(false);
                let composed = decode_speed(config, 64, &dev);
                distill_models::cuda::set_enabled(true);
                composed?;
            }
        }
    }
    for gguf in &ggufs {
        failures += decode_parity(gguf, args.decode_tokens, &dev)? as usize;
    }
    emit(json!({"check": "summary", "failures": failures}));
    anyhow::ensure!(failures == 0, "{failures} device checks failed");
    Ok(())
}

/// A tiny config of `arch` (4 heads over 2 kv heads, biases for Qwen2, tied embeddings for Llama).
fn tiny_config(arch: &str) -> anyhow::Result<Config> {
    tiny_config_with(arch, json!({}))
}

/// [`tiny_config`] with the entries of `overrides` (a JSON object) in place of its own.
fn tiny_config_with(arch: &str, overrides: serde_json::Value) -> anyhow::Result<Config> {
    let mut c = json!({
        "model_type": arch, "vocab_size": 96, "hidden_size": 64, "intermediate_size": 160,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    });
    if arch == "llama" {
        c["tie_word_embeddings"] = json!(true);
    }
    let c = with_fields(c, overrides);
    Ok(Config::from_json_str(&c.to_string(), Path::new("tiny"))?)
}

/// Seeded random weights, with norms and biases moved off one and zero (so every term matters),
/// on the CPU. Deterministic: the same weights on every run and machine.
fn random_weights(config: &Config, seed: u64) -> anyhow::Result<HashMap<String, Tensor>> {
    let spec = config.spec()?;
    let mut w = distill_student::trainer::init_weights(&spec, seed, &Device::Cpu)?;
    for (name, t) in w.iter_mut() {
        if name.ends_with("norm.weight") || name.ends_with(".bias") {
            // A fixed pseudo-random pattern in [-0.1, 0.1] (candle's CPU randn is unseeded).
            let noise: Vec<f32> = (0..t.elem_count() as u64)
                .map(|i| ((i.wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0) * 0.1)
                .collect();
            *t = (&*t + Tensor::from_vec(noise, t.shape(), &Device::Cpu)?)?;
        }
    }
    Ok(w)
}

/// Packed rows of two documents each, for the parity loss.
fn parity_batch() -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let ids: Vec<u32> = (0..2 * 48).map(|i| (i * 37 + 5) % 96).collect();
    let pos: Vec<u32> = (0..2).flat_map(|_| (0..20).chain(0..28)).collect();
    let targets: Vec<u32> = ids.iter().map(|&t| (t * 7 + 3) % 96).collect();
    (ids, pos, targets)
}

/// Logits and gradients of a summed cross-entropy, with the model's weights in `dtype` cast
/// from f32 variables on `dev`.
fn logits_and_grads(
    config: &Config,
    weights: &HashMap<String, Tensor>,
    dtype: DType,
    dev: &Device,
) -> anyhow::Result<LogitsAndGrads> {
    let spec = config.spec()?;
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), Var::from_tensor(&t.to_device(dev)?)?)))
        .collect::<anyhow::Result<_>>()?;
    let cast: HashMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let model = Model::new(&spec, VarBuilder::from_tensors(cast, dtype, dev))?;
    let (ids, pos, targets) = parity_batch();
    let hidden = model.forward_hidden_host(&ids, &pos, 2)?;
    let logits = model
        .lm_head()
        .forward(&hidden)?
        .reshape((ids.len(), spec.vocab_size))?
        .to_dtype(DType::F32)?;
    let target = Tensor::new(targets.as_slice(), dev)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
    let grads = loss.backward()?;
    let mut out = HashMap::new();
    for (k, v) in &vars {
        if let Some(g) = grads.get(v) {
            out.insert(k.clone(), g.to_device(&Device::Cpu)?);
        }
    }
    Ok((logits.to_device(&Device::Cpu)?, out))
}

/// `max |a − b| / max |a|`: the logits' measure.
fn rel_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let d = distill_models::ops::max_abs_diff(a, b)?;
    Ok(d / distill_models::ops::max_abs(a)?.max(1e-12))
}

/// `‖a − b‖₂ / ‖a‖₂`: the gradients' measure (a bias's few small elements make the max-based
/// one swing with the draw in bf16).
fn rel_l2(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    let norm =
        |t: &Tensor| -> anyhow::Result<f32> { Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt()) };
    Ok(norm(&(a - b)?)? / norm(a)?.max(1e-12))
}

/// Device vs CPU f32: logits and every gradient within the dtype's tolerance (relative to the
/// largest element). Returns whether it failed.
fn parity(arch: &str, dtype: DType, dev: &Device) -> anyhow::Result<bool> {
    let config = tiny_config(arch)?;
    let weights = random_weights(&config, 7)?;
    let reference = logits_and_grads(&config, &weights, DType::F32, &Device::Cpu)?;
    let got = logits_and_grads(&config, &weights, dtype, dev)?;
    let (fields, ok) = agreement(&reference, &got, dtype)?;
    emit(with_fields(
        json!({"check": "parity", "arch": arch, "dtype": dtype.as_str(), "device": describe(dev)}),
        fields,
    ));
    Ok(!ok)
}

/// A model's logits and its parameters' gradients by name (from [`logits_and_grads`]).
type LogitsAndGrads = (Tensor, HashMap<String, Tensor>);

/// How far `got`'s logits (max relative difference) and gradients (worst relative L2
/// difference) are from `reference`'s, as JSON fields, and whether within the tolerance of
/// `dtype` on a GPU: f32 is cuBLAS FP32 (no TF32); bf16 has 8 bits of mantissa through two
/// layers (the kernels compute in f32 where the composed ops round each intermediate to bf16,
/// which the same bound covers).
fn agreement(
    (ref_logits, ref_grads): &LogitsAndGrads,
    (logits, grads): &LogitsAndGrads,
    dtype: DType,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let (tol, grad_tol) = if dtype == DType::F32 {
        (1e-4, 1e-4)
    } else {
        (4e-2, 1e-1)
    };
    let logit_diff = rel_diff(ref_logits, logits)?;
    let mut grad_diff = 0f32;
    let mut worst = String::new();
    for (name, g) in ref_grads {
        let d = match grads.get(name) {
            Some(x) => rel_l2(g, x)?,
            None => f32::INFINITY,
        };
        if d > grad_diff {
            grad_diff = d;
            worst.clone_from(name);
        }
    }
    let ok = logit_diff <= tol && grad_diff <= grad_tol;
    Ok((
        json!({
            "logits_max_rel_diff": logit_diff, "grad_rel_l2_diff": grad_diff, "worst_grad": worst,
            "tolerance_logits": tol, "tolerance_grads": grad_tol, "ok": ok,
        }),
        ok,
    ))
}

/// `head` with the fields of `more` added (both JSON objects).
fn with_fields(mut head: serde_json::Value, more: serde_json::Value) -> serde_json::Value {
    if let (Some(h), serde_json::Value::Object(m)) = (head.as_object_mut(), more) {
        h.extend(m);
    }
    head
}

/// Logit distillation's top-k selection on the device against the CPU's, on rows as wide as
/// Qwen's vocabulary (candle's CUDA sort cannot take them; see `kd::top_k_ids`), with the
/// time it takes. Returns whether it failed.
fn kd_top_k(dev: &Device) -> anyhow::Result<bool> {
    let (positions, vocab, k) = (256, 151_936, 20);
    let mut state = 5u64;
    let values: Vec<f32> = (0..positions * vocab)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let cpu = Tensor::from_vec(values, (positions, vocab), &Device::Cpu)?;
    let expected = distill_student::kd::top_k_ids(&cpu, k)?.to_vec2::<u32>()?;
    let on_device = cpu.to_device(dev)?;
    let start = Instant::now();
    let ids = distill_student::kd::top_k_ids(&on_device, k)?.to_vec2::<u32>()?;
    let seconds = start.elapsed().as_secs_f64();
    let ok = ids == expected;
    emit(json!({
        "check": "kd_top_k", "device": describe(dev), "positions": positions, "vocab": vocab,
        "k": k, "seconds": seconds, "ok": ok,
    }));
    Ok(!ok)
}

/// Synthetic sequences with a learnable rule (each token follows from the previous one).
fn rule_rows(n: usize, len: usize, vocab: u32) -> Vec<PackedRow> {
    (0..n)
        .map(|r| {
            let mut ids = vec![(r as u32 * 11 + 3) % vocab];
            while ids.len() < len {
                let last = *ids.last().unwrap_or(&0);
                ids.push((last * 5 + 7) % vocab);
            }
            let mut labels: Vec<i64> = ids[1..].iter().map(|&x| x as i64).collect();
            labels.push(IGNORE);
            PackedRow {
                position_ids: (0..len as u32).collect(),
                input_ids: ids,
                labels,
                teacher: None,
            }
        })
        .collect()
}

/// 40 steps of bf16 mixed precision on a tiny Qwen2; the loss must fall by half. Saves the model
/// and its logits on fixed ids for the transformers reload in `gpu/check.py`.
fn finetune(dev: &Device, out: &Path) -> anyhow::Result<bool> {
    let config = tiny_config("qwen2")?;
    let init = StudentInit {
        weights: distill_student::trainer::init_weights(&config.spec()?, 3, &Device::Cpu)?,
        config: config.clone(),
        generation: Default::default(),
        tokenizer: None,
        dtype: DType::F32,
    };
    let precision = DtypeChoice::Auto.training(dev)?;
    let target = TrainTarget {
        device: dev.clone(),
        precision,
    };
    let train_config = TrainerConfig {
        max_steps: Some(40),
        micro_batch_size: 4,
        schedule: distill_student::schedule::ScheduleConfig {
            lr: 3e-3,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
        },
        checkpoint_every: 0,
        eval_every: 0,
        ..Default::default()
    };
    let mut trainer = Trainer::new(init, train_config, target)?;
    let start = Instant::now();
    let summary = trainer.fit(&rule_rows(32, 32, 96), None, None, &mut |_| {
        Control::Continue
    })?;
    let history = &trainer.state().history;
    let (first, last) = (
        history.first().map_or(f64::NAN, |h| h.loss),
        summary.last_loss.unwrap_or(f64::NAN),
    );
    let dir = out.join("finetuned-tiny");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    trainer.save_model(&dir)?;
    // Reference logits in the compute dtype, as the check reloads them in transformers.
    let model = Checkpoint::open(&dir)?.load_for_inference(dev, precision.compute)?;
    let ids: Vec<u32> = (0..24).map(|i| (i * 13 + 1) % 96).collect();
    let logits = model
        .forward(&Tensor::new(ids.as_slice(), dev)?.unsqueeze(0)?, None)?
        .squeeze(0)?
        .to_dtype(DType::F32)?
        .to_vec2::<f32>()?;
    std::fs::write(
        out.join("finetuned-tiny-logits.json"),
        json!({"ids": ids, "dtype": precision.compute.as_str(), "logits": logits}).to_string(),
    )?;
    let ok = last < first * 0.5;
    emit(json!({
        "check": "finetune", "device": describe(dev), "precision": precision.to_string(),
        "steps": summary.steps, "first_loss": first, "last_loss": last,
        "seconds": start.elapsed().as_secs_f64(), "saved": dir, "ok": ok,
    }));
    Ok(!ok)
}

/// Polls the device's free memory until stopped; the lowest seen gives the peak use.
struct PeakMemory {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
    baseline: usize,
}

impl PeakMemory {
    fn start(dev: &Device) -> Option<Self> {
        let (free, _) = memory_info(dev)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (dev, flag) = (dev.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut lowest = usize::MAX;
            while !flag.load(Ordering::Relaxed) {
                if let Some((f, _)) = memory_info(&dev) {
                    lowest = lowest.min(f);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            lowest
        });
        Some(Self {
            stop,
            thread: Some(thread),
            baseline: free,
        })
    }

    /// Peak bytes used beyond what was in use at start.
    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        let lowest = self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0);
        self.baseline.saturating_sub(lowest) as f64
    }
}

fn random_init_on(config: &Config, dev: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let spec = config.spec()?;
    let mut out = HashMap::new();
    for (name, shape) in spec.tensor_shapes() {
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, dev)?
        } else {
            Tensor::randn(0f32, spec.initializer_range as f32, shape, dev)?
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// SFT throughput on a random-init model: `sft_batch` packed rows of `sft_seq` tokens per step;
/// then the first steps again with activation checkpointing, which must give the same losses
/// (the recomputation runs the same kernels; both runs start from the same weights). Returns
/// whether that comparison failed.
fn sft(config_path: &Path, args: &CheckDeviceArgs, dev: &Device) -> anyhow::Result<bool> {
    let config = Config::load(config_path)?;
    let weights = match random_init_on(&config, dev) {
        Ok(w) => w,
        Err(e) => {
            emit(json!({"check": "sft", "error": format!("{e:#}")}));
            return Ok(false);
        }
    };
    let run = |checkpointing, steps| sft_run(&config, &weights, args, dev, checkpointing, steps);
    let plain = run(false, args.sft_steps);
    let recomputed = run(true, args.sft_steps.min(6));
    let composed = if dev.is_cuda() && distill_models::cuda::enabled() {
        distill_models::cuda::set_enabled(false);
        let composed = run(false, args.sft_steps.min(6));
        distill_models::cuda::set_enabled(true);
        Some(composed)
    } else {
        None
    };
    // The kernels with attention in chunked matmuls instead of flash attention.
    let flash = distill_models::cuda::flash_attention_runs(
        dev,
        args.sft_dtype.training(dev)?.compute,
        config.spec()?.head_dim,
    );
    let chunked = flash.then(|| {
        distill_models::cuda::set_flash_attention(false);
        let chunked = run(false, args.sft_steps.min(6));
        distill_models::cuda::set_flash_attention(true);
        chunked
    });
    let mut failed = false;
    for (run, checkpointing) in [(&plain, false), (&recomputed, true)]
        .into_iter()
        .chain(composed.iter().chain(&chunked).map(|c| (c, false)))
    {
        match run {
            Ok((v, _)) => emit(v.clone()),
            Err(e) => emit(json!({
                "check": "sft", "activation_checkpointing": checkpointing, "error": format!("{e:#}"),
            })),
        }
    }
    // The same losses step by step: recomputing a layer runs the same kernels; the composed
    // ops round differently in bf16, so they are held to a looser bound.
    let mut compare =
        |check: &str, other: &anyhow::Result<(serde_json::Value, Vec<f64>)>, tolerance| {
            if let (Ok((_, a)), Ok((_, b))) = (&plain, other) {
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs() / x.abs().max(1e-12))
                    .fold(0.0, f64::max);
                let bad = diff > tolerance || b.len() > a.len();
                failed |= bad;
                emit(json!({
                    "check": check, "steps": b.len(),
                    "max_rel_diff": diff, "tolerance": tolerance, "ok": !bad,
                }));
            }
        };
    compare("activation_checkpointing_losses", &recomputed, 1e-3);
    if let Some(composed) = &composed {
        compare("cuda_kernels_losses", composed, 1e-2);
    }
    if let Some(chunked) = &chunked {
        compare("flash_attention_losses", chunked, 1e-2);
    }
    Ok(failed)
}

/// One SFT run from `weights` of `measured` steps after 2 warm-up steps: its JSON figure and
/// its losses.
fn sft_run(
    config: &Config,
    weights: &HashMap<String, Tensor>,
    args: &CheckDeviceArgs,
    dev: &Device,
    activation_checkpointing: bool,
    measured: usize,
) -> anyhow::Result<(serde_json::Value, Vec<f64>)> {
    let spec = config.spec()?;
    let precision = args.sft_dtype.training(dev)?;
    let n = spec.num_parameters() as f64;
    (|| -> anyhow::Result<(serde_json::Value, Vec<f64>)> {
        let init = StudentInit {
            weights: weights.clone(),
            config: config.clone(),
            generation: Default::default(),
            tokenizer: None,
            dtype: DType::BF16,
        };
        let steps = measured + 2;
        let train_config = TrainerConfig {
            max_steps: Some(steps as u64),
            micro_batch_size: args.sft_batch,
            checkpoint_every: 0,
            eval_every: 0,
            loss_chunk_size: 2048,
            activation_checkpointing,
            ..Default::default()
        };
        let target = TrainTarget {
            device: dev.clone(),
            precision,
        };
        let mut trainer = Trainer::new(init, train_config, target.clone())?;
        // Packed rows: four documents of seq/4 tokens each.
        let vocab = spec.vocab_size as u32;
        let rows: Vec<PackedRow> = (0..args.sft_batch * 4)
            .map(|r| {
                let ids: Vec<u32> = (0..args.sft_seq as u32)
                    .map(|i| (i * 7919 + r as u32 * 104729) % vocab)
                    .collect();
                let quarter = (args.sft_seq / 4).max(1) as u32;
                PackedRow {
                    position_ids: (0..args.sft_seq as u32).map(|i| i % quarter).collect(),
                    labels: ids.iter().map(|&x| x as i64).collect(),
                    input_ids: ids,
                    teacher: None,
                }
            })
            .collect();
        let peak = PeakMemory::start(dev);
        let (mut times, mut losses) = (Vec::new(), Vec::new());
        trainer.fit(&rows, None, None, &mut |e| {
            if let distill_student::Event::Step(m) = e {
                times.push(m.elapsed.as_secs_f64());
                losses.push(m.loss);
            }
            Control::Continue
        })?;
        let peak = peak.map(PeakMemory::finish);
        let measured = &times[2.min(times.len())..];
        let step_s = measured.iter().sum::<f64>() / measured.len().max(1) as f64;
        let tok_s = (args.sft_batch * args.sft_seq) as f64 / step_s;
        let figure = json!({
            "check": "sft", "device": describe(dev), "params": n, "batch": args.sft_batch,
            "seq": args.sft_seq, "precision": precision.to_string(),
            "activation_checkpointing": activation_checkpointing, "steps": measured.len(),
            "cuda_kernels": dev.is_cuda() && distill_models::cuda::enabled(),
            "flash_attention": distill_models::cuda::flash_attention_runs(
                dev, precision.compute, spec.head_dim,
            ),
            "step_s": step_s, "tok_s": tok_s.round(), "mfu_6N": 6.0 * n * tok_s / PEAK_FLOPS,
            "peak_gib": peak.map(|p| p / (1u64 << 30) as f64),
            // What `distill train`'s preflight expects of this run (its out-of-memory check).
            "estimate_gib": crate::student_cmd::memory::estimate(
                &spec, &target, args.sft_batch, args.sft_seq, activation_checkpointing,
            ).total() / (1u64 << 30) as f64,
        });
        Ok((figure, losses))
    })()
}

/// Greedy decode tokens/s of a random-init bf16 model: 64-token prompts, 64 new tokens each.
fn decode_speed(config_path: &Path, batch: usize, dev: &Device) -> anyhow::Result<()> {
    let result = (|| -> anyhow::Result<serde_json::Value> {
        let config = Config::load(config_path)?;
        let spec = config.spec()?;
        let weights = random_init_on(&config, dev)?;
        let dtype = DtypeChoice::Auto.inference(dev, DType::BF16)?;
        let model = Model::new(&spec, VarBuilder::from_tensors(weights, dtype, dev))?;
        let vocab = spec.vocab_size as u32;
        let mut caches: Vec<_> = (0..batch).map(|_| model.new_cache()).collect();
        let prompts: Vec<Vec<u32>> = (0..batch as u32)
            .map(|b| (0..64u32).map(|i| (i * 31 + b * 7) % vocab).collect())
            .collect();
        let mut feeds = prompts.clone();
        let new_tokens = 64;
        let start = Instant::now();
        let mut first = None;
        for step in 0..=new_tokens {
            let mut items: Vec<(&[u32], &mut distill_models::KvCache)> = feeds
                .iter()
                .map(Vec::as_slice)
                .zip(caches.iter_mut())
                .collect();
            let logits = model.step(&mut items, Logits::Last)?;
            let next = Tensor::cat(&logits, 0)?
                .argmax(candle_core::D::Minus1)?
                .to_vec1::<u32>()?;
            feeds = next.into_iter().map(|t| vec![t]).collect();
            if step == 0 {
                first = Some(start.elapsed());
            }
        }
        let total = start.elapsed();
        let decode = (total - first.unwrap_or_default()).as_secs_f64();
        // The paged KV pool at the end: the blocks it grew to, in GiB.
        let (blocks, _) = model.kv_pool_blocks();
        let per_block = model.kv_block_bytes();
        Ok(json!({
            "check": "decode_speed", "device": describe(dev), "batch": batch,
            "dtype": dtype.as_str(), "prompt": 64, "new": new_tokens,
            "prefill_s": first.map(|d| d.as_secs_f64()),
            "tok_s": (batch * new_tokens) as f64 / decode,
            "kv_pool_blocks": blocks,
            "kv_pool_gib": (blocks * per_block) as f64 / (1u64 << 30) as f64,
            "cuda_kernels": dev.is_cuda() && distill_models::cuda::enabled(),
        }))
    })();
    match result {
        Ok(v) => emit(v),
        Err(e) => emit(json!({"check": "decode_speed", "batch": batch, "error": format!("{e:#}")})),
    }
    Ok(())
}

fn greedy(model: &Model, prompt: &[u32], n: usize) -> anyhow::Result<Vec<u32>> {
    let mut cache = model.new_cache();
    let mut out = Vec::with_capacity(n);
    let mut feed = prompt.to_vec();
    for _ in 0..n {
        let logits = model.forward_cached(&feed, &mut cache)?;
        let last = logits.narrow(0, logits.dim(0)? - 1, 1)?;
        let token = last
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .enumerate()
            .fold((0u32, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i as u32, x)
                } else {
                    best
                }
            })
            .0;
        out.push(token);
        feed = vec![token];
    }
    Ok(out)
}

/// Greedy tokens of a GGUF (kept quantized) on the device and on the CPU, from one chat prompt.
fn decode_parity(path: &Path, n: usize, dev: &Device) -> anyhow::Result<bool> {
    let ckpt = Checkpoint::open(path)?;
    let tokenizer = ckpt.tokenizer()?;
    let prompt = tokenizer.encode(
        "<|im_start|>user\nWhat is 17 times 23? Think step by step.<|im_end|>\n<|im_start|>assistant\n",
        false,
    )?;
    let cpu = greedy(&ckpt.load_quantized_model(&Device::Cpu)?, &prompt, n)?;
    let on_dev = greedy(
        &ckpt.load_for_inference(dev, TrainPrecision::F32.compute)?,
        &prompt,
        n,
    )?;
    let same = cpu.iter().zip(&on_dev).take_while(|(a, b)| a == b).count();
    let ok = same == n;
    emit(json!({
        "check": "decode_parity", "model": path.display().to_string(), "device": describe(dev),
        "tokens": n, "matching_prefix": same, "ok": ok,
        "cpu_text": tokenizer.decode(&cpu, false)?, "device_text": tokenizer.decode(&on_dev, false)?,
    }));
    // The CPU kernels (models/src/kernels) quantize activations differently from candle's
    // CUDA kernels: report, but fail only when fewer than half the tokens agree.
    Ok(same < n / 2)
}
